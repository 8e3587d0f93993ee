------------------------------------------------------------------------------
-- Health: configuration in force, workers configured and running, brokers,
-- partial assignment, freshness (C side: cs_stats.c, cs_health.c,
-- cs_settings.c).  Monitoring reads these views with plain SELECTs.
-- All new in 0.2.0: sql/upgrade/0.1.0--0.2.0/70_config_alerts.sql is a
-- symbolic link to this file.
------------------------------------------------------------------------------

CREATE FUNCTION @extschema@.worker_health_raw(
    OUT kind text, OUT database text, OUT group_id text, OUT pid int, OUT state text,
    OUT started_at timestamptz, OUT held_back text, OUT kafka_stats_at timestamptz,
    OUT brokers_known int, OUT brokers_up int, OUT brokers_up_at timestamptz,
    OUT topic_partitions int, OUT assigned_partitions int, OUT partial_assignment boolean,
    OUT fresh_as_of timestamptz, OUT last_delivery_at timestamptz,
    OUT last_failure_at timestamptz)
RETURNS SETOF record
LANGUAGE C STRICT VOLATILE
AS 'MODULE_PATHNAME', 'citizen_sync_worker_health';

CREATE FUNCTION @extschema@.config_problems_raw(
    OUT setting text, OUT problem text, OUT affects text, OUT workers_held_back boolean,
    OUT since timestamptz)
RETURNS SETOF record
LANGUAGE C STRICT VOLATILE
AS 'MODULE_PATHNAME', 'citizen_sync_config_problems';

-- citizen_sync.* settings whose value in a configuration file is invalid.
-- workers_held_back: invalid since the server started, so the affected
-- workers are not running (PostgreSQL would have used the default); false:
-- made invalid by a reload, the previous value stays in force.
CREATE VIEW @extschema@.config_problems AS
    SELECT setting, problem, affects, workers_held_back, since
      FROM @extschema@.config_problems_raw();
COMMENT ON VIEW @extschema@.config_problems IS
    'Invalid citizen_sync.* settings in the configuration files and what they hold back';

-- Always one row.
CREATE VIEW @extschema@.config_status AS
    SELECT count(*)::int AS problems,
           count(*) FILTER (WHERE workers_held_back)::int AS holding_back
      FROM @extschema@.config_problems_raw();

-- Configured versus running workers, always one row per kind.
CREATE VIEW @extschema@.worker_counts AS
    SELECT k.kind, count(h.kind)::int AS configured, count(h.pid)::int AS running
      FROM (VALUES ('consumer'), ('publisher')) AS k(kind)
      LEFT JOIN @extschema@.worker_health_raw() AS h ON h.kind = k.kind
     GROUP BY k.kind;

-- Per configured worker: 0/1 flags for what keeps it from doing its job.
CREATE VIEW @extschema@.worker_health AS
    SELECT kind, database, group_id, pid,
           CASE WHEN running = 0 THEN 'not_running'
                WHEN partial_assignment = 1 THEN 'partial_assignment'
                WHEN never_connected = 1 THEN 'never_connected'
                WHEN brokers_unreachable = 1 THEN 'brokers_unreachable'
                WHEN publisher_failing = 1 THEN 'publisher_failing'
                WHEN not_fresh = 1 THEN 'not_fresh'
                ELSE 'ok' END AS status,
           running, brokers_unreachable, never_connected, not_fresh, partial_assignment,
           publisher_failing, brokers_known, brokers_up, topic_partitions,
           assigned_partitions, fresh_as_of, held_back, state
      FROM (SELECT h.*,
                   (h.pid IS NOT NULL)::int AS running,
                   (h.pid IS NOT NULL AND h.kafka_stats_at IS NOT NULL
                    AND h.brokers_up = 0)::int AS brokers_unreachable,
                   (h.pid IS NOT NULL AND h.kafka_stats_at IS NOT NULL
                    AND h.brokers_up = 0
                    AND (h.brokers_up_at IS NULL OR h.brokers_up_at < h.started_at))::int
                       AS never_connected,
                   (h.kind = 'consumer' AND h.pid IS NOT NULL
                    AND h.fresh_as_of IS NULL)::int AS not_fresh,
                   COALESCE(h.partial_assignment, false)::int AS partial_assignment_i,
                   (h.kind = 'publisher' AND h.pid IS NOT NULL AND h.last_failure_at IS NOT NULL
                    AND (h.last_delivery_at IS NULL
                         OR h.last_failure_at > h.last_delivery_at))::int AS publisher_failing
              FROM @extschema@.worker_health_raw() AS h) AS f(kind, database, group_id, pid,
                   state, started_at, held_back, kafka_stats_at, brokers_known, brokers_up,
                   brokers_up_at, topic_partitions, assigned_partitions, partial_flag,
                   fresh_as_of, last_delivery_at, last_failure_at, running,
                   brokers_unreachable, never_connected, not_fresh, partial_assignment,
                   publisher_failing);
COMMENT ON VIEW @extschema@.worker_health IS
    'Per worker: running, brokers unreachable, never connected, not fresh, partial assignment, publisher failing';

REVOKE ALL ON FUNCTION @extschema@.worker_health_raw(), @extschema@.config_problems_raw() FROM PUBLIC;
REVOKE ALL ON @extschema@.config_problems, @extschema@.config_status, @extschema@.worker_counts,
              @extschema@.worker_health FROM PUBLIC;
GRANT EXECUTE ON FUNCTION @extschema@.worker_health_raw(), @extschema@.config_problems_raw()
    TO pg_monitor, citizen_sync_monitor;
GRANT SELECT ON @extschema@.config_problems, @extschema@.config_status, @extschema@.worker_counts,
                @extschema@.worker_health TO pg_monitor, citizen_sync_monitor;
