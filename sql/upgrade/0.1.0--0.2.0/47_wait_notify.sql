------------------------------------------------------------------------------
-- Read-your-writes (wait_for) and change notifications (set_notify)
------------------------------------------------------------------------------

-- True as soon as target holds key at version or newer (a hard delete's
-- tombstone counts), false at the timeout.  Sleeps until the consumer of this
-- database commits a batch (no polling), then re-reads the row with a new
-- snapshot: call it under READ COMMITTED (under REPEATABLE READ it answers
-- from the transaction's snapshot at once, or raises an error).  Runs as its
-- caller, who must be allowed to SELECT target.
CREATE FUNCTION @extschema@.wait_for(target regclass, key text, version bigint,
                                     timeout interval)
RETURNS boolean
LANGUAGE C VOLATILE
SET search_path = pg_catalog, pg_temp
AS 'MODULE_PATHNAME', 'citizen_sync_wait_for';
COMMENT ON FUNCTION @extschema@.wait_for(regclass, text, bigint, interval) IS
    'Wait at most timeout until target holds key at version or newer (read-your-writes); true if it does';

-- Change notifications, opt-in per subscription: the consumer NOTIFYs channel
-- in each batch's transaction with {"target", "applied": [keys], "deleted":
-- [keys]}, or {"target", "reread": true} past max_keys changed keys or
-- NOTIFY's 8000-byte payload.  set_notify() grants SELECT on it to the
-- consumer's role (a consumer that may not read it notifies nothing).
CREATE TABLE @extschema@.subscription_notify (
    target   regclass PRIMARY KEY
             REFERENCES @extschema@.subscription_catalog (target) ON DELETE CASCADE,
    channel  text NOT NULL CHECK (channel ~ '^[a-z_][a-z0-9_]{0,62}$'),
    max_keys integer NOT NULL DEFAULT 100 CHECK (max_keys BETWEEN 0 AND 1000)
);
COMMENT ON TABLE @extschema@.subscription_notify IS
    'Subscriptions whose applied changes are NOTIFYed (citizen_sync.set_notify())';
REVOKE ALL ON @extschema@.subscription_notify FROM PUBLIC;
SELECT pg_catalog.pg_extension_config_dump('@extschema@.subscription_notify', '');

-- Opt target's subscription in to change notifications on channel (NULL:
-- opt out).  channel is a lower-case identifier, as LISTEN folds it.
CREATE FUNCTION @extschema@.set_notify(target regclass, channel text DEFAULT NULL,
                                       max_keys integer DEFAULT 100)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    role name := @extschema@.consumer_role();
BEGIN
    IF target IS NULL THEN
        PERFORM @extschema@.subscription_error('set_notify target must not be null',
            'set_notify opts one subscribed table in or out of change notifications.',
            'Pass a subscribed table, e.g. set_notify(''cache.citizen_refs'', ''citizen_changes'').');
    END IF;
    IF NOT EXISTS (SELECT 1 FROM @extschema@.subscription_catalog c
                    WHERE c.target OPERATOR(pg_catalog.=) set_notify.target) THEN
        PERFORM @extschema@.subscription_error(format('table %s is not subscribed', target),
            'citizen_sync.subscriptions lists the subscribed tables of this database.',
            'Subscribe the table with citizen_sync.subscribe() first.', 'undefined_object');
    END IF;
    IF channel IS NULL THEN
        DELETE FROM @extschema@.subscription_notify n
         WHERE n.target OPERATOR(pg_catalog.=) set_notify.target;
        RETURN;
    END IF;
    IF channel !~ '^[a-z_][a-z0-9_]{0,62}$' THEN
        PERFORM @extschema@.subscription_error(format('invalid notification channel name "%s"', channel),
            'A channel is a lower-case identifier of at most 63 characters: a letter or _, then letters, digits or _.',
            'Use a name such as citizen_changes and LISTEN citizen_changes.');
    END IF;
    IF max_keys IS NULL OR max_keys < 0 OR max_keys > 1000 THEN
        PERFORM @extschema@.subscription_error(format('invalid max_keys %s', COALESCE(max_keys::text, 'NULL')),
            'max_keys is how many changed keys a notification lists before it becomes a re-read marker.',
            'Pass a number between 0 and 1000.');
    END IF;
    IF role IS NOT NULL AND EXISTS (SELECT 1 FROM pg_roles r WHERE r.rolname = role AND NOT r.rolsuper) THEN
        EXECUTE format('GRANT SELECT ON @extschema@.subscription_notify TO %I', role);
    END IF;
    INSERT INTO @extschema@.subscription_notify AS n (target, channel, max_keys)
    VALUES (set_notify.target, set_notify.channel, set_notify.max_keys)
    ON CONFLICT ON CONSTRAINT subscription_notify_pkey
    DO UPDATE SET channel = EXCLUDED.channel, max_keys = EXCLUDED.max_keys;
END
$$;
COMMENT ON FUNCTION @extschema@.set_notify(regclass, text, integer) IS
    'NOTIFY channel with the keys each batch changed in target (NULL channel: stop)';
REVOKE ALL ON FUNCTION @extschema@.set_notify(regclass, text, integer) FROM PUBLIC;
