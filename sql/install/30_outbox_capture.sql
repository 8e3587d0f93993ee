------------------------------------------------------------------------------
-- Source side: the transactional outbox
------------------------------------------------------------------------------

CREATE TABLE @extschema@.outbox (
    id             bigserial PRIMARY KEY,
    aggregate_type varchar(100) NOT NULL,
    aggregate_id   bigint NOT NULL,
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

-- Per-aggregate version counter.  Its row lock, held to commit, orders
-- concurrent changes of one aggregate: versions increase in commit order.
CREATE TABLE @extschema@.aggregate_versions (
    aggregate_type varchar(100) NOT NULL,
    aggregate_id   bigint NOT NULL,
    last_version   bigint NOT NULL,
    last_changed_at timestamptz NOT NULL DEFAULT pg_catalog.now(),
    PRIMARY KEY (aggregate_type, aggregate_id)
);

-- Which tables are captured, and how (written by capture()/uncapture()).
CREATE TABLE @extschema@.captures (
    source         regclass PRIMARY KEY,
    aggregate_type varchar(100) NOT NULL UNIQUE,
    id_column      name NOT NULL,
    columns        text[]
);

-- Write one change of one aggregate to the outbox: next version (its row
-- lock, held to commit, orders concurrent changes), payload, commit wake-up.
-- op is created, updated or deleted; snap the published columns (ignored for
-- deleted).  Shared by the capture trigger and resync().
CREATE FUNCTION @extschema@.emit_change(agg text, agg_id bigint, op text, snap jsonb)
RETURNS bigint
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    ver bigint;
BEGIN
    INSERT INTO @extschema@.aggregate_versions AS v (aggregate_type, aggregate_id, last_version)
    VALUES (agg, agg_id, 1)
    ON CONFLICT (aggregate_type, aggregate_id)
        DO UPDATE SET last_version = v.last_version + 1, last_changed_at = now()
    RETURNING v.last_version INTO ver;

    INSERT INTO @extschema@.outbox (aggregate_type, aggregate_id, event_type, payload)
    VALUES (agg, agg_id, op,
            jsonb_build_object(
                'event_version', ver,
                'event_timestamp', to_char(clock_timestamp() AT TIME ZONE 'UTC',
                                           'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"'),
                'data', CASE WHEN op = 'deleted'
                             THEN jsonb_build_object(agg || '_id', agg_id)
                             ELSE jsonb_build_object(agg || '_id', agg_id, 'snapshot', snap)
                        END));
    PERFORM @extschema@.notify_publisher();
    RETURN ver;
END
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

-- Row trigger of captured tables.  TG_ARGV: aggregate_type, id column, then
-- the published columns (none = all).  SECURITY DEFINER so that application
-- roles need no privilege on the outbox and cannot forge events.
CREATE FUNCTION @extschema@.capture_row() RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    agg      text := TG_ARGV[0];
    id_col   text := TG_ARGV[1];
    cols     text[] := TG_ARGV[2:];
    new_snap jsonb;
    old_snap jsonb;
    agg_id   bigint;
BEGIN
    IF TG_OP <> 'DELETE' THEN
        new_snap := @extschema@.published_columns(to_jsonb(NEW), cols);
    END IF;
    IF TG_OP <> 'INSERT' THEN
        old_snap := @extschema@.published_columns(to_jsonb(OLD), cols);
    END IF;
    IF TG_OP = 'UPDATE' THEN
        IF new_snap = old_snap THEN
            RETURN NULL;            -- no published column changed
        END IF;
        IF (new_snap ->> id_col) IS DISTINCT FROM (old_snap ->> id_col) THEN
            RAISE EXCEPTION 'cannot change column "%" of a table captured by citizen_sync', id_col
                USING ERRCODE = 'feature_not_supported',
                      HINT = 'Delete the row and insert it with the new id instead.';
        END IF;
    END IF;
    agg_id := (COALESCE(new_snap, old_snap) ->> id_col)::bigint;
    IF agg_id IS NULL THEN
        RAISE EXCEPTION 'captured row has no value in column "%"', id_col
            USING ERRCODE = 'not_null_violation';
    END IF;
    PERFORM @extschema@.emit_change(agg, agg_id,
        CASE TG_OP WHEN 'INSERT' THEN 'created' WHEN 'UPDATE' THEN 'updated' ELSE 'deleted' END,
        new_snap);
    RETURN NULL;
END
$$;

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

CREATE FUNCTION @extschema@.capture(source regclass, aggregate_type text,
                                    columns text[] DEFAULT NULL,
                                    id_column name DEFAULT 'id')
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    args text;
    col  text;
BEGIN
    IF aggregate_type IS NULL OR aggregate_type !~ '^[a-z][a-z0-9_]{0,62}$' THEN
        RAISE EXCEPTION 'invalid aggregate type %', quote_nullable(aggregate_type)
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'Use a lower-case name such as ''citizen''; the topic is citizen_sync.topic_prefix followed by it.';
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
    INSERT INTO @extschema@.captures (source, aggregate_type, id_column, columns)
    VALUES (source, aggregate_type, id_column, columns);
    EXECUTE format('CREATE TRIGGER citizen_sync_capture AFTER INSERT OR UPDATE OR DELETE ON %s '
                   'FOR EACH ROW EXECUTE FUNCTION @extschema@.capture_row(%s)', source, args);
    EXECUTE format('CREATE TRIGGER citizen_sync_no_truncate BEFORE TRUNCATE ON %s '
                   'FOR EACH STATEMENT EXECUTE FUNCTION @extschema@.refuse_truncate()', source);
END
$$;
COMMENT ON FUNCTION @extschema@.capture(regclass, text, text[], name) IS
    'Publish every INSERT/UPDATE/DELETE of a table through the outbox (columns: the published ones, NULL = all)';

CREATE FUNCTION @extschema@.uncapture(source regclass) RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    t name;
BEGIN
    FOR t IN SELECT tgname FROM pg_trigger
              WHERE tgrelid = source
                AND tgname IN ('citizen_sync_capture', 'citizen_sync_no_truncate') LOOP
        EXECUTE format('DROP TRIGGER %I ON %s', t, source);
    END LOOP;
    DELETE FROM @extschema@.captures c WHERE c.source = uncapture.source;
END
$$;

REVOKE ALL ON @extschema@.outbox, @extschema@.aggregate_versions, @extschema@.captures FROM PUBLIC;
REVOKE ALL ON FUNCTION @extschema@.capture(regclass, text, text[], name) FROM PUBLIC;
REVOKE ALL ON FUNCTION @extschema@.uncapture(regclass) FROM PUBLIC;
REVOKE ALL ON FUNCTION @extschema@.capture_row() FROM PUBLIC;
REVOKE ALL ON FUNCTION @extschema@.emit_change(text, bigint, text, jsonb) FROM PUBLIC;
REVOKE ALL ON FUNCTION @extschema@.notify_publisher() FROM PUBLIC;
SELECT pg_catalog.pg_extension_config_dump('@extschema@.outbox', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.outbox_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.aggregate_versions', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.captures', '');
