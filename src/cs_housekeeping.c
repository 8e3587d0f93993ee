/*-------------------------------------------------------------------------
 * cs_housekeeping.c
 *	  Retention, done by the consumer between batches, without long locks.
 *
 * Each chunk deletes at most CHUNK rows by key in its own transaction, so no
 * lock is held for long and vacuum can keep up.  Dropping an old event id
 * from processed_events is safe: a very late redelivery of it is stale by
 * version anyway.  Dead letters are only deleted once resolved (retried
 * successfully or purged by an operator): an unresolved one is data.
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "catalog/pg_type.h"
#include "cs_guc.h"
#include "cs_housekeeping.h"
#include "cs_worker.h"
#include "executor/spi.h"
#include "pgstat.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

#define CHUNK 5000

#define PURGE_PROCESSED_SQL \
	"DELETE FROM cache.processed_events WHERE event_id IN (" \
	" SELECT event_id FROM cache.processed_events" \
	"  WHERE processed_at OPERATOR(pg_catalog.<)" \
	"        (pg_catalog.now() OPERATOR(pg_catalog.-) pg_catalog.make_interval(secs => $1))" \
	"  LIMIT 5000)"

#define PURGE_DEAD_SQL \
	"DELETE FROM citizen_sync.dead_letters WHERE id IN (" \
	" SELECT id FROM citizen_sync.dead_letters" \
	"  WHERE resolved_at OPERATOR(pg_catalog.<)" \
	"        (pg_catalog.now() OPERATOR(pg_catalog.-) pg_catalog.make_interval(secs => $1))" \
	"  LIMIT 5000)"

/* Delete one chunk in a transaction of its own; returns rows deleted. */
static uint64
delete_chunk(const char *sql, int retention_s)
{
	Oid			types[1] = {FLOAT8OID};
	Datum		values[1] = {Float8GetDatum((double) retention_s)};
	uint64		n;

	cs_tx_begin("citizen_sync: retention");
	if (SPI_execute_with_args(sql, 1, types, values, NULL, false, 0) != SPI_OK_DELETE)
		elog(ERROR, "citizen_sync: retention delete failed");
	n = SPI_processed;
	cs_tx_commit();
	return n;
}

/* Delete chunks of one kind until done or out of time. */
static void
purge(const char *sql, int retention_s, TimestampTz deadline)
{
	if (retention_s <= 0)
		return;					/* 0 = keep forever */
	while (delete_chunk(sql, retention_s) == CHUNK && GetCurrentTimestamp() < deadline)
		;
}

void
cs_housekeeping_run(long budget_ms)
{
	TimestampTz deadline = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), budget_ms);

	purge(PURGE_PROCESSED_SQL, cs_processed_events_retention_s, deadline);
	purge(PURGE_DEAD_SQL, cs_dead_letter_retention_s, deadline);
}
