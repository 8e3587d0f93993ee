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
    EXECUTE format('GRANT SELECT, INSERT, UPDATE, DELETE ON @extschema@.dead_letters TO %I', sync);
    EXECUTE format('GRANT USAGE ON SEQUENCE @extschema@.dead_letters_id_seq TO %I', sync);
    EXECUTE format('GRANT EXECUTE ON FUNCTION @extschema@.apply_event(text) TO %I', sync);
    EXECUTE format('GRANT EXECUTE ON FUNCTION @extschema@.apply_events(text[]) TO %I', sync);

    -- Service and read-only users: freshness-aware reads of the cache.
    EXECUTE format('GRANT USAGE ON SCHEMA @extschema@ TO %I, %I', svc, ro);
    EXECUTE format('GRANT EXECUTE ON FUNCTION @extschema@.citizen(bigint, interval), '
                   '@extschema@.citizen_for_critical(bigint, interval) TO %I, %I', svc, ro);

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
REVOKE ALL ON FUNCTION @extschema@.emit_change(text, bigint, text, jsonb) FROM PUBLIC;
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

------------------------------------------------------------------------------
-- Operations: metrics, freshness-aware reads, consistency and resync,
-- dead-letter tools
------------------------------------------------------------------------------

CREATE FUNCTION @extschema@.latency_histogram_raw(
    OUT database text, OUT le_ms float8, OUT bucket_count bigint,
    OUT total_count bigint, OUT sum_ms float8)
RETURNS SETOF record
LANGUAGE C STRICT VOLATILE
AS 'MODULE_PATHNAME', 'citizen_sync_latency_histogram';

CREATE FUNCTION @extschema@.fresh_as_of(database name DEFAULT pg_catalog.current_database())
RETURNS timestamptz
LANGUAGE C STRICT VOLATILE
AS 'MODULE_PATHNAME', 'citizen_sync_fresh_as_of';
COMMENT ON FUNCTION @extschema@.fresh_as_of(name) IS
    'Last time the consumer of the database had applied everything Kafka held (NULL = unknown)';

-- Sync latency (event_timestamp -> applied), cumulative buckets, Prometheus style.
CREATE VIEW @extschema@.sync_latency AS
    SELECT database, le_ms, bucket_count, total_count, sum_ms
      FROM @extschema@.latency_histogram_raw();

-- p50/p95/p99 per consumer, as the upper bound of the bucket holding the quantile.
CREATE VIEW @extschema@.sync_latency_summary AS
    SELECT database, max(total_count) AS samples,
           CASE WHEN max(total_count) > 0 THEN max(sum_ms) / max(total_count) END AS mean_ms,
           min(le_ms) FILTER (WHERE bucket_count >= 0.50 * total_count AND total_count > 0) AS p50_ms,
           min(le_ms) FILTER (WHERE bucket_count >= 0.95 * total_count AND total_count > 0) AS p95_ms,
           min(le_ms) FILTER (WHERE bucket_count >= 0.99 * total_count AND total_count > 0) AS p99_ms
      FROM @extschema@.latency_histogram_raw()
     GROUP BY database;

-- Is each configured worker up (1) or down (0)?
CREATE VIEW @extschema@.worker_up AS
    SELECT kind, database, (pid IS NOT NULL AND state IN ('running', 'retrying'))::int AS up,
           state, last_error
      FROM @extschema@.worker_stats_raw();

-- Unresolved dead letters grouped by error.
CREATE VIEW @extschema@.dead_letter_summary AS
    SELECT error_sqlstate, error_message, count(*) AS unresolved,
           min(first_seen_at) AS oldest, max(last_seen_at) AS newest
      FROM @extschema@.dead_letters
     WHERE resolved_at IS NULL
     GROUP BY error_sqlstate, error_message;

-- Publisher backlog (meaningful in the outbox database).
CREATE VIEW @extschema@.outbox_backlog AS
    SELECT count(*) AS pending,
           count(*) FILTER (WHERE retry_count > 0) AS retrying,
           COALESCE(extract(epoch FROM now() - min(created_at)), 0)::float8 AS oldest_pending_age_seconds
      FROM @extschema@.outbox
     WHERE published_at IS NULL;

------------------------------------------------------------------------------
-- Freshness-aware reads (the seed's display vs critical distinction)
------------------------------------------------------------------------------

-- Display read: the cached row, whatever its age, with how fresh it is.
-- A row is known current as of the later of its own sync and the last time
-- the consumer had nothing left to apply.
CREATE FUNCTION @extschema@.citizen(citizen_id bigint, max_age interval DEFAULT NULL)
RETURNS TABLE (citizen_id bigint, name varchar, email varchar, phone varchar, address text,
               city varchar, postal_code varchar, email_verified boolean,
               identity_verified boolean, event_version bigint, is_active boolean,
               deleted_at timestamptz, last_synced_at timestamptz,
               fresh_as_of timestamptz, age interval, is_fresh boolean)
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT c.citizen_id, c.name, c.email, c.phone, c.address, c.city, c.postal_code,
           c.email_verified, c.identity_verified, c.event_version, c.is_active,
           c.deleted_at, c.last_synced_at, f.ts, now() - f.ts,
           ($2 IS NULL OR now() - f.ts <= $2)
      FROM cache.citizen_refs c,
           LATERAL (SELECT GREATEST(c.last_synced_at, @extschema@.fresh_as_of()) AS ts) f
     WHERE c.citizen_id = $1
$$;
COMMENT ON FUNCTION @extschema@.citizen(bigint, interval) IS
    'Display read: the cached citizen with fresh_as_of, age and is_fresh (age <= max_age)';

-- Critical read: the cached row only if it is known current within max_age;
-- otherwise SQLSTATE CS001 (stale) or CS002 (not cached), so the caller goes
-- to the auth service instead.
CREATE FUNCTION @extschema@.citizen_for_critical(citizen_id bigint, max_age interval)
RETURNS cache.citizen_refs
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    r   record;
    row cache.citizen_refs;
BEGIN
    IF max_age IS NULL THEN
        RAISE EXCEPTION 'a critical read needs a max_age'
            USING ERRCODE = 'null_value_not_allowed',
                  HINT = 'Pass how old the data may be, e.g. interval ''1 minute''; use citizen_sync.citizen() for display reads.';
    END IF;
    SELECT * INTO r FROM @extschema@.citizen(citizen_id, max_age);
    IF NOT FOUND THEN
        RAISE EXCEPTION 'citizen % is not in the cache', citizen_id
            USING ERRCODE = 'CS002',
                  HINT = 'Read it from the auth service; the cache may not have received it yet.';
    END IF;
    IF NOT r.is_fresh THEN
        RAISE EXCEPTION 'cached citizen % is not known to be current within %', citizen_id, max_age
            USING ERRCODE = 'CS001',
                  DETAIL = format('The cache is known current as of %s (%s ago).', r.fresh_as_of, r.age),
                  HINT = 'Read it from the auth service, or check citizen_sync.consumer_stats for lag.';
    END IF;
    SELECT * INTO row FROM cache.citizen_refs c WHERE c.citizen_id = citizen_for_critical.citizen_id;
    RETURN row;
END
$$;
COMMENT ON FUNCTION @extschema@.citizen_for_critical(bigint, interval) IS
    'Critical read: the cached citizen if known current within max_age, else an error (CS001 stale, CS002 missing)';

------------------------------------------------------------------------------
-- Consistency check (service side, through dblink) and resync (source side)
------------------------------------------------------------------------------

-- Source side: the current state of every aggregate of a captured table,
-- including rows that existed before capture() (version NULL).
CREATE FUNCTION @extschema@.source_state(aggregate_type text DEFAULT 'citizen')
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

-- Source side: republish the current snapshot of the given aggregates (all
-- rows when ids is NULL) through the outbox, so caches heal by the normal
-- path; ids no longer in the source are published as deleted.  Also the way
-- to backfill rows that existed before capture().  Returns events written.
CREATE FUNCTION @extschema@.resync(aggregate_type text DEFAULT 'citizen', ids bigint[] DEFAULT NULL,
                                  at_least bigint[] DEFAULT NULL)
RETURNS bigint
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    s record;
    n bigint := 0;
BEGIN
    -- A cache can be ahead of the source's counter (a restored auth database,
    -- a hand-edited cache): lift the counter so the new events win.
    IF at_least IS NOT NULL THEN
        INSERT INTO @extschema@.aggregate_versions AS v (aggregate_type, aggregate_id, last_version)
        SELECT resync.aggregate_type, u.id, u.v
          FROM unnest(ids, at_least) AS u(id, v)
         WHERE u.id IS NOT NULL AND u.v IS NOT NULL
        ON CONFLICT ON CONSTRAINT aggregate_versions_pkey
            DO UPDATE SET last_version = GREATEST(v.last_version, EXCLUDED.last_version);
    END IF;
    FOR s IN SELECT * FROM @extschema@.source_state(aggregate_type) st
              WHERE ids IS NULL OR st.id = ANY (ids)
              ORDER BY st.id LOOP
        IF s.present THEN
            PERFORM @extschema@.emit_change(aggregate_type, s.id, 'updated', s.snapshot);
            n := n + 1;
        ELSIF ids IS NOT NULL THEN
            PERFORM @extschema@.emit_change(aggregate_type, s.id, 'deleted', NULL);
            n := n + 1;
        END IF;
    END LOOP;
    -- ids the source never had at all: tell the caches they are gone
    IF ids IS NOT NULL THEN
        FOR s IN SELECT u.id FROM unnest(ids) AS u(id)
                  WHERE NOT EXISTS (SELECT 1 FROM @extschema@.source_state(aggregate_type) st
                                     WHERE st.id = u.id) LOOP
            PERFORM @extschema@.emit_change(aggregate_type, s.id, 'deleted', NULL);
            n := n + 1;
        END LOOP;
    END IF;
    RETURN n;
END
$$;
COMMENT ON FUNCTION @extschema@.resync(text, bigint[], bigint[]) IS
    'Republish the current snapshot of the given (NULL = all) aggregates through the outbox, above the versions in at_least';

CREATE TABLE @extschema@.consistency_reports (
    id          bigserial PRIMARY KEY,
    source      text NOT NULL,
    checked_at  timestamptz NOT NULL DEFAULT now(),
    checked     bigint NOT NULL,
    missing     bigint NOT NULL,
    stale       bigint NOT NULL,
    mismatched  bigint NOT NULL,
    extra       bigint NOT NULL
);
COMMENT ON TABLE @extschema@.consistency_reports IS 'Results of consistency_check(), newest last';

-- The schema dblink is installed in, or an error telling how to install it.
CREATE FUNCTION @extschema@.dblink_schema() RETURNS name
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    nsp name;
BEGIN
    SELECT n.nspname INTO nsp FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace
     WHERE e.extname = 'dblink';
    IF nsp IS NULL THEN
        RAISE EXCEPTION 'the consistency check needs the dblink extension'
            USING ERRCODE = 'undefined_function',
                  HINT = 'Run CREATE EXTENSION dblink in this database (it ships with PostgreSQL).';
    END IF;
    RETURN nsp;
END
$$;

-- Service side: compare this cache with the source (auth) database reached
-- with source_conninfo.  Reports, for changes older than stale_after (younger
-- ones may still be in flight): missing (live in the source, absent or
-- inactive here), stale (the source has a newer version), mismatched (same
-- version, different fields: the cache was altered), extra (active here, gone
-- from the source).  Records a summary in consistency_reports.
CREATE FUNCTION @extschema@.consistency_check(source_conninfo text,
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
          format('SELECT * FROM citizen_sync.source_state(%L)', aggregate_type);
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

-- Service side: check, then have the source republish every drifted citizen.
-- Returns the number of events the source wrote.
CREATE FUNCTION @extschema@.heal(source_conninfo text,
                                 stale_after interval DEFAULT '5 minutes',
                                 aggregate_type text DEFAULT 'citizen')
RETURNS bigint
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    ids  bigint[];
    vers bigint[];
    n    bigint;
BEGIN
    SELECT array_agg(d.citizen_id ORDER BY d.citizen_id),
           array_agg(COALESCE(d.cache_version, 0) ORDER BY d.citizen_id)
      INTO ids, vers
      FROM @extschema@.consistency_check(source_conninfo, stale_after, aggregate_type) d;
    IF ids IS NULL THEN
        RETURN 0;
    END IF;
    EXECUTE format('SELECT n FROM %I.dblink($1, $2) AS t(n bigint)', @extschema@.dblink_schema())
       INTO n
      USING source_conninfo,
            format('SELECT citizen_sync.resync(%L, %L::bigint[], %L::bigint[])',
                   aggregate_type, ids, vers);
    RETURN n;
END
$$;

-- The latest consistency report per source, for monitoring.
CREATE VIEW @extschema@.consistency_status AS
    SELECT DISTINCT ON (source) source, checked_at, checked, missing, stale, mismatched, extra,
           extract(epoch FROM now() - checked_at)::float8 AS age_seconds
      FROM @extschema@.consistency_reports
     ORDER BY source, checked_at DESC;

------------------------------------------------------------------------------
-- Dead-letter tools
------------------------------------------------------------------------------

-- Re-apply unresolved dead letters (the given ids, or all) through the
-- normal apply path, each in its own subtransaction.  A success marks the
-- letter resolved with the apply result; a failure records the new error and
-- bumps attempts.  Idempotent: duplicates and stale versions are harmless.
CREATE FUNCTION @extschema@.retry_dead_letters(ids bigint[] DEFAULT NULL)
RETURNS TABLE (id bigint, result text, error text)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    d   record;
    res text;
BEGIN
    FOR d IN SELECT l.id, l.payload FROM @extschema@.dead_letters l
              WHERE l.resolved_at IS NULL AND (ids IS NULL OR l.id = ANY (ids))
              ORDER BY l.id FOR UPDATE LOOP
        BEGIN
            res := @extschema@.apply_event(convert_from(d.payload, 'UTF8'));
            UPDATE @extschema@.dead_letters l
               SET resolved_at = now(), resolution = 'retried: ' || res, last_seen_at = now(),
                   attempts = l.attempts + 1
             WHERE l.id = d.id;
            id := d.id; result := res; error := NULL;
        EXCEPTION WHEN OTHERS THEN
            UPDATE @extschema@.dead_letters l
               SET error_message = SQLERRM, error_sqlstate = SQLSTATE,
                   last_seen_at = now(), attempts = l.attempts + 1
             WHERE l.id = d.id;
            id := d.id; result := 'failed'; error := SQLERRM;
        END;
        RETURN NEXT;
    END LOOP;
END
$$;
COMMENT ON FUNCTION @extschema@.retry_dead_letters(bigint[]) IS
    'Re-apply unresolved dead letters (NULL = all) through the normal apply path';

-- Delete dead letters older than older_than: resolved ones, and unresolved
-- ones too only when include_unresolved.  Returns the number deleted.
CREATE FUNCTION @extschema@.purge_dead_letters(older_than interval DEFAULT '30 days',
                                               include_unresolved boolean DEFAULT false)
RETURNS bigint
LANGUAGE sql
SET search_path = pg_catalog, pg_temp
AS $$
    WITH d AS (
        DELETE FROM @extschema@.dead_letters l
         WHERE l.first_seen_at < now() - older_than
           AND (l.resolved_at IS NOT NULL OR include_unresolved)
        RETURNING 1)
    SELECT count(*) FROM d
$$;

------------------------------------------------------------------------------
-- Privileges and dumps for the operations objects
------------------------------------------------------------------------------

REVOKE ALL ON FUNCTION @extschema@.latency_histogram_raw() FROM PUBLIC;
REVOKE ALL ON FUNCTION @extschema@.source_state(text) FROM PUBLIC;
REVOKE ALL ON FUNCTION @extschema@.resync(text, bigint[], bigint[]) FROM PUBLIC;
REVOKE ALL ON FUNCTION @extschema@.consistency_check(text, interval, text, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION @extschema@.heal(text, interval, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION @extschema@.retry_dead_letters(bigint[]) FROM PUBLIC;
REVOKE ALL ON FUNCTION @extschema@.purge_dead_letters(interval, boolean) FROM PUBLIC;
REVOKE ALL ON FUNCTION @extschema@.citizen(bigint, interval) FROM PUBLIC;
REVOKE ALL ON FUNCTION @extschema@.citizen_for_critical(bigint, interval) FROM PUBLIC;
REVOKE ALL ON @extschema@.captures, @extschema@.consistency_reports FROM PUBLIC;
REVOKE ALL ON @extschema@.sync_latency, @extschema@.sync_latency_summary, @extschema@.worker_up,
              @extschema@.dead_letter_summary, @extschema@.outbox_backlog,
              @extschema@.consistency_status FROM PUBLIC;
GRANT SELECT ON @extschema@.sync_latency, @extschema@.sync_latency_summary, @extschema@.worker_up,
                @extschema@.dead_letter_summary, @extschema@.outbox_backlog,
                @extschema@.consistency_status TO pg_monitor;
GRANT EXECUTE ON FUNCTION @extschema@.latency_histogram_raw(), @extschema@.worker_stats_raw(),
                 @extschema@.partition_stats_raw() TO pg_monitor;
GRANT SELECT ON @extschema@.dead_letters, @extschema@.outbox, @extschema@.consistency_reports
    TO pg_monitor;

-- Data tables are included in pg_dump output.
SELECT pg_catalog.pg_extension_config_dump('cache.citizen_refs', '');
SELECT pg_catalog.pg_extension_config_dump('cache.processed_events', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.consumer_offsets', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.dead_letters', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.dead_letters_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.outbox', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.outbox_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.aggregate_versions', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.captures', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.consistency_reports', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.consistency_reports_id_seq', '');
