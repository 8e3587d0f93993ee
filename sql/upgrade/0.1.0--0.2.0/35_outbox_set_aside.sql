------------------------------------------------------------------------------
-- Outbox rows Kafka refuses for good are set aside (sql/install/30, 35, 60)
------------------------------------------------------------------------------

ALTER TABLE @extschema@.outbox ADD COLUMN set_aside_at timestamptz;
COMMENT ON COLUMN @extschema@.outbox.set_aside_at IS
    'When the publisher set the row aside: Kafka refused it for good (see last_error); it and the later rows of its aggregate wait for citizen_sync.retry_set_aside()';

CREATE INDEX outbox_set_aside ON @extschema@.outbox (aggregate_type, aggregate_id)
    WHERE set_aside_at IS NOT NULL AND published_at IS NULL;

CREATE FUNCTION @extschema@.retry_set_aside(ids bigint[] DEFAULT NULL)
RETURNS TABLE (id bigint, aggregate_type text, aggregate_id text, last_error text)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    RETURN QUERY
    UPDATE @extschema@.outbox o SET set_aside_at = NULL
     WHERE o.set_aside_at IS NOT NULL AND o.published_at IS NULL
       AND (ids IS NULL OR o.id = ANY (ids))
    RETURNING o.id, o.aggregate_type::text, o.aggregate_id, o.last_error;
    IF FOUND THEN
        PERFORM @extschema@.notify_publisher();
    END IF;
END
$$;
COMMENT ON FUNCTION @extschema@.retry_set_aside(bigint[]) IS
    'Send set-aside outbox rows again (NULL = all) once the reason Kafka refused them is fixed';
REVOKE ALL ON FUNCTION @extschema@.retry_set_aside(bigint[]) FROM PUBLIC;

-- New columns at the end: set_aside, database.
CREATE OR REPLACE VIEW @extschema@.outbox_backlog AS
    SELECT count(*) AS pending,
           count(*) FILTER (WHERE retry_count > 0) AS retrying,
           COALESCE(extract(epoch FROM now() - min(created_at)), 0)::float8 AS oldest_pending_age_seconds,
           count(*) FILTER (WHERE set_aside_at IS NOT NULL) AS set_aside,
           current_database() AS database
      FROM @extschema@.outbox
     WHERE published_at IS NULL;
