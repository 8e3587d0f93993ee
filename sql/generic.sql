--
-- generic: subscribe() and its validation (each error with DETAIL and HINT),
-- and apply_event(payload, topic) into subscribed tables: bigint, uuid and
-- text keys, event-name maps, renames, conversions, soft and hard deletes,
-- DDL on a target, unsubscribe.
--
\set SHOW_CONTEXT never
SET client_min_messages = warning;

-- the built-in subscription
SELECT target, aggregate_type, topic, key_column, delete_mode, builtin, event_types
  FROM citizen_sync.subscriptions;
SELECT column_name, field, type_name, required, max_chars
  FROM citizen_sync.subscription_fields('cache.citizen_refs');

CREATE TABLE cache.employees (
    employee_id    bigint PRIMARY KEY,
    name           text,
    department     varchar(20),
    salary         integer,
    hired_on       date,
    tags           jsonb,
    event_version  bigint NOT NULL DEFAULT 0,
    is_active      boolean NOT NULL DEFAULT true,
    deleted_at     timestamptz,
    last_synced_at timestamptz
);

------------------------------------------------------------------------------
-- Validation: every refusal says what is wrong and what to do
------------------------------------------------------------------------------
\set VERBOSITY default
SELECT citizen_sync.subscribe('cache.employees', 'Employee!');
SELECT citizen_sync.subscribe('cache.employees', 'employee', delete_mode => 'purge');
SELECT citizen_sync.subscribe('cache.employees', 'employee', topic => 'bad topic');
CREATE VIEW cache.employees_v AS SELECT * FROM cache.employees;
SELECT citizen_sync.subscribe('cache.employees_v', 'employee');
DROP VIEW cache.employees_v;
CREATE TABLE public.employees_elsewhere (employee_id bigint PRIMARY KEY);
SELECT citizen_sync.subscribe('public.employees_elsewhere', 'employee');
DROP TABLE public.employees_elsewhere;
CREATE TABLE cache.no_pk (employee_id bigint, event_version bigint, last_synced_at timestamptz);
SELECT citizen_sync.subscribe('cache.no_pk', 'employee');
DROP TABLE cache.no_pk;
CREATE TABLE cache.other_pk (id bigint PRIMARY KEY, employee_id bigint);
SELECT citizen_sync.subscribe('cache.other_pk', 'employee');
DROP TABLE cache.other_pk;
CREATE TABLE cache.int_key (employee_id integer PRIMARY KEY);
SELECT citizen_sync.subscribe('cache.int_key', 'employee');
DROP TABLE cache.int_key;
CREATE TABLE cache.bare (employee_id bigint PRIMARY KEY, name text);
SELECT citizen_sync.subscribe('cache.bare', 'employee');
ALTER TABLE cache.bare ADD COLUMN event_version bigint NOT NULL DEFAULT 0;
SELECT citizen_sync.subscribe('cache.bare', 'employee');
ALTER TABLE cache.bare ADD COLUMN last_synced_at timestamptz;
SELECT citizen_sync.subscribe('cache.bare', 'employee');
ALTER TABLE cache.bare ADD COLUMN is_active boolean NOT NULL DEFAULT true;
SELECT citizen_sync.subscribe('cache.bare', 'employee');
-- hard mode needs neither is_active nor deleted_at
SELECT citizen_sync.subscribe('cache.bare', 'employee', delete_mode => 'hard');
SELECT citizen_sync.unsubscribe('cache.bare');
DROP TABLE cache.bare;
SELECT citizen_sync.subscribe('cache.employees', 'employee', columns => '[]');
SELECT citizen_sync.subscribe('cache.employees', 'employee', columns => '{"nickname": "nick"}');
SELECT citizen_sync.subscribe('cache.employees', 'employee', columns => '{"event_version": "v"}');
SELECT citizen_sync.subscribe('cache.employees', 'employee', columns => '{"name": 42}');
SELECT citizen_sync.subscribe('cache.employees', 'employee', columns => '{"name": {"required": "yes"}}');
SELECT citizen_sync.subscribe('cache.employees', 'employee', event_types => '{"employee.hired": "insert"}');
-- one topic feeds one table of a database
SELECT citizen_sync.subscribe('cache.employees', 'employee', topic => 'gov.auth.citizen');
-- soft deletes leave a row with only the key: NOT NULL columns need a default
ALTER TABLE cache.employees ALTER COLUMN name SET NOT NULL;
SELECT citizen_sync.subscribe('cache.employees', 'employee');
ALTER TABLE cache.employees ALTER COLUMN name DROP NOT NULL;
-- a type a non-superuser controls
CREATE ROLE citizen_sync_generic_owner NOLOGIN;
CREATE DOMAIN public.cs_generic_money AS numeric CHECK (VALUE >= 0);
ALTER DOMAIN public.cs_generic_money OWNER TO citizen_sync_generic_owner;
ALTER TABLE cache.employees ADD COLUMN bonus public.cs_generic_money;
SELECT citizen_sync.subscribe('cache.employees', 'employee');
ALTER TABLE cache.employees DROP COLUMN bonus;
DROP DOMAIN public.cs_generic_money;
DROP ROLE citizen_sync_generic_owner;
SELECT citizen_sync.unsubscribe('cache.employees');   -- nothing was subscribed

------------------------------------------------------------------------------
-- Employees: bigint keys, soft deletes, a rename, type conversions
------------------------------------------------------------------------------
SELECT citizen_sync.subscribe('cache.employees', 'employee',
                              columns => '{"name": {"field": "full_name", "required": true}}');
-- rerunnable: the same call again changes nothing
SELECT citizen_sync.subscribe('cache.employees', 'employee',
                              columns => '{"name": {"field": "full_name", "required": true}}');
SELECT target, aggregate_type, topic, key_column, columns, delete_mode, event_types, builtin
  FROM citizen_sync.subscriptions ORDER BY builtin, target::text;
SELECT column_name, field, type_name, required, max_chars
  FROM citizen_sync.subscription_fields('cache.employees');
-- a second table for the same topic is refused
CREATE TABLE cache.staff (LIKE cache.employees INCLUDING ALL);
SELECT citizen_sync.subscribe('cache.staff', 'employee');
DROP TABLE cache.staff;

CREATE FUNCTION pg_temp.emp(kind text, eid text, ver bigint, id bigint, snap jsonb)
RETURNS text LANGUAGE sql AS $$
    SELECT jsonb_build_object('event_type', 'employee.' || kind, 'event_id', eid,
                              'event_version', ver, 'event_timestamp', '2026-11-25T10:15:00.123Z',
                              'data', jsonb_build_object('employee_id', id, 'snapshot', snap))::text
$$;
SELECT citizen_sync.apply_event(pg_temp.emp('created', 'e1', 1, 7,
    '{"id": 7, "full_name": "Ana Ruiz", "department": "parks", "salary": 52000,
      "hired_on": "2020-03-01", "tags": ["gardener", {"level": 2}]}'), 'gov.auth.employee');
SELECT citizen_sync.apply_event(pg_temp.emp('updated', 'e2', 3, 7,
    '{"full_name": "Ana Ruiz", "department": "roads", "salary": "53000"}'), 'gov.auth.employee');
SELECT citizen_sync.apply_event(pg_temp.emp('updated', 'e3', 2, 7,
    '{"full_name": "Old Ana", "department": "parks"}'), 'gov.auth.employee');
SELECT citizen_sync.apply_event(pg_temp.emp('updated', 'e3', 2, 7,
    '{"full_name": "Old Ana", "department": "parks"}'), 'gov.auth.employee');
SELECT citizen_sync.apply_event(pg_temp.emp('promoted', 'e4', 4, 7, '{}'), 'gov.auth.employee');
SELECT employee_id, name, department, salary, hired_on, tags, event_version, is_active
  FROM cache.employees;
-- refused: wrong key type, missing required field, too long, wrong JSON
-- type, a value the column type does not take (the column is named)
SELECT citizen_sync.apply_event(replace(pg_temp.emp('updated', 'e5', 5, 7, '{"full_name": "A"}'),
                                        '"employee_id": 7', '"employee_id": "7"'), 'gov.auth.employee');
SELECT citizen_sync.apply_event(pg_temp.emp('updated', 'e5', 5, 7, '{"department": "x"}'), 'gov.auth.employee');
SELECT citizen_sync.apply_event(pg_temp.emp('updated', 'e5', 5, 7,
    '{"full_name": "A", "department": "a department name that is too long"}'), 'gov.auth.employee');
SELECT citizen_sync.apply_event(pg_temp.emp('updated', 'e5', 5, 7,
    '{"full_name": "A", "salary": true}'), 'gov.auth.employee');
SELECT citizen_sync.apply_event(pg_temp.emp('updated', 'e5', 5, 7,
    '{"full_name": "A", "salary": 12.5}'), 'gov.auth.employee');
SELECT citizen_sync.apply_event(pg_temp.emp('updated', 'e5', 5, 7,
    '{"full_name": "A", "hired_on": "yesterday-ish"}'), 'gov.auth.employee');
SELECT citizen_sync.apply_event(pg_temp.emp('updated', 'e5', 5, 7,
    '{"full_name": "A", "id": 8}'), 'gov.auth.employee');
-- fixed on the target's side, the same event applies
ALTER TABLE cache.employees ALTER COLUMN salary TYPE numeric;
SELECT citizen_sync.apply_event(pg_temp.emp('updated', 'e5', 5, 7,
    '{"full_name": "A", "salary": 12.5}'), 'gov.auth.employee');
-- a column added to the target is filled by the next event
ALTER TABLE cache.employees ADD COLUMN phone text;
SELECT citizen_sync.apply_event(pg_temp.emp('updated', 'e6', 6, 7,
    '{"full_name": "A", "phone": "555-0100"}'), 'gov.auth.employee');
SELECT employee_id, name, salary, phone, event_version FROM cache.employees;
-- apply_events(payloads, topic): a large array (its event ids are returned
-- from the parsed events, which must outlive the apply's SPI connection)
SELECT count(DISTINCT event_id) AS ids, min(result), max(result)
  FROM citizen_sync.apply_events(ARRAY(
           SELECT pg_temp.emp('created', 'bulk_' || i, 1, 1000 + i,
                              jsonb_build_object('full_name', 'Bulk ' || i, 'department', repeat('d', 20)))
             FROM generate_series(1, 3000) AS i), 'gov.auth.employee');
SELECT count(*) AS bulk_rows FROM cache.employees WHERE employee_id > 1000;
DELETE FROM cache.employees WHERE employee_id > 1000;
-- soft delete keeps the row; an older update does not bring it back
SELECT citizen_sync.apply_event(pg_temp.emp('deleted', 'e7', 7, 7, NULL), 'gov.auth.employee');
SELECT citizen_sync.apply_event(pg_temp.emp('updated', 'e8', 6, 7, '{"full_name": "Back"}'), 'gov.auth.employee');
-- a delete of a key never seen leaves a tombstone row
SELECT citizen_sync.apply_event(pg_temp.emp('deleted', 'e9', 3, 9, NULL), 'gov.auth.employee');
SELECT employee_id, name, event_version, is_active, deleted_at IS NOT NULL AS deleted
  FROM cache.employees ORDER BY employee_id;

------------------------------------------------------------------------------
-- Role assignments: the seed's event names, uuid keys, hard deletes
------------------------------------------------------------------------------
CREATE TABLE cache.role_assignments (
    role_assignment_id uuid PRIMARY KEY,
    employee_id    bigint NOT NULL,
    role_name      text NOT NULL,
    event_version  bigint NOT NULL,
    last_synced_at timestamptz
);
SELECT citizen_sync.subscribe('cache.role_assignments', 'role_assignment', topic => 'gov.auth.role',
    delete_mode => 'hard', columns => '{"role_name": "role"}',
    event_types => '{"role.assigned": "upsert", "role.revoked": "delete"}');
CREATE FUNCTION pg_temp.ra(kind text, eid text, ver bigint, id text, snap jsonb)
RETURNS text LANGUAGE sql AS $$
    SELECT jsonb_build_object('event_type', 'role.' || kind, 'event_id', eid, 'event_version', ver,
                              'data', jsonb_build_object('role_assignment_id', id, 'snapshot', snap))::text
$$;
SELECT citizen_sync.apply_event(pg_temp.ra('assigned', 'r1', 1, 'A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11',
    '{"employee_id": 7, "role": "inspector"}'), 'gov.auth.role');
SELECT citizen_sync.apply_event(pg_temp.ra('assigned', 'r2', 2, 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11',
    '{"employee_id": 7, "role": "supervisor"}'), 'gov.auth.role');
SELECT citizen_sync.apply_event(pg_temp.ra('assigned', 'r3', 1, 'not-a-uuid', '{}'), 'gov.auth.role');
-- a NOT NULL column without a default: the field is required
SELECT citizen_sync.apply_event(pg_temp.ra('assigned', 'r3', 1, 'b0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11',
    '{"role": "clerk"}'), 'gov.auth.role');
SELECT role_assignment_id, employee_id, role_name, event_version FROM cache.role_assignments;
-- hard delete: the row goes, its version stays; a late older update is stale
SELECT citizen_sync.apply_event(pg_temp.ra('revoked', 'r4', 3, 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', NULL),
    'gov.auth.role');
SELECT citizen_sync.apply_event(pg_temp.ra('assigned', 'r5', 2, 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11',
    '{"employee_id": 7, "role": "resurrected"}'), 'gov.auth.role');
SELECT citizen_sync.apply_event(pg_temp.ra('revoked', 'r6', 2, 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', NULL),
    'gov.auth.role');
SELECT count(*) AS rows_left FROM cache.role_assignments;
SELECT target, key, event_version FROM citizen_sync.tombstones;
-- a newer assignment comes back
SELECT citizen_sync.apply_event(pg_temp.ra('assigned', 'r7', 4, 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11',
    '{"employee_id": 7, "role": "back"}'), 'gov.auth.role');
SELECT role_assignment_id, role_name, event_version FROM cache.role_assignments;
-- the citizen events of role.* names are unknown here, and vice versa
SELECT citizen_sync.apply_event(pg_temp.ra('created', 'r8', 5, 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '{}'),
    'gov.auth.role');

------------------------------------------------------------------------------
-- Permissions: text keys
------------------------------------------------------------------------------
CREATE TABLE cache.permissions (
    permission_id  text PRIMARY KEY,
    description    text,
    event_version  bigint NOT NULL DEFAULT 0,
    is_active      boolean NOT NULL DEFAULT true,
    deleted_at     timestamptz,
    last_synced_at timestamptz
);
SELECT citizen_sync.subscribe('cache.permissions', 'permission',
    event_types => '{"permission.granted": "upsert", "permission.revoked": "delete"}');
SELECT citizen_sync.apply_event('{"event_type": "permission.granted", "event_id": "p1", "event_version": 1,
  "data": {"permission_id": "permits.approve", "snapshot": {"id": "permits.approve",
           "description": "Approve permits"}}}', 'gov.auth.permission');
SELECT citizen_sync.apply_event('{"event_type": "permission.granted", "event_id": "p2", "event_version": 1,
  "data": {"permission_id": 12, "snapshot": {}}}', 'gov.auth.permission');
SELECT citizen_sync.apply_event('{"event_type": "permission.granted", "event_id": "p2", "event_version": 1,
  "data": {"permission_id": "", "snapshot": {}}}', 'gov.auth.permission');
SELECT permission_id, description, event_version, is_active FROM cache.permissions;

------------------------------------------------------------------------------
-- Unsubscribe: the table stays, its topic is no longer applied
------------------------------------------------------------------------------
SELECT citizen_sync.unsubscribe('cache.permissions');
SELECT citizen_sync.apply_event('{"event_type": "permission.granted", "event_id": "p3", "event_version": 2,
  "data": {"permission_id": "x", "snapshot": {}}}', 'gov.auth.permission');
SELECT citizen_sync.unsubscribe('cache.permissions');
SELECT count(*) AS permissions_kept FROM cache.permissions;
SELECT target, topic FROM citizen_sync.subscriptions ORDER BY builtin, target::text;

-- clean up
SELECT citizen_sync.unsubscribe('cache.employees');
SELECT citizen_sync.unsubscribe('cache.role_assignments');
DROP TABLE cache.employees, cache.role_assignments, cache.permissions;
SELECT count(*) AS tombstones_left FROM citizen_sync.tombstones;
TRUNCATE cache.processed_events;
