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
REVOKE ALL ON FUNCTION @extschema@.citizen(bigint, interval) FROM PUBLIC;
REVOKE ALL ON FUNCTION @extschema@.citizen_for_critical(bigint, interval) FROM PUBLIC;
