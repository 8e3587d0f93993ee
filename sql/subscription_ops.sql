--
-- subscription_ops: display and critical reads of any subscription
-- (read(), read_for_critical()), their argument errors and privilege
-- check, subscription_fresh_as_of() and subscription_lag without a consumer,
-- and the argument errors of subscription_consistency_check().
--
\set SHOW_CONTEXT never
SET client_min_messages = warning;

CREATE TABLE cache.staff (
    staff_id       bigint PRIMARY KEY,
    name           text,
    event_version  bigint NOT NULL DEFAULT 0,
    is_active      boolean NOT NULL DEFAULT true,
    deleted_at     timestamptz,
    last_synced_at timestamptz
);
SELECT citizen_sync.subscribe('cache.staff', 'staff');
CREATE TABLE cache.grants (
    grant_id       uuid PRIMARY KEY,
    what           text,
    event_version  bigint NOT NULL,
    last_synced_at timestamptz
);
SELECT citizen_sync.subscribe('cache.grants', 'grant', delete_mode => 'hard');
SELECT citizen_sync.apply_event('{"event_type": "staff.created", "event_id": "s1", "event_version": 2,
  "data": {"staff_id": 5, "snapshot": {"name": "Eva"}}}', 'gov.auth.staff');
SELECT citizen_sync.apply_event('{"event_type": "grant.created", "event_id": "g1", "event_version": 1,
  "data": {"grant_id": "c0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11", "snapshot": {"what": "parking"}}}',
  'gov.auth.grant');

-- display reads: the row as jsonb; no consumer runs, so fresh_as_of is the row's sync
SELECT data - 'last_synced_at' AS data, fresh_as_of IS NOT NULL AS has_fresh_as_of,
       age >= interval '0' AS age_ok, is_fresh
  FROM citizen_sync.read('cache.staff', '5');
SELECT data ->> 'what' AS what, is_fresh FROM citizen_sync.read('cache.grants', 'C0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11', '1 hour');
SELECT is_fresh FROM citizen_sync.read('cache.staff', '5', interval '-1 second');
SELECT count(*) AS not_cached FROM citizen_sync.read('cache.staff', '6');
-- critical reads
SELECT citizen_sync.read_for_critical('cache.staff', '5', '1 hour') ->> 'name' AS name;
\set VERBOSITY terse
SELECT citizen_sync.read_for_critical('cache.staff', '5', interval '-1 second');
\set VERBOSITY default
SELECT citizen_sync.read_for_critical('cache.staff', '6', '1 hour');
SELECT citizen_sync.read_for_critical('cache.staff', '5', NULL);
-- the built-in subscription reads the same way as citizen()
SELECT citizen_sync.apply_event('{"event_type": "citizen.created", "event_id": "c1", "event_version": 1,
  "data": {"citizen_id": 9, "snapshot": {"name": "Ana", "email": "ana@example.org"}}}', 'gov.auth.citizen');
SELECT (r.data ->> 'email') = c.email AS same_email, r.is_fresh = c.is_fresh AS same_freshness
  FROM citizen_sync.read('cache.citizen_refs', '9', '1 hour') r, citizen_sync.citizen(9, '1 hour') c;

-- argument errors
SELECT * FROM citizen_sync.read('cache.staff', 'five');
SELECT * FROM citizen_sync.read('cache.staff', NULL);
SELECT * FROM citizen_sync.read(NULL, '5');
SELECT * FROM citizen_sync.read('pg_class', '5');
SELECT * FROM citizen_sync.read('cache.nope', '5');
SELECT * FROM citizen_sync.subscription_consistency_check('dbname=nowhere', 'pg_class', '0');

-- a role without SELECT on the target is refused, with SELECT it reads
CREATE ROLE subops_reader;
GRANT USAGE ON SCHEMA cache, citizen_sync TO subops_reader;
SET ROLE subops_reader;
SELECT * FROM citizen_sync.read('cache.staff', '5');
SELECT citizen_sync.read_for_critical('cache.staff', '5', '1 hour');
RESET ROLE;
GRANT SELECT ON cache.staff TO subops_reader;
SET ROLE subops_reader;
SELECT data ->> 'name' AS name FROM citizen_sync.read('cache.staff', '5');
RESET ROLE;

-- objects planted in public do not change what read() does
CREATE FUNCTION public.to_jsonb(anyelement) RETURNS jsonb LANGUAGE sql AS 'SELECT ''"planted"''::jsonb';
SET search_path = public, pg_catalog;
SELECT citizen_sync.read_for_critical('cache.staff', '5', '1 hour') ->> 'name' AS name;
RESET search_path;
DROP FUNCTION public.to_jsonb(anyelement);

-- no consumer: freshness unknown, no partitions held
SELECT citizen_sync.subscription_fresh_as_of('cache.staff') AS fresh_as_of;
SELECT target, aggregate_type, topic, partitions, lag, fresh_as_of, applied, dead_lettered
  FROM citizen_sync.subscription_lag ORDER BY target::text;
-- the monitoring role reads it
SET ROLE citizen_sync_monitor;
SELECT count(*) AS monitor_sees FROM citizen_sync.subscription_lag;
RESET ROLE;

REVOKE ALL ON SCHEMA cache, citizen_sync FROM subops_reader;
REVOKE ALL ON cache.staff FROM subops_reader;
DROP ROLE subops_reader;
SELECT citizen_sync.unsubscribe('cache.staff');
SELECT citizen_sync.unsubscribe('cache.grants');
DROP TABLE cache.staff, cache.grants;
DELETE FROM cache.citizen_refs;
DELETE FROM citizen_sync.tombstones;
