/*-------------------------------------------------------------------------
 * cs_publisher.c
 *	  The outbox publisher: citizen_sync.outbox to Kafka, nothing lost.
 *
 * One process, in citizen_sync.outbox_database.  Each round:
 *
 *	1. read up to publisher_batch_size pending rows (published_at IS NULL) in
 *	   id order, in a short transaction;
 *	2. produce them with librdkafka's idempotent producer (acks=all), topic
 *	   topic_prefix || aggregate_type, key <aggregate_type>_<aggregate_id>,
 *	   value = payload plus event_type and event_id ("evt_<id>");
 *	3. wait for every delivery report (on the latch and the report queue);
 *	4. mark delivered rows published, bump retry_count and last_error of the
 *	   others, in a second short transaction.
 *
 * There is no "last published id" watermark: every round starts from the
 * pending rows, so a row whose transaction committed after a higher id is
 * still sent.  One aggregate's rows commit in version order (the capture
 * trigger serialises them on the version counter row), so id order within an
 * aggregate is version order.  A round carries at most one row per aggregate,
 * so a version is only sent once the previous one was acknowledged: a failed
 * delivery is never overtaken on the topic.  A crash between produce and
 * mark re-sends rows: consumers dedupe by event_id.
 * Committing transactions wake the publisher through its latch
 * (cs_notify.c); a periodic sweep is the safety net.  Published rows older
 * than citizen_sync.outbox_retention are deleted in small batches, every
 * minute (or every retention period, when shorter).
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "catalog/pg_type.h"
#include "commands/extension.h"
#include "cs_guc.h"
#include "cs_kafka_conf.h"
#include "cs_shmem.h"
#include "cs_worker.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "storage/ipc.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

PGDLLEXPORT void cs_publisher_main(Datum arg);

#define FETCH_SQL \
	"SELECT id, $1 OPERATOR(pg_catalog.||) aggregate_type," \
	"       aggregate_type OPERATOR(pg_catalog.||) '_' OPERATOR(pg_catalog.||) aggregate_id," \
	"       (payload OPERATOR(pg_catalog.||) pg_catalog.jsonb_build_object(" \
	"          'event_type', aggregate_type OPERATOR(pg_catalog.||) '.' OPERATOR(pg_catalog.||) event_type," \
	"          'event_id', 'evt_' OPERATOR(pg_catalog.||) id))::pg_catalog.text" \
	"  FROM citizen_sync.outbox WHERE published_at IS NULL ORDER BY id LIMIT $2"

#define MARK_OK_SQL \
	"UPDATE citizen_sync.outbox SET published_at = pg_catalog.now(), last_error = NULL" \
	" WHERE id OPERATOR(pg_catalog.=) ANY ($1) AND published_at IS NULL"

#define MARK_FAILED_SQL \
	"UPDATE citizen_sync.outbox SET retry_count = retry_count OPERATOR(pg_catalog.+) 1, last_error = $2" \
	" WHERE id OPERATOR(pg_catalog.=) ANY ($1) AND published_at IS NULL"

#define PURGE_SQL \
	"DELETE FROM citizen_sync.outbox WHERE id IN (" \
	"  SELECT id FROM citizen_sync.outbox WHERE published_at OPERATOR(pg_catalog.<)" \
	"    (pg_catalog.now() OPERATOR(pg_catalog.-) pg_catalog.make_interval(secs => $1))" \
	"  LIMIT 10000)"

/* One outbox row on its way to Kafka. */
typedef struct OutboxRow
{
	int64		id;
	bool		deferred;		/* an earlier row of its aggregate is in this round */
	char	   *topic;
	char	   *key;
	char	   *value;
	bool		done;			/* delivery report received */
	rd_kafka_resp_err_t err;
} OutboxRow;

typedef struct Publisher
{
	CsWorkerSlot *slot;
	rd_kafka_t *rk;
	rd_kafka_queue_t *queue;
	CsQueueWaiter waiter;
	MemoryContext round_cxt;
	OutboxRow  *rows;
	int			nrows;
	int			outstanding;
	int			failures;		/* consecutive rounds with a failure */
	TimestampTz next_purge_at;
	long		report_timeout_ms;	/* message.timeout.ms plus a margin */
	uint32		round;			/* tags messages: a late report of an abandoned round is ignored */
	bool		some_failed;	/* the last round had a failed delivery */
} Publisher;

/* A message's opaque: the round number and the row index. */
#define OPAQUE(round, i)	((void *) (((uintptr_t) (round) << 32) | (uint32) (i)))
#define OPAQUE_ROUND(o)		((uint32) ((uintptr_t) (o) >> 32))
#define OPAQUE_INDEX(o)		((int) ((uintptr_t) (o) & 0xffffffff))

/* Step 1: copy up to batch_size pending rows into p->rows. */
static void
fetch_step(void *arg)
{
	Publisher  *p = (Publisher *) arg;
	Datum		values[2];
	Oid			types[2] = {TEXTOID, INT4OID};

	cs_tx_begin("citizen_sync: reading the outbox");
	values[0] = CStringGetTextDatum(cs_topic_prefix);
	values[1] = Int32GetDatum(cs_publisher_batch_size);
	if (SPI_execute_with_args(FETCH_SQL, 2, types, values, NULL, true, 0) != SPI_OK_SELECT)
		elog(ERROR, "citizen_sync: reading the outbox failed");
	p->nrows = (int) SPI_processed;
	p->rows = MemoryContextAllocZero(p->round_cxt, sizeof(OutboxRow) * Max(p->nrows, 1));
	for (int i = 0; i < p->nrows; i++)
	{
		HeapTuple	t = SPI_tuptable->vals[i];
		TupleDesc	d = SPI_tuptable->tupdesc;
		bool		isnull;

		p->rows[i].id = DatumGetInt64(SPI_getbinval(t, d, 1, &isnull));
		p->rows[i].topic = MemoryContextStrdup(p->round_cxt, SPI_getvalue(t, d, 2));
		p->rows[i].key = MemoryContextStrdup(p->round_cxt, SPI_getvalue(t, d, 3));
		p->rows[i].value = MemoryContextStrdup(p->round_cxt, SPI_getvalue(t, d, 4));
	}
	cs_tx_commit();
}

/* Sort helper: rows by key (one aggregate), then id. */
static int
cmp_row_key(const void *a, const void *b, void *arg)
{
	const OutboxRow *rows = (const OutboxRow *) arg;
	const OutboxRow *ra = &rows[*(const int *) a];
	const OutboxRow *rb = &rows[*(const int *) b];
	int			c = strcmp(ra->key, rb->key);

	if (c == 0)
		c = strcmp(ra->topic, rb->topic);
	return c != 0 ? c : (ra->id > rb->id) - (ra->id < rb->id);
}

/*
 * Keep at most one row per aggregate in a round: the oldest.  The others stay
 * pending for a later round, so an aggregate's next event is only sent once
 * the previous one was acknowledged, and a failed delivery can never be
 * overtaken by a later version of the same citizen.
 */
static void
defer_later_versions(Publisher *p)
{
	int		   *order = MemoryContextAlloc(p->round_cxt, sizeof(int) * Max(p->nrows, 1));

	for (int i = 0; i < p->nrows; i++)
		order[i] = i;
	qsort_arg(order, p->nrows, sizeof(int), cmp_row_key, p->rows);
	for (int k = 1; k < p->nrows; k++)
		if (strcmp(p->rows[order[k]].key, p->rows[order[k - 1]].key) == 0 &&
			strcmp(p->rows[order[k]].topic, p->rows[order[k - 1]].topic) == 0)
			p->rows[order[k]].deferred = true;
}

/* Drain delivery reports and errors from the queue without blocking. */
static void
drain_reports(Publisher *p)
{
	rd_kafka_event_t *ev;

	while ((ev = rd_kafka_queue_poll(p->queue, 0)) != NULL)
	{
		if (rd_kafka_event_type(ev) == RD_KAFKA_EVENT_DR)
		{
			const rd_kafka_message_t *m;

			while ((m = rd_kafka_event_message_next(ev)) != NULL)
			{
				OutboxRow  *row;

				if (OPAQUE_ROUND(m->_private) != p->round ||
					OPAQUE_INDEX(m->_private) >= p->nrows)
					continue;	/* its round gave up on it; the row is re-sent */
				row = &p->rows[OPAQUE_INDEX(m->_private)];
				if (row->done)
					continue;
				row->done = true;
				row->err = m->err;
				p->outstanding--;
			}
		}
		else if (rd_kafka_event_type(ev) == RD_KAFKA_EVENT_ERROR)
		{
			char		msg[512];

			snprintf(msg, sizeof(msg), "Kafka: %s", rd_kafka_event_error_string(ev));
			cs_shmem_set_error(p->slot, msg);
			ereport(LOG, (errmsg("citizen_sync: publisher: %s", msg)));
		}
		else if (rd_kafka_event_type(ev) == RD_KAFKA_EVENT_LOG)
			cs_worker_log_kafka(ev);
		rd_kafka_event_destroy(ev);
	}
}

/* Step 2: hand row i to librdkafka, waiting while its queue is full. */
static void
produce_row(Publisher *p, int i)
{
	OutboxRow  *row = &p->rows[i];

	for (;;)
	{
		rd_kafka_resp_err_t err = rd_kafka_producev(p->rk,
													RD_KAFKA_V_TOPIC(row->topic),
													RD_KAFKA_V_KEY(row->key, strlen(row->key)),
													RD_KAFKA_V_VALUE(row->value, strlen(row->value)),
													RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
													RD_KAFKA_V_OPAQUE(OPAQUE(p->round, i)),
													RD_KAFKA_V_END);

		if (err == RD_KAFKA_RESP_ERR_NO_ERROR)
		{
			p->outstanding++;
			return;
		}
		if (err != RD_KAFKA_RESP_ERR__QUEUE_FULL)
		{
			row->done = true;
			row->err = err;
			return;
		}
		cs_waiter_wait(&p->waiter, 100);
		drain_reports(p);
	}
}

/*
 * Step 3: wait (latch and report queue) until every row has its report.
 * librdkafka reports every message within message.timeout.ms; past that
 * plus a margin, rows still without a report are counted as failed (they
 * stay pending and go out again) rather than waited for forever.
 */
static void
await_reports(Publisher *p)
{
	TimestampTz deadline = TimestampTzPlusMilliseconds(GetCurrentTimestamp(),
													   p->report_timeout_ms);

	while (p->outstanding > 0 && !cs_got_sigterm)
	{
		drain_reports(p);
		if (p->outstanding == 0)
			break;
		if (GetCurrentTimestamp() >= deadline)
		{
			for (int i = 0; i < p->nrows; i++)
				if (!p->rows[i].deferred && !p->rows[i].done)
				{
					p->rows[i].done = true;
					p->rows[i].err = RD_KAFKA_RESP_ERR__TIMED_OUT;
				}
			ereport(LOG,
					(errmsg("citizen_sync: publisher: %d delivery report(s) missing after %ld ms; the rows will be sent again",
							p->outstanding, p->report_timeout_ms)));
			p->outstanding = 0;
			break;
		}
		cs_waiter_wait(&p->waiter, 1000);
		cs_worker_reload_config();
	}
}

/* Step 4: record the outcome of the round. */
static void
mark_step(void *arg)
{
	Publisher  *p = (Publisher *) arg;
	Datum	   *ok = MemoryContextAlloc(p->round_cxt, sizeof(Datum) * Max(p->nrows, 1));
	Datum	   *bad = MemoryContextAlloc(p->round_cxt, sizeof(Datum) * Max(p->nrows, 1));
	int			nok = 0,
				nbad = 0;
	const char *last_err = NULL;

	for (int i = 0; i < p->nrows; i++)
	{
		if (p->rows[i].done && p->rows[i].err == RD_KAFKA_RESP_ERR_NO_ERROR)
			ok[nok++] = Int64GetDatum(p->rows[i].id);
		else if (p->rows[i].done)
		{
			bad[nbad++] = Int64GetDatum(p->rows[i].id);
			last_err = rd_kafka_err2str(p->rows[i].err);
		}
	}
	cs_tx_begin("citizen_sync: marking published rows");
	if (nok > 0)
	{
		Oid			t[1] = {INT8ARRAYOID};
		Datum		v[1] = {PointerGetDatum(construct_array(ok, nok, INT8OID, 8, FLOAT8PASSBYVAL, TYPALIGN_DOUBLE))};

		SPI_execute_with_args(MARK_OK_SQL, 1, t, v, NULL, false, 0);
	}
	if (nbad > 0)
	{
		Oid			t[2] = {INT8ARRAYOID, TEXTOID};
		Datum		v[2] = {PointerGetDatum(construct_array(bad, nbad, INT8OID, 8, FLOAT8PASSBYVAL, TYPALIGN_DOUBLE)),
		CStringGetTextDatum(last_err)};

		SPI_execute_with_args(MARK_FAILED_SQL, 2, t, v, NULL, false, 0);
	}
	cs_tx_commit();

	LWLockAcquire(cs_shared->lock, LW_EXCLUSIVE);
	p->slot->published += nok;
	p->slot->publish_failures += nbad;
	p->slot->batches++;
	p->slot->last_batch_at = GetCurrentTimestamp();
	if (nok > 0)
		p->slot->last_delivery_at = p->slot->last_batch_at;
	else if (nbad > 0)
		p->slot->last_failure_at = p->slot->last_batch_at;
	strlcpy(p->slot->state, nbad ? "retrying" : "running", sizeof(p->slot->state));
	if (nbad)
		snprintf(p->slot->last_error, sizeof(p->slot->last_error),
				 "delivery failed for %d row(s): %s", nbad, last_err);
	p->slot->last_error_at = nbad ? GetCurrentTimestamp() : p->slot->last_error_at;
	LWLockRelease(cs_shared->lock);
	/*
	 * Back off only when nothing got through (the brokers are unreachable):
	 * one row that keeps failing (too large, say) must not slow every other
	 * aggregate; it is retried each round, with retry_count and last_error
	 * showing it in citizen_sync.outbox_backlog.
	 */
	p->failures = (nbad > 0 && nok == 0) ? p->failures + 1 : 0;
	p->some_failed = (nbad > 0);
}

/* Delete published rows past the retention, a bounded chunk at a time. */
static void
purge_step(void *arg)
{
	Oid			t[1] = {FLOAT8OID};
	Datum		v[1] = {Float8GetDatum((double) cs_outbox_retention_s)};

	cs_tx_begin("citizen_sync: outbox retention");
	SPI_execute_with_args(PURGE_SQL, 1, t, v, NULL, false, 0);
	cs_tx_commit();
}

/* One round; returns the number of rows read. */
static int
publish_round(Publisher *p)
{
	MemoryContextReset(p->round_cxt);
	p->round++;
	p->nrows = 0;
	p->outstanding = 0;
	if (!cs_worker_try(p->slot, fetch_step, p))
		return -1;
	defer_later_versions(p);
	for (int i = 0; i < p->nrows && !cs_got_sigterm; i++)
		if (!p->rows[i].deferred)
			produce_row(p, i);
	await_reports(p);
	if (cs_got_sigterm)
		return 0;
	if (p->nrows > 0 && !cs_worker_try(p->slot, mark_step, p))
		return -1;
	return p->nrows;
}

static void
kafka_start(Publisher *p)
{
	char		errstr[512];
	static const char *const defaults[] = {
		"linger.ms", "1",
		"socket.nagle.disable", "true",	/* Nagle plus delayed ACKs cost ~40 ms a round */
		"message.timeout.ms", "30000",	/* a failed delivery is retried by the next round */
		NULL
	};
	rd_kafka_conf_t *conf = cs_kafka_conf_new("citizen_sync-publisher", defaults);

	/* what no loss and no reordering depend on: not overridable */
	cs_kafka_conf_set(conf, "enable.idempotence", "true");
	cs_kafka_conf_set(conf, "acks", "all");
	cs_kafka_conf_set(conf, "log.queue", "true");
	{
		char		value[64];
		size_t		size = sizeof(value);

		p->report_timeout_ms = 40000;
		if (rd_kafka_conf_get(conf, "message.timeout.ms", value, &size) == RD_KAFKA_CONF_OK)
			p->report_timeout_ms = atol(value) + 10000;
	}
	rd_kafka_conf_set_events(conf, RD_KAFKA_EVENT_DR | RD_KAFKA_EVENT_ERROR | RD_KAFKA_EVENT_LOG);
	p->rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, errstr, sizeof(errstr));
	if (p->rk == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_CONNECTION_FAILURE),
				 errmsg("citizen_sync: could not create a Kafka producer: %s", errstr)));
	p->queue = rd_kafka_queue_get_main(p->rk);
	rd_kafka_set_log_queue(p->rk, NULL);
	cs_waiter_init(&p->waiter, p->queue);
}

/*
 * Ask the brokers for the metadata of every captured aggregate's topic now,
 * so that the first change after a start is not held up by the lookup.
 */
static void
warm_up_step(void *arg)
{
	Publisher  *p = (Publisher *) arg;
	Datum		prefix = CStringGetTextDatum(cs_topic_prefix);
	Oid			type = TEXTOID;

	cs_tx_begin("citizen_sync: looking up topics");
	if (SPI_execute_with_args("SELECT DISTINCT $1 OPERATOR(pg_catalog.||) aggregate_type"
							  " FROM citizen_sync.captures",
							  1, &type, &prefix, NULL, true, 0) != SPI_OK_SELECT)
		elog(ERROR, "citizen_sync: reading citizen_sync.captures failed");
	for (uint64 r = 0; r < SPI_processed; r++)
	{
		char	   *topic = SPI_getvalue(SPI_tuptable->vals[r], SPI_tuptable->tupdesc, 1);
		rd_kafka_topic_t *rkt = rd_kafka_topic_new(p->rk, topic, NULL);
		const struct rd_kafka_metadata *md = NULL;

		if (rkt == NULL)
			continue;
		if (rd_kafka_metadata(p->rk, 0, rkt, &md, 2000) == RD_KAFKA_RESP_ERR_NO_ERROR)
			rd_kafka_metadata_destroy(md);
		rd_kafka_topic_destroy(rkt);
	}
	cs_tx_commit();
}

static bool
extension_ready(char *msg, size_t msglen, char *hint, size_t hintlen)
{
	bool		ok;

	StartTransactionCommand();
	ok = cs_extension_ready(msg, msglen, hint, hintlen);
	CommitTransactionCommand();
	return ok;
}

/* Idle until woken by a commit, the sweep interval or a retry backoff. */
static void
idle(Publisher *p, int rows_read)
{
	long		timeout;

	/*
	 * A round that read rows waited on the latch for its delivery reports and
	 * so may have consumed a commit's wake-up: look again at once.  Only an
	 * empty round (which never waited) or a failing one sleeps.
	 */
	if (rows_read > 0 && p->failures == 0 && !p->some_failed)
		return;
	if (p->failures > 0 || rows_read < 0)
		timeout = Min(100L << Min(p->failures, 10), cs_restart_delay_s * 1000L);
	else if (p->some_failed)
		timeout = 100;			/* retry the failed rows soon, without spinning */
	else
		timeout = cs_publisher_sweep_ms;
	/* and wake up for the next purge even when nothing is committed */
	timeout = Min(timeout, Max(1L, (long) ((p->next_purge_at - GetCurrentTimestamp()) / 1000) + 1));
	cs_waiter_wait(&p->waiter, timeout);
	drain_reports(p);
}

void
cs_publisher_main(Datum arg)
{
	Publisher	p;
	bool		warned = false;
	char		msg[256];
	char		hint[256];
	char		last_msg[256] = "";

	memset(&p, 0, sizeof(p));
	cs_worker_setup_signals();
	p.slot = cs_shmem_attach(DatumGetInt32(arg));
	BackgroundWorkerInitializeConnection(p.slot->database, NULL, 0);
	pgstat_report_appname("citizen_sync publisher");
	cs_worker_session_settings();
	while (!cs_got_sigterm && !extension_ready(msg, sizeof(msg), hint, sizeof(hint)))
	{
		cs_shmem_set_state(p.slot, "waiting");
		cs_shmem_set_error(p.slot, msg);
		if (strcmp(msg, last_msg) != 0)	/* once per reason */
			ereport(WARNING,
					(errmsg("citizen_sync: %s", msg),
					 errhint("%s Or change citizen_sync.outbox_database.", hint)));
		strlcpy(last_msg, msg, sizeof(last_msg));
		warned = true;
		cs_worker_sleep(cs_restart_delay_s * 1000L);
		cs_worker_reload_config();
	}
	if (warned)
		cs_shmem_set_error(p.slot, "");
	p.round_cxt = AllocSetContextCreate(TopMemoryContext, "citizen_sync publisher round",
										ALLOCSET_DEFAULT_SIZES);
	kafka_start(&p);
	(void) cs_worker_try(p.slot, warm_up_step, &p);
	cs_shmem_set_state(p.slot, "running");
	while (!cs_got_sigterm)
	{
		int			n = publish_round(&p);

		if (GetCurrentTimestamp() >= p.next_purge_at)
		{
			cs_worker_try(p.slot, purge_step, &p);
			p.next_purge_at = TimestampTzPlusMilliseconds(GetCurrentTimestamp(),
														  Min(60000L, Max(1000L, cs_outbox_retention_s * 1000L)));
		}
		idle(&p, n);
		cs_worker_reload_config();
	}
	rd_kafka_purge(p.rk, RD_KAFKA_PURGE_F_QUEUE | RD_KAFKA_PURGE_F_INFLIGHT);
	cs_waiter_close(&p.waiter);
	rd_kafka_queue_destroy(p.queue);
	rd_kafka_destroy(p.rk);
	proc_exit(0);
}
