------------------------------------------------------------------------------
-- Restores, point-in-time recovery and failover of the source (sql/install/30):
-- versions with a clock-based lower bound.  CREATE OR REPLACE keeps the
-- function's owner and its grant to citizen_sync_capture.  The publisher
-- builds event ids that stay unique across restores (evt_<id>_<created_at>).
------------------------------------------------------------------------------

-- Write one change of one aggregate to the outbox: next version (its row
-- lock, held to commit, orders concurrent changes), payload, commit wake-up.
-- op is created, updated or deleted; snap the published columns (ignored for
-- deleted).  Shared by the capture trigger and resync().
--
-- The version is the greater of the last one + 1 and the clock in
-- microseconds since 1970 (clock_timestamp()): strictly increasing in commit
-- order (the row lock), and never below the time it was issued.  So a source
-- restored from a dump, recovered to a point in time or failed over to a
-- replica that was behind, whose counters went back in time, still issues
-- versions above every version issued before (the caches may hold them),
-- as long as its clock is ahead of the clock of the last change that was
-- lost.  Versions are not consecutive.  2^53 microseconds (the integers a
-- JSON double holds exactly) are reached in the year 2255.
CREATE OR REPLACE FUNCTION @extschema@.emit_change(agg text, agg_id bigint, op text, snap jsonb)
RETURNS bigint
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    ver   bigint;
    clock bigint := (extract(epoch FROM clock_timestamp()) * 1000000)::bigint;
BEGIN
    INSERT INTO @extschema@.aggregate_versions AS v (aggregate_type, aggregate_id, last_version)
    VALUES (agg, agg_id, clock)
    ON CONFLICT (aggregate_type, aggregate_id)
        DO UPDATE SET last_version = greatest(v.last_version + 1, clock), last_changed_at = now()
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
