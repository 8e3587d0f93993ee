------------------------------------------------------------------------------
-- Source side: the transactional outbox
------------------------------------------------------------------------------

CREATE TABLE @extschema@.outbox (
    id             bigserial PRIMARY KEY,
    aggregate_type varchar(100) NOT NULL,
    aggregate_id   text COLLATE "C" NOT NULL,
    event_type     varchar(100) NOT NULL,
    payload        jsonb NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT pg_catalog.now(),
    published_at   timestamptz,
    retry_count    int NOT NULL DEFAULT 0,
    last_error     text,
    set_aside_at   timestamptz
);
COMMENT ON TABLE @extschema@.outbox IS
    'Transactional outbox: one row per captured change, relayed to Kafka by the publisher (published_at NULL = pending)';
CREATE INDEX outbox_pending ON @extschema@.outbox (id) WHERE published_at IS NULL;
CREATE INDEX outbox_published_at ON @extschema@.outbox (published_at) WHERE published_at IS NOT NULL;
COMMENT ON COLUMN @extschema@.outbox.aggregate_id IS
    'The aggregate''s key as text (bigint, text or uuid keys); the Kafka key is <aggregate_type>_<aggregate_id>';

-- Per-aggregate version counter.  Its row lock, held to commit, orders
-- concurrent changes of one aggregate: versions increase in commit order.
CREATE TABLE @extschema@.aggregate_versions (
    aggregate_type varchar(100) NOT NULL,
    aggregate_id   text COLLATE "C" NOT NULL,
    last_version   bigint NOT NULL,
    last_changed_at timestamptz NOT NULL DEFAULT pg_catalog.now(),
    PRIMARY KEY (aggregate_type, aggregate_id)
);

-- Which tables are captured, and how (written by capture()/uncapture()).
CREATE TABLE @extschema@.captures (
    source         regclass PRIMARY KEY,
    aggregate_type varchar(100) NOT NULL UNIQUE,
    id_column      name NOT NULL,
    columns        text[],
    event_types    jsonb
);
COMMENT ON COLUMN @extschema@.captures.event_types IS
    'Event names per operation ({"insert": ..., "update": ..., "delete": ...}); NULL or a missing operation: created, updated, deleted';

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

-- The published part of a row: only the listed columns (all when none).
CREATE FUNCTION @extschema@.published_columns(row_json jsonb, cols text[]) RETURNS jsonb
LANGUAGE sql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT CASE WHEN cardinality(cols) > 0
                THEN row_json - ARRAY(SELECT k FROM jsonb_object_keys(row_json) AS k
                                       WHERE k <> ALL (cols))
                ELSE row_json END
$$;

-- The role SECURITY DEFINER capture code runs as.  It may write the outbox
-- and the version counters and read the capture registrations, nothing
-- else: no login, no membership in any role and no members, so code that
-- runs as it can neither log in nor SET ROLE anywhere.  Roles are
-- cluster-wide: a second database with the extension reuses it, and a role
-- of that name made by someone else is brought to these attributes or, if
-- it belongs to or contains other roles, refused.
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

-- Refuse a table whose rows cannot be turned into JSON without running code
-- that a non-superuser controls.  to_jsonb() (capture_row(), source_state())
-- renders every column, published or not: it looks through domains, into
-- arrays and composites, and for any other type that is not built in calls
-- the type's cast to json if there is one, else its output function (a
-- range's prints its subtype).  So every type reached from a column, through
-- domains, array elements, composite attributes and range subtypes, must be
-- built in or owned by a superuser, and so must the functions of its casts
-- to json (and jsonb) and its output function: a type's owner can add a cast
-- or an attribute at any time.  Raises 42501 naming the column; reads only
-- the catalogs.  Used by capture(), source_state() and the event trigger.
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
CREATE FUNCTION @extschema@.capture_row() RETURNS trigger
LANGUAGE C
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS 'MODULE_PATHNAME', 'citizen_sync_capture_row';

-- TRUNCATE skips row triggers and would silently lose the deletes.
CREATE FUNCTION @extschema@.refuse_truncate() RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    RAISE EXCEPTION 'cannot truncate %, its changes are captured by citizen_sync', TG_RELID::regclass
        USING ERRCODE = 'feature_not_supported',
              HINT = 'Use DELETE so that every removal is published, or drop the capture first with citizen_sync.uncapture().';
END
$$;

-- Wake the outbox publisher when the calling transaction commits.
CREATE FUNCTION @extschema@.notify_publisher() RETURNS void
LANGUAGE C STRICT
AS 'MODULE_PATHNAME', 'citizen_sync_notify_publisher';

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

CREATE FUNCTION @extschema@.uncapture(source regclass) RETURNS void
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

-- The event triggers' function.  After DDL that could let changes of a
-- captured table escape the capture, or make capturing it unsafe, it checks
-- every captured table and raises, which rolls the DDL back.  Refused:
-- dropping a captured table or its triggers (uncapture() deletes the
-- registration first); disabling them, or enabling them other than ALWAYS;
-- replacing or renaming them; inheritance children and partitions of a
-- captured table; dropping or renaming a column the capture names; a column
-- type that a non-superuser controls (check_capture_safety()).
--
-- Cheap: nothing is read but the registrations when nothing is captured, and
-- a few catalog rows per captured table otherwise; the ddl_command_end
-- trigger fires only for the command tags that can change these things.
-- Restores: pg_dump loads the registrations before it creates the triggers
-- (so a missing trigger is not an error here, only dropping one is), and
-- creates each trigger in a statement of its own before the ALTER TABLE that
-- enables it ALWAYS (so CREATE TRIGGER is not checked for ALWAYS).
-- SECURITY DEFINER (as citizen_sync_capture) because whoever runs the DDL
-- may not read the registrations; it reads only them and the catalogs.
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

CREATE EVENT TRIGGER citizen_sync_guard ON ddl_command_end
    WHEN TAG IN ('ALTER TABLE', 'CREATE TABLE', 'CREATE FOREIGN TABLE', 'ALTER FOREIGN TABLE',
                 'CREATE TRIGGER', 'ALTER TRIGGER', 'ALTER TYPE', 'ALTER DOMAIN',
                 'CREATE CAST', 'ALTER FUNCTION', 'ALTER ROUTINE')
    EXECUTE FUNCTION @extschema@.guard_captures();
CREATE EVENT TRIGGER citizen_sync_guard_drop ON sql_drop
    EXECUTE FUNCTION @extschema@.guard_captures();
ALTER EVENT TRIGGER citizen_sync_guard ENABLE ALWAYS;
ALTER EVENT TRIGGER citizen_sync_guard_drop ENABLE ALWAYS;

REVOKE ALL ON @extschema@.outbox, @extschema@.aggregate_versions, @extschema@.captures FROM PUBLIC;
REVOKE ALL ON FUNCTION @extschema@.capture(regclass, text, text[], name, jsonb) FROM PUBLIC;
REVOKE ALL ON FUNCTION @extschema@.uncapture(regclass) FROM PUBLIC;
REVOKE ALL ON FUNCTION @extschema@.capture_row() FROM PUBLIC;
REVOKE ALL ON FUNCTION @extschema@.emit_change(text, jsonb, text, jsonb) FROM PUBLIC;
REVOKE ALL ON FUNCTION @extschema@.notify_publisher() FROM PUBLIC;
REVOKE ALL ON FUNCTION @extschema@.guard_captures() FROM PUBLIC;
-- What citizen_sync_capture holds: exactly what capture_row() and
-- guard_captures() need.
GRANT USAGE ON SCHEMA @extschema@ TO citizen_sync_capture;
GRANT INSERT ON @extschema@.outbox TO citizen_sync_capture;
GRANT USAGE ON SEQUENCE @extschema@.outbox_id_seq TO citizen_sync_capture;
GRANT SELECT, INSERT, UPDATE ON @extschema@.aggregate_versions TO citizen_sync_capture;
GRANT SELECT ON @extschema@.captures TO citizen_sync_capture;
GRANT EXECUTE ON FUNCTION @extschema@.emit_change(text, jsonb, text, jsonb),
                          @extschema@.notify_publisher() TO citizen_sync_capture;
ALTER FUNCTION @extschema@.capture_row() OWNER TO citizen_sync_capture;
ALTER FUNCTION @extschema@.guard_captures() OWNER TO citizen_sync_capture;
SELECT pg_catalog.pg_extension_config_dump('@extschema@.outbox', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.outbox_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.aggregate_versions', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.captures', '');
