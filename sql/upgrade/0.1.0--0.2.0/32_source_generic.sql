------------------------------------------------------------------------------
-- Generic source side (issue 10: keys bigint, text or uuid; event names;
-- read-your-writes).  What 0.2.0 changes in sql/install/30_outbox_capture.sql,
-- 35_outbox_set_aside.sql, 36_read_your_writes.sql and 80_consistency.sql;
-- the comments there explain each object.
--
--  - outbox.aggregate_id and aggregate_versions.aggregate_id become text
--    (COLLATE "C"): existing bigint ids become their decimal digits, which is
--    what the publisher already put in the Kafka key; this rewrites both
--    tables (a minute per few million rows; the application's writes to
--    captured tables wait meanwhile);
--  - captures.event_types, capture()'s new argument event_types (the
--    function is dropped and created again with it: grants on the old one
--    carry over), emit_change() takes the key as JSON and the event name;
--  - source_state() returns key text after its 0.1.0 columns (dropped and
--    created again; grants carry over), resync() gets a text[] form;
--  - current_version() is new.
-- Tables captured before are captured again, with their new trigger
-- arguments (the event names).
------------------------------------------------------------------------------

ALTER TABLE @extschema@.outbox ALTER COLUMN aggregate_id TYPE text COLLATE "C";
ALTER TABLE @extschema@.aggregate_versions ALTER COLUMN aggregate_id TYPE text COLLATE "C";
ALTER TABLE @extschema@.captures ADD COLUMN event_types jsonb;
COMMENT ON COLUMN @extschema@.outbox.aggregate_id IS
    'The aggregate''s key as text (bigint, text or uuid keys); the Kafka key is <aggregate_type>_<aggregate_id>';
COMMENT ON COLUMN @extschema@.captures.event_types IS
    'Event names per operation ({"insert": ..., "update": ..., "delete": ...}); NULL or a missing operation: created, updated, deleted';

-- Grants of functions dropped and created again carry over (kept in a
-- transaction-local setting meanwhile).
SELECT pg_catalog.set_config('citizen_sync_upgrade.grants',
       COALESCE(pg_catalog.string_agg(p.proname || ':' || a.grantee, ','), ''), true)
  FROM pg_catalog.pg_proc p
 CROSS JOIN LATERAL pg_catalog.aclexplode(p.proacl) a
 WHERE p.proname IN ('capture', 'source_state')
   AND p.pronamespace = '@extschema@'::pg_catalog.regnamespace
   AND a.privilege_type = 'EXECUTE' AND a.grantee <> 0 AND a.grantee <> p.proowner;

DROP FUNCTION @extschema@.emit_change(text, bigint, text, jsonb);
DROP FUNCTION @extschema@.capture(regclass, text, text[], name);
DROP FUNCTION @extschema@.source_state(text);

-- Write one change of one aggregate to the outbox: next version (its row
-- lock, held to commit, orders concurrent changes), payload, commit wake-up.
-- agg_key is the key as JSON, as to_jsonb() renders the key column (a number
-- for integer keys, a string for text and uuid keys): data.<agg>_id carries
-- it as it is, outbox.aggregate_id its text.  event_name is the operation's
-- event name (created, updated, deleted or the capture's own, see
-- capture()); snap the published columns, NULL for a deletion (the payload
-- then carries no snapshot).  Shared by the capture trigger and resync().
--
-- The version is the greater of the last one + 1 and the clock in
-- microseconds since 1970 (clock_timestamp()): strictly increasing in commit
-- order (the row lock), and never below the time it was issued.  So a source
-- restored from a dump, recovered to a point in time or failed over to a
-- replica that was behind, whose counters went back in time, still issues
-- versions above every version issued before (the caches may hold them),
-- as long as its clock is ahead of the clock of the last change that was
-- lost.  Versions are not consecutive.  2^53 microseconds (the integers a
-- JSON double holds exactly) are reached in the year 2255.
CREATE FUNCTION @extschema@.emit_change(agg text, agg_key jsonb, event_name text, snap jsonb)
RETURNS bigint
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    ver    bigint;
    clock  bigint := (extract(epoch FROM clock_timestamp()) * 1000000)::bigint;
    agg_id text := agg_key #>> '{}';
BEGIN
    INSERT INTO @extschema@.aggregate_versions AS v (aggregate_type, aggregate_id, last_version)
    VALUES (agg, agg_id, clock)
    ON CONFLICT (aggregate_type, aggregate_id)
        DO UPDATE SET last_version = greatest(v.last_version + 1, clock), last_changed_at = now()
    RETURNING v.last_version INTO ver;

    INSERT INTO @extschema@.outbox (aggregate_type, aggregate_id, event_type, payload)
    VALUES (agg, agg_id, event_name,
            jsonb_build_object(
                'event_version', ver,
                'event_timestamp', to_char(clock_timestamp() AT TIME ZONE 'UTC',
                                           'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"'),
                'data', CASE WHEN snap IS NULL
                             THEN jsonb_build_object(agg || '_id', agg_key)
                             ELSE jsonb_build_object(agg || '_id', agg_key, 'snapshot', snap)
                        END));
    PERFORM @extschema@.notify_publisher();
    RETURN ver;
END
$$;

-- The event name of an operation (insert, update, delete) under a capture's
-- map (captures.event_types; NULL or no entry: created, updated, deleted).
CREATE FUNCTION @extschema@.event_name(event_types jsonb, operation text) RETURNS text
LANGUAGE sql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT COALESCE(event_types ->> operation,
                    CASE operation WHEN 'insert' THEN 'created' WHEN 'update' THEN 'updated'
                                   WHEN 'delete' THEN 'deleted' END)
$$;

-- Row trigger of captured tables (src/cs_capture.c).  TG_ARGV: aggregate
-- type, id column, the event names of INSERT, UPDATE and DELETE, then the
-- published columns (none = all).  Writes what emit_change() writes, the
-- snapshot being to_jsonb() of the published columns (as
-- published_columns(to_jsonb(NEW), columns)); an UPDATE that changes no
-- published column writes nothing, one that changes the key is refused.
-- SECURITY DEFINER, owned by citizen_sync_capture, so that application
-- roles need no privilege on the outbox and cannot forge events, while what
-- it runs has only that role's rights.  check_capture_safety() keeps the
-- types of captured tables free of code non-superusers control (at
-- capture() and at every DDL, through the event trigger), so nothing is
-- checked per row here.
CREATE OR REPLACE FUNCTION @extschema@.capture_row() RETURNS trigger
LANGUAGE C
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS 'MODULE_PATHNAME', 'citizen_sync_capture_row';

-- The type of a table's key column, seen through a domain (NULL: no such
-- column).  capture() accepts int2, int4, int8, text, varchar and uuid.
CREATE FUNCTION @extschema@.key_type(source regclass, id_column name) RETURNS regtype
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT CASE WHEN t.typtype = 'd' THEN t.typbasetype ELSE t.oid END::regtype
      FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid
     WHERE a.attrelid = source AND a.attname = id_column AND a.attnum > 0 AND NOT a.attisdropped
$$;

-- Refuse an event-name map capture() cannot use: a JSON object whose keys
-- are operations (insert, update, delete) and whose values are names of the
-- form the wire carries after "<aggregate_type>." (e.g. {"insert":
-- "assigned", "delete": "revoked"}).  NULL is the default map.
CREATE FUNCTION @extschema@.check_event_types(event_types jsonb) RETURNS void
LANGUAGE plpgsql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    bad record;
BEGIN
    IF event_types IS NULL THEN
        RETURN;
    END IF;
    IF jsonb_typeof(event_types) <> 'object' THEN
        RAISE EXCEPTION 'invalid event_types %', event_types
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = format('event_types is a JSON %s, not an object.', jsonb_typeof(event_types)),
                  HINT = 'Pass an object mapping operations to event names, e.g. ''{"insert": "assigned", "update": "assigned", "delete": "revoked"}''.';
    END IF;
    SELECT e.key INTO bad FROM jsonb_each(event_types) e
     WHERE e.key NOT IN ('insert', 'update', 'delete') LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'invalid event_types: unknown operation %', quote_literal(bad.key)
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = 'The keys of event_types are the operations insert, update and delete.',
                  HINT = 'Leave out an operation to keep its default name (created, updated, deleted).';
    END IF;
    SELECT e.key, e.value INTO bad FROM jsonb_each(event_types) e
     WHERE jsonb_typeof(e.value) <> 'string' OR e.value #>> '{}' !~ '^[a-z][a-z0-9_]{0,62}$' LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'invalid event_types: invalid event name % for operation %', bad.value, bad.key
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = 'An event name is a string of lower-case letters, digits and underscores starting with a letter; the event on the wire is <aggregate_type>.<name>.',
                  HINT = 'Use a name such as ''assigned'' or ''revoked''.';
    END IF;
END
$$;

-- Attach the capture to an ordinary table: checks (key column of type
-- bigint, integer, smallint, text, varchar or uuid, or a domain over one;
-- the published columns; the event names), then the row trigger and the
-- TRUNCATE guard, both ENABLE ALWAYS (they fire also with
-- session_replication_role = replica), then the registration that the event
-- trigger guards.  Rerunnable: replaces an earlier capture of the table.
CREATE FUNCTION @extschema@.capture(source regclass, aggregate_type text,
                                    columns text[] DEFAULT NULL,
                                    id_column name DEFAULT 'id',
                                    event_types jsonb DEFAULT NULL)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    args     text;
    col      text;
    rel      record;
    key_type regtype;
BEGIN
    IF aggregate_type IS NULL OR aggregate_type !~ '^[a-z][a-z0-9_]{0,62}$' THEN
        RAISE EXCEPTION 'invalid aggregate type %', quote_nullable(aggregate_type)
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'Use a lower-case name such as ''citizen''; the topic is citizen_sync.topic_prefix followed by it.';
    END IF;
    SELECT c.relkind, o.rolname, o.rolcanlogin, o.rolsuper INTO rel
      FROM pg_class c JOIN pg_roles o ON o.oid = c.relowner
     WHERE c.oid = source;
    IF rel.relkind <> 'r' THEN
        RAISE EXCEPTION 'cannot capture %, it is not an ordinary table', source
            USING ERRCODE = 'wrong_object_type',
                  HINT = 'citizen_sync captures ordinary tables (a partition is one), not partitioned tables, views or foreign tables.';
    END IF;
    IF EXISTS (SELECT 1 FROM pg_inherits i WHERE i.inhparent = source) THEN
        RAISE EXCEPTION 'cannot capture %, it has inheritance children', source
            USING ERRCODE = 'feature_not_supported',
                  DETAIL = 'Changes to the rows of a child table do not fire the parent''s triggers, so they would not be published.',
                  HINT = 'Detach the children (ALTER TABLE ... NO INHERIT) first.';
    END IF;
    key_type := @extschema@.key_type(source, id_column);
    IF key_type IS NULL THEN
        RAISE EXCEPTION 'table % has no column %', source, quote_ident(id_column)
            USING ERRCODE = 'undefined_column',
                  HINT = 'Pass the name of the table''s key column (bigint, text or uuid) as id_column.';
    END IF;
    IF key_type NOT IN ('int2'::regtype, 'int4'::regtype, 'int8'::regtype, 'text'::regtype,
                        'varchar'::regtype, 'uuid'::regtype) THEN
        RAISE EXCEPTION 'column "%" of table % has type %, which citizen_sync cannot publish as a key',
                        id_column, source, key_type
            USING ERRCODE = 'datatype_mismatch',
                  DETAIL = 'Keys are published as data.<aggregate_type>_id (a JSON number for integer keys, a string for text and uuid keys) and in the Kafka key <aggregate_type>_<key>.',
                  HINT = 'Pass as id_column a column of type bigint (or integer, smallint), text (or varchar) or uuid.';
    END IF;
    PERFORM @extschema@.check_event_types(event_types);
    FOREACH col IN ARRAY COALESCE(columns, '{}'::text[]) LOOP
        IF NOT EXISTS (SELECT 1 FROM pg_attribute
                        WHERE attrelid = source AND attname = col
                          AND attnum > 0 AND NOT attisdropped) THEN
            RAISE EXCEPTION 'table % has no column %', source, quote_ident(col)
                USING ERRCODE = 'undefined_column';
        END IF;
    END LOOP;
    PERFORM @extschema@.check_capture_safety(source);
    IF rel.rolcanlogin AND NOT rel.rolsuper THEN
        RAISE WARNING 'table % is owned by role "%", which can log in', source, rel.rolname
            USING DETAIL = 'The owner of a table can alter it and its triggers; citizen_sync refuses the changes that would bypass the capture, but an application that connects as the owner holds more rights than it needs.',
                  HINT = 'Have a NOLOGIN role own the table (ALTER TABLE ... OWNER TO ...) and grant the application role only SELECT, INSERT, UPDATE and DELETE on it.';
    END IF;
    IF columns IS NOT NULL AND NOT (id_column::text = ANY (columns)) THEN
        columns := array_prepend(id_column::text, columns);
    END IF;

    SELECT string_agg(quote_literal(a), ', ')
      INTO args
      FROM unnest(ARRAY[aggregate_type, id_column::text,
                        @extschema@.event_name(event_types, 'insert'),
                        @extschema@.event_name(event_types, 'update'),
                        @extschema@.event_name(event_types, 'delete')]
                  || COALESCE(columns, '{}')) AS a;

    PERFORM @extschema@.uncapture(source);
    -- forget registrations of tables dropped since they were captured
    DELETE FROM @extschema@.captures c
     WHERE NOT EXISTS (SELECT 1 FROM pg_class r WHERE r.oid = c.source::oid);
    EXECUTE format('CREATE TRIGGER citizen_sync_capture AFTER INSERT OR UPDATE OR DELETE ON %s '
                   'FOR EACH ROW EXECUTE FUNCTION @extschema@.capture_row(%s)', source, args);
    EXECUTE format('CREATE TRIGGER citizen_sync_no_truncate BEFORE TRUNCATE ON %s '
                   'FOR EACH STATEMENT EXECUTE FUNCTION @extschema@.refuse_truncate()', source);
    EXECUTE format('ALTER TABLE %s ENABLE ALWAYS TRIGGER citizen_sync_capture, '
                   'ENABLE ALWAYS TRIGGER citizen_sync_no_truncate', source);
    INSERT INTO @extschema@.captures (source, aggregate_type, id_column, columns, event_types)
    VALUES (source, aggregate_type, id_column, columns, event_types);
END
$$;
COMMENT ON FUNCTION @extschema@.capture(regclass, text, text[], name, jsonb) IS
    'Publish every INSERT/UPDATE/DELETE of a table through the outbox (columns: the published ones, NULL = all; event_types: event names per operation, NULL = created/updated/deleted)';

REVOKE ALL ON FUNCTION @extschema@.capture(regclass, text, text[], name, jsonb) FROM PUBLIC;
REVOKE ALL ON FUNCTION @extschema@.emit_change(text, jsonb, text, jsonb) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION @extschema@.emit_change(text, jsonb, text, jsonb) TO citizen_sync_capture;

-- Source side: the current state of every aggregate of a captured table,
-- including rows that existed before capture() (version NULL).  key is the
-- aggregate's key as text (as outbox.aggregate_id holds it), for every key
-- type; id the same key as a bigint for integer keys (NULL for text and uuid
-- keys), as 0.1.0 returned it.  Run by a superuser (heal() over dblink), it
-- renders the table's rows with to_jsonb() as capture_row() does, so it
-- first refuses a table whose types would run code a non-superuser controls
-- (check_capture_safety()): the event trigger keeps captured tables safe,
-- but not through what it cannot see (a type owner demoted from superuser,
-- the event trigger disabled).
CREATE FUNCTION @extschema@.source_state(aggregate_type text DEFAULT 'citizen')
RETURNS TABLE (id bigint, version bigint, present boolean, changed_at timestamptz, snapshot jsonb,
               key text)
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    cap record;
BEGIN
    SELECT * INTO cap FROM @extschema@.captures c
     WHERE c.aggregate_type = source_state.aggregate_type
       AND EXISTS (SELECT 1 FROM pg_class r WHERE r.oid = c.source::oid);
    IF NOT FOUND THEN
        RAISE EXCEPTION 'no table is captured as aggregate type %', quote_literal(aggregate_type)
            USING ERRCODE = 'undefined_object',
                  HINT = 'Run citizen_sync.capture() on the source table first (in the auth database).';
    END IF;
    PERFORM @extschema@.check_capture_safety(cap.source);
    RETURN QUERY EXECUTE format(
        'SELECT CASE WHEN $3 THEN k.key::bigint END, v.last_version, t.j IS NOT NULL,
                v.last_changed_at, @extschema@.published_columns(t.j, $2), k.key
           FROM (SELECT to_jsonb(s) AS j FROM %s s) t
           FULL JOIN (SELECT * FROM @extschema@.aggregate_versions WHERE aggregate_type = $1) v
             ON v.aggregate_id = t.j ->> %L
          CROSS JOIN LATERAL (SELECT COALESCE(t.j ->> %L, v.aggregate_id) AS key) k',
        cap.source, cap.id_column, cap.id_column)
    USING cap.aggregate_type, cap.columns,
          @extschema@.key_type(cap.source, cap.id_column)
              IN ('int2'::regtype, 'int4'::regtype, 'int8'::regtype);
END
$$;

-- Source side: republish the current snapshot of the given aggregates (all
-- rows when keys is NULL) through the outbox, so caches heal by the normal
-- path; keys no longer in the source are published as deleted.  Also the
-- way to backfill rows that existed before capture().  Keys are given as
-- text, for every key type (an integer key as its decimal digits, a uuid in
-- lower case); at_least, parallel to keys, lifts the version counters
-- first.  Events carry the capture's names for update and delete.  Returns
-- events written.
CREATE FUNCTION @extschema@.resync(aggregate_type text, keys text[], at_least bigint[] DEFAULT NULL)
RETURNS bigint
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    cap     record;
    int_key boolean;
    s       record;
    n       bigint := 0;
BEGIN
    -- A cache can be ahead of the source's counter (a restored auth database,
    -- a hand-edited cache): lift the counter so the new events win.
    IF at_least IS NOT NULL THEN
        INSERT INTO @extschema@.aggregate_versions AS v (aggregate_type, aggregate_id, last_version)
        SELECT resync.aggregate_type, u.k, u.v
          FROM unnest(keys, at_least) AS u(k, v)
         WHERE u.k IS NOT NULL AND u.v IS NOT NULL
        ON CONFLICT ON CONSTRAINT aggregate_versions_pkey
            DO UPDATE SET last_version = GREATEST(v.last_version, EXCLUDED.last_version);
    END IF;
    SELECT c.* INTO cap FROM @extschema@.captures c
     WHERE c.aggregate_type = resync.aggregate_type
       AND EXISTS (SELECT 1 FROM pg_class r WHERE r.oid = c.source::oid);
    int_key := @extschema@.key_type(cap.source, cap.id_column)
                   IN ('int2'::regtype, 'int4'::regtype, 'int8'::regtype);
    -- source_state() raises if the aggregate type is not captured
    FOR s IN WITH st AS MATERIALIZED (SELECT * FROM @extschema@.source_state(aggregate_type))
             SELECT * FROM (
                 SELECT st.key, st.present, st.snapshot FROM st
                  WHERE keys IS NULL OR st.key = ANY (keys)
                 UNION ALL
                 SELECT u.k, false, NULL::jsonb FROM unnest(keys) AS u(k)
                  WHERE u.k IS NOT NULL AND NOT EXISTS (SELECT 1 FROM st WHERE st.key = u.k)) x
              ORDER BY CASE WHEN int_key THEN x.key::numeric END, x.key LOOP
        IF s.present THEN
            PERFORM @extschema@.emit_change(aggregate_type,
                        CASE WHEN int_key THEN to_jsonb(s.key::bigint) ELSE to_jsonb(s.key) END,
                        @extschema@.event_name(cap.event_types, 'update'), s.snapshot);
            n := n + 1;
        ELSIF keys IS NOT NULL THEN
            PERFORM @extschema@.emit_change(aggregate_type,
                        CASE WHEN int_key THEN to_jsonb(s.key::bigint) ELSE to_jsonb(s.key) END,
                        @extschema@.event_name(cap.event_types, 'delete'), NULL);
            n := n + 1;
        END IF;
    END LOOP;
    RETURN n;
END
$$;
COMMENT ON FUNCTION @extschema@.resync(text, text[], bigint[]) IS
    'Republish the current snapshot of the given (NULL = all) aggregates, keys as text, through the outbox, above the versions in at_least';

-- The form of 0.1.0, for integer keys: resync(aggregate_type, keys as text).
CREATE OR REPLACE FUNCTION @extschema@.resync(aggregate_type text DEFAULT 'citizen', ids bigint[] DEFAULT NULL,
                                  at_least bigint[] DEFAULT NULL)
RETURNS bigint
LANGUAGE sql
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT @extschema@.resync(aggregate_type, ids::text[], at_least)
$$;
COMMENT ON FUNCTION @extschema@.resync(text, bigint[], bigint[]) IS
    'Republish the current snapshot of the given (NULL = all) aggregates through the outbox, above the versions in at_least';

-- Service side: compare this cache with the source (auth) database reached
-- with source_conninfo.  Reports, for changes older than stale_after (younger
-- ones may still be in flight): missing (live in the source, absent or
-- inactive here), stale (the source has a newer version), mismatched (same
-- version, different fields: the cache was altered), extra (active here, gone
-- from the source).  Records a summary in consistency_reports.
CREATE OR REPLACE FUNCTION @extschema@.consistency_check(source_conninfo text,
                                              stale_after interval DEFAULT '5 minutes',
                                              aggregate_type text DEFAULT 'citizen',
                                              source_label text DEFAULT 'auth')
RETURNS TABLE (citizen_id bigint, problem text, source_version bigint, cache_version bigint,
               cache_last_synced_at timestamptz)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    n_checked bigint;
BEGIN
    CREATE TEMP TABLE IF NOT EXISTS citizen_sync_source_state
        (id bigint, version bigint, present boolean, changed_at timestamptz, snapshot jsonb)
        ON COMMIT DROP;
    TRUNCATE citizen_sync_source_state;
    EXECUTE format('INSERT INTO citizen_sync_source_state
                    SELECT * FROM %I.dblink($1, $2)
                        AS t(id bigint, version bigint, present boolean, changed_at timestamptz, snapshot jsonb)',
                   @extschema@.dblink_schema())
    USING source_conninfo,
          format('SELECT id, version, present, changed_at, snapshot FROM citizen_sync.source_state(%L)',
                 aggregate_type);
    SELECT count(*) INTO n_checked FROM citizen_sync_source_state;

    CREATE TEMP TABLE IF NOT EXISTS citizen_sync_drift
        (citizen_id bigint, problem text, source_version bigint, cache_version bigint,
         cache_last_synced_at timestamptz) ON COMMIT DROP;
    TRUNCATE citizen_sync_drift;
    INSERT INTO citizen_sync_drift
    SELECT COALESCE(s.id, c.citizen_id),
           CASE
             WHEN s.present AND (c.citizen_id IS NULL OR NOT c.is_active) THEN 'missing'
             WHEN s.present AND c.event_version < COALESCE(s.version, 0) THEN 'stale'
             WHEN s.present THEN 'mismatched'
             ELSE 'extra'
           END,
           s.version, c.event_version, c.last_synced_at
      FROM citizen_sync_source_state s
      FULL JOIN cache.citizen_refs c ON c.citizen_id = s.id
     WHERE (s.changed_at IS NULL OR s.changed_at < now() - stale_after)
       AND CASE
             WHEN s.present THEN
                  c.citizen_id IS NULL OR NOT c.is_active
                  OR c.event_version < COALESCE(s.version, 0)
                  OR (c.name, c.email, c.phone, c.address, c.city, c.postal_code,
                      c.email_verified, c.identity_verified)
                     IS DISTINCT FROM
                     (s.snapshot ->> 'name', s.snapshot ->> 'email', s.snapshot ->> 'phone',
                      s.snapshot ->> 'address', s.snapshot ->> 'city', s.snapshot ->> 'postal_code',
                      COALESCE((s.snapshot ->> 'email_verified')::boolean, false),
                      COALESCE((s.snapshot ->> 'identity_verified')::boolean, false))
             ELSE c.is_active
           END;

    INSERT INTO @extschema@.consistency_reports (source, checked, missing, stale, mismatched, extra)
    SELECT source_label, n_checked,
           count(*) FILTER (WHERE d.problem = 'missing'),
           count(*) FILTER (WHERE d.problem = 'stale'),
           count(*) FILTER (WHERE d.problem = 'mismatched'),
           count(*) FILTER (WHERE d.problem = 'extra')
      FROM citizen_sync_drift d;
    RETURN QUERY SELECT * FROM citizen_sync_drift d ORDER BY d.citizen_id;
END
$$;
COMMENT ON FUNCTION @extschema@.consistency_check(text, interval, text, text) IS
    'Compare the cache with the source database (via dblink): missing, stale, mismatched and extra rows';

REVOKE ALL ON FUNCTION @extschema@.source_state(text) FROM PUBLIC;
REVOKE ALL ON FUNCTION @extschema@.resync(text, text[], bigint[]) FROM PUBLIC;

DO $grants$
DECLARE
    g record;
BEGIN
    FOR g IN SELECT pg_catalog.split_part(e, ':', 1) AS fn,
                    pg_catalog.split_part(e, ':', 2)::pg_catalog.oid AS grantee
               FROM pg_catalog.unnest(pg_catalog.string_to_array(
                        pg_catalog.current_setting('citizen_sync_upgrade.grants'), ',')) AS e LOOP
        EXECUTE pg_catalog.format('GRANT EXECUTE ON FUNCTION @extschema@.%s TO %I',
                                  CASE g.fn WHEN 'capture' THEN 'capture(regclass, text, text[], name, jsonb)'
                                            ELSE 'source_state(text)' END,
                                  g.grantee::pg_catalog.regrole::text);
    END LOOP;
END
$grants$;

-- The last version issued for one aggregate, NULL if it never changed since
-- it was captured.  Called right after the application's own change (in the
-- same transaction, or after its commit), it is the version that change
-- produced, or a later one if another transaction changed the aggregate
-- since: the application hands it to a service, whose wait_for() returns
-- once its cache holds that version or a newer one.  key is the key as text,
-- as outbox.aggregate_id holds it (an integer key's digits, a uuid in lower
-- case).
--
-- SECURITY DEFINER as citizen_sync_capture, which may read the version
-- counters: the caller needs EXECUTE on this function only (not granted to
-- PUBLIC; README, "Read-your-writes"), and learns one aggregate's version
-- number, never a payload, the outbox or other keys than those it names.
CREATE FUNCTION @extschema@.current_version(aggregate_type text, key text) RETURNS bigint
LANGUAGE sql STABLE STRICT
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT v.last_version FROM @extschema@.aggregate_versions v
     WHERE v.aggregate_type = $1 AND v.aggregate_id = $2
$$;
COMMENT ON FUNCTION @extschema@.current_version(text, text) IS
    'The version the caller''s change of this aggregate produced (or a later one), for citizen_sync.wait_for() in a service database';
REVOKE ALL ON FUNCTION @extschema@.current_version(text, text) FROM PUBLIC;
ALTER FUNCTION @extschema@.current_version(text, text) OWNER TO citizen_sync_capture;

-- Tables captured before: captured again, with the event names in their
-- trigger's arguments.
DO $recapture$
DECLARE
    cap record;
BEGIN
    FOR cap IN SELECT * FROM @extschema@.captures ORDER BY aggregate_type LOOP
        PERFORM @extschema@.capture(cap.source, cap.aggregate_type, cap.columns, cap.id_column,
                                    cap.event_types);
    END LOOP;
END
$recapture$;
