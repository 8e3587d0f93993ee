/*-------------------------------------------------------------------------
 * cs_capture.c
 *	  The capture trigger: one outbox row per published change, in C.
 *
 * citizen_sync.capture_row() is the AFTER ROW trigger that capture()
 * attaches to a table.  Its arguments: aggregate type, key column, the
 * event names of INSERT, UPDATE and DELETE, then the published columns
 * (none: all).  Per row it
 *
 *	1. renders the published columns of the new row (and, for an UPDATE
 *	   that changed one of them, of the old row) as jsonb, with to_jsonb()
 *	   on a record of exactly those columns: the same conversion, column by
 *	   column, as to_jsonb() of the whole row followed by removing the other
 *	   keys, which is what the PL/pgSQL trigger of 0.1.0 did;
 *	2. skips an UPDATE whose published columns are unchanged (binary equal,
 *	   or equal as jsonb, e.g. 1.0 and 1.00), refuses a changed key;
 *	3. writes the version counter and the outbox row in one statement (a
 *	   plan kept for the backend's life): the version is the greater of the
 *	   last one + 1 and the clock in microseconds since 1970, its row lock,
 *	   held to commit, orders concurrent changes of one aggregate;
 *	4. arms the publisher's wake-up at commit (cs_notify.c).
 *
 * The payload equals emit_change()'s (which resync() still uses):
 * {event_version, event_timestamp, data: {<aggregate>_id, snapshot}}, no
 * snapshot for a deletion, data.<aggregate>_id the key as to_jsonb() renders
 * it (a number for integer keys, a string for text and uuid keys).
 *
 * Security: the function is SECURITY DEFINER, owned by the NOLOGIN role
 * citizen_sync_capture, with search_path pinned: fmgr switches to that role
 * before calling here, so the output functions and casts to_jsonb() runs,
 * and the SQL below, run with its rights only.  check_capture_safety()
 * (capture() and the event trigger) keeps the column types of captured
 * tables free of code a non-superuser controls.  The SQL is schema
 * qualified throughout.
 *
 * What the arguments and the table's columns make of a trigger is cached
 * per trigger OID, and forgotten on any relcache invalidation of its table
 * (ALTER TABLE, CREATE OR REPLACE TRIGGER, ...).
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "catalog/pg_type.h"
#include "commands/trigger.h"
#include "executor/spi.h"
#include "funcapi.h"
#include "nodes/makefuncs.h"
#include "utils/builtins.h"
#include "utils/datetime.h"
#include "utils/datum.h"
#include "utils/fmgroids.h"
#include "utils/hsearch.h"
#include "utils/inval.h"
#include "utils/jsonb.h"
#include "utils/memutils.h"
#include "utils/numeric.h"
#include "utils/rel.h"
#include "utils/timestamp.h"

PG_FUNCTION_INFO_V1(citizen_sync_capture_row);

/* cs_notify.c */
extern PGDLLEXPORT Datum citizen_sync_notify_publisher(PG_FUNCTION_ARGS);

/* The trigger arguments before the published columns. */
#define CAPTURE_FIXED_ARGS	5

/*
 * The version counter and the outbox row, in one statement.  $1 aggregate
 * type, $2 key as text, $3 the clock in microseconds since 1970, $4 event
 * name, $5 the payload without event_version.
 */
#define EMIT_SQL \
	"WITH v AS (" \
	"  INSERT INTO citizen_sync.aggregate_versions AS v (aggregate_type, aggregate_id, last_version)" \
	"  VALUES ($1, $2, $3)" \
	"  ON CONFLICT (aggregate_type, aggregate_id) DO UPDATE" \
	"     SET last_version = GREATEST(v.last_version OPERATOR(pg_catalog.+) 1, $3)," \
	"         last_changed_at = pg_catalog.now()" \
	"  RETURNING v.last_version)" \
	" INSERT INTO citizen_sync.outbox (aggregate_type, aggregate_id, event_type, payload)" \
	" SELECT $1, $2, $4, $5 OPERATOR(pg_catalog.||)" \
	"        pg_catalog.jsonb_build_object('event_version', v.last_version) FROM v"

/* A trigger's arguments, resolved against its table. */
typedef struct CaptureInfo
{
	Oid			tgoid;			/* hash key */
	Oid			relid;
	bool		valid;			/* false once its table was invalidated */
	char	   *aggregate;
	char	   *names[3];		/* event names: insert, update, delete */
	char	   *id_column;
	char	   *id_field;		/* "<aggregate>_id" */
	int			ncols;
	AttrNumber *attnums;		/* published columns of the table */
	TupleDesc	snapdesc;		/* their names and types, blessed */
} CaptureInfo;

static HTAB *capture_cache = NULL;
static MemoryContext capture_cxt = NULL;
static SPIPlanPtr emit_plan = NULL;
static FmgrInfo to_jsonb_record;	/* to_jsonb(record) */

/* Relcache invalidation: forget the triggers of that table (or all). */
static void
capture_relcache_cb(Datum arg, Oid relid)
{
	HASH_SEQ_STATUS seq;
	CaptureInfo *ci;

	if (capture_cache == NULL)
		return;
	hash_seq_init(&seq, capture_cache);
	while ((ci = hash_seq_search(&seq)) != NULL)
		if (relid == InvalidOid || ci->relid == relid)
			ci->valid = false;
}

/* The cache, the FmgrInfo of to_jsonb(record), the callback: once. */
static void
capture_init(void)
{
	HASHCTL		ctl;
	FuncExpr   *expr;
	MemoryContext old;

	if (capture_cache != NULL)
		return;
	capture_cxt = AllocSetContextCreate(TopMemoryContext, "citizen_sync capture",
										ALLOCSET_SMALL_SIZES);
	old = MemoryContextSwitchTo(capture_cxt);
	/* to_jsonb(anyelement) learns its argument's type from fn_expr */
	fmgr_info_cxt(F_TO_JSONB, &to_jsonb_record, capture_cxt);
	expr = makeFuncExpr(F_TO_JSONB, JSONBOID,
						list_make1(makeNullConst(RECORDOID, -1, InvalidOid)),
						InvalidOid, InvalidOid, COERCE_EXPLICIT_CALL);
	to_jsonb_record.fn_expr = (Node *) expr;
	MemoryContextSwitchTo(old);

	memset(&ctl, 0, sizeof(ctl));
	ctl.keysize = sizeof(Oid);
	ctl.entrysize = sizeof(CaptureInfo);
	ctl.hcxt = capture_cxt;
	capture_cache = hash_create("citizen_sync capture triggers", 16, &ctl,
								HASH_ELEM | HASH_BLOBS | HASH_CONTEXT);
	CacheRegisterRelcacheCallback(capture_relcache_cb, (Datum) 0);
}

/* The attribute number of column name in desc, or an error. */
static AttrNumber
column_attnum(TupleDesc desc, Relation rel, const char *name)
{
	for (int i = 0; i < desc->natts; i++)
	{
		Form_pg_attribute att = TupleDescAttr(desc, i);

		if (!att->attisdropped && strcmp(NameStr(att->attname), name) == 0)
			return att->attnum;
	}
	ereport(ERROR,
			(errcode(ERRCODE_UNDEFINED_COLUMN),
			 errmsg("column \"%s\" captured by citizen_sync does not exist in table \"%s\"",
					name, RelationGetRelationName(rel)),
			 errhint("Capture the table again (citizen_sync.capture()) with its current columns.")));
	return InvalidAttrNumber;	/* not reached */
}

/* Fill ci from the trigger's arguments and the table's columns. */
static void
capture_info_load(CaptureInfo *ci, Trigger *trigger, Relation rel)
{
	TupleDesc	desc = RelationGetDescr(rel);
	MemoryContext old;
	int			nlisted;
	int			n = 0;

	if (trigger->tgnargs < CAPTURE_FIXED_ARGS)
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("trigger \"%s\" on table \"%s\" does not have the arguments citizen_sync.capture() gives it",
						trigger->tgname, RelationGetRelationName(rel)),
				 errhint("Capture the table again with citizen_sync.capture().")));
	old = MemoryContextSwitchTo(capture_cxt);
	ci->relid = RelationGetRelid(rel);
	ci->aggregate = pstrdup(trigger->tgargs[0]);
	ci->id_column = pstrdup(trigger->tgargs[1]);
	for (int i = 0; i < 3; i++)
		ci->names[i] = pstrdup(trigger->tgargs[2 + i]);
	ci->id_field = psprintf("%s_id", ci->aggregate);

	nlisted = trigger->tgnargs - CAPTURE_FIXED_ARGS;
	ci->attnums = palloc(sizeof(AttrNumber) * Max(nlisted, desc->natts));
	if (nlisted == 0)
	{
		for (int i = 0; i < desc->natts; i++)
			if (!TupleDescAttr(desc, i)->attisdropped)
				ci->attnums[n++] = TupleDescAttr(desc, i)->attnum;
	}
	else
	{
		for (int i = 0; i < nlisted; i++)
		{
			AttrNumber a = column_attnum(desc, rel, trigger->tgargs[CAPTURE_FIXED_ARGS + i]);
			bool		seen = false;

			for (int j = 0; j < n; j++)
				seen |= (ci->attnums[j] == a);
			if (!seen)
				ci->attnums[n++] = a;
		}
	}
	ci->ncols = n;
	(void) column_attnum(desc, rel, ci->id_column);

	ci->snapdesc = CreateTemplateTupleDesc(n);
	for (int i = 0; i < n; i++)
	{
		Form_pg_attribute att = TupleDescAttr(desc, ci->attnums[i] - 1);

		TupleDescInitEntry(ci->snapdesc, (AttrNumber) (i + 1), NameStr(att->attname),
						   att->atttypid, att->atttypmod, att->attndims);
	}
	ci->snapdesc = BlessTupleDesc(ci->snapdesc);
	MemoryContextSwitchTo(old);
	ci->valid = true;
}

/* The cached description of this trigger, (re)loaded when needed. */
static CaptureInfo *
capture_info(Trigger *trigger, Relation rel)
{
	CaptureInfo *ci;
	bool		found;

	capture_init();
	ci = hash_search(capture_cache, &trigger->tgoid, HASH_ENTER, &found);
	if (!found || !ci->valid)
	{
		/* a reloaded entry leaks its old strings: invalidations are rare */
		ci->valid = false;
		capture_info_load(ci, trigger, rel);
	}
	return ci;
}

/* The published columns of tuple: values and nulls (ncols each). */
static void
published_values(CaptureInfo *ci, HeapTuple tuple, TupleDesc desc, Datum *values, bool *nulls)
{
	for (int i = 0; i < ci->ncols; i++)
		values[i] = heap_getattr(tuple, ci->attnums[i], desc, &nulls[i]);
}

/* Do two value sets differ in a byte (so possibly as JSON)? */
static bool
values_differ(CaptureInfo *ci, Datum *a, bool *an, Datum *b, bool *bn)
{
	for (int i = 0; i < ci->ncols; i++)
	{
		Form_pg_attribute att = TupleDescAttr(ci->snapdesc, i);

		if (an[i] != bn[i])
			return true;
		if (!an[i] && !datumIsEqual(a[i], b[i], att->attbyval, att->attlen))
			return true;
	}
	return false;
}

/* The snapshot: to_jsonb() of a record of the published columns. */
static Jsonb *
snapshot(CaptureInfo *ci, Datum *values, bool *nulls)
{
	HeapTuple	tuple = heap_form_tuple(ci->snapdesc, values, nulls);

	/* heap_copy_tuple_as_datum() flattens TOASTed values */
	return DatumGetJsonbP(FunctionCall1(&to_jsonb_record,
										heap_copy_tuple_as_datum(tuple, ci->snapdesc)));
}

/* The key as a JSON scalar of snap (never NULL: raises instead). */
static JsonbValue *
snapshot_key(CaptureInfo *ci, Jsonb *snap)
{
	JsonbValue *v = getKeyJsonValueFromContainer(&snap->root, ci->id_column,
												 strlen(ci->id_column), NULL);

	if (v == NULL || v->type == jbvNull)
		ereport(ERROR,
				(errcode(ERRCODE_NOT_NULL_VIOLATION),
				 errmsg("captured row has no value in column \"%s\"", ci->id_column)));
	if (v->type != jbvNumeric && v->type != jbvString)
		ereport(ERROR,
				(errcode(ERRCODE_DATATYPE_MISMATCH),
				 errmsg("column \"%s\" captured by citizen_sync is not a bigint, text or uuid key",
						ci->id_column),
				 errhint("Capture the table again with citizen_sync.capture().")));
	return v;
}

static bool
key_equal(JsonbValue *a, JsonbValue *b)
{
	if (a->type != b->type)
		return false;
	if (a->type == jbvString)
		return a->val.string.len == b->val.string.len &&
			memcmp(a->val.string.val, b->val.string.val, a->val.string.len) == 0;
	return DatumGetBool(DirectFunctionCall2(numeric_eq, NumericGetDatum(a->val.numeric),
											NumericGetDatum(b->val.numeric)));
}

/* The key as outbox.aggregate_id holds it: the digits, or the string. */
static text *
key_text(JsonbValue *key)
{
	if (key->type == jbvString)
		return cstring_to_text_with_len(key->val.string.val, key->val.string.len);
	return cstring_to_text(DatumGetCString(DirectFunctionCall1(numeric_out,
															   NumericGetDatum(key->val.numeric))));
}

static void
push_key(JsonbParseState **st, const char *k)
{
	JsonbValue	v;

	v.type = jbvString;
	v.val.string.val = (char *) k;
	v.val.string.len = strlen(k);
	pushJsonbValue(st, WJB_KEY, &v);
}

/*
 * The payload without event_version (the statement adds it):
 * {event_timestamp, data: {<aggregate>_id, snapshot}}; snap NULL for a
 * deletion.  The timestamp is now in UTC, to_char()'s
 * YYYY-MM-DD"T"HH24:MI:SS.MS"Z".
 */
static Jsonb *
payload(CaptureInfo *ci, JsonbValue *key, Jsonb *snap, TimestampTz now)
{
	JsonbParseState *st = NULL;
	JsonbValue	v;
	struct pg_tm tm;
	fsec_t		fsec;
	char		ts[64];

	if (timestamp2tm(now, NULL, &tm, &fsec, NULL, NULL) != 0)
		elog(ERROR, "citizen_sync: clock timestamp out of range");
	snprintf(ts, sizeof(ts), "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ",
			 tm.tm_year, tm.tm_mon, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
			 (int) (fsec / 1000));

	pushJsonbValue(&st, WJB_BEGIN_OBJECT, NULL);
	push_key(&st, "event_timestamp");
	v.type = jbvString;
	v.val.string.val = ts;
	v.val.string.len = strlen(ts);
	pushJsonbValue(&st, WJB_VALUE, &v);
	push_key(&st, "data");
	pushJsonbValue(&st, WJB_BEGIN_OBJECT, NULL);
	push_key(&st, ci->id_field);
	pushJsonbValue(&st, WJB_VALUE, key);
	if (snap != NULL)
	{
		push_key(&st, "snapshot");
		v.type = jbvBinary;
		v.val.binary.data = &snap->root;
		v.val.binary.len = VARSIZE(snap) - VARHDRSZ;
		pushJsonbValue(&st, WJB_VALUE, &v);
	}
	pushJsonbValue(&st, WJB_END_OBJECT, NULL);
	return JsonbValueToJsonb(pushJsonbValue(&st, WJB_END_OBJECT, NULL));
}

/* Version counter and outbox row (EMIT_SQL), then the commit wake-up. */
static void
emit(CaptureInfo *ci, JsonbValue *key, const char *name, Jsonb *snap)
{
	TimestampTz now = GetCurrentTimestamp();
	int64		clock_us = now + (int64) (POSTGRES_EPOCH_JDATE - UNIX_EPOCH_JDATE) * USECS_PER_DAY;
	Datum		values[5];
	int			rc;

	values[0] = CStringGetTextDatum(ci->aggregate);
	values[1] = PointerGetDatum(key_text(key));
	values[2] = Int64GetDatum(clock_us);
	values[3] = CStringGetTextDatum(name);
	values[4] = JsonbPGetDatum(payload(ci, key, snap, now));

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "citizen_sync: SPI_connect failed");
	if (emit_plan == NULL)
	{
		Oid			types[5] = {TEXTOID, TEXTOID, INT8OID, TEXTOID, JSONBOID};
		SPIPlanPtr	plan = SPI_prepare(EMIT_SQL, 5, types);

		if (plan == NULL)
			elog(ERROR, "citizen_sync: preparing the outbox insert failed: %s",
				 SPI_result_code_string(SPI_result));
		if (SPI_keepplan(plan) != 0)
			elog(ERROR, "citizen_sync: keeping the outbox insert's plan failed");
		emit_plan = plan;
	}
	rc = SPI_execute_plan(emit_plan, values, NULL, false, 0);
	if (rc != SPI_OK_INSERT || SPI_processed != 1)
		elog(ERROR, "citizen_sync: writing the outbox row failed: %s", SPI_result_code_string(rc));
	SPI_finish();
	(void) DirectFunctionCall1(citizen_sync_notify_publisher, (Datum) 0);
}

/*
 * citizen_sync.capture_row(): AFTER INSERT OR UPDATE OR DELETE FOR EACH ROW.
 */
Datum
citizen_sync_capture_row(PG_FUNCTION_ARGS)
{
	TriggerData *td = (TriggerData *) fcinfo->context;
	CaptureInfo *ci;
	TupleDesc	desc;
	Datum	   *newv;
	Datum	   *oldv;
	bool	   *newn;
	bool	   *oldn;
	Jsonb	   *snap = NULL;

	if (!CALLED_AS_TRIGGER(fcinfo) || !TRIGGER_FIRED_AFTER(td->tg_event) ||
		!TRIGGER_FIRED_FOR_ROW(td->tg_event))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("citizen_sync.capture_row() must be called as an AFTER ROW trigger"),
				 errhint("Use citizen_sync.capture() to attach it.")));
	ci = capture_info(td->tg_trigger, td->tg_relation);
	desc = RelationGetDescr(td->tg_relation);
	newv = palloc(sizeof(Datum) * ci->ncols);
	oldv = palloc(sizeof(Datum) * ci->ncols);
	newn = palloc(sizeof(bool) * ci->ncols);
	oldn = palloc(sizeof(bool) * ci->ncols);

	if (TRIGGER_FIRED_BY_INSERT(td->tg_event))
	{
		published_values(ci, td->tg_trigtuple, desc, newv, newn);
		snap = snapshot(ci, newv, newn);
		emit(ci, snapshot_key(ci, snap), ci->names[0], snap);
	}
	else if (TRIGGER_FIRED_BY_UPDATE(td->tg_event))
	{
		Jsonb	   *old_snap;

		published_values(ci, td->tg_trigtuple, desc, oldv, oldn);
		published_values(ci, td->tg_newtuple, desc, newv, newn);
		if (!values_differ(ci, newv, newn, oldv, oldn))
			return PointerGetDatum(NULL);	/* no published column changed */
		snap = snapshot(ci, newv, newn);
		old_snap = snapshot(ci, oldv, oldn);
		if (compareJsonbContainers(&snap->root, &old_snap->root) == 0)
			return PointerGetDatum(NULL);	/* changed bytes, same JSON */
		if (!key_equal(snapshot_key(ci, snap), snapshot_key(ci, old_snap)))
			ereport(ERROR,
					(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
					 errmsg("cannot change column \"%s\" of a table captured by citizen_sync",
							ci->id_column),
					 errhint("Delete the row and insert it with the new id instead.")));
		emit(ci, snapshot_key(ci, snap), ci->names[1], snap);
	}
	else if (TRIGGER_FIRED_BY_DELETE(td->tg_event))
	{
		published_values(ci, td->tg_trigtuple, desc, oldv, oldn);
		emit(ci, snapshot_key(ci, snapshot(ci, oldv, oldn)), ci->names[2], NULL);
	}
	return PointerGetDatum(NULL);
}
