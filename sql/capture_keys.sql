--
-- capture_keys: the generic source side (issue 10).
--
--   - keys bigint, text or uuid: outbox.aggregate_id holds the key as text,
--     data.<aggregate_type>_id is a JSON number for integer keys and a JSON
--     string otherwise;
--   - event names per operation (capture()'s event_types);
--   - capture()'s argument validation (errors with DETAIL and HINT);
--   - source_state() and resync() with text keys;
--   - current_version(): in the changing transaction and after its commit,
--     and who may call it.
--
-- Errors raised in PL/pgSQL would print a CONTEXT line with a line number
-- of the install script, which changes whenever it is edited.
\set SHOW_CONTEXT never
SET client_min_messages = warning;

-- Versions are clock-based: shown as their rank among the aggregate's
-- versions in the outbox (1, 2, ...).
CREATE FUNCTION pg_temp.vrank(agg text, agg_id text, ver bigint) RETURNS bigint
LANGUAGE sql STABLE AS $$
    SELECT CASE WHEN ver IS NOT NULL THEN
           (SELECT count(DISTINCT (o.payload ->> 'event_version')::bigint)
              FROM citizen_sync.outbox o
             WHERE o.aggregate_type = agg AND o.aggregate_id = agg_id
               AND (o.payload ->> 'event_version')::bigint <= ver) END
$$;
CREATE TEMP VIEW ob AS
SELECT id, aggregate_type AS agg, aggregate_id AS agg_id, event_type,
       pg_temp.vrank(aggregate_type, aggregate_id, (payload ->> 'event_version')::bigint) AS ver,
       payload -> 'data' AS data
  FROM citizen_sync.outbox;
SELECT COALESCE(max(id), 0) AS start FROM citizen_sync.outbox \gset

------------------------------------------------------------------------------
-- A text key and the seed's role.assigned
------------------------------------------------------------------------------
CREATE TABLE public.role_assignments (
    assignment_id text PRIMARY KEY,
    citizen_id    bigint NOT NULL,
    role          text NOT NULL,
    granted_by    text
);
SELECT citizen_sync.capture('public.role_assignments', 'role', NULL, 'assignment_id',
       '{"insert": "assigned", "update": "assigned", "delete": "revoked"}');
SELECT aggregate_type, id_column, columns, event_types FROM citizen_sync.captures
 WHERE aggregate_type = 'role';
-- rerunnable, the same way
SELECT citizen_sync.capture('public.role_assignments', 'role', NULL, 'assignment_id',
       '{"insert": "assigned", "update": "assigned", "delete": "revoked"}');
SELECT count(*) AS triggers FROM pg_trigger
 WHERE tgrelid = 'public.role_assignments'::regclass AND NOT tgisinternal;

INSERT INTO public.role_assignments VALUES ('ra-1', 7, 'permits_clerk', 'admin'),
                                           ('ra-2', 8, 'parks_viewer', NULL);
UPDATE public.role_assignments SET role = 'permits_reviewer' WHERE assignment_id = 'ra-1';
DELETE FROM public.role_assignments WHERE assignment_id = 'ra-2';
SELECT id - :start AS n, agg, agg_id, event_type, ver, data,
       jsonb_typeof(data -> 'role_id') AS key_json_type
  FROM ob WHERE id > :start ORDER BY id;
-- the message the publisher builds from it (same expressions as FETCH_SQL)
SELECT aggregate_type || '_' || aggregate_id AS kafka_key,
       aggregate_type || '.' || event_type AS wire_event_type
  FROM citizen_sync.outbox WHERE id > :start ORDER BY id;

------------------------------------------------------------------------------
-- A uuid key, default event names, only some columns published
------------------------------------------------------------------------------
CREATE TABLE public.permissions (
    id      uuid PRIMARY KEY,
    code    text NOT NULL,
    secret  text
);
SELECT citizen_sync.capture('public.permissions', 'permission', ARRAY['code'], 'id',
       '{"insert": "granted"}');
SELECT COALESCE(max(id), 0) AS start FROM citizen_sync.outbox \gset
INSERT INTO public.permissions VALUES ('6F9619FF-8B86-D011-B42D-00C04FC964FF', 'permit.issue', 's');
UPDATE public.permissions SET code = 'permit.approve';
UPDATE public.permissions SET secret = 'not published';
DELETE FROM public.permissions;
SELECT id - :start AS n, agg, agg_id, event_type, ver, data,
       jsonb_typeof(data -> 'permission_id') AS key_json_type
  FROM ob WHERE id > :start ORDER BY id;

------------------------------------------------------------------------------
-- A bigint key: data.<aggregate>_id stays a JSON number
------------------------------------------------------------------------------
CREATE TABLE public.employees (id bigint PRIMARY KEY, name text);
SELECT citizen_sync.capture('public.employees', 'employee');
SELECT COALESCE(max(id), 0) AS start FROM citizen_sync.outbox \gset
INSERT INTO public.employees VALUES (9007199254740993, 'Big Id'), (12, 'Small Id');
SELECT id - :start AS n, agg_id, event_type, data, jsonb_typeof(data -> 'employee_id') AS key_json_type,
       data -> 'employee_id' = to_jsonb(agg_id::bigint) AS exact
  FROM ob WHERE id > :start ORDER BY id;

------------------------------------------------------------------------------
-- source_state() and resync() with text keys
------------------------------------------------------------------------------
INSERT INTO public.role_assignments VALUES ('ra-3', 9, 'revenue_clerk', NULL);
SELECT id, key, pg_temp.vrank('role', key, version) AS version, present, snapshot
  FROM citizen_sync.source_state('role') ORDER BY key;
SELECT COALESCE(max(id), 0) AS start FROM citizen_sync.outbox \gset
-- one live, one deleted, one the source never had: update/delete names of the map
SELECT citizen_sync.resync('role', ARRAY['ra-1', 'ra-2', 'ra-9']) AS events_written;
SELECT id - :start AS n, agg_id, event_type, ver, data FROM ob WHERE id > :start ORDER BY id;
-- at_least lifts the counter above what a cache holds
SELECT citizen_sync.resync('role', ARRAY['ra-3'], ARRAY[9000000000000000]) AS events_written;
SELECT (payload ->> 'event_version')::bigint > 9000000000000000 AS above_at_least
  FROM citizen_sync.outbox ORDER BY id DESC LIMIT 1;
-- all live ones
SELECT citizen_sync.resync('role', NULL::text[]) AS events_written;
-- the bigint form still works for integer keys, and refuses nothing new
SELECT citizen_sync.resync('employee', ARRAY[12]) AS events_written;
SELECT data FROM ob ORDER BY id DESC LIMIT 1;
-- a uuid key, as uuid::text prints it (lower case)
SELECT citizen_sync.resync('permission', ARRAY[lower('6F9619FF-8B86-D011-B42D-00C04FC964FF')])
       AS events_written;
SELECT event_type, data FROM ob ORDER BY id DESC LIMIT 1;

------------------------------------------------------------------------------
-- current_version()
------------------------------------------------------------------------------
BEGIN;
UPDATE public.role_assignments SET granted_by = 'mayor' WHERE assignment_id = 'ra-3';
-- in the changing transaction: the version this change produced
SELECT citizen_sync.current_version('role', 'ra-3')
     = (SELECT (payload ->> 'event_version')::bigint FROM citizen_sync.outbox ORDER BY id DESC LIMIT 1)
       AS own_version_in_transaction;
COMMIT;
-- after the commit: the same
SELECT citizen_sync.current_version('role', 'ra-3')
     = (SELECT (payload ->> 'event_version')::bigint FROM citizen_sync.outbox ORDER BY id DESC LIMIT 1)
       AS own_version_after_commit;
SELECT citizen_sync.current_version('employee', '12') IS NOT NULL AS bigint_key,
       citizen_sync.current_version('role', 'no-such') IS NULL AS unknown_key,
       citizen_sync.current_version('nothing', 'ra-3') IS NULL AS unknown_aggregate;
-- Who may call it: not PUBLIC; a role granted EXECUTE (and USAGE on the
-- schema) learns versions, and nothing else of the bookkeeping.
CREATE ROLE cs_regress_app NOLOGIN;
SET ROLE cs_regress_app;
SELECT citizen_sync.current_version('role', 'ra-3');
RESET ROLE;
GRANT USAGE ON SCHEMA citizen_sync TO cs_regress_app;
GRANT EXECUTE ON FUNCTION citizen_sync.current_version(text, text) TO cs_regress_app;
SET ROLE cs_regress_app;
SELECT citizen_sync.current_version('role', 'ra-3') IS NOT NULL AS granted_app_reads_version;
SELECT count(*) FROM citizen_sync.aggregate_versions;
SELECT count(*) FROM citizen_sync.outbox;
RESET ROLE;
SELECT p.prosecdef, pg_get_userbyid(p.proowner) AS owner, p.proconfig
  FROM pg_proc p WHERE p.oid = 'citizen_sync.current_version(text, text)'::regprocedure;
REVOKE ALL ON SCHEMA citizen_sync FROM cs_regress_app;
REVOKE ALL ON FUNCTION citizen_sync.current_version(text, text) FROM cs_regress_app;
DROP ROLE cs_regress_app;

------------------------------------------------------------------------------
-- capture()'s argument validation
------------------------------------------------------------------------------
CREATE TABLE public.bad_keys (n numeric PRIMARY KEY, t timestamptz, label text);
SELECT citizen_sync.capture('public.bad_keys', 'bad_key', NULL, 'n');
\echo :SQLSTATE
SELECT citizen_sync.capture('public.bad_keys', 'bad_key', NULL, 't');
SELECT citizen_sync.capture('public.bad_keys', 'bad_key', NULL, 'nope');
\echo :SQLSTATE
SELECT citizen_sync.capture('public.bad_keys', 'bad_key', NULL, 'label', '["assigned"]');
\echo :SQLSTATE
SELECT citizen_sync.capture('public.bad_keys', 'bad_key', NULL, 'label', '{"upsert": "assigned"}');
SELECT citizen_sync.capture('public.bad_keys', 'bad_key', NULL, 'label', '{"insert": "Assigned"}');
SELECT citizen_sync.capture('public.bad_keys', 'bad_key', NULL, 'label', '{"delete": 1}');
SELECT citizen_sync.capture('public.bad_keys', 'bad_key', NULL, 'label', '{"delete": "role.revoked"}');
-- nothing was captured by the refused calls
SELECT count(*) AS captured FROM citizen_sync.captures WHERE aggregate_type = 'bad_key';
-- a domain over text is a text key; 0.1.0's four-argument call still works
CREATE DOMAIN public.code AS text CHECK (VALUE <> '');
CREATE TABLE public.codes (code public.code PRIMARY KEY);
SELECT citizen_sync.capture('public.codes', 'code', NULL, 'code');
SELECT citizen_sync.capture(source => 'public.codes', aggregate_type => 'code', id_column => 'code');
INSERT INTO public.codes VALUES ('x1');
SELECT agg_id, event_type, data FROM ob ORDER BY id DESC LIMIT 1;

------------------------------------------------------------------------------
-- Clean up (suites share one database)
------------------------------------------------------------------------------
SELECT citizen_sync.uncapture(t)
  FROM unnest(ARRAY['public.role_assignments', 'public.permissions', 'public.employees',
                    'public.codes']::regclass[]) AS t;
DROP TABLE public.role_assignments, public.permissions, public.employees, public.codes,
           public.bad_keys;
DROP DOMAIN public.code;
