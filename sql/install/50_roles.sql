------------------------------------------------------------------------------
-- Roles: the ownership matrix of one service database, and monitoring
------------------------------------------------------------------------------

-- The monitoring role: what a metrics exporter needs and nothing else (the
-- aggregate views of 60_monitoring.sql and 80_consistency.sql; no personal
-- data, no settings).  Roles are cluster-wide: the first database that
-- installs the extension creates it, the others grant it their views.  It is
-- not a member of pg_monitor (whose pg_read_all_settings reads the Kafka
-- credentials in citizen_sync.kafka_properties) nor of pg_read_all_stats
-- (which reads the query text of every session).
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

-- create_service_roles(service): the three roles of a service database.
--
--   <service>_service_user   owns schema <service> (its search_path in this
--                            database starts there): its tables live there;
--                            ALL on the tables a DBA creates there; reads the
--                            cache.  No CREATE on public.
--   <service>_sync_user      writes the cache and the extension's bookkeeping,
--                            nothing else (the consumer applies as this role).
--   <service>_readonly_user  reads schema <service> and the cache.
--
-- Rerun on a database set up by 0.1.0 (which gave the service user CREATE on
-- public and default privileges there), it revokes the CREATE on public and
-- those default privileges, keeps the privileges on existing tables of public
-- (the service keeps working until its tables are moved), and warns about
-- anything the service user owns in public.
CREATE FUNCTION @extschema@.create_service_roles(service text) RETURNS void
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
