------------------------------------------------------------------------------
-- Worker statistics (from shared memory)
------------------------------------------------------------------------------

CREATE FUNCTION @extschema@.worker_stats_raw(
    OUT kind text, OUT database text, OUT role text, OUT group_id text,
    OUT pid int, OUT state text, OUT started_at timestamptz,
    OUT partitions int, OUT applied bigint, OUT deleted bigint, OUT stale bigint,
    OUT duplicate bigint, OUT ignored bigint, OUT dead_lettered bigint,
    OUT batches bigint, OUT last_batch_at timestamptz, OUT lag bigint,
    OUT published bigint, OUT last_error text, OUT last_error_at timestamptz)
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
           last_error, last_error_at
      FROM @extschema@.worker_stats_raw()
     WHERE kind = 'consumer';

-- Lag per assigned partition: high watermark minus the next offset to apply.
CREATE VIEW @extschema@.consumer_lag AS
    SELECT * FROM @extschema@.partition_stats_raw();

REVOKE ALL ON FUNCTION @extschema@.worker_stats_raw() FROM PUBLIC;
REVOKE ALL ON FUNCTION @extschema@.partition_stats_raw() FROM PUBLIC;
REVOKE ALL ON @extschema@.worker_stats, @extschema@.consumer_stats, @extschema@.consumer_lag FROM PUBLIC;
GRANT SELECT ON @extschema@.worker_stats, @extschema@.consumer_stats, @extschema@.consumer_lag TO pg_monitor;
GRANT USAGE ON SCHEMA @extschema@ TO pg_monitor;

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

-- p50/p95/p99 per consumer, as the upper bound of the bucket holding the quantile.
CREATE VIEW @extschema@.sync_latency_summary AS
    SELECT database, max(total_count) AS samples,
           CASE WHEN max(total_count) > 0 THEN max(sum_ms) / max(total_count) END AS mean_ms,
           min(le_ms) FILTER (WHERE bucket_count >= 0.50 * total_count AND total_count > 0) AS p50_ms,
           min(le_ms) FILTER (WHERE bucket_count >= 0.95 * total_count AND total_count > 0) AS p95_ms,
           min(le_ms) FILTER (WHERE bucket_count >= 0.99 * total_count AND total_count > 0) AS p99_ms
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

REVOKE ALL ON FUNCTION @extschema@.latency_histogram_raw() FROM PUBLIC;
REVOKE ALL ON @extschema@.sync_latency, @extschema@.sync_latency_summary, @extschema@.worker_up,
              @extschema@.dead_letter_summary, @extschema@.outbox_backlog FROM PUBLIC;
GRANT SELECT ON @extschema@.sync_latency, @extschema@.sync_latency_summary, @extschema@.worker_up,
                @extschema@.dead_letter_summary, @extschema@.outbox_backlog TO pg_monitor;
GRANT EXECUTE ON FUNCTION @extschema@.latency_histogram_raw(), @extschema@.worker_stats_raw(),
                 @extschema@.partition_stats_raw() TO pg_monitor;
GRANT SELECT ON @extschema@.dead_letters, @extschema@.outbox TO pg_monitor;
