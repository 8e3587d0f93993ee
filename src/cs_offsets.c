/*-------------------------------------------------------------------------
 * cs_offsets.c
 *	  The database is the truth about how far each partition was applied.
 *
 * cs_offsets_store() runs in the batch transaction; cs_offsets_load() runs
 * on (re)assignment, before any message of the new assignment is applied.
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "catalog/pg_type.h"
#include "cs_offsets.h"
#include "cs_worker.h"
#include "executor/spi.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/snapmgr.h"

#define STORE_SQL \
	"INSERT INTO citizen_sync.consumer_offsets AS o" \
	" (group_id, topic, partition, next_offset, updated_at)" \
	" SELECT $1, u.topic, u.partition, u.next_offset, pg_catalog.now()" \
	" FROM ROWS FROM (pg_catalog.unnest($2::pg_catalog.text[]), pg_catalog.unnest($3::pg_catalog.int4[])," \
	"   pg_catalog.unnest($4::pg_catalog.int8[]))" \
	"   AS u(topic, partition, next_offset)" \
	" ON CONFLICT (group_id, topic, partition) DO UPDATE" \
	" SET next_offset = EXCLUDED.next_offset, updated_at = EXCLUDED.updated_at"

/*
 * The position of a partition is the furthest any group stored in this
 * database: the rows up to it are applied here, whatever group name read
 * them, so a changed citizen_sync.group_id resumes instead of replaying the
 * topic.  (One group consumes a topic into a database at a time: a database
 * has one consumer, and several consumers of one database share its group.)
 */
#define LOAD_SQL \
	"SELECT topic, partition, pg_catalog.max(next_offset)" \
	" FROM citizen_sync.consumer_offsets GROUP BY topic, partition"

static SPIPlanPtr store_plan = NULL;
static SPIPlanPtr load_plan = NULL;

static SPIPlanPtr
keep_plan(SPIPlanPtr *slot, const char *sql, int nargs, Oid *argtypes)
{
	if (*slot == NULL)
	{
		SPIPlanPtr	plan = SPI_prepare(sql, nargs, argtypes);

		if (plan == NULL || SPI_keepplan(plan) != 0)
			elog(ERROR, "citizen_sync: could not prepare offsets statement: %s",
				 SPI_result_code_string(SPI_result));
		*slot = plan;
	}
	return *slot;
}

/*
 * Collapse msgs into distinct (topic, partition) with the highest offset.
 * Returns the count; arrays are palloc'd by the caller with n slots.
 */
static int
last_offsets(const CsMessage *msgs, int n, Datum *topics, Datum *parts, Datum *next)
{
	int		   *first = palloc(sizeof(int) * n);	/* a message of each slot */
	int			k = 0;

	for (int i = 0; i < n; i++)
	{
		int			j;

		for (j = 0; j < k; j++)
			if (msgs[first[j]].partition == msgs[i].partition &&
				strcmp(msgs[first[j]].topic, msgs[i].topic) == 0)
				break;
		if (j == k)
		{
			first[k] = i;
			topics[k] = CStringGetTextDatum(msgs[i].topic);
			parts[k] = Int32GetDatum(msgs[i].partition);
			next[k++] = Int64GetDatum(msgs[i].offset + 1);
		}
		else if (msgs[i].offset + 1 > DatumGetInt64(next[j]))
			next[j] = Int64GetDatum(msgs[i].offset + 1);
	}
	pfree(first);
	return k;
}

void
cs_offsets_store(const char *group_id, const CsMessage *msgs, int n)
{
	static Oid	argtypes[4] = {TEXTOID, TEXTARRAYOID, INT4ARRAYOID, INT8ARRAYOID};
	Datum	   *topics = palloc(sizeof(Datum) * n);
	Datum	   *parts = palloc(sizeof(Datum) * n);
	Datum	   *next = palloc(sizeof(Datum) * n);
	Datum		values[4];
	int			k;

	if (n == 0)
		return;
	k = last_offsets(msgs, n, topics, parts, next);
	values[0] = CStringGetTextDatum(group_id);
	values[1] = PointerGetDatum(construct_array(topics, k, TEXTOID, -1, false, TYPALIGN_INT));
	values[2] = PointerGetDatum(construct_array(parts, k, INT4OID, 4, true, TYPALIGN_INT));
	values[3] = PointerGetDatum(construct_array(next, k, INT8OID, 8, FLOAT8PASSBYVAL, TYPALIGN_DOUBLE));
	if (SPI_execute_plan(keep_plan(&store_plan, STORE_SQL, 4, argtypes),
						 values, NULL, false, 0) != SPI_OK_INSERT)
		elog(ERROR, "citizen_sync: could not store consumer offsets");
}

/* Find (topic, partition) in the stored rows; -1 when absent. */
static int64
stored_offset(const char *topic, int32 partition)
{
	for (uint64 r = 0; r < SPI_processed; r++)
	{
		HeapTuple	tup = SPI_tuptable->vals[r];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		bool		isnull;
		char	   *t = SPI_getvalue(tup, desc, 1);

		if (DatumGetInt32(SPI_getbinval(tup, desc, 2, &isnull)) == partition &&
			strcmp(t, topic) == 0)
			return DatumGetInt64(SPI_getbinval(tup, desc, 3, &isnull));
	}
	return -1;
}

void
cs_offsets_load(const char *group_id, rd_kafka_topic_partition_list_t *parts)
{
	cs_tx_begin("citizen_sync: reading stored offsets");
	if (SPI_execute_plan(keep_plan(&load_plan, LOAD_SQL, 0, NULL),
						 NULL, NULL, true, 0) != SPI_OK_SELECT)
		elog(ERROR, "citizen_sync: could not read consumer offsets");
	for (int i = 0; i < parts->cnt; i++)
	{
		int64		off = stored_offset(parts->elems[i].topic, parts->elems[i].partition);

		parts->elems[i].offset = off >= 0 ? off : RD_KAFKA_OFFSET_BEGINNING;
	}
	cs_tx_commit();
}
