/*-------------------------------------------------------------------------
 * cs_publisher.c
 *	  The outbox publisher: citizen_sync.outbox to Kafka, nothing lost.
 *
 * One process, in citizen_sync.outbox_database.  It keeps outbox rows in
 * flight, at most one row per aggregate and at most publisher_batch_size
 * rows in all, in a pipeline.  Each time it wakes up (a delivery report, a
 * commit, the sweep interval):
 *
 *	1. it takes the delivery reports that arrived and, in one short
 *	   transaction, marks the delivered rows published, bumps retry_count
 *	   and last_error of the failed ones, and sets aside those Kafka refused
 *	   for good;
 *	2. in another short transaction, it walks the pending rows
 *	   (published_at IS NULL) in id order and takes the first row of each
 *	   aggregate that has no row in the pipeline, skipping the aggregates
 *	   that have a set-aside row, until the pipeline is full (or 10 times
 *	   publisher_batch_size rows were looked at), and reads their messages;
 *	3. it produces them with librdkafka's idempotent producer (acks=all),
 *	   topic topic_prefix || aggregate_type, key
 *	   <aggregate_type>_<aggregate_id>, value = payload plus event_type and
 *	   event_id ("evt_<id>_<created_at in microseconds>"), and goes back to waiting.
 *
 * Nothing waits for a report: with one broker down, the rows whose
 * partition it leads wait for theirs (they come at message.timeout.ms at
 * the latest) while the rows of every other partition are delivered, marked
 * and followed by the next rows of their aggregates.  A row that does not
 * get its report within message.timeout.ms plus a margin is counted as
 * failed; a report that comes after that is ignored (each message carries
 * its pipeline slot and the slot's generation).  Rows waiting on a downed
 * leader hold their slot until then: while more than publisher_batch_size
 * aggregates wait there, the others slow down.
 *
 * There is no "last published id" watermark: every walk starts from the
 * pending rows, so a row whose transaction committed after a higher id is
 * still sent.  One aggregate's rows commit in version order (the capture
 * trigger serialises them on the version counter row), so id order within an
 * aggregate is version order.  An aggregate has at most one row in the
 * pipeline -- its oldest pending one -- until that row is marked, so a
 * version is only sent once the previous one was acknowledged: a failed
 * delivery is never overtaken on the topic.  A crash (or a stop) between
 * produce and mark re-sends rows: consumers dedupe by event_id.
 *
 * Failures.  A transient one (broker down, leader moving, timeout, anything
 * not listed in error_is_permanent()) leaves the row pending: it keeps its
 * slot for 100 ms, doubling (up to restart_delay) while reports bring only
 * failures, and is then sent again; other aggregates are not held up.  A
 * permanent one (too large, not authorised, invalid record or topic) would
 * fail forever: the row is set aside (outbox.set_aside_at).  It stays
 * pending, the later rows of its aggregate wait behind it (their order is
 * kept), every other aggregate goes on, and citizen_sync.retry_set_aside()
 * releases it after a fix.  A broker refuses a partition's whole record batch, so a permanent
 * error reported for a row together with other rows of its partition is not
 * taken as that row's: those rows are sent again one at a time, each alone
 * in the pipeline, where the error, if it comes back, is the row's own.
 *
 * No librdkafka call of the loop waits for a broker: produce() never waits
 * for queue space (a full queue leaves the row for a later walk), reports
 * are polled without waiting, purge does not wait for the brokers' threads;
 * the metadata warm-up before the loop waits 500 ms per topic at most.
 *
 * Committing transactions wake the publisher through its latch
 * (cs_notify.c); a periodic sweep is the safety net.  Published rows older
 * than citizen_sync.outbox_retention are deleted in small batches, every
 * minute (or every retention period, when shorter); set-aside rows are
 * never published, hence never purged.
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "catalog/pg_type.h"
#include "commands/extension.h"
#include "common/hashfn.h"
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
#include "utils/hsearch.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

PGDLLEXPORT void cs_publisher_main(Datum arg);

/* A walk looks at no more than this many times publisher_batch_size rows. */
#define WALK_FACTOR		10

/* Set-aside rows named one by one in the server log per mark step. */
#define MAX_LOGGED_SET_ASIDE	10

/*
 * Step 1a: pending rows in id order, without the aggregates of set-aside
 * rows.  NOT (... = ANY (subquery)) stays a hashed subplan filtering the
 * index scan of outbox_pending: the walk keeps its id order and its fast
 * start, and rows held behind a set-aside row cost a hash probe each.
 */
#define WALK_SQL \
	"SELECT o.id, o.aggregate_type, o.aggregate_id FROM citizen_sync.outbox o" \
	" WHERE o.published_at IS NULL" \
	"   AND NOT ((o.aggregate_type, o.aggregate_id) OPERATOR(pg_catalog.=) ANY (" \
	"         SELECT s.aggregate_type, s.aggregate_id FROM citizen_sync.outbox s" \
	"          WHERE s.set_aside_at IS NOT NULL AND s.published_at IS NULL))" \
	" ORDER BY o.id LIMIT $1"

/* Step 1b: the messages of the rows taken. */
#define FETCH_SQL \
	"SELECT id, $1 OPERATOR(pg_catalog.||) aggregate_type," \
	"       aggregate_type OPERATOR(pg_catalog.||) '_' OPERATOR(pg_catalog.||) aggregate_id," \
	"       (payload OPERATOR(pg_catalog.||) pg_catalog.jsonb_build_object(" \
	"          'event_type', aggregate_type OPERATOR(pg_catalog.||) '.' OPERATOR(pg_catalog.||) event_type," \
	"          'event_id', pg_catalog.format('evt_%s_%s', id, (pg_catalog.extract('epoch', created_at) OPERATOR(pg_catalog.*) 1000000)::pg_catalog.int8)))::pg_catalog.text" \
	"  FROM citizen_sync.outbox WHERE id OPERATOR(pg_catalog.=) ANY ($2) ORDER BY id"

#define MARK_OK_SQL \
	"UPDATE citizen_sync.outbox SET published_at = pg_catalog.now(), last_error = NULL" \
	" WHERE id OPERATOR(pg_catalog.=) ANY ($1) AND published_at IS NULL"

#define MARK_FAILED_SQL \
	"UPDATE citizen_sync.outbox o" \
	"   SET retry_count = o.retry_count OPERATOR(pg_catalog.+) 1, last_error = f.error," \
	"       set_aside_at = CASE WHEN f.set_aside THEN pg_catalog.now() END" \
	"  FROM ROWS FROM (pg_catalog.unnest($1), pg_catalog.unnest($2), pg_catalog.unnest($3))" \
	"       AS f (id, error, set_aside)" \
	" WHERE o.id OPERATOR(pg_catalog.=) f.id AND o.published_at IS NULL"

#define PURGE_SQL \
	"DELETE FROM citizen_sync.outbox WHERE id IN (" \
	"  SELECT id FROM citizen_sync.outbox WHERE published_at OPERATOR(pg_catalog.<)" \
	"    (pg_catalog.now() OPERATOR(pg_catalog.-) pg_catalog.make_interval(secs => $1))" \
	"  LIMIT 10000)"

/* What a delivery report made of a row. */
typedef enum RowOutcome
{
	ROW_DELIVERED,
	ROW_RETRY,					/* transient failure: sent again soon */
	ROW_SEND_ALONE,				/* permanent error shared with its partition */
	ROW_SET_ASIDE				/* permanent error of its own */
} RowOutcome;

/* Where a pipeline slot is. */
typedef enum SlotState
{
	SLOT_FREE,
	SLOT_IN_FLIGHT,				/* produced, waiting for its report */
	SLOT_DONE,					/* report taken (or refused), not yet marked */
	SLOT_COOLING				/* failed and marked: sent again after retry_at */
} SlotState;

/*
 * An aggregate: its type and its key (text for every key type, bigint keys
 * as their digits), both hashed: a collision only defers a row.
 */
typedef struct AggregateKey
{
	uint64		id_hash;
	uint32		type_hash;
	uint32		pad;
} AggregateKey;

/* One outbox row in the pipeline. */
typedef struct OutboxRow
{
	SlotState	state;
	uint32		generation;		/* tags its message; bumped on each use */
	int64		id;
	AggregateKey aggregate;
	char	   *topic;			/* in the pipeline's memory context */
	char	   *key;
	char	   *value;
	bool		alone;			/* produced alone in the pipeline */
	bool		refused;		/* refused by rd_kafka_producev() */
	TimestampTz sent_at;
	TimestampTz retry_at;		/* SLOT_COOLING: free the slot then */
	int32		partition;		/* from the delivery report */
	rd_kafka_resp_err_t err;
	RowOutcome	outcome;
} OutboxRow;

typedef struct Publisher
{
	CsWorkerSlot *slot;
	rd_kafka_t *rk;
	rd_kafka_queue_t *queue;
	CsQueueWaiter waiter;
	MemoryContext rows_cxt;		/* the slots' strings */
	MemoryContext step_cxt;		/* reset before each fetch or mark */
	OutboxRow  *rows;			/* the pipeline's slots */
	int			capacity;		/* slots allocated */
	int			in_flight;		/* slots SLOT_IN_FLIGHT */
	int			done;			/* slots SLOT_DONE */
	int			failures;		/* consecutive mark steps with only failures */
	int			db_failures;	/* consecutive failed fetch or mark steps */
	TimestampTz db_retry_at;	/* after a failed step: no step before */
	TimestampTz next_purge_at;
	long		report_timeout_ms;	/* message.timeout.ms plus a margin */
	int64	   *send_alone;		/* ids to send one at a time, ascending */
	int			nsend_alone;
} Publisher;

/* A message's opaque: the slot's generation and index. */
#define OPAQUE(gen, i)		((void *) (((uintptr_t) (gen) << 32) | (uint32) (i)))
#define OPAQUE_GEN(o)		((uint32) ((uintptr_t) (o) >> 32))
#define OPAQUE_INDEX(o)		((int) ((uintptr_t) (o) & 0xffffffff))

/*
 * Errors after which sending the same message again can only fail again,
 * whether produce() returns them or a delivery report carries them.
 * Everything else -- timeouts, brokers or leaders unavailable, transport and
 * authentication failures, unknown topics (they may be being created),
 * idempotence state errors, fatal producer errors, unknown errors -- is
 * transient: retried, never set aside.
 */
static bool
error_is_permanent(rd_kafka_resp_err_t err)
{
	switch (err)
	{
		case RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE:	/* message.max.bytes, max.message.bytes */
		case RD_KAFKA_RESP_ERR_INVALID_MSG_SIZE:
		case RD_KAFKA_RESP_ERR_RECORD_LIST_TOO_LARGE:
		case RD_KAFKA_RESP_ERR_INVALID_RECORD:
		case RD_KAFKA_RESP_ERR_TOPIC_EXCEPTION: /* invalid topic name */
		case RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED:
		case RD_KAFKA_RESP_ERR_CLUSTER_AUTHORIZATION_FAILED:
		case RD_KAFKA_RESP_ERR_POLICY_VIOLATION:
		case RD_KAFKA_RESP_ERR__INVALID_ARG:	/* produce(): e.g. invalid topic */
			return true;
		default:
			return false;
	}
}

static int
cmp_int64(const void *a, const void *b)
{
	int64		x = *(const int64 *) a;
	int64		y = *(const int64 *) b;

	return (x > y) - (x < y);
}

/* After n consecutive failures: 100 ms, doubling, up to restart_delay. */
static long
backoff_ms(int n)
{
	return Min(100L << Min(n, 10), cs_restart_delay_s * 1000L);
}

/* Is row id one to send alone? */
static bool
send_alone(Publisher *p, int64 id)
{
	return p->nsend_alone > 0 &&
		bsearch(&id, p->send_alone, p->nsend_alone, sizeof(int64), cmp_int64) != NULL;
}

/* Forget id in the send-alone list (it keeps its order). */
static void
forget_send_alone(Publisher *p, int64 id)
{
	int			j = 0;

	for (int i = 0; i < p->nsend_alone; i++)
		if (p->send_alone[i] != id)
			p->send_alone[j++] = p->send_alone[i];
	p->nsend_alone = j;
}

/* Make room for cs_publisher_batch_size slots (a raised setting). */
static void
pipeline_reserve(Publisher *p)
{
	int			want = cs_publisher_batch_size;

	if (want <= p->capacity)
		return;
	if (p->rows == NULL)
		p->rows = MemoryContextAllocZero(TopMemoryContext, sizeof(OutboxRow) * want);
	else
	{
		p->rows = repalloc(p->rows, sizeof(OutboxRow) * want);
		memset(p->rows + p->capacity, 0, sizeof(OutboxRow) * (want - p->capacity));
	}
	p->capacity = want;
}

/* Slots that are not free (a lowered setting lets them drain). */
static int
pipeline_used(Publisher *p)
{
	int			used = 0;

	for (int i = 0; i < p->capacity; i++)
		used += (p->rows[i].state != SLOT_FREE);
	return used;
}

/* Give slot i back. */
static void
slot_free(Publisher *p, int i)
{
	OutboxRow  *row = &p->rows[i];
	uint32		generation = row->generation;

	if (row->topic)
		pfree(row->topic);
	if (row->key)
		pfree(row->key);
	if (row->value)
		pfree(row->value);
	memset(row, 0, sizeof(*row));
	row->generation = generation + 1;	/* a late report of it is ignored */
}

static void
aggregate_key(AggregateKey *key, text *type, text *id)
{
	memset(key, 0, sizeof(*key));
	key->id_hash = hash_bytes_extended((const unsigned char *) VARDATA_ANY(id),
									   VARSIZE_ANY_EXHDR(id), 0);
	key->type_hash = hash_bytes((const unsigned char *) VARDATA_ANY(type),
								VARSIZE_ANY_EXHDR(type));
}

/*
 * Step 2a: the ids of the oldest pending row of up to nwant aggregates that
 * have no row in the pipeline, in id order, with their aggregates.  The walk
 * stops after WALK_FACTOR * batch_size rows, so that its cost stays flat
 * when a few aggregates own most of the backlog (their later rows go out
 * one at a time anyway).
 */
static int
walk_pending(Publisher *p, Datum *ids, AggregateKey *keys, int nwant)
{
	HASHCTL		ctl;
	HTAB	   *seen;
	Portal		portal;
	Oid			type = INT4OID;
	Datum		limit = Int32GetDatum(cs_publisher_batch_size * WALK_FACTOR);
	int			nids = 0;

	memset(&ctl, 0, sizeof(ctl));
	ctl.keysize = sizeof(AggregateKey);
	ctl.entrysize = sizeof(AggregateKey);
	ctl.hcxt = p->step_cxt;
	seen = hash_create("citizen_sync publisher walk", Max(p->capacity, 16), &ctl,
					   HASH_ELEM | HASH_BLOBS | HASH_CONTEXT);
	for (int i = 0; i < p->capacity; i++)
		if (p->rows[i].state != SLOT_FREE)
			(void) hash_search(seen, &p->rows[i].aggregate, HASH_ENTER, NULL);
	portal = SPI_cursor_open_with_args(NULL, WALK_SQL, 1, &type, &limit, NULL, true,
									   CURSOR_OPT_NO_SCROLL);
	while (nids < nwant)
	{
		SPI_cursor_fetch(portal, true, Max(nwant, 100));
		if (SPI_processed == 0)
			break;
		for (uint64 r = 0; r < SPI_processed && nids < nwant; r++)
		{
			HeapTuple	t = SPI_tuptable->vals[r];
			TupleDesc	d = SPI_tuptable->tupdesc;
			bool		isnull;
			bool		found;

			aggregate_key(&keys[nids], DatumGetTextPP(SPI_getbinval(t, d, 2, &isnull)),
						  DatumGetTextPP(SPI_getbinval(t, d, 3, &isnull)));
			(void) hash_search(seen, &keys[nids], HASH_ENTER, &found);
			if (!found)
				ids[nids++] = SPI_getbinval(t, d, 1, &isnull);
		}
		SPI_freetuptable(SPI_tuptable);
	}
	SPI_cursor_close(portal);
	return nids;
}

/*
 * In send-alone mode, keep only the first walked row that is to be sent
 * alone (the others wait); none found: the list is stale, forget it.
 */
static int
keep_first_alone(Publisher *p, Datum *ids, AggregateKey *keys, int nids)
{
	for (int i = 0; i < nids; i++)
		if (send_alone(p, DatumGetInt64(ids[i])))
		{
			ids[0] = ids[i];
			keys[0] = keys[i];
			return 1;
		}
	p->nsend_alone = 0;
	return 0;
}

static ArrayType *
int8_array(Datum *values, int n)
{
	return construct_array(values, n, INT8OID, 8, FLOAT8PASSBYVAL, TYPALIGN_DOUBLE);
}

/* The first free slot at or after *from, or -1. */
static int
next_free_slot(Publisher *p, int *from)
{
	while (*from < p->capacity && p->rows[*from].state != SLOT_FREE)
		(*from)++;
	return *from < p->capacity ? (*from)++ : -1;
}

/*
 * Run a database step with p->step_cxt current (reset by the caller).  A
 * failed one holds further steps back: 100 ms, doubling while they fail.
 */
static bool
db_step(Publisher *p, void (*step) (void *), void *arg)
{
	MemoryContext old = MemoryContextSwitchTo(p->step_cxt);
	bool		ok = cs_worker_try(p->slot, step, arg);

	MemoryContextSwitchTo(old);
	if (ok)
		p->db_failures = 0;
	else
	{
		p->db_failures++;
		p->db_retry_at = TimestampTzPlusMilliseconds(GetCurrentTimestamp(),
													 backoff_ms(p->db_failures));
	}
	return ok;
}

typedef struct FetchArgs
{
	Publisher  *p;
	int			nwant;			/* rows to walk for */
	int			taken;			/* out: slots filled (state SLOT_DONE, not sent yet) */
	int		   *slots;			/* out: their indexes, in id order */
} FetchArgs;

/* Step 2: choose rows for the free slots and copy their messages there. */
static void
fetch_step(void *arg)
{
	FetchArgs  *a = (FetchArgs *) arg;
	Publisher  *p = a->p;
	Datum	   *ids = palloc(sizeof(Datum) * a->nwant);
	AggregateKey *keys = palloc(sizeof(AggregateKey) * a->nwant);
	int			nids;
	int			from = 0;
	int			k = 0;
	Datum		values[2];
	Oid			types[2] = {TEXTOID, INT8ARRAYOID};

	cs_tx_begin("citizen_sync: reading the outbox");
	nids = walk_pending(p, ids, keys, a->nwant);
	if (p->nsend_alone > 0)
		nids = keep_first_alone(p, ids, keys, nids);
	if (nids > 0)
	{
		values[0] = CStringGetTextDatum(cs_topic_prefix);
		values[1] = PointerGetDatum(int8_array(ids, nids));
		if (SPI_execute_with_args(FETCH_SQL, 2, types, values, NULL, true, 0) != SPI_OK_SELECT)
			elog(ERROR, "citizen_sync: reading the outbox failed");
		for (uint64 r = 0; r < SPI_processed; r++)
		{
			HeapTuple	t = SPI_tuptable->vals[r];
			TupleDesc	d = SPI_tuptable->tupdesc;
			bool		isnull;
			int64		id = DatumGetInt64(SPI_getbinval(t, d, 1, &isnull));
			int			i = next_free_slot(p, &from);
			OutboxRow  *row;

			if (i < 0)
				break;
			/* both in id order: one pass over ids (was a search per row) */
			while (k < nids - 1 && DatumGetInt64(ids[k]) < id)
				k++;
			row = &p->rows[i];
			row->id = id;
			row->aggregate = keys[Min(k, nids - 1)];
			row->topic = MemoryContextStrdup(p->rows_cxt, SPI_getvalue(t, d, 2));
			row->key = MemoryContextStrdup(p->rows_cxt, SPI_getvalue(t, d, 3));
			row->value = MemoryContextStrdup(p->rows_cxt, SPI_getvalue(t, d, 4));
			row->partition = RD_KAFKA_PARTITION_UA;
			row->alone = (p->nsend_alone > 0);
			row->state = SLOT_DONE; /* claimed; produce_fetched() sends it */
			a->slots[a->taken++] = i;
		}
	}
	cs_tx_commit();
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
				int			i = OPAQUE_INDEX(m->_private);
				OutboxRow  *row;

				if (i >= p->capacity)
					continue;
				row = &p->rows[i];
				if (row->state != SLOT_IN_FLIGHT ||
					row->generation != OPAQUE_GEN(m->_private))
					continue;	/* given up on; the row is sent again */
				row->state = SLOT_DONE;
				row->err = m->err;
				row->partition = m->partition;
				p->in_flight--;
				p->done++;
			}
		}
		else if (rd_kafka_event_type(ev) == RD_KAFKA_EVENT_ERROR)
			(void) cs_worker_kafka_error(p->slot, ev);	/* fatal: see the producer's replacement */
		else if (rd_kafka_event_type(ev) == RD_KAFKA_EVENT_LOG)
			cs_worker_log_kafka(ev);
		rd_kafka_event_destroy(ev);
	}
}

/*
 * Step 3: hand the claimed row i to librdkafka, never waiting.  A full
 * producer queue gives the slot back (the row is walked again later).
 */
static void
produce_row(Publisher *p, int i)
{
	OutboxRow  *row = &p->rows[i];
	rd_kafka_resp_err_t err;

	err = rd_kafka_producev(p->rk,
							RD_KAFKA_V_TOPIC(row->topic),
							RD_KAFKA_V_KEY(row->key, strlen(row->key)),
							RD_KAFKA_V_VALUE(row->value, strlen(row->value)),
							RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
							RD_KAFKA_V_OPAQUE(OPAQUE(row->generation, i)),
							RD_KAFKA_V_END);
	if (err == RD_KAFKA_RESP_ERR_NO_ERROR)
	{
		row->state = SLOT_IN_FLIGHT;
		row->sent_at = GetCurrentTimestamp();
		p->in_flight++;
		if (row->alone)
			forget_send_alone(p, row->id);
	}
	else if (err == RD_KAFKA_RESP_ERR__QUEUE_FULL)
		slot_free(p, i);
	else
	{
		row->refused = true;
		row->err = err;
		p->done++;				/* stays SLOT_DONE */
	}
}

/* Step 2 and 3: fill the free slots from the outbox and produce them. */
static void
fetch_and_produce(Publisher *p)
{
	FetchArgs	args;
	int			nwant = cs_publisher_batch_size - pipeline_used(p);

	if (nwant <= 0 || GetCurrentTimestamp() < p->db_retry_at)
		return;
	if (p->nsend_alone > 0)
	{
		if (p->in_flight > 0 || p->done > 0)
			return;				/* a row to send alone waits for an empty pipeline */
		nwant = cs_publisher_batch_size;	/* walk far enough to find it */
	}
	memset(&args, 0, sizeof(args));
	args.p = p;
	args.nwant = nwant;
	MemoryContextReset(p->step_cxt);
	args.slots = MemoryContextAlloc(p->step_cxt, sizeof(int) * nwant);
	if (!db_step(p, fetch_step, &args))
	{
		/* slots claimed before the error are given back */
		for (int k = 0; k < args.taken; k++)
			slot_free(p, args.slots[k]);
		return;
	}
	for (int k = 0; k < args.taken; k++)
		produce_row(p, args.slots[k]);
}

/*
 * Rows without a report long after message.timeout.ms: count them as failed
 * (they go out again); a report that still comes is ignored.
 */
static void
expire_reports(Publisher *p)
{
	TimestampTz now = GetCurrentTimestamp();
	int			expired = 0;

	if (p->in_flight == 0)
		return;
	for (int i = 0; i < p->capacity; i++)
	{
		OutboxRow  *row = &p->rows[i];

		if (row->state != SLOT_IN_FLIGHT ||
			now < TimestampTzPlusMilliseconds(row->sent_at, p->report_timeout_ms))
			continue;
		row->state = SLOT_DONE;
		row->err = RD_KAFKA_RESP_ERR__TIMED_OUT;
		row->generation++;
		p->in_flight--;
		p->done++;
		expired++;
	}
	if (expired > 0)
		ereport(LOG,
				(errmsg("citizen_sync: publisher for database \"%s\": %d delivery report(s) missing after %ld ms; the rows will be sent again",
						cs_shmem_slot_database(p->slot), expired, p->report_timeout_ms)));
}

/*
 * Is done row i's permanent error its own?  Yes when produce() refused it,
 * when it was sent alone, or when no other row of its partition got its
 * report at the same time (a broker refuses a partition's whole record
 * batch, and the batch's reports come together).
 */
static bool
error_is_own(Publisher *p, int i)
{
	OutboxRow  *row = &p->rows[i];

	if (row->refused || row->alone)
		return true;
	for (int j = 0; j < p->capacity; j++)
	{
		OutboxRow  *other = &p->rows[j];

		if (j != i && other->state == SLOT_DONE && !other->refused && !other->alone &&
			other->partition == row->partition && strcmp(other->topic, row->topic) == 0)
			return false;
	}
	return true;
}

/* Decide each done row's outcome; add the rows to send alone to the list. */
static void
classify_rows(Publisher *p)
{
	int			nalone = 0;

	for (int i = 0; i < p->capacity; i++)
	{
		OutboxRow  *row = &p->rows[i];

		if (row->state != SLOT_DONE)
			continue;
		if (row->err == RD_KAFKA_RESP_ERR_NO_ERROR)
			row->outcome = ROW_DELIVERED;
		else if (!error_is_permanent(row->err))
		{
			row->outcome = ROW_RETRY;
			if (row->alone)
				p->nsend_alone = 0; /* the brokers are in trouble: no more one by one */
		}
		else if (error_is_own(p, i))
			row->outcome = ROW_SET_ASIDE;
		else
		{
			row->outcome = ROW_SEND_ALONE;
			nalone++;
		}
	}
	if (nalone == 0)
		return;
	p->send_alone = p->send_alone
		? repalloc(p->send_alone, sizeof(int64) * (p->nsend_alone + nalone))
		: MemoryContextAlloc(TopMemoryContext, sizeof(int64) * nalone);
	for (int i = 0; i < p->capacity; i++)
		if (p->rows[i].state == SLOT_DONE && p->rows[i].outcome == ROW_SEND_ALONE)
			p->send_alone[p->nsend_alone++] = p->rows[i].id;
	qsort(p->send_alone, p->nsend_alone, sizeof(int64), cmp_int64);
}

/* last_error of a failed row. */
static char *
row_error(OutboxRow *row)
{
	const char *how = "";

	if (row->refused)
		how = ", refused by the producer";
	else if (row->outcome == ROW_SEND_ALONE)
		how = ", for the whole record batch of its partition: the row goes out again on its own";
	return psprintf("%s (%s%s)", rd_kafka_err2str(row->err), rd_kafka_err2name(row->err), how);
}

/* The server log names set-aside rows (the first few of a mark step). */
static void
log_set_aside(Publisher *p, int nset)
{
	int			logged = 0;

	for (int i = 0; i < p->capacity && logged < MAX_LOGGED_SET_ASIDE; i++)
	{
		OutboxRow  *row = &p->rows[i];

		if (row->state != SLOT_DONE || row->outcome != ROW_SET_ASIDE)
			continue;
		logged++;
		ereport(WARNING,
				(errmsg("citizen_sync: publisher for database \"%s\": outbox row " INT64_FORMAT " set aside: %s",
						cs_shmem_slot_database(p->slot), row->id, rd_kafka_err2str(row->err)),
				 errdetail("Kafka refused the event of key %s for topic %s for good. The later changes of %s wait behind it; other keys are still published.",
						   row->key, row->topic, row->key),
				 errhint("Fix the cause, then run: SELECT * FROM citizen_sync.retry_set_aside(ARRAY[" INT64_FORMAT "]);",
						 row->id)));
	}
	if (nset > logged)
		ereport(WARNING,
				(errmsg("citizen_sync: publisher for database \"%s\": %d more outbox row(s) set aside at the same time",
						cs_shmem_slot_database(p->slot), nset - logged),
				 errhint("See SELECT id, aggregate_type, aggregate_id, last_error FROM citizen_sync.outbox WHERE set_aside_at IS NOT NULL;")));
}

typedef struct MarkArgs
{
	Publisher  *p;
	int			nok;
	int			nbad;
	int			nset;
	const char *last_err;
} MarkArgs;

/* Step 1: record the outcome of the done rows. */
static void
mark_step(void *arg)
{
	MarkArgs   *a = (MarkArgs *) arg;
	Publisher  *p = a->p;
	Datum	   *ok = palloc(sizeof(Datum) * p->done);
	Datum	   *bad = palloc(sizeof(Datum) * p->done);
	Datum	   *errors = palloc(sizeof(Datum) * p->done);
	Datum	   *aside = palloc(sizeof(Datum) * p->done);

	cs_tx_begin("citizen_sync: marking published rows");
	for (int i = 0; i < p->capacity; i++)
	{
		OutboxRow  *row = &p->rows[i];

		if (row->state != SLOT_DONE)
			continue;
		if (row->outcome == ROW_DELIVERED)
		{
			ok[a->nok++] = Int64GetDatum(row->id);
			continue;
		}
		bad[a->nbad] = Int64GetDatum(row->id);
		errors[a->nbad] = CStringGetTextDatum(row_error(row));
		aside[a->nbad++] = BoolGetDatum(row->outcome == ROW_SET_ASIDE);
		a->nset += (row->outcome == ROW_SET_ASIDE);
		a->last_err = rd_kafka_err2str(row->err);
	}
	if (a->nok > 0)
	{
		Oid			t[1] = {INT8ARRAYOID};
		Datum		v[1] = {PointerGetDatum(int8_array(ok, a->nok))};

		SPI_execute_with_args(MARK_OK_SQL, 1, t, v, NULL, false, 0);
	}
	if (a->nbad > 0)
	{
		Oid			t[3] = {INT8ARRAYOID, TEXTARRAYOID, BOOLARRAYOID};
		Datum		v[3];

		v[0] = PointerGetDatum(int8_array(bad, a->nbad));
		v[1] = PointerGetDatum(construct_array(errors, a->nbad, TEXTOID, -1, false, TYPALIGN_INT));
		v[2] = PointerGetDatum(construct_array(aside, a->nbad, BOOLOID, 1, true, TYPALIGN_CHAR));
		SPI_execute_with_args(MARK_FAILED_SQL, 3, t, v, NULL, false, 0);
	}
	cs_tx_commit();
}

/* The statistics of a mark step. */
static void
count_marked(Publisher *p, MarkArgs *a)
{
	char		error[512];

	if (a->nset)
		snprintf(error, sizeof(error),
				 "%d outbox row(s) set aside (refused for good): %s", a->nset, a->last_err);
	else if (a->nbad)
		snprintf(error, sizeof(error),
				 "delivery failed for %d row(s): %s", a->nbad, a->last_err);
	cs_shmem_count_publish(p->slot, a->nok, a->nbad, a->nok > 0, a->nbad > a->nset,
						   a->nbad > a->nset, a->nbad ? error : NULL);
}

/*
 * Step 1: mark the done rows in one transaction, then free their slots;
 * a row that failed transiently keeps its slot (so its aggregate waits)
 * until its retry time: 100 ms, doubling up to restart_delay while mark
 * steps bring only failures (the brokers are unreachable).  Set-aside rows
 * leave the pipeline; the walk skips their aggregates.
 */
static void
mark_done(Publisher *p)
{
	MarkArgs	args;
	TimestampTz retry_at;

	if (p->done == 0 || GetCurrentTimestamp() < p->db_retry_at)
		return;
	classify_rows(p);
	memset(&args, 0, sizeof(args));
	args.p = p;
	MemoryContextReset(p->step_cxt);
	if (!db_step(p, mark_step, &args))
		return;					/* the rows stay done; marked next time */
	if (args.nset > 0)
		log_set_aside(p, args.nset);
	count_marked(p, &args);
	p->failures = (args.nbad > args.nset && args.nok == 0) ? p->failures + 1 : 0;
	retry_at = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), backoff_ms(p->failures));
	for (int i = 0; i < p->capacity; i++)
	{
		OutboxRow  *row = &p->rows[i];

		if (row->state != SLOT_DONE)
			continue;
		if (row->outcome == ROW_RETRY || row->outcome == ROW_SEND_ALONE)
		{
			row->state = SLOT_COOLING;
			row->retry_at = row->outcome == ROW_RETRY ? retry_at : 0;
		}
		else
			slot_free(p, i);
	}
	p->done = 0;
}

/* Free the slots of failed rows whose retry time has come. */
static void
end_cooling(Publisher *p)
{
	TimestampTz now = GetCurrentTimestamp();

	for (int i = 0; i < p->capacity; i++)
		if (p->rows[i].state == SLOT_COOLING && now >= p->rows[i].retry_at)
			slot_free(p, i);
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

static void kafka_start(Publisher *p);
static void kafka_stop(Publisher *p);

/*
 * After a fatal error (idempotence state lost) the producer refuses every
 * message: replace it.  The rows in flight failed transiently and go out
 * again with the new producer.
 */
static void
replace_producer_if_fatal(Publisher *p)
{
	char		errstr[512];
	rd_kafka_resp_err_t err = rd_kafka_fatal_error(p->rk, errstr, sizeof(errstr));

	if (err == RD_KAFKA_RESP_ERR_NO_ERROR)
		return;
	ereport(WARNING,
			(errmsg("citizen_sync: publisher for database \"%s\": fatal Kafka producer error: %s",
					cs_shmem_slot_database(p->slot), errstr),
			 errdetail("The producer is replaced; the rows it did not deliver are sent again.")));
	drain_reports(p);
	for (int i = 0; i < p->capacity; i++)
		if (p->rows[i].state == SLOT_IN_FLIGHT)
		{
			p->rows[i].state = SLOT_DONE;
			p->rows[i].err = err;
			p->rows[i].generation++;
			p->in_flight--;
			p->done++;
		}
	kafka_stop(p);
	kafka_start(p);
}

/* One pass of the pipeline (see the header comment). */
static void
pipeline_step(Publisher *p)
{
	pipeline_reserve(p);
	drain_reports(p);
	expire_reports(p);
	mark_done(p);
	replace_producer_if_fatal(p);
	end_cooling(p);
	if (!cs_got_sigterm)
		fetch_and_produce(p);
}

static void
kafka_start(Publisher *p)
{
	char		errstr[512];
	static const char *const defaults[] = {
		"linger.ms", "1",
		"socket.nagle.disable", "true",	/* Nagle plus delayed ACKs cost ~40 ms a report */
		"message.timeout.ms", "30000",	/* the bound of a report; the row is then sent again */
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
				 errmsg("citizen_sync: publisher for database \"%s\": could not create a Kafka producer: %s",
						cs_shmem_slot_database(p->slot), errstr)));
	p->queue = rd_kafka_queue_get_main(p->rk);
	rd_kafka_set_log_queue(p->rk, NULL);
	cs_waiter_init(&p->waiter, p->queue);
}

/* Drop what the producer still holds (it is sent again later). */
static void
kafka_stop(Publisher *p)
{
	rd_kafka_purge(p->rk, RD_KAFKA_PURGE_F_QUEUE | RD_KAFKA_PURGE_F_INFLIGHT |
				   RD_KAFKA_PURGE_F_NON_BLOCKING);
	cs_waiter_close(&p->waiter);
	rd_kafka_queue_destroy(p->queue);
	rd_kafka_destroy(p->rk);
	p->queue = NULL;
	p->rk = NULL;
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
		if (cs_got_sigterm)
		{
			rd_kafka_topic_destroy(rkt);
			break;
		}
		/* bounded: the brokers may be down */
		if (rd_kafka_metadata(p->rk, 0, rkt, &md, 500) == RD_KAFKA_RESP_ERR_NO_ERROR)
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

/*
 * Milliseconds until something is due without a wake-up: the sweep, the
 * next purge, a retry after a failed step, a cooling row's retry, a missing
 * report's deadline.  Reports and commits wake the publisher earlier.
 */
static long
next_wakeup_ms(Publisher *p)
{
	TimestampTz now = GetCurrentTimestamp();
	TimestampTz due = TimestampTzPlusMilliseconds(now, cs_publisher_sweep_ms);

	due = Min(due, p->next_purge_at);
	if (p->done > 0)
		due = Min(due, p->db_retry_at);
	for (int i = 0; i < p->capacity; i++)
	{
		OutboxRow  *row = &p->rows[i];

		if (row->state == SLOT_COOLING)
			due = Min(due, row->retry_at);
		else if (row->state == SLOT_IN_FLIGHT)
			due = Min(due, TimestampTzPlusMilliseconds(row->sent_at, p->report_timeout_ms));
	}
	return due <= now ? 0 : (long) ((due - now + 999) / 1000);
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
	p.slot = cs_shmem_attach(DatumGetInt32(arg), NULL, NULL);
	BackgroundWorkerInitializeConnection(cs_shmem_slot_database(p.slot), NULL, 0);
	pgstat_report_appname("citizen_sync publisher");
	cs_worker_session_settings();
	while (!cs_got_sigterm && !extension_ready(msg, sizeof(msg), hint, sizeof(hint)))
	{
		cs_shmem_set_state(p.slot, CS_STATE_WAITING);
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
	p.rows_cxt = AllocSetContextCreate(TopMemoryContext, "citizen_sync publisher rows",
									   ALLOCSET_DEFAULT_SIZES);
	p.step_cxt = AllocSetContextCreate(TopMemoryContext, "citizen_sync publisher step",
									   ALLOCSET_DEFAULT_SIZES);
	kafka_start(&p);
	(void) cs_worker_try(p.slot, warm_up_step, &p);
	cs_shmem_set_state(p.slot, CS_STATE_RUNNING);
	while (!cs_got_sigterm)
	{
		pipeline_step(&p);
		if (GetCurrentTimestamp() >= p.next_purge_at && !cs_got_sigterm)
		{
			cs_worker_try(p.slot, purge_step, &p);
			p.next_purge_at = TimestampTzPlusMilliseconds(GetCurrentTimestamp(),
														  Min(60000L, Max(1000L, cs_outbox_retention_s * 1000L)));
		}
		cs_waiter_wait(&p.waiter, next_wakeup_ms(&p));
		cs_worker_reload_config();
	}
	kafka_stop(&p);
	proc_exit(0);
}
