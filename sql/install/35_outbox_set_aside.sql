------------------------------------------------------------------------------
-- Source side: outbox rows Kafka refuses for good
------------------------------------------------------------------------------

-- The publisher sets outbox.set_aside_at (with last_error and retry_count)
-- when Kafka refuses a row for a reason that retrying cannot cure (too
-- large, topic or cluster not authorised, invalid record or topic).  The row
-- stays pending; it and the later rows of its aggregate wait (per-aggregate
-- order) while every other aggregate is published.  retry_set_aside()
-- releases it once the cause is fixed.
COMMENT ON COLUMN @extschema@.outbox.set_aside_at IS
    'When the publisher set the row aside: Kafka refused it for good (see last_error); it and the later rows of its aggregate wait for citizen_sync.retry_set_aside()';

-- The publisher's rounds skip the aggregates of set-aside rows: a lookup of
-- a handful of rows, whatever the backlog.
CREATE INDEX outbox_set_aside ON @extschema@.outbox (aggregate_type, aggregate_id)
    WHERE set_aside_at IS NOT NULL AND published_at IS NULL;

-- Release set-aside rows (the given ids, or all) after the cause was fixed:
-- the publisher, woken at commit, sends them again, and the later rows of
-- their aggregates follow in order.  A row refused for good again is set
-- aside again.  Returns the rows released.
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
