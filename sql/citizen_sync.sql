-- citizen_sync install script.
--
-- Every object is schema-qualified; the script runs with search_path set to
-- the extension schema by CREATE EXTENSION, and every function that runs SQL
-- pins its own search_path.  Functions only an operator should call are
-- revoked from PUBLIC at the end.

\echo Use "CREATE EXTENSION citizen_sync" to load this file. \quit

DO $guard$
BEGIN
    IF pg_catalog.current_setting('server_encoding') <> 'UTF8' THEN
        RAISE EXCEPTION 'citizen_sync requires a UTF8 database'
            USING DETAIL = pg_catalog.format('Database %I uses encoding %s; events are UTF-8 JSON.',
                                             pg_catalog.current_database(),
                                             pg_catalog.current_setting('server_encoding')),
                  HINT = 'Create the database with ENCODING ''UTF8'' and install the extension there.';
    END IF;
END
$guard$;

------------------------------------------------------------------------------
-- Consumer side: the read-only cache of citizens
------------------------------------------------------------------------------

CREATE SCHEMA cache;
COMMENT ON SCHEMA cache IS 'Read-only copies of data owned by other services (written by citizen_sync only)';

CREATE TABLE cache.citizen_refs (
    citizen_id        bigint PRIMARY KEY,
    -- name and email are NULL only in a tombstone: a delete of a citizen this
    -- cache never saw, kept so that an older create cannot resurrect it.
    name              varchar(255),
    email             varchar(255),
    phone             varchar(50),
    address           text,
    city              varchar(100),
    postal_code       varchar(20),
    email_verified    boolean NOT NULL DEFAULT false,
    identity_verified boolean NOT NULL DEFAULT false,
    event_version     bigint NOT NULL DEFAULT 0,
    is_active         boolean NOT NULL DEFAULT true,
    deleted_at        timestamptz,
    last_synced_at    timestamptz NOT NULL DEFAULT pg_catalog.now(),
    created_at        timestamptz NOT NULL DEFAULT pg_catalog.now(),
    updated_at        timestamptz NOT NULL DEFAULT pg_catalog.now(),
    CONSTRAINT citizen_refs_active_has_identity
        CHECK (NOT is_active OR (name IS NOT NULL AND email IS NOT NULL)),
    CONSTRAINT citizen_refs_deleted_consistent
        CHECK (is_active = (deleted_at IS NULL))
);
COMMENT ON TABLE cache.citizen_refs IS 'Cached citizens from the auth database; newer event_version wins, deletes are soft';

CREATE INDEX idx_citizen_refs_email  ON cache.citizen_refs (email);
CREATE INDEX idx_citizen_refs_phone  ON cache.citizen_refs (phone);
CREATE INDEX idx_citizen_refs_synced ON cache.citizen_refs (last_synced_at);

CREATE FUNCTION cache.update_updated_at() RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    NEW.updated_at := pg_catalog.now();
    RETURN NEW;
END
$$;

CREATE TRIGGER citizen_refs_updated_at
    BEFORE UPDATE ON cache.citizen_refs
    FOR EACH ROW EXECUTE FUNCTION cache.update_updated_at();

CREATE TABLE cache.processed_events (
    event_id     text PRIMARY KEY,
    processed_at timestamptz NOT NULL DEFAULT pg_catalog.now()
);
COMMENT ON TABLE cache.processed_events IS 'Idempotency record: event ids already applied (or judged stale)';
CREATE INDEX idx_processed_events_time ON cache.processed_events (processed_at);

------------------------------------------------------------------------------
-- Consumer bookkeeping
------------------------------------------------------------------------------

CREATE TABLE @extschema@.consumer_offsets (
    group_id    text   NOT NULL,
    topic       text   NOT NULL,
    partition   int    NOT NULL CHECK (partition >= 0),
    next_offset bigint NOT NULL CHECK (next_offset >= 0),
    updated_at  timestamptz NOT NULL DEFAULT pg_catalog.now(),
    PRIMARY KEY (group_id, topic, partition)
);
COMMENT ON TABLE @extschema@.consumer_offsets IS
    'Kafka position of each consumer group, written in the same transaction as the rows applied: the source of truth on (re)assignment';

CREATE TABLE @extschema@.dead_letters (
    id              bigserial PRIMARY KEY,
    payload         bytea NOT NULL,
    message_key     bytea,
    topic           text,
    partition       int,
    "offset"        bigint,
    event_id        text,
    error_message   text NOT NULL,
    error_detail    text,
    error_sqlstate  char(5) NOT NULL,
    first_seen_at   timestamptz NOT NULL DEFAULT pg_catalog.now(),
    last_seen_at    timestamptz NOT NULL DEFAULT pg_catalog.now(),
    attempts        int NOT NULL DEFAULT 1,
    resolved_at     timestamptz,
    resolution      text
);
COMMENT ON TABLE @extschema@.dead_letters IS
    'Messages that could not be applied, with their raw bytes, position and error';
CREATE UNIQUE INDEX dead_letters_position ON @extschema@.dead_letters (topic, partition, "offset")
    WHERE topic IS NOT NULL;
CREATE INDEX dead_letters_unresolved ON @extschema@.dead_letters (first_seen_at)
    WHERE resolved_at IS NULL;

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
    last_error     text
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
    PRIMARY KEY (aggregate_type, aggregate_id)
);

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
    ver      bigint;
BEGIN
    IF TG_OP <> 'DELETE' THEN
        new_snap := to_jsonb(NEW);
        IF cardinality(cols) > 0 THEN
            new_snap := new_snap - ARRAY(SELECT k FROM jsonb_object_keys(new_snap) AS k
                                         WHERE k <> ALL (cols));
        END IF;
    END IF;
    IF TG_OP <> 'INSERT' THEN
        old_snap := to_jsonb(OLD);
        IF cardinality(cols) > 0 THEN
            old_snap := old_snap - ARRAY(SELECT k FROM jsonb_object_keys(old_snap) AS k
                                         WHERE k <> ALL (cols));
        END IF;
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
    agg_id := (COALESCE(new_snap, to_jsonb(OLD)) ->> id_col)::bigint;
    IF agg_id IS NULL THEN
        RAISE EXCEPTION 'captured row has no value in column "%"', id_col
            USING ERRCODE = 'not_null_violation';
    END IF;

    INSERT INTO @extschema@.aggregate_versions AS v (aggregate_type, aggregate_id, last_version)
    VALUES (agg, agg_id, 1)
    ON CONFLICT (aggregate_type, aggregate_id)
        DO UPDATE SET last_version = v.last_version + 1
    RETURNING v.last_version INTO ver;

    INSERT INTO @extschema@.outbox (aggregate_type, aggregate_id, event_type, payload)
    VALUES (agg, agg_id,
            CASE TG_OP WHEN 'INSERT' THEN 'created' WHEN 'UPDATE' THEN 'updated' ELSE 'deleted' END,
            jsonb_build_object(
                'event_version', ver,
                'event_timestamp', to_char(clock_timestamp() AT TIME ZONE 'UTC',
                                           'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"'),
                'data', CASE WHEN TG_OP = 'DELETE'
                             THEN jsonb_build_object(agg || '_id', agg_id)
                             ELSE jsonb_build_object(agg || '_id', agg_id, 'snapshot', new_snap)
                        END));
    PERFORM @extschema@.notify_publisher();
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
END
$$;

------------------------------------------------------------------------------
-- The apply core (C): one code path for SQL callers and the consumer worker
------------------------------------------------------------------------------

CREATE FUNCTION @extschema@.apply_event(payload text) RETURNS text
LANGUAGE C STRICT
SET search_path = pg_catalog, pg_temp
AS 'MODULE_PATHNAME', 'citizen_sync_apply_event';
COMMENT ON FUNCTION @extschema@.apply_event(text) IS
    'Apply one raw event to cache.citizen_refs: applied, stale, duplicate, deleted or ignored';

CREATE FUNCTION @extschema@.apply_events(payloads text[])
RETURNS TABLE (ordinality int, event_id text, result text)
LANGUAGE C STRICT
SET search_path = pg_catalog, pg_temp
AS 'MODULE_PATHNAME', 'citizen_sync_apply_events';
COMMENT ON FUNCTION @extschema@.apply_events(text[]) IS
    'Apply many raw events in stream order in one set-based pass; all or nothing on invalid input';

------------------------------------------------------------------------------
-- Roles: the ownership matrix of one service database
------------------------------------------------------------------------------

CREATE FUNCTION @extschema@.create_service_roles(service text) RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    svc  text;
    sync text;
    ro   text;
    r    text;
BEGIN
    IF service IS NULL OR service !~ '^[a-z][a-z0-9_]{0,40}$' THEN
        RAISE EXCEPTION 'invalid service name %', quote_nullable(service)
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'Use a lower-case name of letters, digits and underscores, e.g. ''permits''.';
    END IF;
    svc  := service || '_service_user';
    sync := service || '_sync_user';
    ro   := service || '_readonly_user';

    FOREACH r IN ARRAY ARRAY[svc, sync, ro] LOOP
        IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = r) THEN
            EXECUTE format('CREATE ROLE %I NOLOGIN', r);
        END IF;
        EXECUTE format('GRANT CONNECT ON DATABASE %I TO %I', current_database(), r);
    END LOOP;

    -- Service user: owns its tables in public, reads the cache only.
    EXECUTE format('GRANT USAGE, CREATE ON SCHEMA public TO %I', svc);
    EXECUTE format('GRANT ALL ON ALL TABLES IN SCHEMA public TO %I', svc);
    EXECUTE format('GRANT ALL ON ALL SEQUENCES IN SCHEMA public TO %I', svc);
    EXECUTE format('ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT ALL ON TABLES TO %I', svc);
    EXECUTE format('ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT ALL ON SEQUENCES TO %I', svc);
    EXECUTE format('GRANT USAGE ON SCHEMA cache TO %I', svc);
    EXECUTE format('GRANT SELECT ON ALL TABLES IN SCHEMA cache TO %I', svc);

    -- Sync user: writes the cache and the extension's bookkeeping, nothing else.
    EXECUTE format('REVOKE ALL ON SCHEMA public FROM %I', sync);
    EXECUTE format('GRANT USAGE ON SCHEMA cache TO %I', sync);
    EXECUTE format('GRANT SELECT, INSERT, UPDATE ON cache.citizen_refs TO %I', sync);
    EXECUTE format('GRANT SELECT, INSERT, UPDATE, DELETE ON cache.processed_events TO %I', sync);
    EXECUTE format('GRANT USAGE ON SCHEMA @extschema@ TO %I', sync);
    EXECUTE format('GRANT SELECT, INSERT, UPDATE ON @extschema@.consumer_offsets TO %I', sync);
    EXECUTE format('GRANT SELECT, INSERT, UPDATE ON @extschema@.dead_letters TO %I', sync);
    EXECUTE format('GRANT USAGE ON SEQUENCE @extschema@.dead_letters_id_seq TO %I', sync);
    EXECUTE format('GRANT EXECUTE ON FUNCTION @extschema@.apply_event(text) TO %I', sync);
    EXECUTE format('GRANT EXECUTE ON FUNCTION @extschema@.apply_events(text[]) TO %I', sync);

    -- Read-only user: reads the service's tables and the cache.
    EXECUTE format('GRANT USAGE ON SCHEMA public, cache TO %I', ro);
    EXECUTE format('GRANT SELECT ON ALL TABLES IN SCHEMA public TO %I', ro);
    EXECUTE format('GRANT SELECT ON ALL TABLES IN SCHEMA cache TO %I', ro);
    EXECUTE format('ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT SELECT ON TABLES TO %I', ro);
    EXECUTE format('ALTER DEFAULT PRIVILEGES FOR ROLE %I IN SCHEMA public GRANT SELECT ON TABLES TO %I', svc, ro);
END
$$;
COMMENT ON FUNCTION @extschema@.create_service_roles(text) IS
    'Create <service>_service_user, <service>_sync_user and <service>_readonly_user (NOLOGIN) with the ownership matrix grants; safe to rerun';

------------------------------------------------------------------------------
-- Privileges
------------------------------------------------------------------------------

REVOKE ALL ON ALL TABLES IN SCHEMA cache FROM PUBLIC;
REVOKE ALL ON ALL TABLES IN SCHEMA @extschema@ FROM PUBLIC;
REVOKE ALL ON FUNCTION @extschema@.apply_event(text) FROM PUBLIC;
REVOKE ALL ON FUNCTION @extschema@.apply_events(text[]) FROM PUBLIC;
REVOKE ALL ON FUNCTION @extschema@.capture(regclass, text, text[], name) FROM PUBLIC;
REVOKE ALL ON FUNCTION @extschema@.uncapture(regclass) FROM PUBLIC;
REVOKE ALL ON FUNCTION @extschema@.create_service_roles(text) FROM PUBLIC;
REVOKE ALL ON FUNCTION @extschema@.capture_row() FROM PUBLIC;
REVOKE ALL ON FUNCTION @extschema@.notify_publisher() FROM PUBLIC;

------------------------------------------------------------------------------
-- Worker statistics (from shared memory)
------------------------------------------------------------------------------

CREATE FUNCTION @extschema@.worker_stats_raw(
    OUT kind text, OUT database text, OUT role text, OUT group_id text,
    OUT pid int, OUT state text, OUT started_at timestamptz,
    OUT partitions int, OUT applied bigint, OUT deleted bigint, OUT stale bigint,
    OUT duplicate bigint, OUT ignored bigint, OUT dead_lettered bigint,
    OUT batches bigint, OUT last_batch_at timestamptz, OUT lag bigint,
    OUT published bigint, OUT last_error text, OUT last_error_at timestamptz)
RETURNS SETOF record
LANGUAGE C STRICT VOLATILE
AS 'MODULE_PATHNAME', 'citizen_sync_worker_stats';

CREATE FUNCTION @extschema@.partition_stats_raw(
    OUT database text, OUT group_id text, OUT topic text, OUT partition int,
    OUT next_offset bigint, OUT high_watermark bigint, OUT lag bigint)
RETURNS SETOF record
LANGUAGE C STRICT VOLATILE
AS 'MODULE_PATHNAME', 'citizen_sync_partition_stats';

-- Every worker of this instance (all databases), with its counters and last error.
CREATE VIEW @extschema@.worker_stats AS
    SELECT * FROM @extschema@.worker_stats_raw();

-- Consumers only, with the columns a DBA looks at first.
CREATE VIEW @extschema@.consumer_stats AS
    SELECT database, role, group_id, pid, state, partitions, applied, deleted,
           stale, duplicate, ignored, dead_lettered, batches, last_batch_at, lag,
           last_error, last_error_at
      FROM @extschema@.worker_stats_raw()
     WHERE kind = 'consumer';

-- Lag per assigned partition: high watermark minus the next offset to apply.
CREATE VIEW @extschema@.consumer_lag AS
    SELECT * FROM @extschema@.partition_stats_raw();

REVOKE ALL ON FUNCTION @extschema@.worker_stats_raw() FROM PUBLIC;
REVOKE ALL ON FUNCTION @extschema@.partition_stats_raw() FROM PUBLIC;
REVOKE ALL ON @extschema@.worker_stats, @extschema@.consumer_stats, @extschema@.consumer_lag FROM PUBLIC;
GRANT SELECT ON @extschema@.worker_stats, @extschema@.consumer_stats, @extschema@.consumer_lag TO pg_monitor;
GRANT USAGE ON SCHEMA @extschema@ TO pg_monitor;
