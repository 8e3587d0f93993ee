------------------------------------------------------------------------------
-- Consistency check (service side, through dblink) and resync (source side)
------------------------------------------------------------------------------

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
CREATE FUNCTION @extschema@.resync(aggregate_type text DEFAULT 'citizen', ids bigint[] DEFAULT NULL,
                                  at_least bigint[] DEFAULT NULL)
RETURNS bigint
LANGUAGE sql
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT @extschema@.resync(aggregate_type, ids::text[], at_least)
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
REVOKE ALL ON FUNCTION @extschema@.source_state(text) FROM PUBLIC;
REVOKE ALL ON FUNCTION @extschema@.resync(text, bigint[], bigint[]) FROM PUBLIC;
REVOKE ALL ON FUNCTION @extschema@.resync(text, text[], bigint[]) FROM PUBLIC;
REVOKE ALL ON FUNCTION @extschema@.consistency_check(text, interval, text, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION @extschema@.heal(text, interval, text) FROM PUBLIC;
REVOKE ALL ON @extschema@.consistency_reports FROM PUBLIC;
REVOKE ALL ON @extschema@.consistency_status FROM PUBLIC;
GRANT SELECT ON @extschema@.consistency_status TO pg_monitor, citizen_sync_monitor;
SELECT pg_catalog.pg_extension_config_dump('@extschema@.consistency_reports', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.consistency_reports_id_seq', '');
