------------------------------------------------------------------------------
-- 0.1.0 -> 0.2.0: roles and monitoring
------------------------------------------------------------------------------
-- * citizen_sync_monitor, the exporter's role: the aggregate views only;
-- * pg_monitor no longer reads the outbox, the dead letters or the
--   consistency reports (personal data; aggregate views remain);
-- * the exporter's queries read views that do their arithmetic (bound here,
--   not in the exporter's session: nothing planted in public can stand in);
-- * create_service_roles() gives the service user a schema of its own
--   instead of CREATE on public (rerun it in each service database: it
--   revokes what 0.1.0 granted there).

DO $monitor$
DECLARE
    r record;
BEGIN
    SELECT rolcanlogin, rolsuper INTO r
      FROM pg_catalog.pg_roles WHERE rolname OPERATOR(pg_catalog.=) 'citizen_sync_monitor';
    IF NOT FOUND THEN
        CREATE ROLE citizen_sync_monitor NOLOGIN;
    ELSIF r.rolcanlogin OR r.rolsuper THEN
        -- someone else created it (roles are cluster-wide), or changed it
        RAISE WARNING 'role citizen_sync_monitor exists and can log in'
            USING DETAIL = 'The extension grants it SELECT on its monitoring views; it is meant to be a NOLOGIN group role.',
                  HINT = 'Check who created it, then ALTER ROLE citizen_sync_monitor NOLOGIN NOSUPERUSER, and give exporters their own login role IN ROLE citizen_sync_monitor.';
    END IF;
END
$monitor$;

CREATE OR REPLACE FUNCTION @extschema@.create_service_roles(service text) RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    svc     text;
    sync    text;
    ro      text;
    r       text;
    owner   name;
    n_owned bigint;
    owned   text;
BEGIN
    IF service IS NULL OR service !~ '^[a-z][a-z0-9_]{0,40}$' THEN
        RAISE EXCEPTION 'invalid service name %', quote_nullable(service)
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'Use a lower-case name of letters, digits and underscores, e.g. ''permits''.';
    END IF;
    svc  := service || '_service_user';
    sync := service || '_sync_user';
    ro   := service || '_readonly_user';

    -- The service's schema is the service user's own: any other owner (a
    -- schema of the database or of the extension) is refused.
    SELECT pg_get_userbyid(n.nspowner) INTO owner FROM pg_namespace n WHERE n.nspname = service;
    IF owner IS NOT NULL AND owner <> svc THEN
        RAISE EXCEPTION 'schema % exists and is not owned by %', quote_ident(service), quote_ident(svc)
            USING ERRCODE = 'duplicate_schema',
                  DETAIL = format('Schema %I is owned by %I; the service user gets a schema of its own named after the service.',
                                  service, owner),
                  HINT = 'Choose another service name, or rename that schema.';
    END IF;

    FOREACH r IN ARRAY ARRAY[svc, sync, ro] LOOP
        IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = r) THEN
            EXECUTE format('CREATE ROLE %I NOLOGIN', r);
        END IF;
        EXECUTE format('GRANT CONNECT ON DATABASE %I TO %I', current_database(), r);
    END LOOP;

    -- Service user: its own schema, first in its search_path here; reads
    -- the cache only.
    IF owner IS NULL THEN
        EXECUTE format('CREATE SCHEMA %I AUTHORIZATION %I', service, svc);
    END IF;
    EXECUTE format('ALTER ROLE %I IN DATABASE %I SET search_path = %I, public',
                   svc, current_database(), service);
    EXECUTE format('GRANT ALL ON ALL TABLES IN SCHEMA %I TO %I', service, svc);
    EXECUTE format('GRANT ALL ON ALL SEQUENCES IN SCHEMA %I TO %I', service, svc);
    EXECUTE format('ALTER DEFAULT PRIVILEGES IN SCHEMA %I GRANT ALL ON TABLES TO %I', service, svc);
    EXECUTE format('ALTER DEFAULT PRIVILEGES IN SCHEMA %I GRANT ALL ON SEQUENCES TO %I', service, svc);
    EXECUTE format('GRANT USAGE ON SCHEMA cache TO %I', svc);
    EXECUTE format('GRANT SELECT ON ALL TABLES IN SCHEMA cache TO %I', svc);
    -- Nothing in public: what a role creates there is resolved by every
    -- session whose search_path includes public (0.1.0 granted CREATE).
    EXECUTE format('REVOKE CREATE ON SCHEMA public FROM %I', svc);
    EXECUTE format('ALTER DEFAULT PRIVILEGES IN SCHEMA public REVOKE ALL ON TABLES FROM %I', svc);
    EXECUTE format('ALTER DEFAULT PRIVILEGES IN SCHEMA public REVOKE ALL ON SEQUENCES FROM %I', svc);
    SELECT count(*), string_agg(i.type || ' ' || i.identity, ', ' ORDER BY i.type, i.identity)
      INTO n_owned, owned
      FROM pg_shdepend d
           CROSS JOIN LATERAL pg_identify_object(d.classid, d.objid, 0) i
     WHERE d.dbid = (SELECT oid FROM pg_database WHERE datname = current_database())
       AND d.refclassid = 'pg_authid'::regclass AND d.refobjid = svc::regrole
       AND d.deptype = 'o' AND i.schema = 'public';
    IF n_owned > 0 THEN
        RAISE WARNING '% owns % object(s) in schema public', svc, n_owned
            USING DETAIL = format('Owned: %s.', left(owned, 1000)),
                  HINT = format('Move its tables with ALTER TABLE public.<table> SET SCHEMA %I. Review its functions, operators and types: every role whose search_path includes public resolves through them.',
                                service);
    END IF;

    -- Sync user: writes the cache and the extension's bookkeeping, nothing
    -- else (USAGE on public comes from PUBLIC, as for every role).
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
    EXECUTE format('GRANT EXECUTE ON FUNCTION @extschema@.apply_event(text, text) TO %I', sync);
    EXECUTE format('GRANT EXECUTE ON FUNCTION @extschema@.apply_events(text[], text) TO %I', sync);
    -- and the subscribed tables of this database (citizen_sync.subscribe())
    PERFORM @extschema@.grant_subscription(c.target, sync::name)
       FROM @extschema@.subscription_catalog c;

    -- Service and read-only users: freshness-aware reads of the cache.
    EXECUTE format('GRANT USAGE ON SCHEMA @extschema@ TO %I, %I', svc, ro);
    EXECUTE format('GRANT EXECUTE ON FUNCTION @extschema@.citizen(bigint, interval), '
                   '@extschema@.citizen_for_critical(bigint, interval) TO %I, %I', svc, ro);

    -- Read-only user: reads the service's schema (tables of the service user
    -- and of the DBA, current and future) and the cache.
    EXECUTE format('GRANT USAGE ON SCHEMA %I, cache TO %I', service, ro);
    EXECUTE format('GRANT SELECT ON ALL TABLES IN SCHEMA %I TO %I', service, ro);
    EXECUTE format('GRANT SELECT ON ALL TABLES IN SCHEMA cache TO %I', ro);
    EXECUTE format('ALTER DEFAULT PRIVILEGES IN SCHEMA %I GRANT SELECT ON TABLES TO %I', service, ro);
    EXECUTE format('ALTER DEFAULT PRIVILEGES FOR ROLE %I IN SCHEMA %I GRANT SELECT ON TABLES TO %I',
                   svc, service, ro);
    EXECUTE format('ALTER DEFAULT PRIVILEGES IN SCHEMA public REVOKE SELECT ON TABLES FROM %I', ro);
    EXECUTE format('ALTER DEFAULT PRIVILEGES FOR ROLE %I IN SCHEMA public REVOKE SELECT ON TABLES FROM %I',
                   svc, ro);
END
$$;
COMMENT ON FUNCTION @extschema@.create_service_roles(text) IS
    'Create <service>_service_user (owning schema <service>), <service>_sync_user and <service>_readonly_user (NOLOGIN) with the ownership matrix grants; safe to rerun';
REVOKE ALL ON FUNCTION @extschema@.create_service_roles(text) FROM PUBLIC;

GRANT SELECT ON @extschema@.worker_stats, @extschema@.consumer_stats, @extschema@.consumer_lag
    TO citizen_sync_monitor;
GRANT USAGE ON SCHEMA @extschema@ TO citizen_sync_monitor;
GRANT SELECT ON @extschema@.sync_latency, @extschema@.sync_latency_summary, @extschema@.worker_up,
                @extschema@.dead_letter_summary, @extschema@.outbox_backlog TO citizen_sync_monitor;
GRANT EXECUTE ON FUNCTION @extschema@.latency_histogram_raw(), @extschema@.worker_stats_raw(),
                 @extschema@.partition_stats_raw() TO citizen_sync_monitor;
GRANT SELECT ON @extschema@.consistency_status TO citizen_sync_monitor;
REVOKE SELECT ON @extschema@.dead_letters, @extschema@.outbox, @extschema@.consistency_reports
    FROM pg_monitor;

-- citizen_sync_worker_*
CREATE VIEW @extschema@.metrics_workers AS
    SELECT u.kind, u.database, u.up,
           (u.state = 'error')::int AS failing,
           COALESCE(extract(epoch FROM s.started_at), 0)::float8 AS start_time_seconds
      FROM @extschema@.worker_up u
      JOIN @extschema@.worker_stats s USING (kind, database);

-- citizen_sync_consumer_*
CREATE VIEW @extschema@.metrics_consumers AS
    SELECT database, COALESCE(group_id, '') AS group_id, partitions,
           applied AS applied_total, deleted AS deleted_total, stale AS stale_total,
           duplicate AS duplicate_total, ignored AS ignored_total,
           dead_lettered AS dead_lettered_total, batches AS batches_total,
           extract(epoch FROM now() - @extschema@.fresh_as_of(database::name))::float8
               AS fresh_as_of_age_seconds
      FROM @extschema@.consumer_stats;

-- citizen_sync_latency_seconds histogram (buckets in seconds, +Inf implied)
CREATE VIEW @extschema@.metrics_latency AS
    SELECT database,
           array_agg(le_ms / 1000.0 ORDER BY le_ms) FILTER (WHERE le_ms <> 'Infinity')
               AS latency_seconds,
           array_agg(bucket_count ORDER BY le_ms) FILTER (WHERE le_ms <> 'Infinity')
               AS latency_seconds_bucket,
           max(sum_ms) / 1000.0 AS latency_seconds_sum,
           max(total_count) AS latency_seconds_count
      FROM @extschema@.sync_latency
     GROUP BY database;

-- citizen_sync_latency_*_seconds
CREATE VIEW @extschema@.metrics_latency_summary AS
    SELECT database, mean_ms / 1000.0 AS mean_seconds, p50_ms / 1000.0 AS p50_seconds,
           p95_ms / 1000.0 AS p95_seconds, p99_ms / 1000.0 AS p99_seconds
      FROM @extschema@.sync_latency_summary;

-- citizen_sync_publisher_*
CREATE VIEW @extschema@.metrics_publishers AS
    SELECT database, published AS published_total
      FROM @extschema@.worker_stats
     WHERE kind = 'publisher';

-- citizen_sync_dead_letters_* (per database)
CREATE VIEW @extschema@.metrics_dead_letters AS
    SELECT error_sqlstate::text AS sqlstate, sum(unresolved)::float8 AS unresolved,
           extract(epoch FROM now() - min(oldest))::float8 AS oldest_age_seconds
      FROM @extschema@.dead_letter_summary
     GROUP BY error_sqlstate;

REVOKE ALL ON @extschema@.metrics_workers, @extschema@.metrics_consumers, @extschema@.metrics_latency,
              @extschema@.metrics_latency_summary, @extschema@.metrics_publishers,
              @extschema@.metrics_dead_letters FROM PUBLIC;
GRANT SELECT ON @extschema@.metrics_workers, @extschema@.metrics_consumers, @extschema@.metrics_latency,
                @extschema@.metrics_latency_summary, @extschema@.metrics_publishers,
                @extschema@.metrics_dead_letters TO pg_monitor, citizen_sync_monitor;
