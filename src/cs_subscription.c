/*-------------------------------------------------------------------------
 * cs_subscription.c
 *	  Load the subscriptions of this database and their field descriptions.
 *
 * One query lists the subscriptions, and per subscription one lists its
 * event names and one its fields (citizen_sync.subscription_fields(), the
 * single description of a target's fields).  Everything is copied into a
 * memory context of its own, dropped with the prepared plans on reload.
 * Identifiers are quoted and types written by format_type() in the catalog
 * queries: nothing of an event ever reaches the SQL text.
 *
 * A relcache callback marks the set stale when the catalog table or one of
 * the targets is invalidated; subscribe() and unsubscribe() invalidate the
 * catalog table (citizen_sync.subscriptions_changed()), ALTER TABLE
 * invalidates its table.
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "catalog/namespace.h"
#include "commands/dbcommands.h"
#include "miscadmin.h"
#include "catalog/pg_type.h"
#include "cs_config.h"
#include "cs_guc.h"
#include "cs_subscription.h"
#include "fmgr.h"
#include "utils/builtins.h"
#include "utils/inval.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"

PG_FUNCTION_INFO_V1(citizen_sync_subscriptions_changed);

static MemoryContext subs_cxt = NULL;
static CsSubscription *subs = NULL;
static int	nsubs = 0;
static bool stale = true;
static bool loaded = false;		/* the last load completed */
static bool callback_registered = false;
static Oid	catalog_relid = InvalidOid;

/* The last topic looked up and its answer (messages come in runs). */
static char last_topic[250];
static int	last_sub = -1;
static void *last_set = NULL;
static const char *last_topics_setting = NULL;

#define LIST_SQL \
	"SELECT c.target::pg_catalog.oid," \
	"  pg_catalog.quote_ident(n.nspname) OPERATOR(pg_catalog.||) '.'" \
	"    OPERATOR(pg_catalog.||) pg_catalog.quote_ident(r.relname)," \
	"  c.aggregate_type, c.topic, c.builtin, c.delete_mode OPERATOR(pg_catalog.=) 'hard'," \
	"  pg_catalog.quote_ident(c.key_column), pg_catalog.format_type(a.atttypid, a.atttypmod)" \
	" FROM citizen_sync.subscription_catalog c" \
	" JOIN pg_catalog.pg_class r ON r.oid OPERATOR(pg_catalog.=) c.target" \
	" JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) r.relnamespace" \
	" JOIN pg_catalog.pg_attribute a ON a.attrelid OPERATOR(pg_catalog.=) c.target" \
	"  AND a.attname OPERATOR(pg_catalog.=) c.key_column AND NOT a.attisdropped" \
	" ORDER BY c.target::pg_catalog.oid"

#define NAMES_SQL \
	"SELECT e.key, e.value OPERATOR(pg_catalog.=) 'delete'" \
	" FROM citizen_sync.subscription_catalog c," \
	"  pg_catalog.jsonb_each_text(c.event_types) e" \
	" WHERE c.target OPERATOR(pg_catalog.=) $1::pg_catalog.oid::pg_catalog.regclass" \
	" ORDER BY e.key"

#define FIELDS_SQL \
	"SELECT pg_catalog.quote_ident(f.column_name), f.field, f.type_name, f.category," \
	"  f.type_name IN ('json', 'jsonb'), f.default_expr, f.required," \
	"  COALESCE(f.max_chars, 0), a.atttypid, a.atttypmod, f.column_name" \
	" FROM citizen_sync.subscription_fields($1::pg_catalog.oid::pg_catalog.regclass) f" \
	" JOIN pg_catalog.pg_attribute a ON a.attrelid OPERATOR(pg_catalog.=) $1" \
	"  AND a.attnum OPERATOR(pg_catalog.=) f.attnum" \
	" ORDER BY f.attnum"

/* Relcache callback: the catalog or a target changed (or everything). */
static void
invalidate(Datum arg, Oid relid)
{
	if (relid == InvalidOid || relid == catalog_relid)
	{
		stale = true;
		return;
	}
	for (int i = 0; i < nsubs; i++)
		if (subs[i].target == relid)
			stale = true;
}

/*
 * Run a catalog query (with target as $1 unless InvalidOid).  SPI returns in
 * its own procedure context: the loader goes on allocating in subs_cxt.
 */
static void
run_query(const char *sql, Oid target)
{
	Oid			argtype = OIDOID;
	Datum		arg = ObjectIdGetDatum(target);

	if (SPI_execute_with_args(sql, target != InvalidOid ? 1 : 0, &argtype, &arg,
							  NULL, true, 0) != SPI_OK_SELECT)
		elog(ERROR, "citizen_sync: reading the subscriptions failed");
	MemoryContextSwitchTo(subs_cxt);
}

/* Column col of row r of the last SPI result as a palloc'd string or NULL. */
static char *
text_at(int r, int col)
{
	char	   *v = SPI_getvalue(SPI_tuptable->vals[r], SPI_tuptable->tupdesc, col);

	return v ? pstrdup(v) : NULL;
}

static Datum
datum_at(int r, int col, bool *isnull)
{
	return SPI_getbinval(SPI_tuptable->vals[r], SPI_tuptable->tupdesc, col, isnull);
}

/* The event names of s (from the catalog's event_types). */
static void
load_names(CsSubscription *s)
{
	CsEventName *names;

	run_query(NAMES_SQL, s->target);
	names = palloc(sizeof(CsEventName) * Max(SPI_processed, 1));
	for (uint64 r = 0; r < SPI_processed; r++)
	{
		bool		isnull;

		names[r].name = text_at(r, 1);
		names[r].type = DatumGetBool(datum_at(r, 2, &isnull))
			? CS_EVENT_DELETE : CS_EVENT_UPSERT;
	}
	s->shape.names = names;
	s->shape.nnames = (int) SPI_processed;
}

/* The parser's kind of a field, from its column's type category. */
static CsFieldKind
field_kind(char category, bool is_json)
{
	if (is_json)
		return CS_FIELD_JSON;
	switch (category)
	{
		case TYPCATEGORY_STRING:
			return CS_FIELD_STRING;
		case TYPCATEGORY_BOOLEAN:
			return CS_FIELD_BOOL;
		case TYPCATEGORY_NUMERIC:
			return CS_FIELD_NUMBER;
		default:
			return CS_FIELD_SCALAR;
	}
}

/* The fields of s: its shape and the apply SQL's columns. */
static bool
load_fields(CsSubscription *s, const char *aggregate_type)
{
	int			n;
	CsFieldSpec *fields;
	CsScanField *scan;

	run_query(FIELDS_SQL, s->target);
	n = (int) SPI_processed;
	if (n + 1 > CS_SCAN_MAX_FIELDS)
	{
		ereport(WARNING,
				(errmsg("citizen_sync: subscription of %s has %d columns, more than %d; it is not applied",
						s->target_name, n, CS_SCAN_MAX_FIELDS - 1)));
		return false;
	}
	fields = palloc0(sizeof(CsFieldSpec) * Max(n, 1));
	scan = palloc0(sizeof(CsScanField) * (n + 1));
	s->columns = palloc(sizeof(char *) * Max(n, 1));
	s->types = palloc(sizeof(char *) * Max(n, 1));
	s->defaults = palloc(sizeof(char *) * Max(n, 1));
	s->typids = palloc(sizeof(Oid) * Max(n, 1));
	s->typmods = palloc(sizeof(int32) * Max(n, 1));
	scan[0].name = "id";
	scan[0].path = "data.snapshot.id";
	for (int i = 0; i < n; i++)
	{
		bool		isnull;
		char	   *field = text_at(i, 2);

		s->columns[i] = text_at(i, 1);
		s->types[i] = text_at(i, 3);
		s->defaults[i] = text_at(i, 6);
		s->typids[i] = DatumGetObjectId(datum_at(i, 9, &isnull));
		s->typmods[i] = DatumGetInt32(datum_at(i, 10, &isnull));
		fields[i].column = text_at(i, 11);
		fields[i].kind = field_kind(DatumGetChar(datum_at(i, 4, &isnull)),
									DatumGetBool(datum_at(i, 5, &isnull)));
		fields[i].required = DatumGetBool(datum_at(i, 7, &isnull));
		fields[i].max_chars = DatumGetInt32(datum_at(i, 8, &isnull));
		scan[1 + i].name = field;
		scan[1 + i].path = psprintf("data.snapshot.%s", field);
	}
	s->shape.aggregate_type = pstrdup(aggregate_type);
	s->shape.fields = fields;
	s->shape.nfields = n;
	s->shape.scan.id.name = psprintf("%s_id", aggregate_type);
	s->shape.scan.id.path = psprintf("data.%s_id", aggregate_type);
	s->shape.scan.snapshot = scan;
	s->shape.scan.nsnapshot = n + 1;
	return true;
}

/* Row r of LIST_SQL into *s; false (with a WARNING) when it cannot serve. */
static bool
load_one(int r, CsSubscription *s)
{
	bool		isnull;
	char	   *aggregate_type;

	memset(s, 0, sizeof(*s));
	s->target = DatumGetObjectId(datum_at(r, 1, &isnull));
	s->target_name = text_at(r, 2);
	aggregate_type = text_at(r, 3);
	s->topic = text_at(r, 4);
	s->builtin = DatumGetBool(datum_at(r, 5, &isnull));
	s->hard_delete = DatumGetBool(datum_at(r, 6, &isnull));
	s->key_column = text_at(r, 7);
	s->key_type = text_at(r, 8);
	if (strcmp(s->key_type, "bigint") == 0)
		s->shape.key_kind = CS_KEY_BIGINT;
	else if (strcmp(s->key_type, "text") == 0)
		s->shape.key_kind = CS_KEY_TEXT;
	else if (strcmp(s->key_type, "uuid") == 0)
		s->shape.key_kind = CS_KEY_UUID;
	else
	{
		ereport(WARNING,
				(errmsg("citizen_sync: the key column of %s has type %s; its subscription is not applied",
						s->target_name, s->key_type),
				 errhint("Keys may be bigint, text or uuid; change the column type or unsubscribe the table.")));
		return false;
	}
	load_names(s);
	return load_fields(s, aggregate_type);
}

/* Drop the loaded set and its plans. */
static void
unload(void)
{
	for (int i = 0; i < nsubs; i++)
	{
		if (subs[i].upsert_plan)
			SPI_freeplan(subs[i].upsert_plan);
		if (subs[i].delete_plan)
			SPI_freeplan(subs[i].delete_plan);
	}
	subs = NULL;
	nsubs = 0;
	loaded = false;
	last_set = NULL;
	if (subs_cxt)
		MemoryContextReset(subs_cxt);
}

void
cs_subscriptions_refresh(void)
{
	MemoryContext old;
	int			n,
				kept = 0;
	CsSubscription *set;
	SPITupleTable *list;

	if (!callback_registered)
	{
		CacheRegisterRelcacheCallback(invalidate, (Datum) 0);
		subs_cxt = AllocSetContextCreate(TopMemoryContext, "citizen_sync subscriptions",
										 ALLOCSET_SMALL_SIZES);
		callback_registered = true;
	}
	if (!stale && loaded)
		return;
	unload();
	stale = false;				/* an invalidation from here on counts */
	catalog_relid = get_relname_relid("subscription_catalog",
									  get_namespace_oid("citizen_sync", false));
	if (!OidIsValid(catalog_relid))
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("extension citizen_sync in database \"%s\" is older than its library",
						get_database_name(MyDatabaseId)),
				 errdetail("Table citizen_sync.subscription_catalog does not exist."),
				 errhint("Run ALTER EXTENSION citizen_sync UPDATE.")));
	old = MemoryContextSwitchTo(subs_cxt);
	run_query(LIST_SQL, InvalidOid);
	list = SPI_tuptable;
	n = (int) SPI_processed;
	set = palloc0(sizeof(CsSubscription) * Max(n, 1));
	for (int r = 0; r < n; r++)
	{
		SPI_tuptable = list;
		if (load_one(r, &set[kept]))
			kept++;
	}
	subs = set;
	nsubs = kept;
	loaded = true;
	MemoryContextSwitchTo(old);
}

int
cs_subscription_count(void)
{
	return nsubs;
}

CsSubscription *
cs_subscription_get(int i)
{
	Assert(i >= 0 && i < nsubs);
	return &subs[i];
}

/* topic is one of citizen_sync.topics (the built-in subscription's). */
static bool
in_topics_setting(const char *topic)
{
	char		topics[CS_MAX_TOPICS][250];
	char		errbuf[256];
	int			n = cs_parse_topics(cs_topics, topics, CS_MAX_TOPICS, errbuf, sizeof(errbuf));

	for (int i = 0; i < n; i++)
		if (strcmp(topics[i], topic) == 0)
			return true;
	return false;
}


int
cs_subscription_for_topic(const char *topic)
{
	int			builtin = -1;

	if (last_set == (void *) subs && subs != NULL && last_topics_setting == cs_topics &&
		strcmp(last_topic, topic) == 0)
		return last_sub;
	last_set = subs;
	last_topics_setting = cs_topics;
	strlcpy(last_topic, topic, sizeof(last_topic));
	last_sub = -1;

	for (int i = 0; i < nsubs; i++)
	{
		if (subs[i].topic != NULL && strcmp(subs[i].topic, topic) == 0)
			return last_sub = i;
		if (subs[i].topic == NULL)
			builtin = i;
	}
	return last_sub = (builtin >= 0 && in_topics_setting(topic) ? builtin : -1);
}

int
cs_subscription_for_target(Oid target)
{
	for (int i = 0; i < nsubs; i++)
		if (target == InvalidOid ? subs[i].builtin : subs[i].target == target)
			return i;
	return -1;
}

static int
cmp_strings(const void *a, const void *b)
{
	return strcmp(*(char *const *) a, *(char *const *) b);
}

char *
cs_subscription_topics(void)
{
	char		topics[CS_MAX_TOPICS][250];
	char		errbuf[256];
	char	  **all = palloc(sizeof(char *) * (nsubs + CS_MAX_TOPICS + 1));
	int			n = 0;
	StringInfoData out;

	for (int i = 0; i < nsubs; i++)
	{
		if (subs[i].topic != NULL)
			all[n++] = subs[i].topic;
		else
		{
			int			k = cs_parse_topics(cs_topics, topics, CS_MAX_TOPICS,
											errbuf, sizeof(errbuf));

			for (int t = 0; t < k; t++)
				all[n++] = pstrdup(topics[t]);
		}
	}
	qsort(all, n, sizeof(char *), cmp_strings);
	initStringInfo(&out);
	for (int i = 0; i < n; i++)
		if (i == 0 || strcmp(all[i], all[i - 1]) != 0)
			appendStringInfo(&out, "%s%s", out.len ? "," : "", all[i]);
	return out.data;
}

/*
 * citizen_sync.subscriptions_changed(): invalidate the catalog table, so
 * that every backend reloads the subscriptions at its next transaction (the
 * consumer checks at least once a second).
 */
Datum
citizen_sync_subscriptions_changed(PG_FUNCTION_ARGS)
{
	Oid			relid = get_relname_relid("subscription_catalog",
										  get_namespace_oid("citizen_sync", false));

	if (OidIsValid(relid))
		CacheInvalidateRelcacheByRelid(relid);
	PG_RETURN_VOID();
}
