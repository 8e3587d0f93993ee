------------------------------------------------------------------------------
-- The apply core (C): one code path for SQL callers and the consumer worker
------------------------------------------------------------------------------

CREATE FUNCTION @extschema@.apply_event(payload text) RETURNS text
LANGUAGE C STRICT
SET search_path = pg_catalog, pg_temp
AS 'MODULE_PATHNAME', 'citizen_sync_apply_event';
COMMENT ON FUNCTION @extschema@.apply_event(text) IS
    'Apply one raw event to cache.citizen_refs: applied, stale, duplicate, deleted or ignored';

CREATE FUNCTION @extschema@.apply_event(payload text, topic text) RETURNS text
LANGUAGE C STRICT
SET search_path = pg_catalog, pg_temp
AS 'MODULE_PATHNAME', 'citizen_sync_apply_event';
COMMENT ON FUNCTION @extschema@.apply_event(text, text) IS
    'Apply one raw event of topic into the table subscribed to it: applied, stale, duplicate, deleted or ignored';

CREATE FUNCTION @extschema@.apply_events(payloads text[])
RETURNS TABLE (ordinality int, event_id text, result text)
LANGUAGE C STRICT
SET search_path = pg_catalog, pg_temp
AS 'MODULE_PATHNAME', 'citizen_sync_apply_events';
COMMENT ON FUNCTION @extschema@.apply_events(text[]) IS
    'Apply many raw events in stream order in one set-based pass; all or nothing on invalid input';
REVOKE ALL ON FUNCTION @extschema@.apply_event(text) FROM PUBLIC;
REVOKE ALL ON FUNCTION @extschema@.apply_events(text[]) FROM PUBLIC;
REVOKE ALL ON FUNCTION @extschema@.apply_event(text, text) FROM PUBLIC;

CREATE FUNCTION @extschema@.apply_events(payloads text[], topic text)
RETURNS TABLE (ordinality int, event_id text, result text)
LANGUAGE C STRICT
SET search_path = pg_catalog, pg_temp
AS 'MODULE_PATHNAME', 'citizen_sync_apply_events';
COMMENT ON FUNCTION @extschema@.apply_events(text[], text) IS
    'Apply many raw events of topic into the table subscribed to it, in stream order, set-based';
REVOKE ALL ON FUNCTION @extschema@.apply_events(text[], text) FROM PUBLIC;
