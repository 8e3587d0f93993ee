/*-------------------------------------------------------------------------
 * cs_publisher.c
 *	  The outbox publisher: citizen_sync.outbox to Kafka, nothing lost.
 *
 * One process, in citizen_sync.outbox_database.  Each round:
 *
 *	1. in a short transaction, walk the pending rows (published_at IS NULL)
 *	   in id order and take the first row of each aggregate, skipping the
 *	   aggregates that have a set-aside row, until publisher_batch_size rows
 *	   are taken (or 10 times that many were looked at); then read those
 *	   rows' messages;
 *	2. produce them with librdkafka's idempotent producer (acks=all), topic
 *	   topic_prefix || aggregate_type, key <aggregate_type>_<aggregate_id>,
 *	   value = payload plus event_type and event_id ("evt_<id>");
 *	3. wait for every delivery report (on the latch and the report queue);
 *	4. mark delivered rows published, bump retry_count and last_error of the
 *	   others, and set aside those Kafka refused for good, in a second short
 *	   transaction.
 *
 * There is no "last published id" watermark: every round starts from the
 * pending rows, so a row whose transaction committed after a higher id is
 * still sent.  One aggregate's rows commit in version order (the capture
 * trigger serialises them on the version counter row), so id order within an
 * aggregate is version order.  A round carries at most one row per aggregate
 * -- its oldest pending one -- so a version is only sent once the previous
 * one was acknowledged: a failed delivery is never overtaken on the topic.
 * A crash between produce and mark re-sends rows: consumers dedupe by
 * event_id.
 *
 * Failures.  A transient one (broker down, leader moving, timeout, anything
 * not listed in error_is_permanent()) leaves the row pending: it is sent
 * again 100 ms later, with backoff when a whole round fails.  A permanent one
 * (too large, not authorised, invalid record or topic) would fail forever:
 * the row is set aside (outbox.set_aside_at).  It stays pending, the later
 * rows of its aggregate wait behind it (their order is kept), every other
 * aggregate goes on, and citizen_sync.retry_set_aside() releases it after a
 * fix.  A broker refuses a partition's whole record batch, so a permanent
 * error reported for a row that shared its partition with other rows of the
 * round is not taken as that row's: those rows are sent again one at a time
 * in the next round, where the error, if it comes back, is the row's own.
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

/* A round looks at no more than this many times publisher_batch_size rows. */
#define WALK_FACTOR		10

/* Set-aside rows named one by one in the server log per round. */
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

/* What a round made of a row. */
typedef enum RowOutcome
{
	ROW_DELIVERED,
	ROW_RETRY,					/* transient failure: sent again soon */
	ROW_SEND_ALONE,				/* permanent error shared with its partition */
	ROW_SET_ASIDE				/* permanent error of its own */
} RowOutcome;

/* One outbox row on its way to Kafka. */
typedef struct OutboxRow
{
	int64		id;
	char	   *topic;
	char	   *key;
	char	   *value;
	bool		alone;			/* produced and awaited on its own */
	bool		sent;			/* accepted by rd_kafka_producev() */
	bool		refused;		/* refused by rd_kafka_producev() */
	bool		done;			/* delivery report received (or refused) */
	int32		partition;		/* from the delivery report */
	rd_kafka_resp_err_t err;
	RowOutcome	outcome;
} OutboxRow;

/* An aggregate seen by a round's walk (type hashed: a collision only defers). */
typedef struct AggregateKey
{
	int64		aggregate_id;
	uint32		type_hash;
	uint32		pad;
} AggregateKey;

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
	int64	   *send_alone;		/* ids to send on their own next round, ascending */
	int			nsend_alone;
} Publisher;

/* A message's opaque: the round number and the row index. */
#define OPAQUE(round, i)	((void *) (((uintptr_t) (round) << 32) | (uint32) (i)))
#define OPAQUE_ROUND(o)		((uint32) ((uintptr_t) (o) >> 32))
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

/* Was row id refused together with others last round? */
static bool
send_alone(Publisher *p, int64 id)
{
	return p->nsend_alone > 0 &&
		bsearch(&id, p->send_alone, p->nsend_alone, sizeof(int64), cmp_int64) != NULL;
}

/*
 * Step 1a: the ids of the oldest pending row of up to batch_size aggregates,
 * in id order.  Rows of an aggregate already taken are skipped; the walk
 * stops after WALK_FACTOR * batch_size rows, so that a round's cost stays
 * flat when a few aggregates own most of the backlog (their later rows go
 * out one per round anyway).
 */
static int
walk_pending(Publisher *p, Datum *ids)
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
	ctl.hcxt = p->round_cxt;
	seen = hash_create("citizen_sync publisher round", cs_publisher_batch_size, &ctl,
					   HASH_ELEM | HASH_BLOBS | HASH_CONTEXT);
	portal = SPI_cursor_open_with_args(NULL, WALK_SQL, 1, &type, &limit, NULL, true,
									   CURSOR_OPT_NO_SCROLL);
	while (nids < cs_publisher_batch_size)
	{
		SPI_cursor_fetch(portal, true, cs_publisher_batch_size);
		if (SPI_processed == 0)
			break;
		for (uint64 r = 0; r < SPI_processed && nids < cs_publisher_batch_size; r++)
		{
			HeapTuple	t = SPI_tuptable->vals[r];
			TupleDesc	d = SPI_tuptable->tupdesc;
			AggregateKey key;
			text	   *agg_type;
			bool		isnull;
			bool		found;

			agg_type = DatumGetTextPP(SPI_getbinval(t, d, 2, &isnull));
			memset(&key, 0, sizeof(key));
			key.aggregate_id = DatumGetInt64(SPI_getbinval(t, d, 3, &isnull));
			key.type_hash = hash_bytes((const unsigned char *) VARDATA_ANY(agg_type),
									   VARSIZE_ANY_EXHDR(agg_type));
			(void) hash_search(seen, &key, HASH_ENTER, &found);
			if (!found)
				ids[nids++] = SPI_getbinval(t, d, 1, &isnull);
		}
		SPI_freetuptable(SPI_tuptable);
	}
	SPI_cursor_close(portal);
	return nids;
}

static ArrayType *
int8_array(Datum *values, int n)
{
	return construct_array(values, n, INT8OID, 8, FLOAT8PASSBYVAL, TYPALIGN_DOUBLE);
}

/* Step 1: choose this round's rows and copy their messages into p->rows. */
static void
fetch_step(void *arg)
{
	Publisher  *p = (Publisher *) arg;
	Datum	   *ids = MemoryContextAlloc(p->round_cxt, sizeof(Datum) * cs_publisher_batch_size);
	int			nids;
	Datum		values[2];
	Oid			types[2] = {TEXTOID, INT8ARRAYOID};

	cs_tx_begin("citizen_sync: reading the outbox");
	nids = walk_pending(p, ids);
	p->rows = MemoryContextAllocZero(p->round_cxt, sizeof(OutboxRow) * Max(nids, 1));
	if (nids > 0)
	{
		values[0] = CStringGetTextDatum(cs_topic_prefix);
		values[1] = PointerGetDatum(int8_array(ids, nids));
		if (SPI_execute_with_args(FETCH_SQL, 2, types, values, NULL, true, 0) != SPI_OK_SELECT)
			elog(ERROR, "citizen_sync: reading the outbox failed");
		for (uint64 i = 0; i < SPI_processed; i++)
		{
			HeapTuple	t = SPI_tuptable->vals[i];
			TupleDesc	d = SPI_tuptable->tupdesc;
			OutboxRow  *row = &p->rows[p->nrows++];
			bool		isnull;

			row->id = DatumGetInt64(SPI_getbinval(t, d, 1, &isnull));
			row->topic = MemoryContextStrdup(p->round_cxt, SPI_getvalue(t, d, 2));
			row->key = MemoryContextStrdup(p->round_cxt, SPI_getvalue(t, d, 3));
			row->value = MemoryContextStrdup(p->round_cxt, SPI_getvalue(t, d, 4));
			row->partition = RD_KAFKA_PARTITION_UA;
			row->alone = send_alone(p, row->id);
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
				OutboxRow  *row;

				if (OPAQUE_ROUND(m->_private) != p->round ||
					OPAQUE_INDEX(m->_private) >= p->nrows)
					continue;	/* its round gave up on it; the row is re-sent */
				row = &p->rows[OPAQUE_INDEX(m->_private)];
				if (row->done)
					continue;
				row->done = true;
				row->err = m->err;
				row->partition = m->partition;
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
			row->sent = true;
			p->outstanding++;
			return;
		}
		if (err != RD_KAFKA_RESP_ERR__QUEUE_FULL)
		{
			row->refused = true;
			row->done = true;
			row->err = err;
			return;
		}
		cs_waiter_wait(&p->waiter, 100);
		drain_reports(p);
	}
}

/*
 * Step 3: wait (latch and report queue) until every row sent has its report.
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
				if (p->rows[i].sent && !p->rows[i].done)
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

/*
 * Is row i's permanent error its own?  Yes when produce() refused it, when
 * it was sent alone, or when it was the only row of the round in its
 * partition (a broker refuses a partition's whole record batch).
 */
static bool
error_is_own(Publisher *p, int i)
{
	OutboxRow  *row = &p->rows[i];

	if (row->refused || row->alone)
		return true;
	for (int j = 0; j < p->nrows; j++)
	{
		OutboxRow  *other = &p->rows[j];

		if (j != i && other->sent && !other->alone &&
			other->partition == row->partition && strcmp(other->topic, row->topic) == 0)
			return false;
	}
	return true;
}

/* Decide each row's outcome; remember the rows to send alone next round. */
static void
classify_rows(Publisher *p)
{
	int			nalone = 0;

	for (int i = 0; i < p->nrows; i++)
	{
		OutboxRow  *row = &p->rows[i];

		if (!row->done)
			row->outcome = ROW_RETRY;	/* not sent (stopping): not marked */
		else if (row->err == RD_KAFKA_RESP_ERR_NO_ERROR)
			row->outcome = ROW_DELIVERED;
		else if (!error_is_permanent(row->err))
			row->outcome = ROW_RETRY;
		else if (error_is_own(p, i))
			row->outcome = ROW_SET_ASIDE;
		else
		{
			row->outcome = ROW_SEND_ALONE;
			nalone++;
		}
	}
	if (p->send_alone)
		pfree(p->send_alone);
	p->send_alone = NULL;
	p->nsend_alone = 0;
	if (nalone == 0)
		return;
	/* rows are in id order, and so is this list */
	p->send_alone = MemoryContextAlloc(TopMemoryContext, sizeof(int64) * nalone);
	for (int i = 0; i < p->nrows; i++)
		if (p->rows[i].outcome == ROW_SEND_ALONE)
			p->send_alone[p->nsend_alone++] = p->rows[i].id;
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

/* The server log names set-aside rows (the first few of a round). */
static void
log_set_aside(Publisher *p, int nset)
{
	int			logged = 0;

	for (int i = 0; i < p->nrows && logged < MAX_LOGGED_SET_ASIDE; i++)
	{
		OutboxRow  *row = &p->rows[i];

		if (row->outcome != ROW_SET_ASIDE)
			continue;
		logged++;
		ereport(WARNING,
				(errmsg("citizen_sync: publisher: outbox row " INT64_FORMAT " set aside: %s",
						row->id, rd_kafka_err2str(row->err)),
				 errdetail("Kafka refused the event of key %s for topic %s for good. The later changes of %s wait behind it; other keys are still published.",
						   row->key, row->topic, row->key),
				 errhint("Fix the cause, then run: SELECT * FROM citizen_sync.retry_set_aside(ARRAY[" INT64_FORMAT "]);",
						 row->id)));
	}
	if (nset > logged)
		ereport(WARNING,
				(errmsg("citizen_sync: publisher: %d more outbox row(s) set aside in the same round",
						nset - logged),
				 errhint("See SELECT id, aggregate_type, aggregate_id, last_error FROM citizen_sync.outbox WHERE set_aside_at IS NOT NULL;")));
}

/* Step 4: record the outcome of the round. */
static void
mark_step(void *arg)
{
	Publisher  *p = (Publisher *) arg;
	Datum	   *ok = MemoryContextAlloc(p->round_cxt, sizeof(Datum) * Max(p->nrows, 1));
	Datum	   *bad = MemoryContextAlloc(p->round_cxt, sizeof(Datum) * Max(p->nrows, 1));
	Datum	   *errors = MemoryContextAlloc(p->round_cxt, sizeof(Datum) * Max(p->nrows, 1));
	Datum	   *aside = MemoryContextAlloc(p->round_cxt, sizeof(Datum) * Max(p->nrows, 1));
	int			nok = 0,
				nbad = 0,
				nset = 0;
	const char *last_err = NULL;

	cs_tx_begin("citizen_sync: marking published rows");
	for (int i = 0; i < p->nrows; i++)
	{
		OutboxRow  *row = &p->rows[i];

		if (!row->done)
			continue;
		if (row->outcome == ROW_DELIVERED)
		{
			ok[nok++] = Int64GetDatum(row->id);
			continue;
		}
		bad[nbad] = Int64GetDatum(row->id);
		errors[nbad] = CStringGetTextDatum(row_error(row));
		aside[nbad++] = BoolGetDatum(row->outcome == ROW_SET_ASIDE);
		nset += (row->outcome == ROW_SET_ASIDE);
		last_err = rd_kafka_err2str(row->err);
	}
	if (nok > 0)
	{
		Oid			t[1] = {INT8ARRAYOID};
		Datum		v[1] = {PointerGetDatum(int8_array(ok, nok))};

		SPI_execute_with_args(MARK_OK_SQL, 1, t, v, NULL, false, 0);
	}
	if (nbad > 0)
	{
		Oid			t[3] = {INT8ARRAYOID, TEXTARRAYOID, BOOLARRAYOID};
		Datum		v[3];

		v[0] = PointerGetDatum(int8_array(bad, nbad));
		v[1] = PointerGetDatum(construct_array(errors, nbad, TEXTOID, -1, false, TYPALIGN_INT));
		v[2] = PointerGetDatum(construct_array(aside, nbad, BOOLOID, 1, true, TYPALIGN_CHAR));
		SPI_execute_with_args(MARK_FAILED_SQL, 3, t, v, NULL, false, 0);
	}
	cs_tx_commit();
	if (nset > 0)
		log_set_aside(p, nset);

	LWLockAcquire(cs_shared->lock, LW_EXCLUSIVE);
	p->slot->published += nok;
	p->slot->publish_failures += nbad;
	p->slot->batches++;
	p->slot->last_batch_at = GetCurrentTimestamp();
	strlcpy(p->slot->state, nbad > nset ? "retrying" : "running", sizeof(p->slot->state));
	if (nset)
		snprintf(p->slot->last_error, sizeof(p->slot->last_error),
				 "%d outbox row(s) set aside (refused for good): %s", nset, last_err);
	else if (nbad)
		snprintf(p->slot->last_error, sizeof(p->slot->last_error),
				 "delivery failed for %d row(s): %s", nbad, last_err);
	p->slot->last_error_at = nbad ? GetCurrentTimestamp() : p->slot->last_error_at;
	LWLockRelease(cs_shared->lock);

	/*
	 * Back off only when nothing got through (the brokers are unreachable):
	 * rows that failed once are retried 100 ms later without slowing the
	 * other aggregates; set-aside rows are not retried at all.
	 */
	p->failures = (nbad > nset && nok == 0) ? p->failures + 1 : 0;
	p->some_failed = (nbad > nset);
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
 * message: replace it.  The round's rows failed transiently and go out
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
			(errmsg("citizen_sync: publisher: fatal Kafka producer error: %s", errstr),
			 errdetail("The producer is replaced; the rows it did not deliver are sent again.")));
	kafka_stop(p);
	kafka_start(p);
}

/*
 * Produce the round's rows: first those to send alone, each awaited before
 * the next (so that each makes a record batch of its own) -- until one of
 * them fails transiently, the brokers being in trouble -- then the others,
 * all at once.
 */
static void
produce_rows(Publisher *p)
{
	bool		one_by_one = true;

	for (int i = 0; i < p->nrows && !cs_got_sigterm; i++)
	{
		OutboxRow  *row = &p->rows[i];

		if (!row->alone)
			continue;
		if (!one_by_one)
		{
			row->alone = false;
			continue;
		}
		produce_row(p, i);
		await_reports(p);
		if (row->err != RD_KAFKA_RESP_ERR_NO_ERROR && !error_is_permanent(row->err))
			one_by_one = false;
	}
	for (int i = 0; i < p->nrows && !cs_got_sigterm; i++)
		if (!p->rows[i].alone)
			produce_row(p, i);
	await_reports(p);
}

/* One round; returns the number of rows read. */
static int
publish_round(Publisher *p)
{
	MemoryContextReset(p->round_cxt);
	p->round++;
	p->rows = NULL;
	p->nrows = 0;
	p->outstanding = 0;
	if (!cs_worker_try(p->slot, fetch_step, p))
		return -1;
	produce_rows(p);
	if (cs_got_sigterm)
		return 0;
	classify_rows(p);
	if (p->nrows > 0 && !cs_worker_try(p->slot, mark_step, p))
		return -1;
	replace_producer_if_fatal(p);
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

/* Drop what the producer still holds (it is sent again by a later round). */
static void
kafka_stop(Publisher *p)
{
	rd_kafka_purge(p->rk, RD_KAFKA_PURGE_F_QUEUE | RD_KAFKA_PURGE_F_INFLIGHT);
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
	kafka_stop(&p);
	proc_exit(0);
}
