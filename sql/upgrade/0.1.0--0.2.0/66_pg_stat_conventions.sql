------------------------------------------------------------------------------
-- Monitoring conventions (issue 12): quantiles never +Inf, outbox series
-- only where there is an outbox.  Same text as sql/install/60_monitoring.sql.
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
