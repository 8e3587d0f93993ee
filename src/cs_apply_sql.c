/*-------------------------------------------------------------------------
 * cs_apply_sql.c
 *	  The apply statements of one subscription, from its field description.
 *
 * Identifiers come quoted and types written by format_type() from the
 * catalog (cs_subscription.c); the events' values only ever travel as the
 * statements' array arguments, converted in SQL by each column type's input
 * rules (text to the type: an I/O conversion, or the type's cast from text).
 * A field that is absent or null takes the column's default, if it has one.
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "cs_apply.h"
#include "cs_subscription.h"
#include "lib/stringinfo.h"

/* ROWS FROM over the arguments: u(k, v, a, f1, ...). */
static void
append_rows_from(StringInfo sql, const CsSubscription *sub, bool fields)
{
	int			n = fields ? sub->shape.nfields : 0;

	appendStringInfoString(sql,
						   " FROM ROWS FROM (pg_catalog.unnest($1::pg_catalog.text[]),"
						   " pg_catalog.unnest($2::pg_catalog.int8[]),"
						   " pg_catalog.unnest($3::pg_catalog.bool[])");
	for (int f = 0; f < n; f++)
		appendStringInfo(sql, ", pg_catalog.unnest($%d::pg_catalog.text[])", 4 + f);
	appendStringInfoString(sql, ") AS u(k, v, a");
	for (int f = 0; f < n; f++)
		appendStringInfo(sql, ", f%d", f + 1);
	appendStringInfoChar(sql, ')');
}

/* The tombstone of key expression k at version v or newer exists. */
static void
append_tombstone_guard(StringInfo sql, const CsSubscription *sub)
{
	appendStringInfo(sql,
					 "EXISTS (SELECT 1 FROM citizen_sync.tombstones t"
					 " WHERE t.target OPERATOR(pg_catalog.=) %u::pg_catalog.oid::pg_catalog.regclass"
					 " AND t.key OPERATOR(pg_catalog.=) u.k"
					 " AND t.event_version OPERATOR(pg_catalog.>=) u.v)",
					 sub->target);
}

char *
cs_apply_upsert_sql(const CsSubscription *sub)
{
	StringInfoData sql;
	int			n = sub->shape.nfields;
	bool		soft = !sub->hard_delete;

	initStringInfo(&sql);
	appendStringInfo(&sql, "INSERT INTO %s AS c (%s", sub->target_name, sub->key_column);
	for (int f = 0; f < n; f++)
		appendStringInfo(&sql, ", %s", sub->columns[f]);
	appendStringInfoString(&sql, soft ? ", event_version, is_active, deleted_at, last_synced_at)"
						   : ", event_version, last_synced_at)");
	appendStringInfo(&sql, " SELECT u.k::%s", sub->key_type);
	for (int f = 0; f < n; f++)
	{
		if (sub->defaults[f])
			appendStringInfo(&sql, ", COALESCE(u.f%d::%s, %s)", f + 1, sub->types[f],
							 sub->defaults[f]);
		else
			appendStringInfo(&sql, ", u.f%d::%s", f + 1, sub->types[f]);
	}
	appendStringInfoString(&sql, soft
						   ? ", u.v, u.a, CASE WHEN u.a THEN NULL ELSE pg_catalog.now() END, pg_catalog.now()"
						   : ", u.v, pg_catalog.now()");
	append_rows_from(&sql, sub, true);
	if (!soft)
	{
		appendStringInfoString(&sql, " WHERE NOT ");
		append_tombstone_guard(&sql, sub);
	}
	appendStringInfo(&sql, " ON CONFLICT (%s) DO UPDATE SET", sub->key_column);
	for (int f = 0; f < n; f++)
	{
		if (soft)
			appendStringInfo(&sql, " %s = CASE WHEN EXCLUDED.is_active THEN EXCLUDED.%s ELSE c.%s END,",
							 sub->columns[f], sub->columns[f], sub->columns[f]);
		else
			appendStringInfo(&sql, " %s = EXCLUDED.%s,", sub->columns[f], sub->columns[f]);
	}
	appendStringInfoString(&sql, " event_version = EXCLUDED.event_version,");
	if (soft)
		appendStringInfoString(&sql,
							   " is_active = EXCLUDED.is_active,"
							   " deleted_at = CASE WHEN EXCLUDED.is_active THEN NULL"
							   " ELSE COALESCE(c.deleted_at, pg_catalog.now()) END,");
	appendStringInfo(&sql,
					 " last_synced_at = pg_catalog.now()"
					 " WHERE c.event_version OPERATOR(pg_catalog.<) EXCLUDED.event_version"
					 " RETURNING c.%s::pg_catalog.text", sub->key_column);
	return sql.data;
}

char *
cs_apply_delete_sql(const CsSubscription *sub)
{
	StringInfoData sql;

	initStringInfo(&sql);
	appendStringInfoString(&sql, "WITH win AS (SELECT u.k, u.v");
	append_rows_from(&sql, sub, false);
	appendStringInfo(&sql,
					 " WHERE NOT EXISTS (SELECT 1 FROM %s c WHERE c.%s OPERATOR(pg_catalog.=) u.k::%s"
					 " AND c.event_version OPERATOR(pg_catalog.>=) u.v) AND NOT ",
					 sub->target_name, sub->key_column, sub->key_type);
	append_tombstone_guard(&sql, sub);
	appendStringInfo(&sql,
					 "), gone AS (DELETE FROM %s c USING win"
					 " WHERE c.%s OPERATOR(pg_catalog.=) win.k::%s RETURNING 1),"
					 " kept AS (INSERT INTO citizen_sync.tombstones AS t (target, key, event_version)"
					 " SELECT %u::pg_catalog.oid::pg_catalog.regclass, win.k, win.v FROM win"
					 " ON CONFLICT (target, key) DO UPDATE SET event_version = EXCLUDED.event_version,"
					 " deleted_at = pg_catalog.now() RETURNING 1)"
					 " SELECT win.k FROM win",
					 sub->target_name, sub->key_column, sub->key_type, sub->target);
	return sql.data;
}
