--
-- capture: the transactional outbox on the source side.
--
-- citizen_sync.capture() attaches a row trigger to an application table;
-- every committed INSERT/UPDATE/DELETE of a published column writes one
-- outbox row with a per-citizen version, in the same transaction.  Then the
-- outbox is fed back through apply_event(), as the publisher and a consumer
-- would, and the cache matches the source table.
--
-- Errors raised in PL/pgSQL would print a CONTEXT line with a line number
-- of the install script, which changes whenever it is edited.
\set SHOW_CONTEXT never
-- capture() drops its triggers IF EXISTS first; the NOTICEs of the first
-- call are noise.
SET client_min_messages = warning;

-- Suites share one database: start from an empty outbox and cache.
TRUNCATE citizen_sync.outbox RESTART IDENTITY;
TRUNCATE citizen_sync.aggregate_versions;
TRUNCATE cache.citizen_refs, cache.processed_events;

CREATE TABLE public.citizens (
    id                bigint PRIMARY KEY,
    name              text,
    email             text,
    phone             text,
    address           text,
    city              text,
    postal_code       text,
    email_verified    bool DEFAULT false,
    identity_verified bool DEFAULT false,
    password_hash     text
);

SELECT citizen_sync.capture('public.citizens', 'citizen',
       ARRAY['name', 'email', 'phone', 'address', 'city', 'postal_code',
             'email_verified', 'identity_verified']);
SELECT tgname, tgtype, tgenabled FROM pg_trigger
 WHERE tgrelid = 'public.citizens'::regclass AND NOT tgisinternal ORDER BY tgname;

-- Versions are clock-based (microseconds since 1970, see emit_change()):
-- shown as their rank among the citizen's versions in the outbox (1, 2, ...).
CREATE FUNCTION pg_temp.vrank(agg_id bigint, ver bigint) RETURNS bigint
LANGUAGE sql STABLE AS $$
    SELECT CASE WHEN ver IS NOT NULL THEN
           (SELECT count(DISTINCT (o.payload ->> 'event_version')::bigint)
              FROM citizen_sync.outbox o
             WHERE o.aggregate_type = 'citizen' AND o.aggregate_id = agg_id::text
               AND (o.payload ->> 'event_version')::bigint <= ver) END
$$;

-- The outbox with its volatile values masked.
CREATE TEMP VIEW ob AS
SELECT id, aggregate_type AS agg, aggregate_id::bigint AS agg_id, event_type,
       pg_temp.vrank(aggregate_id::bigint, (payload ->> 'event_version')::bigint) AS ver,
       payload -> 'data' AS data
  FROM citizen_sync.outbox;

------------------------------------------------------------------------------
-- INSERT -> created, version 1, full snapshot of the published columns
------------------------------------------------------------------------------
INSERT INTO public.citizens VALUES
  (1, 'Maria Garcia', 'maria@example.gov', '+1-555-0199', '12 Elm St', 'Springfield',
      '12345', true, false, 'secret-hash-1'),
  (2, 'John Smith', 'john@example.gov', NULL, NULL, 'Shelbyville', NULL, false, false,
      'secret-hash-2');
SELECT * FROM ob ORDER BY id;

-- The payload: everything but event_type and event_id (the publisher adds them).
SELECT id,
       ARRAY(SELECT jsonb_object_keys(payload) ORDER BY 1) AS payload_keys,
       jsonb_typeof(payload -> 'event_version') AS version_type,
       payload ->> 'event_timestamp' ~ '^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$' AS timestamp_format_ok,
       (payload ->> 'event_timestamp')::timestamptz BETWEEN now() - interval '1 minute'
                                                        AND clock_timestamp() AS timestamp_is_now,
       payload -> 'data' -> 'snapshot' ? 'password_hash' AS leaks_password,
       published_at IS NULL AS pending, retry_count
  FROM citizen_sync.outbox ORDER BY id;

------------------------------------------------------------------------------
-- UPDATE -> updated, next version
------------------------------------------------------------------------------
UPDATE public.citizens SET name = 'Maria G. Lopez', email_verified = false WHERE id = 1;
SELECT * FROM ob WHERE id > 2 ORDER BY id;

-- Only an unpublished column changes: no event.
UPDATE public.citizens SET password_hash = 'new-secret-hash' WHERE id = 1;
-- The same values again: no event.
UPDATE public.citizens SET name = name, email = email, city = city;
UPDATE public.citizens SET phone = '+1-555-0199' WHERE id = 1;
SELECT count(*) AS outbox_rows FROM citizen_sync.outbox;

-- One statement changing two citizens: one event each.
UPDATE public.citizens SET city = 'Capital City' WHERE id IN (1, 2);
SELECT id, agg_id, event_type, ver, data -> 'snapshot' ->> 'city' AS city FROM ob WHERE id > 3 ORDER BY id;

------------------------------------------------------------------------------
-- Rolled back: no outbox row, and the version counter is rolled back too.
-- (The outbox id sequence is not transactional: ids may have gaps.)
------------------------------------------------------------------------------
BEGIN;
UPDATE public.citizens SET name = 'Rolled Back' WHERE id = 1;
SELECT agg_id, ver FROM ob WHERE data -> 'snapshot' ->> 'name' = 'Rolled Back';
ROLLBACK;
SELECT count(*) AS rolled_back_rows FROM ob WHERE data -> 'snapshot' ->> 'name' = 'Rolled Back';
BEGIN;
UPDATE public.citizens SET name = 'Savepoint Lost' WHERE id = 1;
SAVEPOINT s1;
UPDATE public.citizens SET name = 'Savepoint Undone' WHERE id = 1;
ROLLBACK TO SAVEPOINT s1;
UPDATE public.citizens SET name = 'Maria Lopez' WHERE id = 1;
COMMIT;
SELECT id, agg_id, event_type, ver, data -> 'snapshot' ->> 'name' AS name FROM ob WHERE agg_id = 1 ORDER BY id;

------------------------------------------------------------------------------
-- DELETE -> deleted, data.citizen_id only; a new row with the same id
-- continues the citizen's versions
------------------------------------------------------------------------------
INSERT INTO public.citizens (id, name, email) VALUES (3, 'Short Lived', 'short@example.gov');
DELETE FROM public.citizens WHERE id = 3;
DELETE FROM public.citizens WHERE id = 2;
INSERT INTO public.citizens (id, name, email, city) VALUES (2, 'John Smith Jr', 'junior@example.gov', 'Ogdenville');
SELECT * FROM ob WHERE agg_id IN (2, 3) ORDER BY id;

------------------------------------------------------------------------------
-- Versions per citizen: strictly increasing in outbox id order, none below
-- the clock of its transaction's start
------------------------------------------------------------------------------
SELECT aggregate_id::bigint AS agg_id,
       array_agg(pg_temp.vrank(aggregate_id::bigint, v) ORDER BY id) AS versions,
       array_agg(v ORDER BY id) = ARRAY(SELECT DISTINCT x FROM unnest(array_agg(v)) AS x ORDER BY x)
         AS increasing,
       bool_and(v >= extract(epoch FROM created_at) * 1000000) AS above_clock
  FROM (SELECT id, aggregate_id, created_at, (payload ->> 'event_version')::bigint AS v
          FROM citizen_sync.outbox) AS o
 GROUP BY aggregate_id
 ORDER BY aggregate_id;

------------------------------------------------------------------------------
-- Refused operations
------------------------------------------------------------------------------
-- TRUNCATE would skip the row triggers and lose the deletes.
TRUNCATE public.citizens;
\echo :SQLSTATE
-- Changing the id would move the history to another citizen.
UPDATE public.citizens SET id = 10 WHERE id = 1;
\echo :SQLSTATE
-- Bad aggregate types and columns.
SELECT citizen_sync.capture('public.citizens', 'Citizen');
\echo :SQLSTATE
SELECT citizen_sync.capture('public.citizens', 'citizen; DROP TABLE x');
\echo :SQLSTATE
SELECT citizen_sync.capture('public.citizens', '');
\echo :SQLSTATE
SELECT citizen_sync.capture('public.citizens', NULL);
\echo :SQLSTATE
SELECT citizen_sync.capture('public.citizens', 'citizen', ARRAY['name', 'no_such_column']);
\echo :SQLSTATE
SELECT citizen_sync.capture('public.citizens', 'citizen', NULL, 'no_such_id');
\echo :SQLSTATE
SELECT citizen_sync.capture('public.no_such_table', 'citizen');
\echo :SQLSTATE
-- Nothing above changed the table or the outbox.
SELECT count(*) AS citizens FROM public.citizens;
SELECT count(*) AS outbox_rows FROM citizen_sync.outbox;

------------------------------------------------------------------------------
-- capture() again is idempotent: still two triggers, one event per change
------------------------------------------------------------------------------
SELECT citizen_sync.capture('public.citizens', 'citizen',
       ARRAY['name', 'email', 'phone', 'address', 'city', 'postal_code',
             'email_verified', 'identity_verified']);
SELECT tgname, tgtype, tgenabled FROM pg_trigger
 WHERE tgrelid = 'public.citizens'::regclass AND NOT tgisinternal ORDER BY tgname;
UPDATE public.citizens SET identity_verified = true WHERE id = 1;
SELECT agg_id, event_type, ver, data -> 'snapshot' -> 'identity_verified' AS identity_verified
  FROM ob WHERE id = (SELECT max(id) FROM ob);
SELECT count(*) AS events_for_the_update FROM ob WHERE agg_id = 1 AND (data -> 'snapshot' -> 'identity_verified')::bool;

------------------------------------------------------------------------------
-- The round trip: build each event as the publisher does and apply it;
-- the cache then matches the source table
------------------------------------------------------------------------------
CREATE FUNCTION pg_temp.apply_outbox()
RETURNS TABLE (outbox_id bigint, event_type text, result text) LANGUAGE plpgsql AS $$
DECLARE
    o citizen_sync.outbox;
BEGIN
    FOR o IN SELECT * FROM citizen_sync.outbox ORDER BY id LOOP
        outbox_id := o.id;
        event_type := o.aggregate_type || '.' || o.event_type;
        result := citizen_sync.apply_event(
            (o.payload || jsonb_build_object('event_type', o.aggregate_type || '.' || o.event_type,
                                             'event_id', 'evt_' || o.id))::text);
        RETURN NEXT;
    END LOOP;
END
$$;
SELECT * FROM pg_temp.apply_outbox();

-- Active cached citizens = source rows (published columns), both ways.
(SELECT id, name, email, phone, address, city, postal_code, email_verified, identity_verified
   FROM public.citizens
 EXCEPT
 SELECT citizen_id, name, email, phone, address, city, postal_code, email_verified, identity_verified
   FROM cache.citizen_refs WHERE is_active)
UNION ALL
(SELECT citizen_id, name, email, phone, address, city, postal_code, email_verified, identity_verified
   FROM cache.citizen_refs WHERE is_active
 EXCEPT
 SELECT id, name, email, phone, address, city, postal_code, email_verified, identity_verified
   FROM public.citizens);
SELECT citizen_id, name, pg_temp.vrank(citizen_id, event_version) AS event_version, is_active,
       deleted_at IS NOT NULL AS has_deleted_at
  FROM cache.citizen_refs ORDER BY citizen_id;
-- The cached version is the source's latest.
SELECT r.citizen_id, r.event_version = v.last_version AS latest
  FROM cache.citizen_refs r
  JOIN citizen_sync.aggregate_versions v
    ON v.aggregate_type = 'citizen' AND v.aggregate_id = r.citizen_id::text
 ORDER BY 1;
-- Redelivering the whole outbox changes nothing: all duplicates.
SELECT result, count(*) FROM pg_temp.apply_outbox() GROUP BY result;

------------------------------------------------------------------------------
-- The guards: what would let changes escape the capture is refused, for a
-- superuser too (test/t/402_capture_guards.pl tries each as the owner)
------------------------------------------------------------------------------
ALTER TABLE public.citizens DISABLE TRIGGER citizen_sync_capture;
\echo :SQLSTATE
ALTER TABLE public.citizens ENABLE REPLICA TRIGGER citizen_sync_capture;
\echo :SQLSTATE
DROP TRIGGER citizen_sync_capture ON public.citizens;
\echo :SQLSTATE
ALTER TRIGGER citizen_sync_no_truncate ON public.citizens RENAME TO no_truncate;
\echo :SQLSTATE
CREATE TABLE public.citizens_child () INHERITS (public.citizens);
\echo :SQLSTATE
ALTER TABLE public.citizens RENAME COLUMN email TO mail;
\echo :SQLSTATE
ALTER TABLE public.citizens DROP COLUMN phone;
\echo :SQLSTATE
DROP TABLE public.citizens;
\echo :SQLSTATE
-- Unpublished columns may go; the triggers are as capture() made them.
ALTER TABLE public.citizens RENAME COLUMN password_hash TO pw_hash;
SELECT tgname, tgenabled FROM pg_trigger
 WHERE tgrelid = 'public.citizens'::regclass AND NOT tgisinternal ORDER BY tgname;

-- What cannot be captured.
CREATE VIEW public.citizens_view AS SELECT * FROM public.citizens;
SELECT citizen_sync.capture('public.citizens_view', 'citizen_view');
\echo :SQLSTATE
CREATE TABLE public.by_city (id bigint, city text) PARTITION BY LIST (city);
SELECT citizen_sync.capture('public.by_city', 'by_city');
\echo :SQLSTATE
CREATE TABLE public.parent_t (id bigint PRIMARY KEY);
CREATE TABLE public.child_t () INHERITS (public.parent_t);
SELECT citizen_sync.capture('public.parent_t', 'parent');
\echo :SQLSTATE
CREATE ROLE citizen_sync_capture_test_owner NOLOGIN;
CREATE TYPE public.capture_test_mood AS ENUM ('ok');
ALTER TYPE public.capture_test_mood OWNER TO citizen_sync_capture_test_owner;
CREATE TABLE public.moods (id bigint PRIMARY KEY, mood public.capture_test_mood[]);
SELECT citizen_sync.capture('public.moods', 'mood');
\echo :SQLSTATE
SELECT count(*) AS registrations FROM citizen_sync.captures;
DROP VIEW public.citizens_view;
DROP TABLE public.by_city, public.parent_t CASCADE;
DROP TABLE public.moods;
DROP TYPE public.capture_test_mood;
DROP ROLE citizen_sync_capture_test_owner;

-- Clean up: uncapture() first (DROP TABLE of a captured table is refused).
SELECT citizen_sync.uncapture('public.citizens');
DROP TABLE public.citizens;
TRUNCATE citizen_sync.outbox RESTART IDENTITY;
TRUNCATE citizen_sync.aggregate_versions;
TRUNCATE cache.citizen_refs, cache.processed_events;
