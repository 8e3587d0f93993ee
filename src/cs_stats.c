/*-------------------------------------------------------------------------
 * cs_stats.c
 *	  SQL functions reading the workers' shared-memory state; the views
 *	  citizen_sync.worker_stats, consumer_stats and consumer_lag sit on top.
 *
 * Each slot is copied on its own (cs_shmem_read_status/_partitions: one
 * consistent moment per slot, never the whole segment), then turned into
 * rows without holding its lock.
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "cs_health.h"
#include "cs_settings.h"
#include "cs_shmem.h"
#include "fmgr.h"
#include "funcapi.h"
#include "utils/builtins.h"
#include "utils/timestamp.h"

PG_FUNCTION_INFO_V1(citizen_sync_worker_stats);
PG_FUNCTION_INFO_V1(citizen_sync_partition_stats);
PG_FUNCTION_INFO_V1(citizen_sync_stats_reset);

#define WORKER_STATS_COLS 21

static Datum
nullable_ts(TimestampTz ts, bool *isnull)
{
	*isnull = (ts == 0);
	return TimestampTzGetDatum(ts);
}

static Datum
nullable_text(const char *s, bool *isnull)
{
	*isnull = (s == NULL || s[0] == '\0');
	return *isnull ? (Datum) 0 : CStringGetTextDatum(s);
}

/* Fill one worker_stats row from a slot. */
static void
worker_row(const CsWorkerStatus *s, Datum *v, bool *n)
{
	memset(n, 0, sizeof(bool) * WORKER_STATS_COLS);
	v[0] = CStringGetTextDatum(cs_shmem_kind_name(s->kind));
	v[1] = CStringGetTextDatum(s->database);
	v[2] = nullable_text(s->role, &n[2]);
	v[3] = nullable_text(s->group_id, &n[3]);
	v[4] = Int32GetDatum(s->pid);
	n[4] = (s->pid == 0);
	v[5] = CStringGetTextDatum(cs_shmem_state_name(s->state));
	v[6] = nullable_ts(s->started_at, &n[6]);
	v[7] = Int32GetDatum(s->npartitions);
	v[8] = Int64GetDatum(s->results[CS_RESULT_APPLIED]);
	v[9] = Int64GetDatum(s->results[CS_RESULT_DELETED]);
	v[10] = Int64GetDatum(s->results[CS_RESULT_STALE]);
	v[11] = Int64GetDatum(s->results[CS_RESULT_DUPLICATE]);
	v[12] = Int64GetDatum(s->results[CS_RESULT_IGNORED]);
	v[13] = Int64GetDatum(s->dead_lettered);
	v[14] = Int64GetDatum(s->batches);
	v[15] = nullable_ts(s->last_batch_at, &n[15]);
	v[16] = Int64GetDatum(s->lag);
	v[17] = Int64GetDatum(s->published);
	v[18] = nullable_text(s->last_error, &n[18]);
	v[19] = nullable_ts(s->last_error_at, &n[19]);
	v[20] = nullable_ts(s->stats_reset, &n[20]);
}

/* citizen_sync.worker_stats_raw(): one row per configured worker. */
Datum
citizen_sync_worker_stats(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;

	InitMaterializedSRF(fcinfo, 0);
	cs_shmem_require();
	for (int i = 0; i < CS_MAX_WORKERS; i++)
	{
		CsWorkerStatus st;
		Datum		v[WORKER_STATS_COLS];
		bool		n[WORKER_STATS_COLS];

		if (!cs_shmem_read_status(i, &st, true))
			continue;
		worker_row(&st, v, n);
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, v, n);
	}
	PG_RETURN_VOID();
}

/* citizen_sync.partition_stats_raw(): one row per assigned partition. */
Datum
citizen_sync_partition_stats(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;

	InitMaterializedSRF(fcinfo, 0);
	cs_shmem_require();
	for (int i = 0; i < CS_MAX_WORKERS; i++)
	{
		CsPartitions *ps = cs_shmem_read_partitions(i);

		for (int p = 0; ps && p < ps->n; p++)
		{
			const CsPartitionPosition *pos = &ps->positions[p];
			Datum		v[7];
			bool		n[7] = {false, false, false, false, false, false, false};

			v[0] = CStringGetTextDatum(ps->database);
			v[1] = CStringGetTextDatum(ps->group_id);
			v[2] = CStringGetTextDatum(cs_partition_topic(ps, p));
			v[3] = Int32GetDatum(pos->partition);
			v[4] = Int64GetDatum(pos->next_offset);
			v[5] = Int64GetDatum(pos->high_watermark);
			n[5] = n[6] = (pos->high_watermark < 0);
			v[6] = Int64GetDatum(Max(0, pos->high_watermark - pos->next_offset));
			tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, v, n);
		}
		if (ps)
			pfree(ps);
	}
	PG_RETURN_VOID();
}

PG_FUNCTION_INFO_V1(citizen_sync_latency_histogram);
PG_FUNCTION_INFO_V1(citizen_sync_fresh_as_of);

/*
 * citizen_sync.latency_histogram_raw(): per consumer, the cumulative sync
 * latency histogram (Prometheus style: le = upper bound in ms, +Inf last).
 */
Datum
citizen_sync_latency_histogram(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;

	InitMaterializedSRF(fcinfo, 0);
	cs_shmem_require();
	for (int i = 0; i < CS_MAX_WORKERS; i++)
	{
		CsWorkerStatus st;
		CsWorkerStatus *s = &st;
		int64		cumulative = 0;

		if (!cs_shmem_read_status(i, &st, false) || st.kind != CS_WORKER_CONSUMER)
			continue;
		for (int b = 0; b < CS_LATENCY_BUCKETS; b++)
		{
			Datum		v[5];
			bool		n[5] = {false, false, false, false, false};

			cumulative += s->latency_buckets[b];
			v[0] = CStringGetTextDatum(s->database);
			v[1] = Float8GetDatum(cs_latency_bounds_ms[b]);
			v[2] = Int64GetDatum(cumulative);
			v[3] = Int64GetDatum(s->latency_count);
			v[4] = Float8GetDatum(s->latency_sum_ms);
			tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, v, n);
		}
	}
	PG_RETURN_VOID();
}

/*
 * citizen_sync.fresh_as_of(database name): the last time the consumer of that
 * database had applied everything Kafka held, or NULL if unknown (no
 * consumer, never caught up, or Kafka unreachable since), and NULL while the
 * consumers of the database hold only part of their topics' partitions.
 */
Datum
citizen_sync_fresh_as_of(PG_FUNCTION_ARGS)
{
	const char *db = NameStr(*PG_GETARG_NAME(0));
	TimestampTz ts = 0;
	CsWorkerStatus *all;

	if (!cs_shmem_ready())
		PG_RETURN_NULL();
	all = cs_shmem_read_all(false);
	for (int i = 0; i < CS_MAX_WORKERS; i++)
		if (all[i].kind == CS_WORKER_CONSUMER && all[i].pid != 0 &&
			strcmp(all[i].database, db) == 0)
		{
			int			held,
						total;

			ts = all[i].caught_up_at;
			if (cs_health_assignment_short(all, i, &held, &total))
				ts = 0;
		}
	pfree(all);
	if (ts == 0)
		PG_RETURN_NULL();
	PG_RETURN_TIMESTAMPTZ(ts);
}

PG_FUNCTION_INFO_V1(citizen_sync_worker_health);
PG_FUNCTION_INFO_V1(citizen_sync_config_problems);

#define WORKER_HEALTH_COLS 17

/* Fill one worker_health row from slot i of the slots' statuses. */
static void
health_row(const CsWorkerStatus *slots, int i, Datum *v, bool *n)
{
	const CsWorkerStatus *s = &slots[i];
	int			held = 0,
				total = 0;
	bool		is_short = false;

	if (s->kind == CS_WORKER_CONSUMER && s->pid != 0)
		is_short = cs_health_assignment_short(slots, i, &held, &total);
	memset(n, 0, sizeof(bool) * WORKER_HEALTH_COLS);
	v[0] = CStringGetTextDatum(cs_shmem_kind_name(s->kind));
	v[1] = CStringGetTextDatum(s->database);
	v[2] = nullable_text(s->group_id, &n[2]);
	v[3] = Int32GetDatum(s->pid);
	n[3] = (s->pid == 0);
	v[4] = CStringGetTextDatum(cs_shmem_state_name(s->state));
	v[5] = nullable_ts(s->pid ? s->started_at : 0, &n[5]);
	v[6] = nullable_text(s->held_back, &n[6]);
	v[7] = nullable_ts(s->pid ? s->kafka_stats_at : 0, &n[7]);
	v[8] = Int32GetDatum(s->brokers_known);
	v[9] = Int32GetDatum(s->brokers_up);
	n[8] = n[9] = n[7];
	v[10] = nullable_ts(s->brokers_up_at, &n[10]);
	v[11] = Int32GetDatum(total);
	n[11] = (s->kind != CS_WORKER_CONSUMER || s->pid == 0 || total <= 0);
	v[12] = Int32GetDatum(held);
	n[12] = (s->kind != CS_WORKER_CONSUMER || s->pid == 0);
	v[13] = BoolGetDatum(s->pid != 0 && s->partial_assignment);
	n[13] = (s->kind != CS_WORKER_CONSUMER);
	v[14] = nullable_ts(s->pid && !is_short ? s->caught_up_at : 0, &n[14]);
	v[15] = nullable_ts(s->last_delivery_at, &n[15]);
	v[16] = nullable_ts(s->last_failure_at, &n[16]);
}

/* citizen_sync.worker_health_raw(): one row per configured worker. */
Datum
citizen_sync_worker_health(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	CsWorkerStatus *slots;

	InitMaterializedSRF(fcinfo, 0);
	cs_shmem_require();
	slots = cs_shmem_read_all(false);
	for (int i = 0; i < CS_MAX_WORKERS; i++)
	{
		Datum		v[WORKER_HEALTH_COLS];
		bool		n[WORKER_HEALTH_COLS];

		if (slots[i].kind == CS_WORKER_NONE)
			continue;
		health_row(slots, i, v, n);
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, v, n);
	}
	PG_RETURN_VOID();
}

/* citizen_sync.config_problems_raw(): invalid citizen_sync.* settings. */
Datum
citizen_sync_config_problems(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	CsConfigProblem problems[CS_MAX_CONFIG_PROBLEMS];
	int			nproblems;

	InitMaterializedSRF(fcinfo, 0);
	nproblems = cs_shmem_get_config_problems(problems);
	for (int i = 0; i < nproblems; i++)
	{
		Datum		v[5];
		bool		n[5] = {false, false, false, false, false};
		int			a = problems[i].affects;

		v[0] = CStringGetTextDatum(problems[i].setting);
		v[1] = CStringGetTextDatum(problems[i].message);
		v[2] = CStringGetTextDatum(a == CS_AFFECTS_CONSUMERS ? "consumers" :
								   a == CS_AFFECTS_PUBLISHER ? "publisher" : "all");
		v[3] = BoolGetDatum(problems[i].at_startup);
		v[4] = TimestampTzGetDatum(problems[i].since);
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, v, n);
	}
	PG_RETURN_VOID();
}

/*
 * citizen_sync.stats_reset(): zero the counters and latency histograms of
 * every configured worker of the instance (worker_stats, consumer_stats,
 * sync_latency); returns the time of the reset.  EXECUTE is revoked from
 * PUBLIC: superusers and roles granted EXECUTE may call it.
 */
Datum
citizen_sync_stats_reset(PG_FUNCTION_ARGS)
{
	TimestampTz now = GetCurrentTimestamp();

	cs_shmem_require();
	for (int i = 0; i < CS_MAX_WORKERS; i++)
		(void) cs_shmem_reset_stats(i, now);
	PG_RETURN_TIMESTAMPTZ(now);
}
