/*-------------------------------------------------------------------------
 * cs_apply.c
 *	  Apply a batch of validated events to the subscribed tables, set-based.
 *
 * A batch costs two prepared statements per subscription whatever its size:
 *
 *	1. record the event ids in cache.processed_events (one statement for the
 *	   whole batch); those already there are duplicates (idempotency by
 *	   event_id, shared by the subscriptions of a database: one topic feeds
 *	   one table);
 *	2. upsert, per key, the newest of the new events with a version guard
 *	   (ON CONFLICT ... WHERE cached.event_version < incoming.event_version):
 *	   the rows the statement returns were applied, the rest were stale.
 *
 * The outcome equals applying the events one by one in stream order: within a
 * batch a key's older events are superseded (stale) by its newest one.  A
 * soft delete is an upsert with is_active = false that keeps the cached
 * fields and the delete's version, so a late older update cannot resurrect
 * the row; a delete of an unknown key leaves a tombstone row.  A hard delete
 * (a third statement, only in batches that have some) removes the row and
 * keeps its version in citizen_sync.tombstones, which the upsert consults.
 *
 * The statements are built from the subscription's field description
 * (cs_apply_sql.c), prepared once and kept until the subscriptions are
 * reloaded.  The caller owns the transaction and the SPI connection.
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "cs_apply.h"
#include "cs_subscription.h"
#include "executor/spi.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/lsyscache.h"

static SPIPlanPtr mark_plan = NULL;

#define MARK_SQL \
	"WITH ins AS (" \
	"  INSERT INTO cache.processed_events (event_id)" \
	"  SELECT pg_catalog.unnest($1::pg_catalog.text[])" \
	"  ON CONFLICT (event_id) DO NOTHING RETURNING event_id)" \
	" SELECT u.ord::pg_catalog.int4" \
	"   FROM pg_catalog.unnest($1::pg_catalog.text[]) WITH ORDINALITY AS u(id, ord)" \
	"   JOIN ins ON ins.event_id OPERATOR(pg_catalog.=) u.id"

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

/* Sort helper: by subscription, key, then stream position. */
static int
cmp_by_key_stream(const void *a, const void *b, void *arg)
{
	const CsEvent *ev = (const CsEvent *) arg;
	int			ia = *(const int *) a;
	int			ib = *(const int *) b;
	int			c;

	if (ev[ia].sub != ev[ib].sub)
		return ev[ia].sub < ev[ib].sub ? -1 : 1;
	c = strcmp(ev[ia].key, ev[ib].key);
	return c != 0 ? c : (ia > ib) - (ia < ib);
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

/* Build a one-dimensional array of n elements of type elemtype. */
static Datum
make_array(Datum *elems, bool *nulls, int n, Oid elemtype)
{
	int			dims[1] = {n};
	int			lbs[1] = {1};
	int16		len;
	bool		byval;
	char		align;

	get_typlenbyvalalign(elemtype, &len, &byval, &align);
	return PointerGetDatum(construct_md_array(elems, nulls, 1, dims, lbs, elemtype,
											  len, byval, align));
}

/*
 * The apply statements' arguments, one element per event win[k]: $1 the
 * keys, $2 the versions, $3 is_active (false for a delete), then one text
 * array for each of the subscription's first nfields fields.
 */
static Datum *
build_arguments(const CsSubscription *sub, const CsEvent *events,
				const int *win, int n, int nfields)
{
	int			nargs = 3 + nfields;
	Datum	   *args = palloc(sizeof(Datum) * nargs);
	Datum	   *elems = palloc(sizeof(Datum) * n);
	bool	   *nulls = palloc0(sizeof(bool) * n);

	for (int k = 0; k < n; k++)
		elems[k] = CStringGetTextDatum(events[win[k]].key);
	args[0] = make_array(elems, nulls, n, TEXTOID);
	for (int k = 0; k < n; k++)
		elems[k] = Int64GetDatum(events[win[k]].version);
	args[1] = make_array(elems, nulls, n, INT8OID);
	for (int k = 0; k < n; k++)
		elems[k] = BoolGetDatum(events[win[k]].type != CS_EVENT_DELETE);
	args[2] = make_array(elems, nulls, n, BOOLOID);
	for (int f = 0; f < nfields; f++)
	{
		for (int k = 0; k < n; k++)
		{
			const CsEvent *ev = &events[win[k]];
			const char *v = ev->values ? ev->values[f] : NULL;

			nulls[k] = (v == NULL);
			elems[k] = v ? CStringGetTextDatum(v) : (Datum) 0;
		}
		args[3 + f] = make_array(elems, nulls, n, TEXTOID);
	}
	return args;
}

/* Binary search for a key among the winners (sorted by key). */
static int
find_winner(const CsEvent *events, const int *win, int n, const char *key)
{
	int			lo = 0,
				hi = n - 1;

	while (lo <= hi)
	{
		int			mid = lo + (hi - lo) / 2;
		int			c = strcmp(events[win[mid]].key, key);

		if (c == 0)
			return mid;
		if (c < 0)
			lo = mid + 1;
		else
			hi = mid - 1;
	}
	return -1;
}

/*
 * The keys a statement returned were applied (or deleted); the winners
 * win[0..n) are sorted by key.
 */
static void
note_returned(const CsSubscription *sub, const CsEvent *events,
			  CsApplyResult *results, const int *win, int n)
{
	for (uint64 r = 0; r < SPI_processed; r++)
	{
		char	   *key = SPI_getvalue(SPI_tuptable->vals[r], SPI_tuptable->tupdesc, 1);
		int			w = key ? find_winner(events, win, n, key) : -1;

		if (w < 0)
			elog(ERROR, "citizen_sync: apply into %s returned unknown key \"%s\"",
				 sub->target_name, key ? key : "(null)");
		results[win[w]] = events[win[w]].type == CS_EVENT_DELETE
			? CS_RESULT_DELETED : CS_RESULT_APPLIED;
	}
	SPI_freetuptable(SPI_tuptable);
}

/* Prepare a statement of the subscription and keep it (freed on reload). */
static void
prepare_kept(SPIPlanPtr *slot, const char *sql, int nargs)
{
	Oid		   *argtypes = palloc(sizeof(Oid) * nargs);

	argtypes[0] = TEXTARRAYOID;
	argtypes[1] = INT8ARRAYOID;
	argtypes[2] = BOOLARRAYOID;
	for (int i = 3; i < nargs; i++)
		argtypes[i] = TEXTARRAYOID;
	(void) prepare_once(slot, sql, nargs, argtypes);
}

/*
 * Run one of the subscription's statements for the winners win[0..n)
 * (sorted by key): the upsert of one event per key, whose rows the version
 * guard lets through become APPLIED or DELETED (soft); or, for hard
 * deletes, the removal of the rows with their versions kept in
 * citizen_sync.tombstones, where newer than what is held.
 */
static void
run_statement(CsSubscription *sub, bool hard_delete, const CsEvent *events,
			  CsApplyResult *results, const int *win, int n)
{
	SPIPlanPtr *slot = hard_delete ? &sub->delete_plan : &sub->upsert_plan;
	int			nfields = hard_delete ? 0 : sub->shape.nfields;
	Datum	   *args;

	if (n == 0)
		return;
	args = build_arguments(sub, events, win, n, nfields);
	if (*slot == NULL)
		prepare_kept(slot, hard_delete ? cs_apply_delete_sql(sub) : cs_apply_upsert_sql(sub),
					 3 + nfields);
	if (SPI_execute_plan(*slot, args, NULL, false, 0) !=
		(hard_delete ? SPI_OK_SELECT : SPI_OK_INSERT_RETURNING))
		elog(ERROR, "citizen_sync: applying into %s failed", sub->target_name);
	note_returned(sub, events, results, win, n);
}

/*
 * Convert value with the input function of field f's column type; raise an
 * error naming the column when it does not convert.
 */
static void
check_value(const CsSubscription *sub, int f, const char *value)
{
	Oid			typinput,
				typioparam;
	MemoryContext cxt = CurrentMemoryContext;

	getTypeInputInfo(sub->typids[f], &typinput, &typioparam);
	PG_TRY();
	{
		(void) OidInputFunctionCall(typinput, (char *) value, typioparam,
									sub->typmods[f]);
	}
	PG_CATCH();
	{
		ErrorData  *edata;

		MemoryContextSwitchTo(cxt);
		edata = CopyErrorData();
		FlushErrorState();
		ereport(ERROR,
				(errcode(edata->sqlerrcode),
				 errmsg("column %s of %s: %s", sub->columns[f], sub->target_name,
						edata->message),
				 edata->detail ? errdetail("%s", edata->detail) : 0,
				 errhint("Field \"%s\" of the snapshot does not convert to the column's type %s; fix the table or the source, then retry the dead letter.",
						 sub->shape.scan.snapshot[1 + f].path, sub->types[f])));
	}
	PG_END_TRY();
}

/*
 * One event alone (isolating a failed batch): convert each value with its
 * column type's input function first, so that a value that does not
 * convert fails with an error naming the column.
 */
static void
check_values(const CsSubscription *sub, const CsEvent *ev)
{
	if (ev->values == NULL)
		return;
	for (int f = 0; f < sub->shape.nfields; f++)
		if (ev->values[f] != NULL)
			check_value(sub, f, ev->values[f]);
}

/*
 * Apply one subscription's new events idx[0..n) key by key, with the
 * outcome of applying them one by one in stream order.  Only a key's
 * "record" events can take effect: those with a version above every earlier
 * event of the batch.  The last record (the newest version) is the winner.
 * In soft mode, when the winner is a delete, which keeps the cached fields,
 * the last upsert record before it is applied first (one more statement,
 * only for such batches).  The version guard decides against the cached
 * version (and, in hard mode, the tombstones).  Every other event stays
 * STALE.
 */
static void
apply_subscription(CsSubscription *sub, const CsEvent *events,
				   CsApplyResult *results, const int *idx, int n)
{
	int		   *upserts = palloc(sizeof(int) * n);
	int		   *deletes = palloc(sizeof(int) * n);
	int		   *before_delete = palloc(sizeof(int) * n);
	int			nup = 0,
				ndel = 0,
				nbefore = 0;

	if (n == 1)
		check_values(sub, &events[idx[0]]);
	for (int k = 0; k < n;)
	{
		int			winner = idx[k];
		int			last_update = -1;
		int			end = k;

		for (; end < n && strcmp(events[idx[end]].key, events[winner].key) == 0; end++)
		{
			const CsEvent *ev = &events[idx[end]];

			if (end > k && ev->version <= events[winner].version)
				continue;		/* not a record: stale whatever the cache holds */
			if (events[winner].type != CS_EVENT_DELETE && end > k)
				last_update = winner;
			winner = idx[end];
		}
		if (events[winner].type != CS_EVENT_DELETE)
			upserts[nup++] = winner;
		else if (sub->hard_delete)
			deletes[ndel++] = winner;
		else
		{
			if (last_update >= 0)
				before_delete[nbefore++] = last_update;
			upserts[nup++] = winner;
		}
		k = end;
	}
	run_statement(sub, false, events, results, before_delete, nbefore);
	run_statement(sub, false, events, results, upserts, nup);
	run_statement(sub, true, events, results, deletes, ndel);
	pfree(upserts);
	pfree(deletes);
	pfree(before_delete);
}

/*
 * The new events idx[0..n), subscription by subscription (each run of idx
 * sorted by key).
 */
static void
apply_new(const CsEvent *events, CsApplyResult *results, int *idx, int n)
{
	qsort_arg(idx, n, sizeof(int), cmp_by_key_stream, (void *) events);
	for (int k = 0; k < n;)
	{
		int			end = k;

		while (end < n && events[idx[end]].sub == events[idx[k]].sub)
			end++;
		apply_subscription(cs_subscription_get(events[idx[k]].sub), events,
						   results, idx + k, end - k);
		k = end;
	}
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
		apply_new(events, results, idx, n);
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
