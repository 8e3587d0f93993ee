------------------------------------------------------------------------------
-- Worker statistics (from shared memory)
------------------------------------------------------------------------------

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

CREATE FUNCTION @extschema@.partition_stats_raw(
    OUT database text, OUT group_id text, OUT topic text, OUT partition int,
    OUT next_offset bigint, OUT high_watermark bigint, OUT lag bigint)
RETURNS SETOF record
LANGUAGE C STRICT VOLATILE
AS 'MODULE_PATHNAME', 'citizen_sync_partition_stats';

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

-- Lag per assigned partition: high watermark minus the next offset to apply.
CREATE VIEW @extschema@.consumer_lag AS
    SELECT * FROM @extschema@.partition_stats_raw();

REVOKE ALL ON FUNCTION @extschema@.worker_stats_raw() FROM PUBLIC;
REVOKE ALL ON FUNCTION @extschema@.partition_stats_raw() FROM PUBLIC;
REVOKE ALL ON @extschema@.worker_stats, @extschema@.consumer_stats, @extschema@.consumer_lag FROM PUBLIC;
GRANT SELECT ON @extschema@.worker_stats, @extschema@.consumer_stats, @extschema@.consumer_lag
    TO pg_monitor, citizen_sync_monitor;
GRANT USAGE ON SCHEMA @extschema@ TO pg_monitor, citizen_sync_monitor;

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

------------------------------------------------------------------------------
-- Operations metrics
------------------------------------------------------------------------------

CREATE FUNCTION @extschema@.latency_histogram_raw(
    OUT database text, OUT le_ms float8, OUT bucket_count bigint,
    OUT total_count bigint, OUT sum_ms float8)
RETURNS SETOF record
LANGUAGE C STRICT VOLATILE
AS 'MODULE_PATHNAME', 'citizen_sync_latency_histogram';

CREATE FUNCTION @extschema@.fresh_as_of(database name DEFAULT pg_catalog.current_database())
RETURNS timestamptz
LANGUAGE C STRICT VOLATILE
AS 'MODULE_PATHNAME', 'citizen_sync_fresh_as_of';
COMMENT ON FUNCTION @extschema@.fresh_as_of(name) IS
    'Last time the consumer of the database had applied everything Kafka held (NULL = unknown)';

-- Sync latency (event_timestamp -> applied), cumulative buckets, Prometheus style.
CREATE VIEW @extschema@.sync_latency AS
    SELECT database, le_ms, bucket_count, total_count, sum_ms
      FROM @extschema@.latency_histogram_raw();

-- p50/p95/p99 per consumer, as the upper bound of the bucket holding the
-- quantile.  A quantile beyond the last finite bound (the +Inf bucket) is
-- reported as that last finite bound, as Prometheus's histogram_quantile()
-- does: read it as "at least"; NULL (NaN in Prometheus) before any sample.
CREATE VIEW @extschema@.sync_latency_summary AS
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

-- Is each configured worker up (1) or down (0)?
CREATE VIEW @extschema@.worker_up AS
    SELECT kind, database, (pid IS NOT NULL AND state IN ('running', 'retrying'))::int AS up,
           state, last_error
      FROM @extschema@.worker_stats_raw();

-- Unresolved dead letters grouped by error.
CREATE VIEW @extschema@.dead_letter_summary AS
    SELECT error_sqlstate, error_message, count(*) AS unresolved,
           min(first_seen_at) AS oldest, max(last_seen_at) AS newest
      FROM @extschema@.dead_letters
     WHERE resolved_at IS NULL
     GROUP BY error_sqlstate, error_message;

-- Publisher backlog (meaningful in the outbox database).  set_aside: rows
-- Kafka refused for good, waiting for retry_set_aside() (they count as
-- pending too); database: for exporters that scrape several databases.
CREATE VIEW @extschema@.outbox_backlog AS
    SELECT count(*) AS pending,
           count(*) FILTER (WHERE retry_count > 0) AS retrying,
           COALESCE(extract(epoch FROM now() - min(created_at)), 0)::float8 AS oldest_pending_age_seconds,
           count(*) FILTER (WHERE set_aside_at IS NOT NULL) AS set_aside,
           current_database() AS database
      FROM @extschema@.outbox
     WHERE published_at IS NULL;

------------------------------------------------------------------------------
-- Prometheus metrics: the views monitoring/postgres_exporter_queries.yaml reads
------------------------------------------------------------------------------
-- The exporter's queries only name columns of these views (and call
-- pg_catalog.current_database()): every function and operator is bound
-- here, at install time, with pg_catalog first in the search_path, so
-- nothing planted in public can stand in for them whatever the exporter's
-- search_path.  Column names are metric names.

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

-- citizen_sync_outbox_*: only where there is an outbox to watch, the
-- database citizen_sync.outbox_database names (the publisher's), or any
-- database whose outbox has unpublished rows (capture without a publisher):
-- service databases, whose outbox stays empty, emit no outbox series.
CREATE VIEW @extschema@.metrics_outbox AS
    SELECT database, pending, retrying, oldest_pending_age_seconds, set_aside
      FROM @extschema@.outbox_backlog
     WHERE pending > 0
        OR database = current_setting('citizen_sync.outbox_database', true);

-- Monitoring reads aggregates only: never the outbox or the dead letters
-- themselves (personal data).  pg_monitor keeps what 0.1.0 granted it but
-- those two tables; citizen_sync_monitor (50_roles.sql) is the exporter's.
REVOKE ALL ON FUNCTION @extschema@.latency_histogram_raw() FROM PUBLIC;
REVOKE ALL ON @extschema@.sync_latency, @extschema@.sync_latency_summary, @extschema@.worker_up,
              @extschema@.dead_letter_summary, @extschema@.outbox_backlog FROM PUBLIC;
GRANT SELECT ON @extschema@.sync_latency, @extschema@.sync_latency_summary, @extschema@.worker_up,
                @extschema@.dead_letter_summary, @extschema@.outbox_backlog
    TO pg_monitor, citizen_sync_monitor;
GRANT EXECUTE ON FUNCTION @extschema@.latency_histogram_raw(), @extschema@.worker_stats_raw(),
                 @extschema@.partition_stats_raw() TO pg_monitor, citizen_sync_monitor;
REVOKE ALL ON @extschema@.metrics_workers, @extschema@.metrics_consumers, @extschema@.metrics_latency,
              @extschema@.metrics_latency_summary, @extschema@.metrics_publishers,
              @extschema@.metrics_dead_letters FROM PUBLIC;
GRANT SELECT ON @extschema@.metrics_workers, @extschema@.metrics_consumers, @extschema@.metrics_latency,
                @extschema@.metrics_latency_summary, @extschema@.metrics_publishers,
                @extschema@.metrics_dead_letters TO pg_monitor, citizen_sync_monitor;
REVOKE ALL ON @extschema@.metrics_outbox FROM PUBLIC;
GRANT SELECT ON @extschema@.metrics_outbox TO pg_monitor, citizen_sync_monitor;
