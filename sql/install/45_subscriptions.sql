------------------------------------------------------------------------------
-- Generic sync: subscriptions of cache tables to topics
------------------------------------------------------------------------------

-- One row per subscribed cache table.  The consumer of this database reads
-- every topic listed here and applies each into its target; the field
-- description of a target (subscription_fields() below) drives the parser,
-- the apply SQL and its arrays.  topic NULL (the built-in subscription of
-- cache.citizen_refs only) stands for the topics of citizen_sync.topics.
-- target is a regclass: pg_dump writes it as the table's qualified name and
-- a restore resolves it again (the tables exist before the data is loaded).
CREATE TABLE @extschema@.subscription_catalog (
    target         regclass PRIMARY KEY,
    aggregate_type text NOT NULL CHECK (aggregate_type ~ '^[a-z][a-z0-9_]{0,62}$'),
    topic          text,
    key_column     name NOT NULL,
    columns        jsonb NOT NULL DEFAULT '{}',
    delete_mode    text NOT NULL DEFAULT 'soft' CHECK (delete_mode IN ('soft', 'hard')),
    event_types    jsonb NOT NULL,
    builtin        boolean NOT NULL DEFAULT false,
    subscribed_at  timestamptz NOT NULL DEFAULT pg_catalog.now()
);
-- One target per topic in a database: event ids are unique per source event
-- and cache.processed_events is shared by all subscriptions of a database.
CREATE UNIQUE INDEX subscription_catalog_topic ON @extschema@.subscription_catalog (topic);
COMMENT ON TABLE @extschema@.subscription_catalog IS
    'Subscribed cache tables (citizen_sync.subscribe()); read by the consumer of this database';
-- (dumped by pg_dump without the built-in row: 99_subscriptions_dump.sql)

-- Outcome counters per subscription, updated by the consumer once per batch
-- in the batch's transaction.
CREATE TABLE @extschema@.subscription_stats (
    target        regclass PRIMARY KEY,
    applied       bigint NOT NULL DEFAULT 0,
    deleted       bigint NOT NULL DEFAULT 0,
    stale         bigint NOT NULL DEFAULT 0,
    duplicate     bigint NOT NULL DEFAULT 0,
    ignored       bigint NOT NULL DEFAULT 0,
    dead_lettered bigint NOT NULL DEFAULT 0,
    last_batch_at timestamptz
);
COMMENT ON TABLE @extschema@.subscription_stats IS
    'Events applied, deleted, stale, duplicate, ignored and dead-lettered per subscription';

-- Hard deletes: the row is gone, its version stays here so that a late
-- older update cannot bring it back.  key is the key's text form.
CREATE TABLE @extschema@.tombstones (
    target        regclass NOT NULL,
    key           text NOT NULL,
    event_version bigint NOT NULL,
    deleted_at    timestamptz NOT NULL DEFAULT pg_catalog.now(),
    PRIMARY KEY (target, key)
);
COMMENT ON TABLE @extschema@.tombstones IS
    'Versions of rows removed by hard deletes, so that older updates cannot resurrect them';
REVOKE ALL ON @extschema@.subscription_catalog, @extschema@.subscription_stats,
              @extschema@.tombstones FROM PUBLIC;
SELECT pg_catalog.pg_extension_config_dump('@extschema@.tombstones', '');

-- The columns a subscription fills from the snapshot: every column of the
-- target but the key and the bookkeeping columns (event_version,
-- last_synced_at, and is_active/deleted_at in soft mode), unless columns
-- maps it to null; its field is columns' string (or object's "field"), else
-- its own name.  required: the field must be present, not null and, for
-- strings, not empty (a NOT NULL column without a default, or "required":
-- true).  category is pg_type.typcategory; max_chars the n of varchar(n).
-- The one description of a subscription's fields: the consumer builds its
-- parser and its apply SQL from it, subscribe() validates with it.
CREATE FUNCTION @extschema@.subscription_fields(target regclass)
RETURNS TABLE (attnum int, column_name name, field text, type_name text,
               category "char", not_null boolean, default_expr text,
               required boolean, max_chars int)
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT a.attnum::int, a.attname,
           CASE pg_catalog.jsonb_typeof(m.spec) WHEN 'string' THEN m.spec #>> '{}'
                ELSE COALESCE(m.spec ->> 'field', a.attname::text) END,
           pg_catalog.format_type(a.atttypid, a.atttypmod), t.typcategory, a.attnotnull,
           pg_catalog.pg_get_expr(d.adbin, d.adrelid),
           (a.attnotnull AND d.adbin IS NULL) OR COALESCE((m.spec ->> 'required')::boolean, false),
           CASE WHEN a.atttypid IN ('pg_catalog.varchar'::pg_catalog.regtype, 'pg_catalog.bpchar'::pg_catalog.regtype)
                 AND a.atttypmod > 4 THEN a.atttypmod - 4 END
      FROM @extschema@.subscription_catalog s
      JOIN pg_attribute a ON a.attrelid = s.target
      JOIN pg_type t ON t.oid = a.atttypid
      LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
      LEFT JOIN LATERAL (SELECT s.columns -> a.attname::text AS spec) m ON true
     WHERE s.target = subscription_fields.target
       AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = ''
       AND a.attname <> s.key_column
       AND a.attname NOT IN ('event_version', 'last_synced_at')
       AND (s.delete_mode = 'hard' OR a.attname NOT IN ('is_active', 'deleted_at'))
       AND (m.spec IS NULL OR pg_catalog.jsonb_typeof(m.spec) <> 'null')
     ORDER BY a.attnum
$$;
COMMENT ON FUNCTION @extschema@.subscription_fields(regclass) IS
    'The snapshot fields a subscription fills, with each target column''s type and rules';

-- The consumer role of this database, from citizen_sync.databases, or NULL.
CREATE FUNCTION @extschema@.consumer_role() RETURNS name
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT pg_catalog.btrim(pg_catalog.split_part(e, ':', 2))::name
      FROM pg_catalog.regexp_split_to_table(
               pg_catalog.current_setting('citizen_sync.databases', true), '\s*,\s*') AS e
     WHERE pg_catalog.btrim(pg_catalog.split_part(e, ':', 1)) = pg_catalog.current_database()
       AND pg_catalog.btrim(pg_catalog.split_part(e, ':', 2)) <> ''
     LIMIT 1
$$;

-- Invalidate the catalog table at commit: every backend, the consumer of
-- this database included (within a second), reloads the subscriptions.
CREATE FUNCTION @extschema@.subscriptions_changed() RETURNS void
LANGUAGE C STRICT
AS 'MODULE_PATHNAME', 'citizen_sync_subscriptions_changed';

-- Raise err with its detail and hint (subscribe()'s validation).
CREATE FUNCTION @extschema@.subscription_error(msg text, detail text, hint text,
                                               code text DEFAULT 'invalid_parameter_value')
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    RAISE EXCEPTION USING MESSAGE = msg, DETAIL = detail, HINT = hint, ERRCODE = code;
END
$$;

-- Check that target can be subscribed as described by row s (not yet in the
-- catalog); raise with DETAIL and HINT otherwise.
CREATE FUNCTION @extschema@.check_subscription(s @extschema@.subscription_catalog)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    rel      record;
    pk       name[];
    key_type regtype;
    col      record;
    k        text;
    other    regclass;
BEGIN
    SELECT c.relkind, n.nspname INTO rel
      FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = s.target;
    IF rel.relkind <> 'r' THEN
        PERFORM @extschema@.subscription_error(format('%s is not a table', s.target),
            'Only an ordinary table can be a subscription''s target.',
            'Create the cache table with CREATE TABLE in schema cache.');
    END IF;
    IF rel.nspname <> 'cache' THEN
        PERFORM @extschema@.subscription_error(format('table %s is not in schema cache', s.target),
            'The sync role of a service writes only schema cache (see create_service_roles()).',
            format('Move it with ALTER TABLE %s SET SCHEMA cache.', s.target), 'insufficient_privilege');
    END IF;
    SELECT array_agg(a.attname ORDER BY a.attnum) INTO pk
      FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey)
     WHERE i.indrelid = s.target AND i.indisprimary;
    IF pk IS NULL THEN
        PERFORM @extschema@.subscription_error(format('table %s has no primary key', s.target),
            format('A subscription upserts by key: the key column %I must be the primary key.', s.key_column),
            format('ALTER TABLE %s ADD PRIMARY KEY (%I).', s.target, s.key_column));
    END IF;
    IF pk <> ARRAY[s.key_column] THEN
        PERFORM @extschema@.subscription_error(
            format('the primary key of table %s is not its key column %I', s.target, s.key_column),
            format('The primary key is (%s); the key column, data.%s_id of each event, must be the whole primary key.',
                   array_to_string(pk, ', '), s.aggregate_type),
            'Pass key_column => the primary key''s column, or change the primary key.');
    END IF;
    SELECT a.atttypid::regtype INTO key_type FROM pg_attribute a
     WHERE a.attrelid = s.target AND a.attname = s.key_column;
    IF key_type NOT IN ('bigint'::regtype, 'text'::regtype, 'uuid'::regtype) THEN
        PERFORM @extschema@.subscription_error(
            format('key column %I of table %s has type %s', s.key_column, s.target, key_type),
            'Keys may be bigint, text or uuid.',
            format('ALTER TABLE %s ALTER COLUMN %I TYPE bigint (or text, or uuid).', s.target, s.key_column),
            'datatype_mismatch');
    END IF;
    FOR col IN SELECT * FROM (VALUES ('event_version', 'bigint'::regtype, true),
                                     ('last_synced_at', 'timestamptz'::regtype, true),
                                     ('is_active', 'boolean'::regtype, s.delete_mode = 'soft'),
                                     ('deleted_at', 'timestamptz'::regtype, s.delete_mode = 'soft'))
                                     AS v(name, type, needed)
                WHERE v.needed LOOP
        IF NOT EXISTS (SELECT 1 FROM pg_attribute a WHERE a.attrelid = s.target
                          AND a.attname = col.name AND NOT a.attisdropped AND a.atttypid = col.type) THEN
            PERFORM @extschema@.subscription_error(
                format('table %s has no column %I of type %s', s.target, col.name, col.type),
                CASE WHEN col.name IN ('is_active', 'deleted_at')
                     THEN 'Soft deletes (delete_mode ''soft'') mark rows with is_active = false and deleted_at.'
                     ELSE 'Every subscribed table keeps the event_version it holds and when it was synced.' END,
                format('ALTER TABLE %s ADD COLUMN %I %s%s.', s.target, col.name, col.type,
                       CASE col.name WHEN 'event_version' THEN ' NOT NULL DEFAULT 0'
                                     WHEN 'is_active' THEN ' NOT NULL DEFAULT true' ELSE '' END),
                'undefined_column');
        END IF;
    END LOOP;
    IF jsonb_typeof(s.columns) <> 'object' THEN
        PERFORM @extschema@.subscription_error('columns must be a JSON object',
            'columns maps a target column to its snapshot field: a string, null (not synced) or {"field": ..., "required": true}.',
            'E.g. columns => ''{"full_name": "name"}''.');
    END IF;
    FOR k IN SELECT jsonb_object_keys(s.columns) LOOP
        IF NOT EXISTS (SELECT 1 FROM pg_attribute a WHERE a.attrelid = s.target AND a.attname = k
                          AND a.attnum > 0 AND NOT a.attisdropped)
           OR k IN (s.key_column, 'event_version', 'last_synced_at') THEN
            PERFORM @extschema@.subscription_error(format('columns names %I, which is not a synced column of %s', k, s.target),
                'The keys of columns are target columns other than the key and the bookkeeping columns.',
                'Check the spelling, or add the column to the table first.', 'undefined_column');
        END IF;
        IF jsonb_typeof(s.columns -> k) NOT IN ('string', 'null', 'object')
           OR (jsonb_typeof(s.columns -> k) = 'object'
               AND (jsonb_typeof(COALESCE(s.columns -> k -> 'field', '""')) <> 'string'
                    OR jsonb_typeof(COALESCE(s.columns -> k -> 'required', 'false')) <> 'boolean')) THEN
            PERFORM @extschema@.subscription_error(format('invalid mapping for column %I', k),
                format('columns -> %s is %s.', k, s.columns -> k),
                'Map a column to a field name (string), to null (not synced), or to {"field": "name", "required": true}.');
        END IF;
    END LOOP;
    IF jsonb_typeof(s.event_types) <> 'object' OR EXISTS (
           SELECT 1 FROM jsonb_each(s.event_types) e WHERE e.value NOT IN ('"upsert"', '"delete"')) THEN
        PERFORM @extschema@.subscription_error('event_types must map event names to "upsert" or "delete"',
            format('event_types is %s.', s.event_types),
            format('E.g. event_types => ''{"%s.created": "upsert", "%s.deleted": "delete"}''.',
                   s.aggregate_type, s.aggregate_type));
    END IF;
    SELECT c.target INTO other FROM @extschema@.subscription_catalog c
     WHERE c.target <> s.target
       AND (c.topic = s.topic
            OR (c.topic IS NULL AND s.topic = ANY (
                    regexp_split_to_array(current_setting('citizen_sync.topics', true), '\s*,\s*'))));
    IF FOUND THEN
        PERFORM @extschema@.subscription_error(
            format('topic %s is already subscribed by table %s', quote_literal(s.topic), other),
            'A topic feeds one table per database: its events are recorded once in cache.processed_events.',
            format('Unsubscribe %s first, or subscribe another topic.', other), 'duplicate_object');
    END IF;
    IF s.delete_mode = 'soft' THEN
        SELECT a.attname INTO k FROM pg_attribute a
         WHERE a.attrelid = s.target AND a.attnum > 0 AND NOT a.attisdropped
           AND a.attnotnull AND NOT a.atthasdef AND a.attgenerated = ''
           AND a.attname NOT IN (s.key_column, 'event_version', 'last_synced_at', 'is_active', 'deleted_at')
           AND jsonb_typeof(COALESCE(s.columns -> a.attname::text, '""')) <> 'null'
         ORDER BY a.attnum LIMIT 1;
        IF FOUND THEN
            PERFORM @extschema@.subscription_error(
                format('column %I of table %s is NOT NULL without a default', k, s.target),
                'In soft mode a delete of a key the cache never saw leaves a row with only the key, its version and is_active = false.',
                format('Use delete_mode => ''hard'', or ALTER TABLE %s ALTER COLUMN %I DROP NOT NULL.', s.target, k),
                'not_null_violation');
        END IF;
    END IF;
    -- the target's types: nothing a non-superuser controls (one check for
    -- capture and subscribe)
    PERFORM @extschema@.check_capture_safety(s.target);
END
$$;

CREATE FUNCTION @extschema@.subscribe(target regclass, aggregate_type text, topic text DEFAULT NULL,
                                      key_column name DEFAULT NULL, columns jsonb DEFAULT NULL,
                                      delete_mode text DEFAULT 'soft', event_types jsonb DEFAULT NULL)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    s    @extschema@.subscription_catalog;
    role name := @extschema@.consumer_role();
BEGIN
    IF target IS NULL OR aggregate_type IS NULL OR aggregate_type !~ '^[a-z][a-z0-9_]{0,62}$' THEN
        PERFORM @extschema@.subscription_error(
            format('invalid aggregate type %s', quote_nullable(aggregate_type)),
            'The aggregate type names the events (<aggregate_type>.created) and the key field (data.<aggregate_type>_id).',
            'Use a lower-case name of letters, digits and underscores, e.g. ''employee''.');
    END IF;
    IF topic IS NOT NULL AND topic !~ '^[A-Za-z0-9._-]{1,249}$' THEN
        PERFORM @extschema@.subscription_error(format('invalid topic name %s', quote_literal(topic)),
            'Kafka topic names are 1 to 249 letters, digits, dots, underscores and hyphens.',
            'Leave topic NULL for <citizen_sync.topic_prefix><aggregate_type>.');
    END IF;
    IF delete_mode IS NULL OR delete_mode NOT IN ('soft', 'hard') THEN
        PERFORM @extschema@.subscription_error(format('invalid delete mode %s', quote_nullable(delete_mode)),
            'soft keeps a deleted row with is_active = false; hard removes it and keeps its version in citizen_sync.tombstones.',
            'Use delete_mode => ''soft'' or ''hard''.');
    END IF;
    LOCK TABLE @extschema@.subscription_catalog IN SHARE ROW EXCLUSIVE MODE;
    s.target := target;
    s.aggregate_type := aggregate_type;
    s.topic := COALESCE(topic, COALESCE(NULLIF(current_setting('citizen_sync.topic_prefix', true), ''),
                                        'gov.auth.') || aggregate_type);
    s.key_column := COALESCE(key_column, (aggregate_type || '_id')::name);
    s.columns := COALESCE(columns, '{}');
    s.delete_mode := delete_mode;
    s.event_types := COALESCE(event_types, jsonb_build_object(
        aggregate_type || '.created', 'upsert', aggregate_type || '.updated', 'upsert',
        aggregate_type || '.deleted', 'delete'));
    s.builtin := false;
    s.subscribed_at := now();
    PERFORM @extschema@.check_subscription(s);
    INSERT INTO @extschema@.subscription_catalog AS c VALUES (s.*)
        ON CONFLICT ON CONSTRAINT subscription_catalog_pkey DO UPDATE
       SET aggregate_type = EXCLUDED.aggregate_type, topic = EXCLUDED.topic,
           key_column = EXCLUDED.key_column, columns = EXCLUDED.columns,
           delete_mode = EXCLUDED.delete_mode, event_types = EXCLUDED.event_types;
    INSERT INTO @extschema@.subscription_stats AS st (target) VALUES (s.target)
        ON CONFLICT ON CONSTRAINT subscription_stats_pkey DO NOTHING;
    -- the consumer's role writes the target, and only what it must
    IF role IS NOT NULL AND EXISTS (SELECT 1 FROM pg_roles r WHERE r.rolname = role AND NOT r.rolsuper) THEN
        PERFORM @extschema@.grant_subscription(s.target, role);
    END IF;
    PERFORM @extschema@.subscriptions_changed();
END
$$;
COMMENT ON FUNCTION @extschema@.subscribe(regclass, text, text, name, jsonb, text, jsonb) IS
    'Consume topic (default <topic_prefix><aggregate_type>) into the cache table target; rerunnable';

-- What a consumer role needs for the subscriptions of this database.
CREATE FUNCTION @extschema@.grant_subscription(target regclass, role name) RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    EXECUTE format('GRANT USAGE ON SCHEMA cache, @extschema@ TO %I', role);
    EXECUTE format('GRANT SELECT, INSERT, UPDATE ON %s TO %I', target, role);
    IF EXISTS (SELECT 1 FROM @extschema@.subscription_catalog c
                WHERE c.target = grant_subscription.target AND c.delete_mode = 'hard') THEN
        EXECUTE format('GRANT DELETE ON %s TO %I', target, role);
    END IF;
    EXECUTE format('GRANT SELECT ON @extschema@.subscription_catalog TO %I', role);
    EXECUTE format('GRANT SELECT, INSERT, UPDATE ON @extschema@.subscription_stats, @extschema@.tombstones TO %I', role);
    EXECUTE format('GRANT EXECUTE ON FUNCTION @extschema@.subscription_fields(regclass) TO %I', role);
END
$$;

CREATE FUNCTION @extschema@.unsubscribe(target regclass) RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    role name := @extschema@.consumer_role();
BEGIN
    LOCK TABLE @extschema@.subscription_catalog IN SHARE ROW EXCLUSIVE MODE;
    DELETE FROM @extschema@.subscription_catalog c WHERE c.target = unsubscribe.target;
    IF NOT FOUND THEN
        PERFORM @extschema@.subscription_error(format('table %s is not subscribed', target),
            'citizen_sync.subscriptions lists the subscribed tables of this database.',
            'Check the table name.', 'undefined_object');
    END IF;
    DELETE FROM @extschema@.subscription_stats st WHERE st.target = unsubscribe.target;
    DELETE FROM @extschema@.tombstones t WHERE t.target = unsubscribe.target;
    IF role IS NOT NULL AND EXISTS (SELECT 1 FROM pg_roles r WHERE r.rolname = role AND NOT r.rolsuper) THEN
        EXECUTE format('REVOKE INSERT, UPDATE, DELETE ON %s FROM %I', target, role);
    END IF;
    PERFORM @extschema@.subscriptions_changed();
END
$$;
COMMENT ON FUNCTION @extschema@.unsubscribe(regclass) IS
    'Stop consuming into target (the table and its rows stay); takes effect within a second';

CREATE VIEW @extschema@.subscriptions AS
    SELECT c.target, c.aggregate_type,
           COALESCE(c.topic, pg_catalog.current_setting('citizen_sync.topics', true)) AS topic,
           c.key_column, c.columns, c.delete_mode, c.event_types, c.builtin,
           COALESCE(st.applied, 0) AS applied, COALESCE(st.deleted, 0) AS deleted,
           COALESCE(st.stale, 0) AS stale, COALESCE(st.duplicate, 0) AS duplicate,
           COALESCE(st.ignored, 0) AS ignored, COALESCE(st.dead_lettered, 0) AS dead_lettered,
           st.last_batch_at, c.subscribed_at
      FROM @extschema@.subscription_catalog c
      LEFT JOIN @extschema@.subscription_stats st ON st.target OPERATOR(pg_catalog.=) c.target;
COMMENT ON VIEW @extschema@.subscriptions IS
    'Subscribed cache tables with their topic, mapping and outcome counters';

REVOKE ALL ON FUNCTION @extschema@.subscribe(regclass, text, text, name, jsonb, text, jsonb) FROM PUBLIC;
REVOKE ALL ON FUNCTION @extschema@.unsubscribe(regclass) FROM PUBLIC;
REVOKE ALL ON FUNCTION @extschema@.grant_subscription(regclass, name) FROM PUBLIC;
REVOKE ALL ON FUNCTION @extschema@.check_subscription(@extschema@.subscription_catalog) FROM PUBLIC;
REVOKE ALL ON FUNCTION @extschema@.subscription_fields(regclass) FROM PUBLIC;
REVOKE ALL ON FUNCTION @extschema@.subscriptions_changed() FROM PUBLIC;
REVOKE ALL ON FUNCTION @extschema@.subscription_error(text, text, text, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION @extschema@.consumer_role() FROM PUBLIC;
REVOKE ALL ON @extschema@.subscriptions FROM PUBLIC;

-- The built-in subscription: cache.citizen_refs from the topics of
-- citizen_sync.topics.  name and email are required of an upsert (a row
-- without them is only a delete's tombstone); created_at and updated_at are
-- the cache's own.
INSERT INTO @extschema@.subscription_catalog
       (target, aggregate_type, topic, key_column, columns, delete_mode, event_types, builtin)
VALUES ('cache.citizen_refs', 'citizen', NULL, 'citizen_id',
        '{"name": {"required": true}, "email": {"required": true}, "created_at": null, "updated_at": null}',
        'soft',
        '{"citizen.created": "upsert", "citizen.updated": "upsert", "citizen.deleted": "delete"}',
        true);
INSERT INTO @extschema@.subscription_stats (target) VALUES ('cache.citizen_refs');
