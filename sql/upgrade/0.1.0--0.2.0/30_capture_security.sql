------------------------------------------------------------------------------
-- Capture security (issue 8: items 1 and 6, second bullet).  What 0.2.0
-- changes in sql/install/30_outbox_capture.sql and in source_state() of
-- 80_consistency.sql, from 0.1.0; the comments there explain each object.
--
--  - capture_row() (SECURITY DEFINER) and the event trigger's function are
--    owned by the NOLOGIN role citizen_sync_capture, which holds only what
--    they need, instead of the installing superuser;
--  - check_capture_safety() refuses column types a non-superuser controls,
--    in capture(), source_state() and the event trigger;
--  - capture() refuses what is not an ordinary table or has children, warns
--    when the owner can log in, creates its triggers ENABLE ALWAYS;
--  - the event triggers citizen_sync_guard(_drop) refuse DDL that would let
--    changes of a captured table escape the capture or make it unsafe.
--
-- Tables captured under 0.1.0 are captured again here, in the 0.2.0 form,
-- with capture()'s checks: one that 0.2.0 would refuse (a column type a
-- non-superuser controls, inheritance children) stops the update with
-- capture()'s error, so that nothing unsafe is carried over.  The event
-- triggers come last, once every captured table is in order.
------------------------------------------------------------------------------

DO $role$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'citizen_sync_capture') THEN
        CREATE ROLE citizen_sync_capture NOLOGIN NOINHERIT;
    END IF;
    ALTER ROLE citizen_sync_capture NOSUPERUSER NOCREATEDB NOCREATEROLE NOLOGIN NOINHERIT
        NOREPLICATION NOBYPASSRLS PASSWORD NULL;
    IF EXISTS (SELECT 1 FROM pg_catalog.pg_auth_members m
                WHERE 'citizen_sync_capture'::pg_catalog.regrole IN (m.roleid, m.member)) THEN
        RAISE EXCEPTION 'role citizen_sync_capture must not be a member of a role nor have members'
            USING ERRCODE = 'invalid_role_specification',
                  DETAIL = 'citizen_sync''s capture code runs as this role; a member could act with its rights, and it could act with the rights of a role it belongs to.',
                  HINT = 'Revoke its memberships (\du citizen_sync_capture lists them), then try again.';
    END IF;
END
$role$;

CREATE FUNCTION @extschema@.check_capture_safety(source regclass) RETURNS void
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    bad record;
BEGIN
    WITH RECURSIVE reached (attnum, attname, coltype, typ, depth) AS (
        SELECT a.attnum, a.attname, a.atttypid, a.atttypid, 0
          FROM pg_attribute a
         WHERE a.attrelid = source AND a.attnum > 0 AND NOT a.attisdropped
        UNION
        SELECT r.attnum, r.attname, r.coltype, inner_type.oid, r.depth + 1
          FROM reached r
          JOIN pg_type t ON t.oid = r.typ
         CROSS JOIN LATERAL (
                SELECT t.typbasetype WHERE t.typtype = 'd'
                UNION ALL
                SELECT t.typelem WHERE t.typelem <> 0
                UNION ALL
                SELECT ca.atttypid FROM pg_attribute ca
                 WHERE t.typtype = 'c' AND ca.attrelid = t.typrelid
                   AND ca.attnum > 0 AND NOT ca.attisdropped
                UNION ALL
                SELECT rg.rngsubtype FROM pg_range rg WHERE rg.rngtypid = t.oid
                UNION ALL
                SELECT rg.rngtypid FROM pg_range rg WHERE rg.rngmultitypid = t.oid
               ) AS inner_type (oid)
         WHERE r.depth < 64
    ),
    unsafe (attnum, attname, coltype, typ, depth, rank, why) AS (
        SELECT r.attnum, r.attname, r.coltype, r.typ, r.depth, 1,
               format('The cast from %s to %s calls function %s, owned by role "%s", which is not a superuser.',
                      r.typ::regtype, c.casttarget::regtype, f.oid::regprocedure,
                      pg_get_userbyid(f.proowner))
          FROM reached r
          JOIN pg_cast c ON c.castsource = r.typ
                        AND c.casttarget IN ('pg_catalog.json'::regtype, 'pg_catalog.jsonb'::regtype)
          JOIN pg_proc f ON f.oid = c.castfunc
         WHERE NOT EXISTS (SELECT 1 FROM pg_roles o WHERE o.oid = f.proowner AND o.rolsuper)
        UNION ALL
        SELECT r.attnum, r.attname, r.coltype, r.typ, r.depth, 2,
               format('The output function %s of type %s is owned by role "%s", which is not a superuser.',
                      f.oid::regprocedure, r.typ::regtype, pg_get_userbyid(f.proowner))
          FROM reached r
          JOIN pg_type t ON t.oid = r.typ
          JOIN pg_proc f ON f.oid = t.typoutput
         WHERE NOT EXISTS (SELECT 1 FROM pg_roles o WHERE o.oid = f.proowner AND o.rolsuper)
        UNION ALL
        SELECT r.attnum, r.attname, r.coltype, r.typ, r.depth, 3,
               format('Type %s is owned by role "%s", which is not a superuser: the owner of a type decides what turning it into JSON runs, and citizen_sync does that with rights the owner does not have.',
                      r.typ::regtype, pg_get_userbyid(t.typowner))
          FROM reached r
          JOIN pg_type t ON t.oid = r.typ
         WHERE t.oid >= 16384          -- FirstNormalObjectId: not built in
           AND NOT EXISTS (SELECT 1 FROM pg_roles o WHERE o.oid = t.typowner AND o.rolsuper)
    )
    SELECT u.attname, u.coltype::regtype AS coltype, u.typ::regtype AS typ, u.why
      INTO bad
      FROM unsafe u
     ORDER BY u.attnum, u.rank, u.depth DESC
     LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'column "%" of table % has type %, which %', bad.attname, source,
                        bad.coltype,
                        CASE WHEN bad.typ = bad.coltype THEN 'a non-superuser controls'
                             ELSE format('contains type %s that a non-superuser controls', bad.typ) END
            USING ERRCODE = 'insufficient_privilege',
                  DETAIL = bad.why,
                  HINT = 'Have a superuser own the type and the functions of its casts to json (ALTER TYPE ... OWNER TO, ALTER FUNCTION ... OWNER TO), or give the column a built-in type.';
    END IF;
END
$$;
COMMENT ON FUNCTION @extschema@.check_capture_safety(regclass) IS
    'Raise if turning the table''s rows into JSON could run code a non-superuser controls (a type, cast or output function it owns)';

CREATE OR REPLACE FUNCTION @extschema@.capture(source regclass, aggregate_type text,
                                    columns text[] DEFAULT NULL,
                                    id_column name DEFAULT 'id')
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    args  text;
    col   text;
    rel   record;
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
    IF NOT EXISTS (SELECT 1 FROM pg_attribute
                    WHERE attrelid = source AND attname = id_column
                      AND attnum > 0 AND NOT attisdropped) THEN
        RAISE EXCEPTION 'table % has no column %', source, quote_ident(id_column)
            USING ERRCODE = 'undefined_column',
                  HINT = 'Pass the name of the table''s integer key as id_column.';
    END IF;
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
      FROM unnest(ARRAY[aggregate_type, id_column::text] || COALESCE(columns, '{}')) AS a;

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
    INSERT INTO @extschema@.captures (source, aggregate_type, id_column, columns)
    VALUES (source, aggregate_type, id_column, columns);
END
$$;

CREATE OR REPLACE FUNCTION @extschema@.uncapture(source regclass) RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    t name;
BEGIN
    -- The registration goes first: the event trigger lets the triggers be
    -- dropped only once the table is no longer captured.
    DELETE FROM @extschema@.captures c WHERE c.source = uncapture.source;
    FOR t IN SELECT tgname FROM pg_trigger
              WHERE tgrelid = source
                AND tgname IN ('citizen_sync_capture', 'citizen_sync_no_truncate') LOOP
        EXECUTE format('DROP TRIGGER %I ON %s', t, source);
    END LOOP;
END
$$;

CREATE OR REPLACE FUNCTION @extschema@.source_state(aggregate_type text DEFAULT 'citizen')
RETURNS TABLE (id bigint, version bigint, present boolean, changed_at timestamptz, snapshot jsonb)
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
        'SELECT COALESCE((t.j ->> %L)::bigint, v.aggregate_id), v.last_version, t.j IS NOT NULL,
                v.last_changed_at, @extschema@.published_columns(t.j, $2)
           FROM (SELECT to_jsonb(s) AS j FROM %s s) t
           FULL JOIN (SELECT * FROM @extschema@.aggregate_versions WHERE aggregate_type = $1) v
             ON v.aggregate_id = (t.j ->> %L)::bigint',
        cap.id_column, cap.source, cap.id_column)
    USING cap.aggregate_type, cap.columns;
END
$$;

CREATE FUNCTION @extschema@.guard_captures() RETURNS event_trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    cap  record;
    bad  record;
    hint text;      -- the way out, for the table at hand
BEGIN
    IF NOT EXISTS (SELECT 1 FROM @extschema@.captures) THEN
        RETURN;
    END IF;

    IF TG_EVENT = 'sql_drop' THEN
        SELECT d.object_identity INTO bad
          FROM pg_event_trigger_dropped_objects() d
          JOIN @extschema@.captures c ON c.source::oid = d.objid
         WHERE d.classid = 'pg_class'::regclass AND d.objsubid = 0
         LIMIT 1;
        IF FOUND THEN
            RAISE EXCEPTION 'cannot drop table %, its changes are captured by citizen_sync',
                            bad.object_identity
                USING ERRCODE = 'feature_not_supported',
                      DETAIL = 'Dropping it would remove its rows without publishing their deletion.',
                      HINT = 'Delete its rows first if the caches should see them go, then run citizen_sync.uncapture() on it and drop it.';
        END IF;
        -- a trigger's address is {schema, table, trigger}
        SELECT d.address_names[3] AS tgname, c.source INTO bad
          FROM pg_event_trigger_dropped_objects() d
          JOIN @extschema@.captures c
            ON c.source::oid = to_regclass(format('%I.%I', d.address_names[1], d.address_names[2]))::oid
         WHERE d.object_type = 'trigger'
           AND d.address_names[3] IN ('citizen_sync_capture', 'citizen_sync_no_truncate')
         LIMIT 1;
        IF FOUND THEN
            RAISE EXCEPTION 'cannot drop trigger "%" on table %, its changes are captured by citizen_sync',
                            bad.tgname, bad.source
                USING ERRCODE = 'feature_not_supported',
                      HINT = format('Run citizen_sync.uncapture(%L) if the table should no longer be captured.',
                                    bad.source::text);
        END IF;
    END IF;

    FOR cap IN SELECT c.* FROM @extschema@.captures c
                WHERE EXISTS (SELECT 1 FROM pg_class r WHERE r.oid = c.source::oid) LOOP
        PERFORM @extschema@.check_capture_safety(cap.source);
        hint := format('Run citizen_sync.uncapture(%L) if the table should no longer be captured.',
                       cap.source::text);

        SELECT i.inhrelid::regclass AS child INTO bad
          FROM pg_inherits i WHERE i.inhparent = cap.source LIMIT 1;
        IF FOUND THEN
            RAISE EXCEPTION 'cannot make % a child or partition of table %, its changes are captured by citizen_sync',
                            bad.child, cap.source
                USING ERRCODE = 'feature_not_supported',
                      DETAIL = 'Changes to the rows of a child table do not fire the parent''s triggers, so they would not be published.',
                      HINT = hint;
        END IF;

        SELECT col INTO bad
          FROM unnest(array_prepend(cap.id_column::text, COALESCE(cap.columns, '{}'))) AS col
         WHERE NOT EXISTS (SELECT 1 FROM pg_attribute a
                            WHERE a.attrelid = cap.source AND a.attname = col
                              AND a.attnum > 0 AND NOT a.attisdropped)
         LIMIT 1;
        IF FOUND THEN
            RAISE EXCEPTION 'cannot drop or rename column "%" of table %, it is captured by citizen_sync',
                            bad.col, cap.source
                USING ERRCODE = 'feature_not_supported',
                      DETAIL = 'The capture publishes this column, or identifies rows by it.',
                      HINT = 'Capture the table again without it first (citizen_sync.capture() with the new column list).';
        END IF;

        SELECT t.tgname, t.tgfoid::regprocedure AS func INTO bad
          FROM pg_trigger t
         WHERE t.tgrelid = cap.source
           AND (t.tgname IN ('citizen_sync_capture', 'citizen_sync_no_truncate')
                OR t.tgfoid IN ('@extschema@.capture_row()'::regprocedure,
                                '@extschema@.refuse_truncate()'::regprocedure))
           AND t.tgfoid IS DISTINCT FROM
               CASE t.tgname WHEN 'citizen_sync_capture' THEN '@extschema@.capture_row()'::regprocedure
                             WHEN 'citizen_sync_no_truncate' THEN '@extschema@.refuse_truncate()'::regprocedure
               END
         LIMIT 1;
        IF FOUND THEN
            RAISE EXCEPTION 'cannot replace or rename trigger "%" on table %, its changes are captured by citizen_sync',
                            bad.tgname, cap.source
                USING ERRCODE = 'feature_not_supported',
                      DETAIL = format('Trigger "%s" calls %s; citizen_sync_capture must call citizen_sync.capture_row() and citizen_sync_no_truncate citizen_sync.refuse_truncate().',
                                      bad.tgname, bad.func),
                      HINT = hint;
        END IF;

        IF TG_TAG <> 'CREATE TRIGGER' THEN
            SELECT t.tgname INTO bad
              FROM pg_trigger t
             WHERE t.tgrelid = cap.source
               AND t.tgname IN ('citizen_sync_capture', 'citizen_sync_no_truncate')
               AND t.tgenabled <> 'A'
             LIMIT 1;
            IF FOUND THEN
                RAISE EXCEPTION 'cannot disable trigger "%" on table %, its changes are captured by citizen_sync',
                                bad.tgname, cap.source
                    USING ERRCODE = 'feature_not_supported',
                          DETAIL = 'citizen_sync''s triggers stay ENABLE ALWAYS, so that every change is published, with session_replication_role = replica too.',
                          HINT = hint;
            END IF;
        END IF;
    END LOOP;
END
$$;

REVOKE ALL ON FUNCTION @extschema@.guard_captures() FROM PUBLIC;
-- pg_dump keeps the order of an ACL's entries, and a fresh install grants
-- citizen_sync_capture USAGE on the schema and INSERT on the outbox (in
-- 30_outbox_capture.sql) before it grants pg_monitor USAGE and SELECT on
-- them (60_monitoring.sql): 0.1.0's grants to pg_monitor move behind ours.
DO $acl_order$
DECLARE
    had_usage  boolean;
    had_select boolean;
BEGIN
    SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_namespace n, pg_catalog.aclexplode(n.nspacl) a
                    WHERE n.nspname = '@extschema@' AND a.grantee = 'pg_monitor'::pg_catalog.regrole
                      AND a.privilege_type = 'USAGE'),
           EXISTS (SELECT 1 FROM pg_catalog.pg_class c, pg_catalog.aclexplode(c.relacl) a
                    WHERE c.oid = '@extschema@.outbox'::pg_catalog.regclass
                      AND a.grantee = 'pg_monitor'::pg_catalog.regrole AND a.privilege_type = 'SELECT')
      INTO had_usage, had_select;
    IF had_usage THEN
        REVOKE USAGE ON SCHEMA @extschema@ FROM pg_monitor;
    END IF;
    IF had_select THEN
        REVOKE SELECT ON @extschema@.outbox FROM pg_monitor;
    END IF;
    GRANT USAGE ON SCHEMA @extschema@ TO citizen_sync_capture;
    GRANT INSERT ON @extschema@.outbox TO citizen_sync_capture;
    IF had_usage THEN
        GRANT USAGE ON SCHEMA @extschema@ TO pg_monitor;
    END IF;
    IF had_select THEN
        GRANT SELECT ON @extschema@.outbox TO pg_monitor;
    END IF;
END
$acl_order$;
GRANT USAGE ON SEQUENCE @extschema@.outbox_id_seq TO citizen_sync_capture;
GRANT SELECT, INSERT, UPDATE ON @extschema@.aggregate_versions TO citizen_sync_capture;
GRANT SELECT ON @extschema@.captures TO citizen_sync_capture;
GRANT EXECUTE ON FUNCTION @extschema@.emit_change(text, bigint, text, jsonb),
                          @extschema@.notify_publisher() TO citizen_sync_capture;
ALTER FUNCTION @extschema@.capture_row() OWNER TO citizen_sync_capture;
ALTER FUNCTION @extschema@.guard_captures() OWNER TO citizen_sync_capture;

-- Registrations of tables dropped under 0.1.0 go (a new table could get
-- the OID back); every other captured table is captured again.
DELETE FROM @extschema@.captures c
 WHERE NOT EXISTS (SELECT 1 FROM pg_catalog.pg_class r WHERE r.oid = c.source::oid);
DO $recapture$
DECLARE
    cap record;
BEGIN
    FOR cap IN SELECT * FROM @extschema@.captures ORDER BY aggregate_type LOOP
        PERFORM @extschema@.capture(cap.source, cap.aggregate_type, cap.columns, cap.id_column);
    END LOOP;
END
$recapture$;

CREATE EVENT TRIGGER citizen_sync_guard ON ddl_command_end
    WHEN TAG IN ('ALTER TABLE', 'CREATE TABLE', 'CREATE FOREIGN TABLE', 'ALTER FOREIGN TABLE',
                 'CREATE TRIGGER', 'ALTER TRIGGER', 'ALTER TYPE', 'ALTER DOMAIN',
                 'CREATE CAST', 'ALTER FUNCTION', 'ALTER ROUTINE')
    EXECUTE FUNCTION @extschema@.guard_captures();
CREATE EVENT TRIGGER citizen_sync_guard_drop ON sql_drop
    EXECUTE FUNCTION @extschema@.guard_captures();
ALTER EVENT TRIGGER citizen_sync_guard ENABLE ALWAYS;
ALTER EVENT TRIGGER citizen_sync_guard_drop ENABLE ALWAYS;
