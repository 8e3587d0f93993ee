------------------------------------------------------------------------------
-- Generic sync (0.2.0), before the subscription catalog (45_subscriptions.sql,
-- the install file itself): apply_event(s) with a topic, retry into its table.
------------------------------------------------------------------------------

-- apply_event(payload, topic): into the table subscribed to topic
CREATE FUNCTION @extschema@.apply_event(payload text, topic text) RETURNS text
LANGUAGE C STRICT
SET search_path = pg_catalog, pg_temp
AS 'MODULE_PATHNAME', 'citizen_sync_apply_event';
COMMENT ON FUNCTION @extschema@.apply_event(text, text) IS
    'Apply one raw event of topic into the table subscribed to it: applied, stale, duplicate, deleted or ignored';

REVOKE ALL ON FUNCTION @extschema@.apply_event(text, text) FROM PUBLIC;

CREATE FUNCTION @extschema@.apply_events(payloads text[], topic text)
RETURNS TABLE (ordinality int, event_id text, result text)
LANGUAGE C STRICT
SET search_path = pg_catalog, pg_temp
AS 'MODULE_PATHNAME', 'citizen_sync_apply_events';
COMMENT ON FUNCTION @extschema@.apply_events(text[], text) IS
    'Apply many raw events of topic into the table subscribed to it, in stream order, set-based';
REVOKE ALL ON FUNCTION @extschema@.apply_events(text[], text) FROM PUBLIC;

-- retry_dead_letters() applies a letter into its topic's table
CREATE OR REPLACE FUNCTION @extschema@.retry_dead_letters(ids bigint[] DEFAULT NULL)
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
