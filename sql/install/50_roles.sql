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
REVOKE ALL ON FUNCTION @extschema@.create_service_roles(text) FROM PUBLIC;
