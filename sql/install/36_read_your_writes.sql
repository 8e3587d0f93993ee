------------------------------------------------------------------------------
-- Source side: read-your-writes (the version a committed change produced)
------------------------------------------------------------------------------

-- The last version issued for one aggregate, NULL if it never changed since
-- it was captured.  Called right after the application's own change (in the
-- same transaction, or after its commit), it is the version that change
-- produced, or a later one if another transaction changed the aggregate
-- since: the application hands it to a service, whose wait_for() returns
-- once its cache holds that version or a newer one.  key is the key as text,
-- as outbox.aggregate_id holds it (an integer key's digits, a uuid in lower
-- case).
--
-- SECURITY DEFINER as citizen_sync_capture, which may read the version
-- counters: the caller needs EXECUTE on this function only (not granted to
-- PUBLIC; README, "Read-your-writes"), and learns one aggregate's version
-- number, never a payload, the outbox or other keys than those it names.
CREATE FUNCTION @extschema@.current_version(aggregate_type text, key text) RETURNS bigint
LANGUAGE sql STABLE STRICT
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT v.last_version FROM @extschema@.aggregate_versions v
     WHERE v.aggregate_type = $1 AND v.aggregate_id = $2
$$;
COMMENT ON FUNCTION @extschema@.current_version(text, text) IS
    'The version the caller''s change of this aggregate produced (or a later one), for citizen_sync.wait_for() in a service database';
REVOKE ALL ON FUNCTION @extschema@.current_version(text, text) FROM PUBLIC;
ALTER FUNCTION @extschema@.current_version(text, text) OWNER TO citizen_sync_capture;
