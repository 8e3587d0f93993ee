------------------------------------------------------------------------------
-- Monitoring conventions (issue 12): stats_reset, quantiles never +Inf,
-- outbox series only where there is an outbox.  Same text as
-- sql/install/60_monitoring.sql.
------------------------------------------------------------------------------

-- p50/p95/p99 per consumer, as the upper bound of the bucket holding the
-- quantile.  A quantile beyond the last finite bound (the +Inf bucket) is
-- reported as that last finite bound, as Prometheus's histogram_quantile()
-- does: read it as "at least"; NULL (NaN in Prometheus) before any sample.
CREATE OR REPLACE VIEW @extschema@.sync_latency_summary AS
    SELECT database, max(total_count) AS samples,
           CASE WHEN max(total_count) > 0 THEN max(sum_ms) / max(total_count) END AS mean_ms,
           least(min(le_ms) FILTER (WHERE bucket_count >= 0.50 * total_count AND total_count > 0),
                 max(le_ms) FILTER (WHERE le_ms <> 'Infinity' AND total_count > 0)) AS p50_ms,
           least(min(le_ms) FILTER (WHERE bucket_count >= 0.95 * total_count AND total_count > 0),
                 max(le_ms) FILTER (WHERE le_ms <> 'Infinity' AND total_count > 0)) AS p95_ms,
           least(min(le_ms) FILTER (WHERE bucket_count >= 0.99 * total_count AND total_count > 0),
                 max(le_ms) FILTER (WHERE le_ms <> 'Infinity' AND total_count > 0)) AS p99_ms
      FROM @extschema@.latency_histogram_raw()
     GROUP BY database;

-- citizen_sync_outbox_*: only where there is an outbox to watch, the
-- database citizen_sync.outbox_database names (the publisher's), or any
-- database whose outbox has unpublished rows (capture without a publisher):
-- service databases, whose outbox stays empty, emit no outbox series.
CREATE VIEW @extschema@.metrics_outbox AS
    SELECT database, pending, retrying, oldest_pending_age_seconds, set_aside
      FROM @extschema@.outbox_backlog
     WHERE pending > 0
        OR database = current_setting('citizen_sync.outbox_database', true);

REVOKE ALL ON @extschema@.metrics_outbox FROM PUBLIC;
GRANT SELECT ON @extschema@.metrics_outbox TO pg_monitor, citizen_sync_monitor;

-- worker_stats_raw() gains stats_reset: the function and the views on it
-- are dropped and created again as a fresh install has them.
DROP VIEW @extschema@.metrics_workers, @extschema@.metrics_consumers,
          @extschema@.metrics_publishers, @extschema@.worker_up,
          @extschema@.consumer_stats, @extschema@.worker_stats;
DROP FUNCTION @extschema@.worker_stats_raw();

CREATE FUNCTION @extschema@.worker_stats_raw(
    OUT kind text, OUT database text, OUT role text, OUT group_id text,
    OUT pid int, OUT state text, OUT started_at timestamptz,
    OUT partitions int, OUT applied bigint, OUT deleted bigint, OUT stale bigint,
    OUT duplicate bigint, OUT ignored bigint, OUT dead_lettered bigint,
    OUT batches bigint, OUT last_batch_at timestamptz, OUT lag bigint,
    OUT published bigint, OUT last_error text, OUT last_error_at timestamptz,
    OUT stats_reset timestamptz)
RETURNS SETOF record
LANGUAGE C STRICT VOLATILE
AS 'MODULE_PATHNAME', 'citizen_sync_worker_stats';


-- Every worker of this instance (all databases), with its counters and last error.
CREATE VIEW @extschema@.worker_stats AS
    SELECT * FROM @extschema@.worker_stats_raw();


-- Consumers only, with the columns a DBA looks at first.
CREATE VIEW @extschema@.consumer_stats AS
    SELECT database, role, group_id, pid, state, partitions, applied, deleted,
           stale, duplicate, ignored, dead_lettered, batches, last_batch_at, lag,
           last_error, last_error_at, stats_reset
      FROM @extschema@.worker_stats_raw()
     WHERE kind = 'consumer';


-- Is each configured worker up (1) or down (0)?
CREATE VIEW @extschema@.worker_up AS
    SELECT kind, database, (pid IS NOT NULL AND state IN ('running', 'retrying'))::int AS up,
           state, last_error
      FROM @extschema@.worker_stats_raw();


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


-- citizen_sync_publisher_*
CREATE VIEW @extschema@.metrics_publishers AS
    SELECT database, published AS published_total
      FROM @extschema@.worker_stats
     WHERE kind = 'publisher';


-- Zero the counters and latency histograms of every worker of the instance
-- (worker_stats.stats_reset says since when), as pg_stat_reset() does for
-- PostgreSQL's: superusers, and roles granted EXECUTE on it.
CREATE FUNCTION @extschema@.stats_reset()
RETURNS timestamptz
LANGUAGE C STRICT VOLATILE
AS 'MODULE_PATHNAME', 'citizen_sync_stats_reset';
COMMENT ON FUNCTION @extschema@.stats_reset() IS
    'Zero the counters and latency histograms of every citizen_sync worker of the instance';
REVOKE ALL ON FUNCTION @extschema@.stats_reset() FROM PUBLIC;

REVOKE ALL ON FUNCTION @extschema@.worker_stats_raw() FROM PUBLIC;
REVOKE ALL ON @extschema@.worker_stats, @extschema@.consumer_stats, @extschema@.worker_up,
              @extschema@.metrics_workers, @extschema@.metrics_consumers,
              @extschema@.metrics_publishers FROM PUBLIC;
GRANT SELECT ON @extschema@.worker_stats, @extschema@.consumer_stats, @extschema@.worker_up,
                @extschema@.metrics_workers, @extschema@.metrics_consumers,
                @extschema@.metrics_publishers TO pg_monitor, citizen_sync_monitor;
GRANT EXECUTE ON FUNCTION @extschema@.worker_stats_raw() TO pg_monitor, citizen_sync_monitor;
