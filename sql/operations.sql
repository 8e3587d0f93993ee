--
-- operations: what a DBA runs (no Kafka, no worker: a temporary instance).
--
--   freshness-aware reads   citizen(), citizen_for_critical(), fresh_as_of()
--   dead letters            retry_dead_letters(), purge_dead_letters(),
--                           dead_letter_summary
--   resync                  source_state(), resync() on a captured table
--   monitoring views        selectable, empty but valid without workers
--   privileges              operator functions refused to a plain role
--
-- Volatile values (timestamps, ages) are shown as booleans.  Errors raised
-- in PL/pgSQL would print a CONTEXT line with a line number of the install
-- script, and CS001's DETAIL holds timestamps: terse errors, no context.
\set SHOW_CONTEXT never
\set VERBOSITY terse
SET client_min_messages = warning;

-- Suites share one database: start from empty tables.
TRUNCATE cache.citizen_refs, cache.processed_events;
TRUNCATE citizen_sync.dead_letters RESTART IDENTITY;
TRUNCATE citizen_sync.outbox RESTART IDENTITY;
TRUNCATE citizen_sync.aggregate_versions;
TRUNCATE citizen_sync.consistency_reports RESTART IDENTITY;

-- A citizen event as the publisher sends it.
CREATE FUNCTION pg_temp.ev(etype text, eid text, ver bigint, cid bigint,
                           nm text DEFAULT NULL, em text DEFAULT NULL)
RETURNS text LANGUAGE sql AS $$
    SELECT jsonb_build_object(
        'event_type', 'citizen.' || etype,
        'event_id', eid,
        'event_version', ver,
        'event_timestamp', '2026-11-25T10:15:00.123Z',
        'data', CASE WHEN etype = 'deleted'
                     THEN jsonb_build_object('citizen_id', cid)
                     ELSE jsonb_build_object('citizen_id', cid, 'snapshot',
                              jsonb_build_object('id', cid, 'name', nm, 'email', em,
                                                 'city', 'Springfield'))
                END)::text
$$;

------------------------------------------------------------------------------
-- Freshness-aware reads
------------------------------------------------------------------------------
-- No consumer runs here: fresh_as_of() is unknown (NULL), so a row is known
-- current as of its own last_synced_at.
SELECT citizen_sync.fresh_as_of() IS NULL AS fresh_as_of_unknown,
       citizen_sync.fresh_as_of('no_such_db') IS NULL AS unknown_database;

SELECT citizen_sync.apply_event(pg_temp.ev('created', 'evt_f1', 1, 1, 'Ana Lima', 'ana@example.gov'));
SELECT citizen_sync.apply_event(pg_temp.ev('created', 'evt_f2', 1, 2, 'Ben Okoro', 'ben@example.gov'));
SELECT citizen_sync.apply_event(pg_temp.ev('created', 'evt_f3', 1, 3, 'Cy Park', 'cy@example.gov'));
SELECT citizen_sync.apply_event(pg_temp.ev('deleted', 'evt_f3d', 2, 3));

-- Citizen 2 was last synced two hours ago (aged by hand, as superuser).
UPDATE cache.citizen_refs SET last_synced_at = now() - interval '2 hours' WHERE citizen_id = 2;

-- Display read: the row whatever its age, with how fresh it is.
SELECT citizen_id, name, is_active, fresh_as_of = last_synced_at AS fresh_as_of_is_last_sync,
       age >= interval '0' AND age < interval '1 minute' AS recent, is_fresh
  FROM citizen_sync.citizen(1, interval '1 hour');
SELECT citizen_id, name, age > interval '1 hour 59 minutes' AS two_hours_old, is_fresh
  FROM citizen_sync.citizen(2, interval '1 hour');
SELECT citizen_id, is_fresh FROM citizen_sync.citizen(2, interval '3 hours');
-- without max_age every row is "fresh" (display: show whatever is cached)
SELECT citizen_id, is_fresh FROM citizen_sync.citizen(2);
-- unknown citizen: no row
SELECT count(*) AS rows FROM citizen_sync.citizen(999, interval '1 hour');

-- Critical read: the row only if known current within max_age.
SELECT citizen_id, name, email, event_version, is_active
  FROM citizen_sync.citizen_for_critical(1, interval '1 hour');
SELECT citizen_id, name FROM citizen_sync.citizen_for_critical(2, interval '1 hour');
\echo :SQLSTATE
SELECT citizen_id, name FROM citizen_sync.citizen_for_critical(999, interval '1 hour');
\echo :SQLSTATE
-- a soft-deleted citizen is returned (is_active false): the caller decides
SELECT citizen_id, name, is_active, deleted_at IS NOT NULL AS has_deleted_at
  FROM citizen_sync.citizen_for_critical(3, interval '1 hour');
-- an application catches the two conditions by SQLSTATE
DO $$
DECLARE
    r cache.citizen_refs;
BEGIN
    FOREACH r.citizen_id IN ARRAY ARRAY[1, 2, 999] LOOP
        BEGIN
            r := citizen_sync.citizen_for_critical(r.citizen_id, interval '1 hour');
            RAISE WARNING 'citizen %: cached, %', r.citizen_id, r.name;
        EXCEPTION
            WHEN SQLSTATE 'CS001' THEN RAISE WARNING 'citizen %: stale, ask the auth service', r.citizen_id;
            WHEN SQLSTATE 'CS002' THEN RAISE WARNING 'citizen %: not cached, ask the auth service', r.citizen_id;
        END;
    END LOOP;
END
$$;

------------------------------------------------------------------------------
-- Dead letters: retry and purge
------------------------------------------------------------------------------
-- Letters as the consumer writes them (by hand here): three that apply now,
-- three that still cannot.
INSERT INTO citizen_sync.dead_letters
       (payload, topic, partition, "offset", event_id, error_message, error_sqlstate)
VALUES (convert_to(pg_temp.ev('created', 'evt_d1', 1, 10, 'Dana Ruiz', 'dana@example.gov'), 'UTF8'),
        'gov.auth.citizen', 0, 100, 'evt_d1', 'could not apply (then)', '40P01'),
       (convert_to(pg_temp.ev('deleted', 'evt_d2', 2, 1), 'UTF8'),
        'gov.auth.citizen', 0, 101, 'evt_d2', 'could not apply (then)', '40P01'),
       (convert_to(pg_temp.ev('created', 'evt_f2', 1, 2, 'Ben Okoro', 'ben@example.gov'), 'UTF8'),
        'gov.auth.citizen', 1, 200, 'evt_f2', 'could not apply (then)', '40P01'),
       (convert_to('{not json', 'UTF8'), 'gov.auth.citizen', 1, 201, NULL,
        'invalid citizen event', '22P02'),
       ('\xff'::bytea, 'gov.auth.citizen', 2, 300, NULL, 'invalid citizen event', '22021'),
       (convert_to(pg_temp.ev('created', 'evt_d6', 1, 11, 'No Email', NULL), 'UTF8'),
        'gov.auth.citizen', 2, 301, 'evt_d6', 'invalid citizen event', '22004');

SELECT error_sqlstate, error_message, unresolved FROM citizen_sync.dead_letter_summary
 ORDER BY error_sqlstate;

-- Retry all: each in its own subtransaction; results as apply_event gives them.
SELECT * FROM citizen_sync.retry_dead_letters() ORDER BY id;
SELECT id, resolved_at IS NOT NULL AS resolved, resolution, attempts, error_sqlstate,
       last_seen_at >= first_seen_at AS seen_again
  FROM citizen_sync.dead_letters ORDER BY id;
-- the resolved letters were applied
SELECT citizen_id, name, event_version, is_active FROM cache.citizen_refs
 WHERE citizen_id IN (1, 10) ORDER BY citizen_id;
SELECT event_id FROM cache.processed_events WHERE event_id IN ('evt_d1', 'evt_d2') ORDER BY 1;

-- Retry some: only the given unresolved ids; resolved ones are left alone.
SELECT * FROM citizen_sync.retry_dead_letters(ARRAY[1, 4]) ORDER BY id;
SELECT id, attempts FROM citizen_sync.dead_letters ORDER BY id;
SELECT error_sqlstate, unresolved FROM citizen_sync.dead_letter_summary ORDER BY error_sqlstate;

-- Purge: by first_seen_at; resolved only unless include_unresolved.
UPDATE citizen_sync.dead_letters SET first_seen_at = now() - interval '40 days' WHERE id IN (1, 4);
SELECT citizen_sync.purge_dead_letters() AS purged_resolved_older_than_30_days;
SELECT citizen_sync.purge_dead_letters(interval '30 days', true) AS purged_unresolved_too;
SELECT citizen_sync.purge_dead_letters(interval '30 days', true) AS purged_again;
SELECT id, resolved_at IS NOT NULL AS resolved FROM citizen_sync.dead_letters ORDER BY id;

------------------------------------------------------------------------------
-- A table captured after it had rows, a dropped captured table
------------------------------------------------------------------------------
-- A registration left behind by a captured table that was dropped (under
-- 0.1.0, or with the event trigger disabled: 0.2.0 refuses DROP TABLE of a
-- captured table) must not stand in the way: capturing a new table under
-- the same aggregate type, and source_state(), must work.
CREATE TABLE public.ops_probe_a (id bigint PRIMARY KEY, name text);
SELECT citizen_sync.capture('public.ops_probe_a', 'ops_probe');
ALTER EVENT TRIGGER citizen_sync_guard_drop DISABLE;
DROP TABLE public.ops_probe_a;
ALTER EVENT TRIGGER citizen_sync_guard_drop ENABLE ALWAYS;
CREATE TABLE public.ops_probe_b (id bigint PRIMARY KEY, name text);
INSERT INTO public.ops_probe_b VALUES (1, 'before capture');
SELECT citizen_sync.capture('public.ops_probe_b', 'ops_probe');
SELECT id, version, present FROM citizen_sync.source_state('ops_probe');
SELECT citizen_sync.uncapture('public.ops_probe_b');
DROP TABLE public.ops_probe_b;
DELETE FROM citizen_sync.captures WHERE aggregate_type = 'ops_probe';

-- Earlier suites dropped their captured table too (see above): forget
-- registrations of tables that no longer exist, so that this suite can
-- capture as 'citizen'.
DELETE FROM citizen_sync.captures c
 WHERE NOT EXISTS (SELECT 1 FROM pg_class r WHERE r.oid = c.source);

------------------------------------------------------------------------------
-- source_state() and resync()
------------------------------------------------------------------------------
TRUNCATE cache.citizen_refs, cache.processed_events;
CREATE TABLE public.ops_citizens (
    id     bigint PRIMARY KEY,
    name   text NOT NULL,
    email  text NOT NULL,
    phone  text,
    city   text,
    secret text
);
-- 1 and 2 exist before capture: no event, no version.
INSERT INTO public.ops_citizens VALUES
    (1, 'Ana Lima', 'ana@example.gov', NULL, 'Springfield', 's1'),
    (2, 'Ben Okoro', 'ben@example.gov', '+1-555-0102', 'Shelbyville', 's2');
SELECT citizen_sync.capture('public.ops_citizens', 'citizen', ARRAY['name', 'email', 'phone', 'city']);
INSERT INTO public.ops_citizens VALUES
    (3, 'Cy Park', 'cy@example.gov', NULL, 'Springfield', 's3'),
    (4, 'Dee Vance', 'dee@example.gov', NULL, 'Ogdenville', 's4');
UPDATE public.ops_citizens SET city = 'Capital City' WHERE id = 3;
DELETE FROM public.ops_citizens WHERE id = 4;

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

-- The source's state: live rows (version NULL if never captured), deleted
-- ones (present false), published columns only.
SELECT id, pg_temp.vrank(id, version) AS version, present, changed_at IS NOT NULL AS has_changed_at,
       snapshot
  FROM citizen_sync.source_state('citizen') ORDER BY id;
SELECT id, pg_temp.vrank(id, version) AS version, present FROM citizen_sync.source_state() ORDER BY id;

-- The outbox rows written from now on, without their timestamp.
CREATE TEMP VIEW new_events AS
SELECT id, aggregate_id::bigint AS aggregate_id, event_type,
       pg_temp.vrank(aggregate_id::bigint, (payload ->> 'event_version')::bigint) AS version,
       payload -> 'data' AS data
  FROM citizen_sync.outbox WHERE id > 4;
SELECT max(id) AS outbox_rows_so_far FROM citizen_sync.outbox;

-- Resync all: every live row republished as 'updated' with a new version;
-- 1 and 2 are backfilled (their first version).
SELECT citizen_sync.resync('citizen') AS events_written;
SELECT * FROM new_events ORDER BY id;
SELECT id, pg_temp.vrank(id, version) AS version, present
  FROM citizen_sync.source_state('citizen') ORDER BY id;

-- Resync some: a live one is republished; a deleted one and one the source
-- never had are published as deleted.
SELECT citizen_sync.resync('citizen', ARRAY[2, 4, 99]) AS events_written;
SELECT * FROM new_events WHERE id > 7 ORDER BY id;
SELECT citizen_sync.resync('citizen', ARRAY[]::bigint[]) AS nothing_to_resync;

-- Feed the outbox to the cache as a consumer would: it equals the source.
SELECT o.id, citizen_sync.apply_event(
           (o.payload || jsonb_build_object('event_type', o.aggregate_type || '.' || o.event_type,
                                            'event_id', 'evt_' || o.id))::text) AS result
  FROM citizen_sync.outbox o ORDER BY o.id;
SELECT citizen_id, name, email, phone, city, pg_temp.vrank(citizen_id, event_version) AS event_version,
       is_active
  FROM cache.citizen_refs ORDER BY citizen_id;
(SELECT s.id, s.version, s.present FROM citizen_sync.source_state() s
 EXCEPT
 SELECT citizen_id, event_version, is_active FROM cache.citizen_refs)
UNION ALL
(SELECT citizen_id, event_version, is_active FROM cache.citizen_refs
 EXCEPT
 SELECT s.id, s.version, s.present FROM citizen_sync.source_state() s);

-- Unknown aggregate type, and the consistency check without dblink.
SELECT * FROM citizen_sync.source_state('permit');
SELECT citizen_sync.resync('permit');
SELECT * FROM citizen_sync.consistency_check('dbname=nowhere');
SELECT citizen_sync.heal('dbname=nowhere');

------------------------------------------------------------------------------
-- Monitoring views: valid without any worker
------------------------------------------------------------------------------
SELECT count(*) AS workers FROM citizen_sync.worker_stats;
SELECT count(*) AS consumers FROM citizen_sync.consumer_stats;
SELECT count(*) AS partitions FROM citizen_sync.consumer_lag;
SELECT count(*) AS up_rows FROM citizen_sync.worker_up;
SELECT count(*) AS buckets FROM citizen_sync.sync_latency;
SELECT * FROM citizen_sync.sync_latency_summary;
SELECT count(*) AS reports FROM citizen_sync.consistency_status;
-- the resync events are still pending (no publisher here)
SELECT pending, retrying, oldest_pending_age_seconds > 0 AS has_age
  FROM citizen_sync.outbox_backlog;
-- a row the publisher set aside: counted, and released by retry_set_aside()
UPDATE citizen_sync.outbox
   SET set_aside_at = now(), retry_count = 1, last_error = 'Broker: Message size too large'
 WHERE id = (SELECT min(id) FROM citizen_sync.outbox);
SELECT pending, retrying, set_aside, database = current_database() AS this_db
  FROM citizen_sync.outbox_backlog;
SELECT count(*) AS released FROM citizen_sync.retry_set_aside(ARRAY[-1]);
SELECT aggregate_type, last_error FROM citizen_sync.retry_set_aside();
SELECT set_aside FROM citizen_sync.outbox_backlog;
UPDATE citizen_sync.outbox SET published_at = now();
SELECT pending, retrying, oldest_pending_age_seconds FROM citizen_sync.outbox_backlog;
SELECT error_sqlstate, unresolved FROM citizen_sync.dead_letter_summary ORDER BY 1;
-- a consistency report as consistency_check() records it
INSERT INTO citizen_sync.consistency_reports (source, checked_at, checked, missing, stale, mismatched, extra)
VALUES ('auth', now() - interval '2 hours', 10, 1, 2, 3, 4),
       ('auth', now() - interval '1 hour', 10, 0, 1, 0, 0);
SELECT source, checked, missing, stale, mismatched, extra,
       age_seconds BETWEEN 3599 AND 3700 AS one_hour_old
  FROM citizen_sync.consistency_status;
-- column names and types, as monitoring queries use them
SELECT c.relname, string_agg(a.attname || ' ' || format_type(a.atttypid, a.atttypmod), ', '
                             ORDER BY a.attnum) AS columns
  FROM pg_class c
  JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0
 WHERE c.relnamespace = 'citizen_sync'::regnamespace AND c.relkind = 'v'
 GROUP BY c.relname ORDER BY c.relname;

-- the exporter's metrics views give what the 0.1.0 exporter queries computed
SELECT sqlstate, unresolved, oldest_age_seconds >= 0 AS has_age
  FROM citizen_sync.metrics_dead_letters ORDER BY sqlstate;
SELECT count(*) AS differences FROM (
    (SELECT error_sqlstate::text AS sqlstate, sum(unresolved)::float8 AS unresolved
       FROM citizen_sync.dead_letter_summary GROUP BY error_sqlstate
     EXCEPT SELECT sqlstate, unresolved FROM citizen_sync.metrics_dead_letters)
    UNION ALL
    (SELECT sqlstate, unresolved FROM citizen_sync.metrics_dead_letters
     EXCEPT SELECT error_sqlstate::text, sum(unresolved)::float8
              FROM citizen_sync.dead_letter_summary GROUP BY error_sqlstate)) d;

------------------------------------------------------------------------------
-- Privileges
------------------------------------------------------------------------------
-- Monitoring reads aggregates, never the rows themselves: neither
-- citizen_sync_monitor nor pg_monitor may read a table of the extension.
SELECT r AS role, string_agg(c.oid::regclass::text, ', ' ORDER BY c.oid::regclass::text) AS readable_tables
  FROM unnest(ARRAY['citizen_sync_monitor', 'pg_monitor']) AS r
  LEFT JOIN pg_class c ON c.relnamespace IN ('citizen_sync'::regnamespace, 'cache'::regnamespace)
                      AND c.relkind = 'r' AND has_table_privilege(r, c.oid, 'SELECT')
 GROUP BY r ORDER BY r;
-- and citizen_sync_monitor has no other membership (pg_monitor reads settings)
SELECT count(*) AS memberships FROM pg_auth_members
 WHERE member = 'citizen_sync_monitor'::regrole;
CREATE ROLE citizen_sync_ops_plain NOLOGIN;
CREATE ROLE citizen_sync_ops_monitor NOLOGIN IN ROLE citizen_sync_monitor;
GRANT USAGE ON SCHEMA citizen_sync, cache TO citizen_sync_ops_plain;
SET ROLE citizen_sync_ops_plain;
SELECT citizen_sync.resync('citizen');
SELECT citizen_sync.resync('citizen', ARRAY[1]);
SELECT * FROM citizen_sync.source_state();
SELECT citizen_sync.heal('dbname=auth_db');
SELECT * FROM citizen_sync.consistency_check('dbname=auth_db');
SELECT * FROM citizen_sync.retry_dead_letters();
SELECT citizen_sync.purge_dead_letters(interval '0 seconds', true);
SELECT * FROM citizen_sync.retry_set_aside();
SELECT * FROM citizen_sync.citizen(1);
SELECT * FROM citizen_sync.citizen_for_critical(1, interval '1 hour');
SELECT count(*) FROM citizen_sync.sync_latency_summary;
SELECT count(*) FROM citizen_sync.outbox_backlog;
SELECT count(*) FROM citizen_sync.dead_letter_summary;
SELECT count(*) FROM citizen_sync.consistency_status;
SELECT count(*) FROM citizen_sync.worker_up;
RESET ROLE;
-- citizen_sync_monitor (the exporter's role) reads every monitoring view
-- and the exporter's metrics views
SET ROLE citizen_sync_ops_monitor;
SELECT count(*) >= 0 AS ok FROM citizen_sync.worker_stats;
SELECT count(*) >= 0 AS ok FROM citizen_sync.consumer_stats;
SELECT count(*) >= 0 AS ok FROM citizen_sync.consumer_lag;
SELECT count(*) >= 0 AS ok FROM citizen_sync.worker_up;
SELECT count(*) >= 0 AS ok FROM citizen_sync.sync_latency;
SELECT count(*) >= 0 AS ok FROM citizen_sync.sync_latency_summary;
SELECT count(*) >= 0 AS ok FROM citizen_sync.outbox_backlog;
SELECT count(*) >= 0 AS ok FROM citizen_sync.dead_letter_summary;
SELECT count(*) >= 0 AS ok FROM citizen_sync.consistency_status;
SELECT count(*) >= 0 AS ok FROM citizen_sync.metrics_workers;
SELECT count(*) >= 0 AS ok FROM citizen_sync.metrics_consumers;
SELECT count(*) >= 0 AS ok FROM citizen_sync.metrics_latency;
SELECT count(*) >= 0 AS ok FROM citizen_sync.metrics_latency_summary;
SELECT count(*) >= 0 AS ok FROM citizen_sync.metrics_publishers;
SELECT sqlstate, unresolved FROM citizen_sync.metrics_dead_letters ORDER BY sqlstate;
SELECT citizen_sync.fresh_as_of() IS NULL AS fresh_as_of_callable;
-- but no personal data and no secret
SELECT count(*) FROM citizen_sync.outbox;
SELECT count(*) FROM citizen_sync.dead_letters;
SELECT count(*) FROM citizen_sync.consistency_reports;
SELECT count(*) FROM cache.citizen_refs;
SELECT count(*) FROM cache.processed_events;
SHOW citizen_sync.kafka_properties;
SELECT count(*) AS visible FROM pg_settings WHERE name = 'citizen_sync.kafka_properties';
-- and may not change anything
SELECT * FROM citizen_sync.retry_dead_letters();
SELECT citizen_sync.resync('citizen');
RESET ROLE;
-- nothing was changed by the refused calls
SELECT count(*) AS outbox_rows FROM citizen_sync.outbox;
SELECT count(*) AS dead_letters FROM citizen_sync.dead_letters;

------------------------------------------------------------------------------
-- Clean up
------------------------------------------------------------------------------
DROP OWNED BY citizen_sync_ops_plain;
DROP ROLE citizen_sync_ops_plain, citizen_sync_ops_monitor;
SELECT citizen_sync.uncapture('public.ops_citizens');
DROP TABLE public.ops_citizens;
TRUNCATE cache.citizen_refs, cache.processed_events;
TRUNCATE citizen_sync.dead_letters RESTART IDENTITY;
TRUNCATE citizen_sync.outbox RESTART IDENTITY;
TRUNCATE citizen_sync.aggregate_versions;
TRUNCATE citizen_sync.consistency_reports RESTART IDENTITY;
