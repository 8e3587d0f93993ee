------------------------------------------------------------------------------
-- Operations per subscription: freshness, display and critical reads, lag,
-- consistency check and heal (issue 10, items 2 and 7)
------------------------------------------------------------------------------

-- citizen_sync_reader: the NOLOGIN role that subscription_target() and
-- subscription_fresh_as_of() run as (SECURITY DEFINER), so that a reader of a
-- subscription needs no privilege on the catalog or the worker statistics, and
-- the functions hold nothing more than what they read.
DO $reader$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles
                    WHERE rolname OPERATOR(pg_catalog.=) 'citizen_sync_reader') THEN
        CREATE ROLE citizen_sync_reader NOLOGIN NOINHERIT;
    END IF;
    ALTER ROLE citizen_sync_reader NOSUPERUSER NOCREATEDB NOCREATEROLE NOLOGIN NOINHERIT
        NOREPLICATION NOBYPASSRLS;
END
$reader$;

-- The time up to which the topic of the subscription on target was applied,
-- or NULL if unknown.  The consumer records one caught-up time for all the
-- topics of its database (fresh_as_of()); a topic is known applied up to it
-- when the consumer of this database holds partitions of that topic.  This
-- is a lower bound for each topic (another topic's backlog keeps it back),
-- never an overstatement.
CREATE FUNCTION @extschema@.subscription_fresh_as_of(target regclass)
RETURNS timestamptz
LANGUAGE sql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT CASE WHEN EXISTS (SELECT 1 FROM @extschema@.partition_stats_raw() l
                              WHERE l.database OPERATOR(pg_catalog.=) pg_catalog.current_database()
                                AND l.topic OPERATOR(pg_catalog.=) s.topic)
                THEN @extschema@.fresh_as_of() END
      FROM @extschema@.subscriptions s
     WHERE s.target OPERATOR(pg_catalog.=) subscription_fresh_as_of.target
$$;
COMMENT ON FUNCTION @extschema@.subscription_fresh_as_of(regclass) IS
    'Time up to which the topic of the subscription on target was applied (NULL = unknown)';

-- The catalog entry of target with its quoted name and key type, or an
-- error naming the table.  SECURITY DEFINER so that a reader needs no
-- privilege on the catalog; it runs no SQL of anyone else and returns what
-- pg_attribute shows anyone.  Its callers check the invoker's SELECT
-- privilege on the target first (has_table_privilege here would see the
-- owner).
CREATE FUNCTION @extschema@.subscription_target(target regclass,
    OUT qualified text, OUT key_column name, OUT key_type text, OUT delete_mode text,
    OUT aggregate_type text)
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF target IS NULL THEN
        RAISE EXCEPTION 'target must not be null'
            USING ERRCODE = 'null_value_not_allowed';
    END IF;
    SELECT pg_catalog.format('%I.%I', n.nspname, r.relname), s.key_column,
           pg_catalog.format_type(a.atttypid, a.atttypmod), s.delete_mode, s.aggregate_type
      INTO qualified, key_column, key_type, delete_mode, aggregate_type
      FROM @extschema@.subscription_catalog s
      JOIN pg_class r ON r.oid OPERATOR(pg_catalog.=) s.target::oid
      JOIN pg_namespace n ON n.oid OPERATOR(pg_catalog.=) r.relnamespace
      JOIN pg_attribute a ON a.attrelid OPERATOR(pg_catalog.=) r.oid
                         AND a.attname OPERATOR(pg_catalog.=) s.key_column
     WHERE s.target OPERATOR(pg_catalog.=) subscription_target.target;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'table % is not subscribed', target
            USING ERRCODE = 'undefined_object',
                  HINT = 'See citizen_sync.subscriptions for the subscribed tables.';
    END IF;
END
$$;

-- Refuses a caller without SELECT on target (SECURITY INVOKER: current_user).
CREATE FUNCTION @extschema@.check_read_privilege(target regclass) RETURNS void
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF target IS NOT NULL AND NOT pg_catalog.has_table_privilege(target, 'SELECT') THEN
        RAISE EXCEPTION 'permission denied for table %', target
            USING ERRCODE = 'insufficient_privilege',
                  HINT = 'Reading a subscription needs the SELECT privilege on its cache table.';
    END IF;
END
$$;

-- Display read of any subscription: the cached row as jsonb, whatever its
-- age, with how fresh it is (as citizen() for the citizens).  A row is known
-- current as of the later of its own sync and the topic's fresh_as_of.
-- SECURITY INVOKER: the caller needs SELECT on the target.
CREATE FUNCTION @extschema@.read(target regclass, key text, max_age interval DEFAULT NULL)
RETURNS TABLE (data jsonb, fresh_as_of timestamptz, age interval, is_fresh boolean)
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    t  record;
    ts timestamptz;
BEGIN
    PERFORM @extschema@.check_read_privilege(target);
    t := @extschema@.subscription_target(target);
    IF key IS NULL THEN
        RAISE EXCEPTION 'key must not be null'
            USING ERRCODE = 'null_value_not_allowed';
    END IF;
    EXECUTE pg_catalog.format(
        'SELECT pg_catalog.to_jsonb(c), c.last_synced_at FROM %s c WHERE c.%I OPERATOR(pg_catalog.=) CAST($1 AS %s)',
        t.qualified, t.key_column, t.key_type)
       INTO data, ts
      USING key;
    IF data IS NULL THEN
        RETURN;
    END IF;
    fresh_as_of := GREATEST(ts, @extschema@.subscription_fresh_as_of(target));
    age := pg_catalog.now() OPERATOR(pg_catalog.-) fresh_as_of;
    is_fresh := max_age IS NULL OR age OPERATOR(pg_catalog.<=) max_age;
    RETURN NEXT;
END
$$;
COMMENT ON FUNCTION @extschema@.read(regclass, text, interval) IS
    'Display read: the cached row of a subscription as jsonb with fresh_as_of, age and is_fresh (age <= max_age)';

-- Critical read of any subscription: the cached row only if it is known
-- current within max_age; otherwise SQLSTATE CS001 (stale) or CS002 (not
-- cached), as citizen_for_critical().
CREATE FUNCTION @extschema@.read_for_critical(target regclass, key text, max_age interval)
RETURNS jsonb
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    r record;
BEGIN
    IF max_age IS NULL THEN
        RAISE EXCEPTION 'a critical read needs a max_age'
            USING ERRCODE = 'null_value_not_allowed',
                  HINT = 'Pass how old the data may be, e.g. interval ''1 minute''; use citizen_sync.read() for display reads.';
    END IF;
    SELECT * INTO r FROM @extschema@.read(target, key, max_age);
    IF NOT FOUND THEN
        RAISE EXCEPTION 'key % of % is not in the cache', pg_catalog.quote_literal(key), target
            USING ERRCODE = 'CS002',
                  HINT = 'Read it from the auth service; the cache may not have received it yet.';
    END IF;
    IF NOT r.is_fresh THEN
        RAISE EXCEPTION 'cached key % of % is not known to be current within %',
                        pg_catalog.quote_literal(key), target, max_age
            USING ERRCODE = 'CS001',
                  DETAIL = pg_catalog.format('The cache is known current as of %s (%s ago).',
                                             r.fresh_as_of, r.age),
                  HINT = 'Read it from the auth service, or check citizen_sync.subscription_lag.';
    END IF;
    RETURN r.data;
END
$$;
COMMENT ON FUNCTION @extschema@.read_for_critical(regclass, text, interval) IS
    'Critical read: the cached row of a subscription as jsonb if known current within max_age, else an error (CS001 stale, CS002 missing)';

-- Lag and metrics per subscription of this database: the partitions of its
-- topic the consumer holds, their summed lag (high watermark - next offset),
-- the topic's fresh_as_of and its age, and the subscription's outcome
-- counters.  partitions 0 and lag NULL: not assigned (yet).
CREATE VIEW @extschema@.subscription_lag AS
    SELECT s.target, s.aggregate_type, s.topic,
           pg_catalog.count(l.partition)::int AS partitions,
           pg_catalog.sum(l.lag)::bigint AS lag,
           f.ts AS fresh_as_of,
           pg_catalog.date_part('epoch', pg_catalog.now() OPERATOR(pg_catalog.-) f.ts)::float8
               AS fresh_as_of_age_seconds,
           s.applied, s.deleted, s.stale, s.duplicate, s.ignored, s.dead_lettered, s.last_batch_at
      FROM @extschema@.subscriptions s
      CROSS JOIN LATERAL (SELECT @extschema@.subscription_fresh_as_of(s.target) AS ts) f
      LEFT JOIN @extschema@.partition_stats_raw() l
        ON l.database OPERATOR(pg_catalog.=) pg_catalog.current_database()
       AND l.topic OPERATOR(pg_catalog.=) s.topic
     GROUP BY s.target, s.aggregate_type, s.topic, f.ts, s.applied, s.deleted, s.stale,
              s.duplicate, s.ignored, s.dead_lettered, s.last_batch_at;
COMMENT ON VIEW @extschema@.subscription_lag IS
    'Per subscription of this database: partitions held, summed lag, fresh_as_of of its topic and outcome counters';

-- Service side: compare the cache table of a subscription with the source
-- (auth) database reached with source_conninfo, by key (text form) and
-- version: missing (live in the source, absent or inactive here; a
-- hard-delete tombstone counts as absent), stale (the source has a newer
-- version), mismatched (the cache is ahead of the source), extra (live here,
-- gone from the source).  Only changes older than stale_after (younger ones
-- may still be in flight).  Records a summary in consistency_reports under
-- source_label (default: the target's name).
CREATE FUNCTION @extschema@.subscription_consistency_check(source_conninfo text, target regclass,
                                              stale_after interval DEFAULT '5 minutes',
                                              source_label text DEFAULT NULL)
RETURNS TABLE (key text, problem text, source_version bigint, cache_version bigint,
               cache_last_synced_at timestamptz)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    t         record;
    n_checked bigint;
BEGIN
    PERFORM @extschema@.check_read_privilege(target);
    t := @extschema@.subscription_target(target);
    CREATE TEMP TABLE IF NOT EXISTS citizen_sync_source_keys
        (key text, version bigint, present boolean, changed_at timestamptz) ON COMMIT DROP;
    TRUNCATE citizen_sync_source_keys;
    -- key: the source's text key; a 0.1.0 source has only the bigint id
    EXECUTE pg_catalog.format(
        'INSERT INTO citizen_sync_source_keys SELECT * FROM %I.dblink($1, $2)
             AS r(key text, version bigint, present boolean, changed_at timestamptz)',
        @extschema@.dblink_schema())
    USING source_conninfo,
          pg_catalog.format('SELECT COALESCE(pg_catalog.to_jsonb(s) OPERATOR(pg_catalog.->>) ''key'',
                                             s.id::text), s.version, s.present, s.changed_at
                               FROM citizen_sync.source_state(%L) s', t.aggregate_type);
    SELECT pg_catalog.count(*) INTO n_checked FROM citizen_sync_source_keys;

    CREATE TEMP TABLE IF NOT EXISTS citizen_sync_cache_keys
        (key text, version bigint, active boolean, last_synced_at timestamptz) ON COMMIT DROP;
    TRUNCATE citizen_sync_cache_keys;
    EXECUTE pg_catalog.format(
        'INSERT INTO citizen_sync_cache_keys
         SELECT c.%I::text, c.event_version, %s, c.last_synced_at FROM %s c',
        t.key_column, CASE WHEN t.delete_mode = 'soft' THEN 'c.is_active' ELSE 'true' END,
        t.qualified);
    INSERT INTO citizen_sync_cache_keys
    SELECT d.key, d.event_version, false, NULL
      FROM @extschema@.tombstones d
     WHERE d.target OPERATOR(pg_catalog.=) subscription_consistency_check.target
       AND NOT EXISTS (SELECT 1 FROM citizen_sync_cache_keys c
                        WHERE c.key OPERATOR(pg_catalog.=) d.key);

    CREATE TEMP TABLE IF NOT EXISTS citizen_sync_key_drift
        (key text, problem text, source_version bigint, cache_version bigint,
         cache_last_synced_at timestamptz) ON COMMIT DROP;
    TRUNCATE citizen_sync_key_drift;
    INSERT INTO citizen_sync_key_drift
    SELECT COALESCE(s.key, c.key),
           CASE
             WHEN s.present AND NOT COALESCE(c.active, false) THEN 'missing'
             WHEN s.present AND c.version < COALESCE(s.version, 0) THEN 'stale'
             WHEN s.present THEN 'mismatched'
             ELSE 'extra'
           END,
           s.version, c.version, c.last_synced_at
      FROM citizen_sync_source_keys s
      FULL JOIN citizen_sync_cache_keys c ON c.key = s.key
     WHERE (s.changed_at IS NULL OR s.changed_at < pg_catalog.now() - stale_after)
       AND CASE
             WHEN s.present THEN NOT COALESCE(c.active, false)
                  OR c.version IS DISTINCT FROM COALESCE(s.version, 0)
             ELSE COALESCE(c.active, false)
           END;

    INSERT INTO @extschema@.consistency_reports (source, checked, missing, stale, mismatched, extra)
    SELECT COALESCE(source_label, target::text), n_checked,
           pg_catalog.count(*) FILTER (WHERE d.problem = 'missing'),
           pg_catalog.count(*) FILTER (WHERE d.problem = 'stale'),
           pg_catalog.count(*) FILTER (WHERE d.problem = 'mismatched'),
           pg_catalog.count(*) FILTER (WHERE d.problem = 'extra')
      FROM citizen_sync_key_drift d;
    RETURN QUERY SELECT * FROM citizen_sync_key_drift d ORDER BY d.key;
END
$$;
COMMENT ON FUNCTION @extschema@.subscription_consistency_check(text, regclass, interval, text) IS
    'Compare a subscription''s cache table with the source database (via dblink) by key and version: missing, stale, mismatched and extra rows';

-- Service side: check the subscription on target, then have the source
-- republish every drifted key above the cached version (resync with text
-- keys; a 0.1.0 source takes integer keys only).  Returns the number of
-- events the source wrote.
CREATE FUNCTION @extschema@.subscription_heal(source_conninfo text, target regclass,
                                 stale_after interval DEFAULT '5 minutes')
RETURNS bigint
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    agg      text;
    keys     text[];
    vers     bigint[];
    text_fn  boolean;
    dbl      name := @extschema@.dblink_schema();
    n        bigint;
BEGIN
    agg := (@extschema@.subscription_target(target)).aggregate_type;
    SELECT pg_catalog.array_agg(d.key ORDER BY d.key),
           pg_catalog.array_agg(COALESCE(d.cache_version, 0) ORDER BY d.key)
      INTO keys, vers
      FROM @extschema@.subscription_consistency_check(source_conninfo, target, stale_after) d;
    IF keys IS NULL THEN
        RETURN 0;
    END IF;
    EXECUTE pg_catalog.format('SELECT b FROM %I.dblink($1, $2) AS t(b boolean)', dbl)
       INTO text_fn
      USING source_conninfo,
            'SELECT pg_catalog.to_regprocedure(''citizen_sync.resync(text, text[], bigint[])'') IS NOT NULL';
    EXECUTE pg_catalog.format('SELECT n FROM %I.dblink($1, $2) AS t(n bigint)', dbl)
       INTO n
      USING source_conninfo,
            pg_catalog.format('SELECT citizen_sync.resync(%L, %L::%s, %L::bigint[])',
                              agg, keys, CASE WHEN text_fn THEN 'text[]' ELSE 'bigint[]' END, vers);
    RETURN n;
END
$$;
COMMENT ON FUNCTION @extschema@.subscription_heal(text, regclass, interval) IS
    'Check a subscription against the source database, then have the source republish every drifted key';

-- read(), read_for_critical() and their helpers stay executable by PUBLIC:
-- what a caller may read is decided by its SELECT privilege on the target.
REVOKE ALL ON FUNCTION @extschema@.subscription_consistency_check(text, regclass, interval, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION @extschema@.subscription_heal(text, regclass, interval) FROM PUBLIC;
REVOKE ALL ON @extschema@.subscription_lag FROM PUBLIC;
GRANT SELECT ON @extschema@.subscription_lag TO pg_monitor, citizen_sync_monitor;

-- What citizen_sync_reader holds: exactly what its two functions read.
GRANT USAGE ON SCHEMA @extschema@ TO citizen_sync_reader;
GRANT SELECT ON @extschema@.subscription_catalog, @extschema@.subscriptions TO citizen_sync_reader;
GRANT EXECUTE ON FUNCTION @extschema@.partition_stats_raw(), @extschema@.fresh_as_of(name)
    TO citizen_sync_reader;
ALTER FUNCTION @extschema@.subscription_fresh_as_of(regclass) OWNER TO citizen_sync_reader;
ALTER FUNCTION @extschema@.subscription_target(regclass) OWNER TO citizen_sync_reader;
