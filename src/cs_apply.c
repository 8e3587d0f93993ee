/*-------------------------------------------------------------------------
 * cs_apply.c
 *	  Apply a batch of validated citizen events to the cache, set-based.
 *
 * A batch costs two prepared statements whatever its size:
 *
 *	1. record the event ids in cache.processed_events; those already there
 *	   are duplicates (idempotency by event_id);
 *	2. upsert, per citizen, the newest of the new events with a version guard
 *	   (ON CONFLICT ... WHERE cached.event_version < incoming.event_version):
 *	   the rows the statement returns were applied, the rest were stale.
 *
 * The outcome equals applying the events one by one in stream order: within a
 * batch a citizen's older events are superseded (stale) by its newest one.
 * A delete is an upsert with is_active = false that keeps the cached fields
 * and the delete's version, so a late older update cannot resurrect the
 * citizen; a delete of an unknown citizen leaves a tombstone row.
 *
 * Plans are prepared once per backend and kept (SPI_keepplan); the plan cache
 * revalidates them after DDL.  The caller owns the transaction and the SPI
 * connection.
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "cs_apply.h"
#include "executor/spi.h"
#include "utils/array.h"
#include "utils/builtins.h"

static SPIPlanPtr mark_plan = NULL;
static SPIPlanPtr upsert_plan = NULL;

#define MARK_SQL \
	"WITH ins AS (" \
	"  INSERT INTO cache.processed_events (event_id)" \
	"  SELECT pg_catalog.unnest($1::pg_catalog.text[])" \
	"  ON CONFLICT (event_id) DO NOTHING RETURNING event_id)" \
	" SELECT u.ord::pg_catalog.int4" \
	"   FROM pg_catalog.unnest($1::pg_catalog.text[]) WITH ORDINALITY AS u(id, ord)" \
	"   JOIN ins ON ins.event_id OPERATOR(pg_catalog.=) u.id"

#define KEEP_IF_DELETE(col) \
	" " col " = CASE WHEN EXCLUDED.is_active THEN EXCLUDED." col " ELSE c." col " END,"

#define UPSERT_SQL \
	"INSERT INTO cache.citizen_refs AS c" \
	" (citizen_id, name, email, phone, address, city, postal_code," \
	"  email_verified, identity_verified, event_version, is_active," \
	"  deleted_at, last_synced_at)" \
	" SELECT u.citizen_id, u.name, u.email, u.phone, u.address, u.city," \
	"   u.postal_code, u.email_verified, u.identity_verified, u.event_version," \
	"   u.is_active, CASE WHEN u.is_active THEN NULL ELSE pg_catalog.now() END," \
	"   pg_catalog.now()" \
	" FROM ROWS FROM (pg_catalog.unnest($1::pg_catalog.int8[]), pg_catalog.unnest($2::pg_catalog.text[])," \
	"   pg_catalog.unnest($3::pg_catalog.text[]), pg_catalog.unnest($4::pg_catalog.text[])," \
	"   pg_catalog.unnest($5::pg_catalog.text[]), pg_catalog.unnest($6::pg_catalog.text[])," \
	"   pg_catalog.unnest($7::pg_catalog.text[]), pg_catalog.unnest($8::pg_catalog.bool[])," \
	"   pg_catalog.unnest($9::pg_catalog.bool[]), pg_catalog.unnest($10::pg_catalog.int8[])," \
	"   pg_catalog.unnest($11::pg_catalog.bool[]))" \
	"   AS u(citizen_id, name, email, phone, address, city, postal_code," \
	"        email_verified, identity_verified, event_version, is_active)" \
	" ON CONFLICT (citizen_id) DO UPDATE SET" \
	KEEP_IF_DELETE("name") KEEP_IF_DELETE("email") KEEP_IF_DELETE("phone") \
	KEEP_IF_DELETE("address") KEEP_IF_DELETE("city") KEEP_IF_DELETE("postal_code") \
	KEEP_IF_DELETE("email_verified") KEEP_IF_DELETE("identity_verified") \
	"  event_version = EXCLUDED.event_version," \
	"  is_active = EXCLUDED.is_active," \
	"  deleted_at = CASE WHEN EXCLUDED.is_active THEN NULL" \
	"                    ELSE COALESCE(c.deleted_at, pg_catalog.now()) END," \
	"  last_synced_at = pg_catalog.now()" \
	" WHERE c.event_version OPERATOR(pg_catalog.<) EXCLUDED.event_version" \
	" RETURNING c.citizen_id"

#define UPSERT_NARGS 11

/* Prepare and keep a plan on first use. */
static SPIPlanPtr
prepare_once(SPIPlanPtr *slot, const char *sql, int nargs, Oid *argtypes)
{
	if (*slot == NULL)
	{
		SPIPlanPtr	plan = SPI_prepare(sql, nargs, argtypes);

		if (plan == NULL)
			elog(ERROR, "citizen_sync: SPI_prepare failed: %s",
				 SPI_result_code_string(SPI_result));
		if (SPI_keepplan(plan) != 0)
			elog(ERROR, "citizen_sync: SPI_keepplan failed");
		*slot = plan;
	}
	return *slot;
}

/* Sort helper: order indexes by event_id, then by stream position. */
static int
cmp_by_event_id(const void *a, const void *b, void *arg)
{
	const CsEvent *ev = (const CsEvent *) arg;
	int			ia = *(const int *) a;
	int			ib = *(const int *) b;
	int			c = strcmp(ev[ia].event_id, ev[ib].event_id);

	return c != 0 ? c : (ia > ib) - (ia < ib);
}

/* Sort helper: by citizen, then stream position. */
static int
cmp_by_citizen_stream(const void *a, const void *b, void *arg)
{
	const CsEvent *ev = (const CsEvent *) arg;
	int			ia = *(const int *) a;
	int			ib = *(const int *) b;

	if (ev[ia].citizen_id != ev[ib].citizen_id)
		return ev[ia].citizen_id < ev[ib].citizen_id ? -1 : 1;
	return (ia > ib) - (ia < ib);
}

/*
 * Collect the indexes of the events still to decide, marking unknown types
 * ignored and repeated event ids within the batch duplicates.  Returns the
 * count of candidates left in idx[].
 */
static int
select_candidates(const CsEvent *events, int nevents, CsApplyResult *results,
				  int *idx)
{
	int			n = 0,
				kept = 0;

	for (int i = 0; i < nevents; i++)
	{
		if (results[i] == CS_RESULT_INVALID)
			continue;
		if (events[i].type == CS_EVENT_UNKNOWN)
		{
			results[i] = CS_RESULT_IGNORED;
			continue;
		}
		results[i] = CS_RESULT_DUPLICATE;	/* until proven new */
		idx[n++] = i;
	}
	qsort_arg(idx, n, sizeof(int), cmp_by_event_id, (void *) events);
	for (int k = 0; k < n; k++)
		if (kept == 0 || strcmp(events[idx[k]].event_id,
								events[idx[kept - 1]].event_id) != 0)
			idx[kept++] = idx[k];
	return kept;
}

/*
 * Record the candidates' event ids; keep in idx[] only those not processed
 * before (their results become STALE until the upsert proves otherwise).
 * Returns the number kept.
 */
static int
mark_processed(const CsEvent *events, CsApplyResult *results, int *idx, int n)
{
	Datum	   *ids = palloc(sizeof(Datum) * n);
	Datum		arg;
	Oid			argtype = TEXTARRAYOID;
	SPIPlanPtr	plan;
	int			kept = 0;

	for (int k = 0; k < n; k++)
		ids[k] = CStringGetTextDatum(events[idx[k]].event_id);
	arg = PointerGetDatum(construct_array(ids, n, TEXTOID, -1, false, TYPALIGN_INT));
	plan = prepare_once(&mark_plan, MARK_SQL, 1, &argtype);
	if (SPI_execute_plan(plan, &arg, NULL, false, 0) != SPI_OK_SELECT)
		elog(ERROR, "citizen_sync: recording processed events failed");
	for (uint64 r = 0; r < SPI_processed; r++)
	{
		bool		isnull;
		int			ord = DatumGetInt32(SPI_getbinval(SPI_tuptable->vals[r],
													  SPI_tuptable->tupdesc, 1, &isnull));

		results[idx[ord - 1]] = CS_RESULT_STALE;
	}
	SPI_freetuptable(SPI_tuptable);
	for (int k = 0; k < n; k++)
		if (results[idx[k]] == CS_RESULT_STALE)
			idx[kept++] = idx[k];
	return kept;
}

/* Column arrays for the upsert, one element per winning event. */
typedef struct UpsertColumns
{
	Datum		values[UPSERT_NARGS];
	Datum	   *elems[UPSERT_NARGS];
	bool	   *nulls[UPSERT_NARGS];
} UpsertColumns;

static const Oid upsert_elem_types[UPSERT_NARGS] = {
	INT8OID, TEXTOID, TEXTOID, TEXTOID, TEXTOID, TEXTOID, TEXTOID,
	BOOLOID, BOOLOID, INT8OID, BOOLOID
};

/* Store a nullable C string as element (col, k). */
static void
put_text(UpsertColumns *cols, int col, int k, const char *s)
{
	cols->nulls[col][k] = (s == NULL);
	cols->elems[col][k] = s ? CStringGetTextDatum(s) : (Datum) 0;
}

/* Build the upsert's eleven array arguments from the winners. */
static void
build_upsert_columns(const CsEvent *events, const int *win, int n,
					 UpsertColumns *cols)
{
	for (int c = 0; c < UPSERT_NARGS; c++)
	{
		cols->elems[c] = palloc(sizeof(Datum) * n);
		cols->nulls[c] = palloc0(sizeof(bool) * n);
	}
	for (int k = 0; k < n; k++)
	{
		const CsEvent *ev = &events[win[k]];

		cols->elems[0][k] = Int64GetDatum(ev->citizen_id);
		put_text(cols, 1, k, ev->name);
		put_text(cols, 2, k, ev->email);
		put_text(cols, 3, k, ev->phone);
		put_text(cols, 4, k, ev->address);
		put_text(cols, 5, k, ev->city);
		put_text(cols, 6, k, ev->postal_code);
		cols->elems[7][k] = BoolGetDatum(ev->email_verified);
		cols->elems[8][k] = BoolGetDatum(ev->identity_verified);
		cols->elems[9][k] = Int64GetDatum(ev->version);
		cols->elems[10][k] = BoolGetDatum(ev->type != CS_EVENT_DELETED);
	}
	for (int c = 0; c < UPSERT_NARGS; c++)
	{
		int			dims[1] = {n};
		int			lbs[1] = {1};
		Oid			t = upsert_elem_types[c];

		cols->values[c] = PointerGetDatum(
			construct_md_array(cols->elems[c], cols->nulls[c], 1, dims, lbs, t,
							   t == TEXTOID ? -1 : (t == BOOLOID ? 1 : 8),
							   t != TEXTOID, t == TEXTOID ? TYPALIGN_INT
							   : (t == BOOLOID ? TYPALIGN_CHAR : TYPALIGN_DOUBLE)));
	}
}

/* Binary search for a citizen among the winners (sorted by citizen_id). */
static int
find_winner(const CsEvent *events, const int *win, int n, int64 citizen_id)
{
	int			lo = 0,
				hi = n - 1;

	while (lo <= hi)
	{
		int			mid = lo + (hi - lo) / 2;
		int64		c = events[win[mid]].citizen_id;

		if (c == citizen_id)
			return mid;
		if (c < citizen_id)
			lo = mid + 1;
		else
			hi = mid - 1;
	}
	return -1;
}

/*
 * Upsert one event per citizen (win[0..n), sorted by citizen_id); the rows
 * the version guard lets through become APPLIED or DELETED.
 */
static void
run_upsert(const CsEvent *events, CsApplyResult *results, const int *win, int n)
{
	static Oid	argtypes[UPSERT_NARGS] = {
		INT8ARRAYOID, TEXTARRAYOID, TEXTARRAYOID, TEXTARRAYOID, TEXTARRAYOID,
		TEXTARRAYOID, TEXTARRAYOID, BOOLARRAYOID, BOOLARRAYOID, INT8ARRAYOID,
	BOOLARRAYOID};
	UpsertColumns cols;
	SPIPlanPtr	plan;

	if (n == 0)
		return;
	build_upsert_columns(events, win, n, &cols);
	plan = prepare_once(&upsert_plan, UPSERT_SQL, UPSERT_NARGS, argtypes);
	if (SPI_execute_plan(plan, cols.values, NULL, false, 0) != SPI_OK_INSERT_RETURNING)
		elog(ERROR, "citizen_sync: cache upsert failed");
	for (uint64 r = 0; r < SPI_processed; r++)
	{
		bool		isnull;
		int64		cid = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[r],
													  SPI_tuptable->tupdesc, 1, &isnull));
		int			w = find_winner(events, win, n, cid);

		if (w < 0)
			elog(ERROR, "citizen_sync: upsert returned unknown citizen " INT64_FORMAT, cid);
		results[win[w]] = events[win[w]].type == CS_EVENT_DELETED
			? CS_RESULT_DELETED : CS_RESULT_APPLIED;
	}
	SPI_freetuptable(SPI_tuptable);
}

/*
 * Apply the new events idx[0..n) citizen by citizen, with the outcome of
 * applying them one by one in stream order.  Only a citizen's "record"
 * events can take effect: those with a version above every earlier event of
 * the batch.  The last record (the newest version) is the winner.  When the
 * winner is a delete, which keeps the cached fields, the last create/update
 * record before it is applied first (one more statement, only for such
 * batches).  The version guard decides against the cached version.  Every
 * other event stays STALE.
 */
static void
upsert_newest(const CsEvent *events, CsApplyResult *results, int *idx, int n)
{
	int		   *before_delete = palloc(sizeof(int) * n);
	int			nwin = 0,
				nbefore = 0;

	qsort_arg(idx, n, sizeof(int), cmp_by_citizen_stream, (void *) events);
	for (int k = 0; k < n;)
	{
		int			winner = idx[k];
		int			last_update = -1;
		int			end = k;

		for (; end < n && events[idx[end]].citizen_id == events[winner].citizen_id; end++)
		{
			const CsEvent *ev = &events[idx[end]];

			if (end > k && ev->version <= events[winner].version)
				continue;		/* not a record: stale whatever the cache holds */
			if (events[winner].type != CS_EVENT_DELETED && end > k)
				last_update = winner;
			winner = idx[end];
		}
		if (events[winner].type == CS_EVENT_DELETED && last_update >= 0)
			before_delete[nbefore++] = last_update;
		idx[nwin++] = winner;
		k = end;
	}
	run_upsert(events, results, before_delete, nbefore);
	run_upsert(events, results, idx, nwin);
	pfree(before_delete);
}

void
cs_apply_batch(const CsEvent *events, int nevents, CsApplyResult *results)
{
	int		   *idx;
	int			n;

	if (nevents <= 0)
		return;
	idx = palloc(sizeof(int) * nevents);
	n = select_candidates(events, nevents, results, idx);
	if (n > 0)
		n = mark_processed(events, results, idx, n);
	if (n > 0)
		upsert_newest(events, results, idx, n);
	pfree(idx);
}

const char *
cs_apply_result_name(CsApplyResult result)
{
	static const char *const names[CS_RESULT_COUNT] = {
		"applied", "deleted", "stale", "duplicate", "ignored", "invalid"
	};

	return (result >= 0 && result < CS_RESULT_COUNT) ? names[result] : "unknown";
}
