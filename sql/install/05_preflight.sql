------------------------------------------------------------------------------
-- Preflight: what must not exist before the extension creates its objects
------------------------------------------------------------------------------

-- The extension creates schema cache (the read-only copy of citizens) and
-- owns it.  A schema of that name made by someone else would otherwise stop
-- CREATE EXTENSION with a bare 'schema "cache" already exists' further down.
DO $preflight$
DECLARE
    owner    name;
    relcount bigint;
    proccount bigint;
BEGIN
    SELECT pg_catalog.pg_get_userbyid(n.nspowner) INTO owner
      FROM pg_catalog.pg_namespace n
     WHERE n.nspname OPERATOR(pg_catalog.=) 'cache'::name;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    SELECT pg_catalog.count(*) INTO relcount
      FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) c.relnamespace
     WHERE n.nspname OPERATOR(pg_catalog.=) 'cache'::name;
    SELECT pg_catalog.count(*) INTO proccount
      FROM pg_catalog.pg_proc p JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) p.pronamespace
     WHERE n.nspname OPERATOR(pg_catalog.=) 'cache'::name;
    RAISE EXCEPTION 'citizen_sync cannot be installed: schema "cache" already exists'
        USING ERRCODE = 'duplicate_schema',
              DETAIL = pg_catalog.format('Schema "cache" in database %I is owned by %I and holds %s relation(s) and %s function(s); citizen_sync creates schema "cache" for its own tables (cache.citizen_refs, cache.processed_events) and must own it.',
                                         pg_catalog.current_database(), owner, relcount, proccount),
              HINT = 'Rename the existing schema (ALTER SCHEMA cache RENAME TO another_name) or drop it if it is unused, then run CREATE EXTENSION citizen_sync again. The extension cannot be installed beside it.';
END
$preflight$;
