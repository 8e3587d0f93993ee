-- Dead letters of null Kafka values (tombstones) keep a NULL payload, distinct
-- from an empty value's ''; retry_dead_letters() leaves them dead letters
-- with a clear error instead of marking them resolved.
ALTER TABLE @extschema@.dead_letters ALTER COLUMN payload DROP NOT NULL;
COMMENT ON COLUMN @extschema@.dead_letters.payload IS
    'The raw message value: NULL for a null value (a Kafka tombstone), empty for an empty one';

CREATE OR REPLACE FUNCTION @extschema@.retry_dead_letters(ids bigint[] DEFAULT NULL)
RETURNS TABLE (id bigint, result text, error text)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    d   record;
    res text;
BEGIN
    FOR d IN SELECT l.id, l.payload FROM @extschema@.dead_letters l
              WHERE l.resolved_at IS NULL AND (ids IS NULL OR l.id = ANY (ids))
              ORDER BY l.id FOR UPDATE LOOP
        BEGIN
            IF d.payload IS NULL THEN
                RAISE EXCEPTION 'null message value (a Kafka tombstone) cannot be applied'
                    USING ERRCODE = 'null_value_not_allowed',
                          DETAIL = 'The message value is null (a Kafka tombstone), not an event.';
            END IF;
            res := @extschema@.apply_event(convert_from(d.payload, 'UTF8'));
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
