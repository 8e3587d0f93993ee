------------------------------------------------------------------------------
-- Dead-letter tools
------------------------------------------------------------------------------

-- Re-apply unresolved dead letters (the given ids, or all) through the
-- normal apply path, each in its own subtransaction.  A success marks the
-- letter resolved with the apply result; a failure records the new error and
-- bumps attempts.  Idempotent: duplicates and stale versions are harmless.
-- A null payload (a Kafka tombstone) carries no event: it always fails and
-- stays a dead letter (apply_event is STRICT and would return NULL).
CREATE FUNCTION @extschema@.retry_dead_letters(ids bigint[] DEFAULT NULL)
RETURNS TABLE (id bigint, result text, error text)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    d   record;
    res text;
BEGIN
    FOR d IN SELECT l.id, l.payload, l.topic FROM @extschema@.dead_letters l
              WHERE l.resolved_at IS NULL AND (ids IS NULL OR l.id = ANY (ids))
              ORDER BY l.id FOR UPDATE LOOP
        BEGIN
            IF d.payload IS NULL THEN
                RAISE EXCEPTION 'null message value (a Kafka tombstone) cannot be applied'
                    USING ERRCODE = 'null_value_not_allowed',
                          DETAIL = 'The message value is null (a Kafka tombstone), not an event.';
            END IF;
            -- into the table subscribed to the letter's topic
            IF d.topic IS NULL THEN
                res := @extschema@.apply_event(convert_from(d.payload, 'UTF8'));
            ELSE
                res := @extschema@.apply_event(convert_from(d.payload, 'UTF8'), d.topic);
            END IF;
            UPDATE @extschema@.dead_letters l
               SET resolved_at = now(), resolution = 'retried: ' || res, last_seen_at = now(),
                   attempts = l.attempts + 1
             WHERE l.id = d.id;
            id := d.id; result := res; error := NULL;
        EXCEPTION WHEN OTHERS THEN
            UPDATE @extschema@.dead_letters l
               SET error_message = SQLERRM, error_sqlstate = SQLSTATE,
                   last_seen_at = now(), attempts = l.attempts + 1
             WHERE l.id = d.id;
            id := d.id; result := 'failed'; error := SQLERRM;
        END;
        RETURN NEXT;
    END LOOP;
END
$$;
COMMENT ON FUNCTION @extschema@.retry_dead_letters(bigint[]) IS
    'Re-apply unresolved dead letters (NULL = all) through the normal apply path';

-- Delete dead letters older than older_than: resolved ones, and unresolved
-- ones too only when include_unresolved.  Returns the number deleted.
CREATE FUNCTION @extschema@.purge_dead_letters(older_than interval DEFAULT '30 days',
                                               include_unresolved boolean DEFAULT false)
RETURNS bigint
LANGUAGE sql
SET search_path = pg_catalog, pg_temp
AS $$
    WITH d AS (
        DELETE FROM @extschema@.dead_letters l
         WHERE l.first_seen_at < now() - older_than
           AND (l.resolved_at IS NOT NULL OR include_unresolved)
        RETURNING 1)
    SELECT count(*) FROM d
$$;
REVOKE ALL ON FUNCTION @extschema@.retry_dead_letters(bigint[]) FROM PUBLIC;
REVOKE ALL ON FUNCTION @extschema@.purge_dead_letters(interval, boolean) FROM PUBLIC;
