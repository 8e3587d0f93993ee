/*-------------------------------------------------------------------------
 * cs_batch.c
 *	  Apply one batch of Kafka messages in a single transaction.
 *
 * Happy path: one subtransaction around the set-based apply of the whole
 * batch.  If that raises a data error (SQLSTATE class 22 or 23), the batch
 * is re-applied one event per subtransaction to isolate the culprit, which
 * goes to the dead letters; any other error propagates and the whole batch
 * is rolled back for the caller to retry.  Invalid messages never reach the
 * apply: the parser rejects them and they are dead-lettered directly.
 *
 * While a batch is applied an error-context callback (as pglogical's apply
 * does) names the database, the topic, partition and offsets of what is
 * being applied, and the event id: the whole batch first, then the event
 * being isolated.  Every dead letter is logged, repeats rate-limited.
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "catalog/pg_type.h"
#include "cs_batch.h"
#include "cs_dead_letter.h"
#include "cs_offsets.h"
#include "cs_subscription.h"
#include "cs_wait.h"
#include "cs_worker.h"
#include "executor/spi.h"
#include "pgstat.h"
#include "utils/memutils.h"
#include "utils/resowner.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

/* What is being applied, for the error context; updated as it moves on. */
typedef struct ApplyPosition
{
	const CsMessage *msgs;
	const CsEvent *events;
	int			n;
} ApplyPosition;

static const char *
event_id_or_unknown(const CsEvent *event)
{
	return event->event_id ? event->event_id : "(unknown)";
}

/*
 * errcontext: the database, then the event (one) or the offsets of the
 * batch in its first message's partition and how many events are elsewhere.
 */
static void
apply_context(void *arg)
{
	const ApplyPosition *pos = (const ApplyPosition *) arg;
	const CsMessage *m = &pos->msgs[0];
	CsWorkerSlot *slot = cs_shmem_my_slot();
	const char *db = slot ? cs_shmem_slot_database(slot) : "?";
	int64		lo = m->offset,
				hi = m->offset;
	int			elsewhere = 0;

	if (pos->n <= 0)
		return;
	if (pos->n == 1)
	{
		errcontext("applying event \"%s\" in database \"%s\": topic \"%s\", partition %d, offset " INT64_FORMAT,
				   event_id_or_unknown(&pos->events[0]), db, m->topic, m->partition, m->offset);
		return;
	}
	for (int i = 1; i < pos->n; i++)
	{
		if (pos->msgs[i].partition != m->partition || strcmp(pos->msgs[i].topic, m->topic) != 0)
			elsewhere++;
		else
		{
			lo = Min(lo, pos->msgs[i].offset);
			hi = Max(hi, pos->msgs[i].offset);
		}
	}
	errcontext("applying a batch of %d events in database \"%s\": topic \"%s\", partition %d, offsets " INT64_FORMAT ".." INT64_FORMAT "%s, first event \"%s\"",
			   pos->n, db, m->topic, m->partition, lo, hi,
			   elsewhere > 0 ? psprintf(" (and %d events of other partitions)", elsewhere) : "",
			   event_id_or_unknown(&pos->events[0]));
}

/* Log a dead letter (the same SQLSTATE at most once per interval). */
static void
log_dead_letter(const CsMessage *msg, const CsEvent *event, int sqlerrcode,
				const char *message)
{
	char		key[64];
	int64		suppressed;
	CsWorkerSlot *slot = cs_shmem_my_slot();

	snprintf(key, sizeof(key), "dead-letter %s", unpack_sql_state(sqlerrcode));
	if (!cs_log_allowed(key, &suppressed))
		return;
	ereport(LOG,
			(errmsg("citizen_sync: consumer for database \"%s\" dead-lettered event \"%s\" (topic \"%s\", partition %d, offset " INT64_FORMAT "): %s",
					slot ? cs_shmem_slot_database(slot) : "?", event_id_or_unknown(event),
					msg->topic, msg->partition, msg->offset, message),
			 errdetail_internal("SQLSTATE %s; %lld similar line(s) suppressed since the last one.",
								unpack_sql_state(sqlerrcode), (long long) suppressed)));
}

/* A data error is the message's fault; anything else is the system's. */
static bool
is_data_error(int sqlerrcode)
{
	int			cls = ERRCODE_TO_CATEGORY(sqlerrcode);

	return cls == ERRCODE_DATA_EXCEPTION ||
		cls == ERRCODE_INTEGRITY_CONSTRAINT_VIOLATION ||
		cls == ERRCODE_PROGRAM_LIMIT_EXCEEDED;
}

/*
 * Run cs_apply_batch on events in a subtransaction.  Returns NULL on success,
 * or the ErrorData of a data error (the subtransaction rolled back).  Other
 * errors are re-thrown.
 */
static ErrorData *
apply_in_subxact(const CsEvent *events, int n, CsApplyResult *results)
{
	MemoryContext oldcxt = CurrentMemoryContext;
	ResourceOwner oldowner = CurrentResourceOwner;
	ErrorData  *volatile edata = NULL;

	BeginInternalSubTransaction(NULL);
	MemoryContextSwitchTo(oldcxt);
	PG_TRY();
	{
		cs_apply_batch(events, n, results);
		ReleaseCurrentSubTransaction();
		MemoryContextSwitchTo(oldcxt);
		CurrentResourceOwner = oldowner;
	}
	PG_CATCH();
	{
		MemoryContextSwitchTo(oldcxt);
		edata = CopyErrorData();
		FlushErrorState();
		RollbackAndReleaseCurrentSubTransaction();
		MemoryContextSwitchTo(oldcxt);
		CurrentResourceOwner = oldowner;
		if (!is_data_error(edata->sqlerrcode))
			ReThrowError(edata);
	}
	PG_END_TRY();
	return edata;
}

/*
 * Parse every message with the shape of its topic's subscription; invalid
 * ones are dead-lettered right away, those of a topic no longer subscribed
 * are ignored (their offsets are stored all the same).
 */
static void
parse_messages(const CsMessage *msgs, int n, CsEvent *events,
			   CsApplyResult *results, CsBatchOutcome *outcome)
{
	for (int i = 0; i < n; i++)
	{
		CsEventError err;
		int			sub = cs_subscription_for_topic(msgs[i].topic);
		const CsEventShape *shape;

		results[i] = CS_RESULT_APPLIED;
		events[i].sub = sub;
		if (sub < 0)
		{
			events[i].type = CS_EVENT_UNKNOWN;
			continue;
		}
		shape = &cs_subscription_get(sub)->shape;
		/* a null value (tombstone) is refused by the parser as such */
		if (!cs_event_parse(msgs[i].payload, msgs[i].len, shape, &events[i], &err))
		{
			char	   *what = psprintf("invalid %s event", shape->aggregate_type);

			results[i] = CS_RESULT_INVALID;
			cs_dead_letter_store(&msgs[i], events[i].event_id,
								 err.sqlstate, what, err.detail);
			log_dead_letter(&msgs[i], &events[i], err.sqlstate, what);
			outcome->dead_lettered++;
		}
		events[i].sub = sub;
	}
}

/*
 * The batch raised a data error: apply event by event, dead-lettering those
 * that fail on their own.
 */
static void
apply_isolated(const CsMessage *msgs, const CsEvent *events, int n,
			   CsApplyResult *results, CsBatchOutcome *outcome, ApplyPosition *pos)
{
	for (int i = 0; i < n; i++)
	{
		ErrorData  *edata;

		if (results[i] == CS_RESULT_INVALID)
			continue;
		pos->msgs = &msgs[i];
		pos->events = &events[i];
		pos->n = 1;
		edata = apply_in_subxact(&events[i], 1, &results[i]);
		if (edata != NULL)
		{
			results[i] = CS_RESULT_INVALID;
			cs_dead_letter_store(&msgs[i], events[i].event_id, edata->sqlerrcode,
								 edata->message, edata->detail);
			log_dead_letter(&msgs[i], &events[i], edata->sqlerrcode, edata->message);
			outcome->dead_lettered++;
			FreeErrorData(edata);
		}
	}
}

/* Histogram bucket of a latency in ms. */
static int
latency_bucket(double ms)
{
	int			b = 0;

	while (b < CS_LATENCY_BUCKETS - 1 && ms > cs_latency_bounds_ms[b])
		b++;
	return b;
}

/*
 * Tally outcomes and the sync latency (event_timestamp to now, at the end of
 * the apply, just before commit) of the events that changed the cache.
 */
static void
tally(const CsEvent *events, const CsApplyResult *results, int n,
	  CsBatchOutcome *outcome)
{
	TimestampTz now = GetCurrentTimestamp();

	for (int i = 0; i < n; i++)
	{
		double		ms;

		if (results[i] == CS_RESULT_INVALID)
			continue;
		outcome->results[results[i]]++;
		if (!events[i].has_timestamp ||
			(results[i] != CS_RESULT_APPLIED && results[i] != CS_RESULT_DELETED))
			continue;
		ms = Max(0.0, (double) (now - events[i].timestamp) / 1000.0);
		outcome->latency_buckets[latency_bucket(ms)]++;
		outcome->latency_count++;
		outcome->latency_sum_ms += ms;
	}
}

/* One subscription's outcome counters, updated once per batch. */
#define STATS_SQL \
	"UPDATE citizen_sync.subscription_stats SET" \
	" applied = applied OPERATOR(pg_catalog.+) $2, deleted = deleted OPERATOR(pg_catalog.+) $3," \
	" stale = stale OPERATOR(pg_catalog.+) $4, duplicate = duplicate OPERATOR(pg_catalog.+) $5," \
	" ignored = ignored OPERATOR(pg_catalog.+) $6," \
	" dead_lettered = dead_lettered OPERATOR(pg_catalog.+) $7, last_batch_at = pg_catalog.now()" \
	" WHERE target OPERATOR(pg_catalog.=) $1::pg_catalog.oid::pg_catalog.regclass"

/*
 * Count the batch's outcomes per subscription in citizen_sync.
 * subscription_stats, in the batch's transaction.
 *
 * This is also where a committed batch's changes are known per target: the
 * events with result APPLIED or DELETED of subscription s changed the keys
 * events[i].key of cs_subscription_get(s)->target: cs_wait_notify_changes()
 * queues their notifications next, cs_wait_wake() wakes wait_for() after
 * the commit.
 */
static void
store_subscription_stats(const CsEvent *events, const CsApplyResult *results, int n)
{
	static SPIPlanPtr plan = NULL;
	int			nsubs = cs_subscription_count();
	int64	   *counts = palloc0(sizeof(int64) * CS_RESULT_COUNT * Max(nsubs, 1));
	Oid			argtypes[7] = {OIDOID, INT8OID, INT8OID, INT8OID, INT8OID, INT8OID, INT8OID};

	for (int i = 0; i < n; i++)
		if (events[i].sub >= 0)
			counts[events[i].sub * CS_RESULT_COUNT + results[i]]++;
	if (plan == NULL)
	{
		plan = SPI_prepare(STATS_SQL, 7, argtypes);
		if (plan == NULL || SPI_keepplan(plan) != 0)
			elog(ERROR, "citizen_sync: preparing the subscription statistics failed");
	}
	for (int s = 0; s < nsubs; s++)
	{
		int64	   *c = &counts[s * CS_RESULT_COUNT];
		Datum		args[7];
		bool		any = false;

		for (int r = 0; r < CS_RESULT_COUNT; r++)
			any |= c[r] > 0;
		if (!any)
			continue;
		args[0] = ObjectIdGetDatum(cs_subscription_get(s)->target);
		args[1] = Int64GetDatum(c[CS_RESULT_APPLIED]);
		args[2] = Int64GetDatum(c[CS_RESULT_DELETED]);
		args[3] = Int64GetDatum(c[CS_RESULT_STALE]);
		args[4] = Int64GetDatum(c[CS_RESULT_DUPLICATE]);
		args[5] = Int64GetDatum(c[CS_RESULT_IGNORED]);
		args[6] = Int64GetDatum(c[CS_RESULT_INVALID]);
		if (SPI_execute_plan(plan, args, NULL, false, 0) != SPI_OK_UPDATE)
			elog(ERROR, "citizen_sync: updating the subscription statistics failed");
	}
	pfree(counts);
}

void
cs_batch_apply(const char *group_id, const CsMessage *msgs, int n,
			   CsBatchOutcome *outcome)
{
	CsEvent    *events;
	CsApplyResult *results;
	ErrorData  *edata;
	ApplyPosition pos = {msgs, NULL, 0};
	ErrorContextCallback errcallback;

	memset(outcome, 0, sizeof(*outcome));
	cs_tx_begin("citizen_sync: applying a batch");

	events = palloc0(sizeof(CsEvent) * n);
	results = palloc(sizeof(CsApplyResult) * n);
	pos.events = events;
	pos.n = n;
	errcallback.callback = apply_context;
	errcallback.arg = &pos;
	errcallback.previous = error_context_stack;
	error_context_stack = &errcallback;

	cs_subscriptions_refresh();
	parse_messages(msgs, n, events, results, outcome);
	edata = apply_in_subxact(events, n, results);
	if (edata != NULL)
	{
		ereport(LOG,
				(errmsg("citizen_sync: batch of %d events raised \"%s\"; isolating the failing event",
						n, edata->message)));
		FreeErrorData(edata);
		apply_isolated(msgs, events, n, results, outcome, &pos);
	}
	pos.msgs = msgs;
	pos.events = events;
	pos.n = n;
	tally(events, results, n, outcome);
	store_subscription_stats(events, results, n);
	cs_wait_notify_changes(events, results, n);
	cs_offsets_store(group_id, msgs, n);

	error_context_stack = errcallback.previous;
	cs_tx_commit();
	cs_wait_wake();
}
