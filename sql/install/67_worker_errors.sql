------------------------------------------------------------------------------
-- Recent errors of each worker (from shared memory)
------------------------------------------------------------------------------

-- The last errors of every worker of this instance (all databases), newest
-- first per worker: up to 8 per worker, an error repeating in a row counted
-- in repeats.  Kept in shared memory, not in a table: a database that fails
-- may not take a write either.  Emptied at a server restart.
CREATE FUNCTION @extschema@.worker_errors_raw(
    OUT last_at timestamptz, OUT first_at timestamptz, OUT repeats bigint,
    OUT kind text, OUT database text, OUT pid int, OUT source text,
    OUT sqlstate text, OUT kafka_error text, OUT message text,
    OUT detail text, OUT hint text, OUT context text)
RETURNS SETOF record
LANGUAGE C STRICT VOLATILE
AS 'MODULE_PATHNAME', 'citizen_sync_worker_errors';

CREATE VIEW @extschema@.worker_errors AS
    SELECT * FROM @extschema@.worker_errors_raw();
COMMENT ON VIEW @extschema@.worker_errors IS
    'Recent errors of each citizen_sync worker with SQLSTATE, DETAIL, HINT and context (source database or kafka)';

REVOKE ALL ON FUNCTION @extschema@.worker_errors_raw() FROM PUBLIC;
REVOKE ALL ON @extschema@.worker_errors FROM PUBLIC;
GRANT SELECT ON @extschema@.worker_errors TO pg_monitor;
GRANT EXECUTE ON FUNCTION @extschema@.worker_errors_raw() TO pg_monitor;
