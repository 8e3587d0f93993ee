--
-- apply_invalid: every class of bad input is refused with a clear error and
-- its own SQLSTATE, nothing is half-applied, and strings that look like SQL
-- injection are stored verbatim.
--
-- Each refused call is followed by \echo :SQLSTATE, which prints the error's
-- SQLSTATE (VERBOSITY verbose would also print the C source line, which
-- changes whenever the code is edited).
--
TRUNCATE cache.citizen_refs, cache.processed_events;

-- A valid event to start from; each case breaks one thing in it.
CREATE FUNCTION pg_temp.good(eid text DEFAULT 'evt_bad', ver bigint DEFAULT 5,
                             cid bigint DEFAULT 500)
RETURNS jsonb LANGUAGE sql AS $$
    SELECT jsonb_build_object(
        'event_type', 'citizen.updated', 'event_id', eid, 'event_version', ver,
        'event_timestamp', '2026-11-25T10:15:00.123Z',
        'data', jsonb_build_object('citizen_id', cid, 'snapshot',
                    jsonb_build_object('id', cid, 'name', 'Maria Garcia',
                                       'email', 'maria@example.gov', 'phone', '+1-555-0199',
                                       'address', '12 Elm St', 'city', 'Springfield',
                                       'postal_code', '12345', 'email_verified', true,
                                       'identity_verified', false)))
$$;

-- Some state that must survive every refused call unchanged.
SELECT citizen_sync.apply_event(pg_temp.good('evt_seed_1', 1, 500)::text);
SELECT citizen_sync.apply_event(pg_temp.good('evt_seed_2', 1, 501)::text);
CREATE TEMP TABLE cache_before AS SELECT * FROM cache.citizen_refs;
CREATE TEMP TABLE processed_before AS SELECT * FROM cache.processed_events;

------------------------------------------------------------------------------
-- Not a JSON object
------------------------------------------------------------------------------
SELECT citizen_sync.apply_event('not json');
\echo :SQLSTATE
SELECT citizen_sync.apply_event('');
\echo :SQLSTATE
SELECT citizen_sync.apply_event('{"event_type": "citizen.updated", "event_id": "evt_bad"');
\echo :SQLSTATE
-- trailing garbage after a valid event
SELECT citizen_sync.apply_event(pg_temp.good()::text || ' x');
\echo :SQLSTATE
SELECT citizen_sync.apply_event(pg_temp.good()::text || pg_temp.good()::text);
\echo :SQLSTATE
-- JSON, but not an object
SELECT citizen_sync.apply_event(jsonb_build_array(pg_temp.good())::text);
\echo :SQLSTATE
SELECT citizen_sync.apply_event('["citizen.updated"]');
\echo :SQLSTATE
-- not JSON: single quotes, trailing comma, comments
SELECT citizen_sync.apply_event(replace(pg_temp.good()::text, '"', ''''));
\echo :SQLSTATE
SELECT citizen_sync.apply_event(left(pg_temp.good()::text, -1) || ', }');
\echo :SQLSTATE
SELECT citizen_sync.apply_event('/* c */ ' || pg_temp.good()::text);
\echo :SQLSTATE

------------------------------------------------------------------------------
-- Missing required fields
------------------------------------------------------------------------------
SELECT citizen_sync.apply_event((pg_temp.good() - 'event_type')::text);
\echo :SQLSTATE
SELECT citizen_sync.apply_event((pg_temp.good() - 'event_id')::text);
\echo :SQLSTATE
SELECT citizen_sync.apply_event((pg_temp.good() - 'event_version')::text);
\echo :SQLSTATE
SELECT citizen_sync.apply_event((pg_temp.good() - 'data')::text);
\echo :SQLSTATE
SELECT citizen_sync.apply_event((pg_temp.good() #- '{data,citizen_id}')::text);
\echo :SQLSTATE
SELECT citizen_sync.apply_event((pg_temp.good() #- '{data,snapshot}')::text);
\echo :SQLSTATE
SELECT citizen_sync.apply_event((pg_temp.good() #- '{data,snapshot,id}')::text);
\echo :SQLSTATE
SELECT citizen_sync.apply_event((pg_temp.good() #- '{data,snapshot,name}')::text);
\echo :SQLSTATE
SELECT citizen_sync.apply_event((pg_temp.good() #- '{data,snapshot,email}')::text);
\echo :SQLSTATE
-- JSON null counts as missing
SELECT citizen_sync.apply_event(jsonb_set(pg_temp.good(), '{data,snapshot,name}', 'null')::text);
\echo :SQLSTATE
SELECT citizen_sync.apply_event(jsonb_set(pg_temp.good(), '{event_version}', 'null')::text);
\echo :SQLSTATE
-- empty strings where a value is required
SELECT citizen_sync.apply_event(jsonb_set(pg_temp.good(), '{event_id}', '""')::text);
\echo :SQLSTATE
SELECT citizen_sync.apply_event(jsonb_set(pg_temp.good(), '{data,snapshot,email}', '""')::text);
\echo :SQLSTATE

------------------------------------------------------------------------------
-- Wrong types
------------------------------------------------------------------------------
SELECT citizen_sync.apply_event(jsonb_set(pg_temp.good(), '{event_version}', '"5"')::text);
\echo :SQLSTATE
SELECT citizen_sync.apply_event(jsonb_set(pg_temp.good(), '{event_version}', '1.5')::text);
\echo :SQLSTATE
SELECT citizen_sync.apply_event(jsonb_set(pg_temp.good(), '{event_version}', '5.0')::text);
\echo :SQLSTATE
-- (built as text: jsonb would normalise 1e2 to 100)
SELECT citizen_sync.apply_event(replace(pg_temp.good()::text, '"event_version": 5', '"event_version": 1e2'));
\echo :SQLSTATE
SELECT citizen_sync.apply_event(jsonb_set(pg_temp.good(), '{event_id}', '123')::text);
\echo :SQLSTATE
SELECT citizen_sync.apply_event(jsonb_set(pg_temp.good(), '{event_type}', 'true')::text);
\echo :SQLSTATE
SELECT citizen_sync.apply_event(jsonb_set(pg_temp.good(), '{data}', '[500]')::text);
\echo :SQLSTATE
SELECT citizen_sync.apply_event(jsonb_set(pg_temp.good(), '{data,citizen_id}', '"500"')::text);
\echo :SQLSTATE
SELECT citizen_sync.apply_event(jsonb_set(pg_temp.good(), '{data,snapshot}', '"Maria"')::text);
\echo :SQLSTATE
SELECT citizen_sync.apply_event(jsonb_set(pg_temp.good(), '{data,snapshot,name}', 'true')::text);
\echo :SQLSTATE
SELECT citizen_sync.apply_event(jsonb_set(pg_temp.good(), '{data,snapshot,phone}', '5550199')::text);
\echo :SQLSTATE
SELECT citizen_sync.apply_event(jsonb_set(pg_temp.good(), '{data,snapshot,email_verified}', '"true"')::text);
\echo :SQLSTATE
SELECT citizen_sync.apply_event(jsonb_set(pg_temp.good(), '{data,snapshot,identity_verified}', '1')::text);
\echo :SQLSTATE

------------------------------------------------------------------------------
-- Out-of-range numbers
------------------------------------------------------------------------------
SELECT citizen_sync.apply_event(jsonb_set(pg_temp.good(), '{event_version}', '-1')::text);
\echo :SQLSTATE
SELECT citizen_sync.apply_event(jsonb_set(pg_temp.good(), '{event_version}', '0')::text);
\echo :SQLSTATE
-- one past the largest int64, and far beyond
SELECT citizen_sync.apply_event(jsonb_set(pg_temp.good(), '{event_version}', '9223372036854775808')::text);
\echo :SQLSTATE
SELECT citizen_sync.apply_event(jsonb_set(pg_temp.good(), '{event_version}', '-9223372036854775809')::text);
\echo :SQLSTATE
SELECT citizen_sync.apply_event(jsonb_set(pg_temp.good(), '{event_version}', '123456789012345678901234567890')::text);
\echo :SQLSTATE
SELECT citizen_sync.apply_event(jsonb_set(jsonb_set(pg_temp.good(), '{data,citizen_id}', '0'),
                                          '{data,snapshot,id}', '0')::text);
\echo :SQLSTATE
SELECT citizen_sync.apply_event(jsonb_set(jsonb_set(pg_temp.good(), '{data,citizen_id}', '-500'),
                                          '{data,snapshot,id}', '-500')::text);
\echo :SQLSTATE

------------------------------------------------------------------------------
-- data.citizen_id and data.snapshot.id disagree (also on a delete)
------------------------------------------------------------------------------
SELECT citizen_sync.apply_event(jsonb_set(pg_temp.good(), '{data,snapshot,id}', '501')::text);
\echo :SQLSTATE
SELECT citizen_sync.apply_event('{"event_type": "citizen.deleted", "event_id": "evt_bad", "event_version": 9,
  "data": {"citizen_id": 500, "snapshot": {"id": 501}}}');
\echo :SQLSTATE

------------------------------------------------------------------------------
-- Size and depth limits
------------------------------------------------------------------------------
SHOW citizen_sync.max_event_size;
SET citizen_sync.max_event_size = '1kB';
SELECT octet_length(jsonb_set(pg_temp.good(), '{data,snapshot,address}', to_jsonb(repeat('a', 1000)))::text);
SELECT citizen_sync.apply_event(jsonb_set(pg_temp.good(), '{data,snapshot,address}', to_jsonb(repeat('a', 1000)))::text);
\echo :SQLSTATE
-- the GUC refuses values below its minimum of 1kB
SET citizen_sync.max_event_size = 1000;
\echo :SQLSTATE
SET citizen_sync.max_event_size = '0';
\echo :SQLSTATE
SHOW citizen_sync.max_event_size;
RESET citizen_sync.max_event_size;
-- an unknown field nested 100 levels deep
SELECT citizen_sync.apply_event(left(pg_temp.good()::text, -1) || ', "deep": '
                                || repeat('{"a": ', 99) || '[1]' || repeat('}', 99) || '}');
\echo :SQLSTATE
SELECT citizen_sync.apply_event(left(pg_temp.good()::text, -1) || ', "deep": '
                                || repeat('[', 100) || repeat(']', 100) || '}');
\echo :SQLSTATE

------------------------------------------------------------------------------
-- Strings: NUL, length, encoding
------------------------------------------------------------------------------
-- \u0000 inside a string (text cannot hold NUL)
SELECT citizen_sync.apply_event(replace(pg_temp.good()::text, 'Maria Garcia', 'Maria\u0000Garcia'));
\echo :SQLSTATE
SELECT citizen_sync.apply_event(replace(pg_temp.good()::text, 'evt_bad', 'evt\u0000bad'));
\echo :SQLSTATE
-- 256 characters of name (limit 255), and too long for the other columns
SELECT citizen_sync.apply_event(jsonb_set(pg_temp.good(), '{data,snapshot,name}', to_jsonb(repeat('n', 256)))::text);
\echo :SQLSTATE
SELECT citizen_sync.apply_event(jsonb_set(pg_temp.good(), '{data,snapshot,name}', to_jsonb(repeat('é', 256)))::text);
\echo :SQLSTATE
SELECT citizen_sync.apply_event(jsonb_set(pg_temp.good(), '{data,snapshot,email}', to_jsonb(repeat('e', 256)))::text);
\echo :SQLSTATE
SELECT citizen_sync.apply_event(jsonb_set(pg_temp.good(), '{data,snapshot,phone}', to_jsonb(repeat('5', 51)))::text);
\echo :SQLSTATE
SELECT citizen_sync.apply_event(jsonb_set(pg_temp.good(), '{data,snapshot,city}', to_jsonb(repeat('c', 101)))::text);
\echo :SQLSTATE
SELECT citizen_sync.apply_event(jsonb_set(pg_temp.good(), '{data,snapshot,postal_code}', to_jsonb(repeat('1', 21)))::text);
\echo :SQLSTATE
SELECT citizen_sync.apply_event(jsonb_set(pg_temp.good(), '{event_id}', to_jsonb(repeat('i', 201)))::text);
\echo :SQLSTATE

------------------------------------------------------------------------------
-- event_timestamp: optional, but ISO 8601 when present
------------------------------------------------------------------------------
SELECT citizen_sync.apply_event(jsonb_set(pg_temp.good(), '{event_timestamp}', '"yesterday"')::text);
\echo :SQLSTATE
SELECT citizen_sync.apply_event(jsonb_set(pg_temp.good(), '{event_timestamp}', '"2026-13-01T00:00:00Z"')::text);
\echo :SQLSTATE
SELECT citizen_sync.apply_event(jsonb_set(pg_temp.good(), '{event_timestamp}', '"2026-02-29T10:15:00Z"')::text);
\echo :SQLSTATE
SELECT citizen_sync.apply_event(jsonb_set(pg_temp.good(), '{event_timestamp}', '"2026-11-25T24:00:00Z"')::text);
\echo :SQLSTATE
SELECT citizen_sync.apply_event(jsonb_set(pg_temp.good(), '{event_timestamp}', '"2026-11-25T10:15"')::text);
\echo :SQLSTATE
SELECT citizen_sync.apply_event(jsonb_set(pg_temp.good(), '{event_timestamp}', '"2026-11-25T10:15:00.123Zjunk"')::text);
\echo :SQLSTATE
SELECT citizen_sync.apply_event(jsonb_set(pg_temp.good(), '{event_timestamp}', '1764065700')::text);
\echo :SQLSTATE

------------------------------------------------------------------------------
-- Nothing above was applied, not even in part
------------------------------------------------------------------------------
SELECT count(*) AS cache_rows, count(*) FILTER (WHERE event_version = 1) AS at_version_1
  FROM cache.citizen_refs;
(SELECT * FROM cache_before EXCEPT SELECT * FROM cache.citizen_refs)
UNION ALL
(SELECT * FROM cache.citizen_refs EXCEPT SELECT * FROM cache_before);
(SELECT * FROM processed_before EXCEPT SELECT * FROM cache.processed_events)
UNION ALL
(SELECT * FROM cache.processed_events EXCEPT SELECT * FROM processed_before);

------------------------------------------------------------------------------
-- apply_events(): one bad element among good ones applies nothing and names
-- its position
------------------------------------------------------------------------------
SELECT * FROM citizen_sync.apply_events(ARRAY[
    pg_temp.good('evt_batch_1', 2, 500)::text,
    pg_temp.good('evt_batch_2', 2, 501)::text,
    jsonb_set(pg_temp.good('evt_batch_3', 3, 500), '{event_version}', '"3"')::text,
    pg_temp.good('evt_batch_4', 4, 500)::text]);
\echo :SQLSTATE
SELECT * FROM citizen_sync.apply_events(ARRAY[
    pg_temp.good('evt_batch_1', 2, 500)::text,
    NULL]);
\echo :SQLSTATE
SELECT * FROM citizen_sync.apply_events(ARRAY[
    pg_temp.good('evt_batch_1', 2, 500)::text,
    pg_temp.good('evt_batch_2', 2, 501)::text,
    '[]']);
\echo :SQLSTATE
SELECT count(*) AS batch_ids_recorded FROM cache.processed_events WHERE event_id LIKE 'evt_batch_%';
SELECT citizen_id, event_version FROM cache.citizen_refs ORDER BY citizen_id;
-- a failed call inside a transaction leaves it aborted: the caller decides
BEGIN;
SELECT citizen_sync.apply_event(pg_temp.good('evt_tx_1', 2, 500)::text);
SELECT citizen_sync.apply_event('{');
ROLLBACK;
SELECT citizen_id, event_version FROM cache.citizen_refs ORDER BY citizen_id;
SELECT count(*) AS tx_ids_recorded FROM cache.processed_events WHERE event_id = 'evt_tx_1';

------------------------------------------------------------------------------
-- Strings that look like SQL are data: stored verbatim
------------------------------------------------------------------------------
CREATE TEMP TABLE tricky (cid bigint, name text, email text, address text, city text,
                          postal_code text, eid text);
INSERT INTO tricky VALUES
  (601, 'Robert''); DROP TABLE cache.citizen_refs;--', 'bobby$$@example.gov',
        '1 Main St $$; SELECT pg_sleep(10); $$', 'Dollar $q$ City', 'x''y', 'evt''; DROP TABLE x;--'),
  (602, 'Back\slash \\ \n \t "quoted"', 'quote"s''@example.gov',
        E'line1\nline2\ttab', 'C:\Path', '%_*', E'evt_"\\'),
  (603, 'José Müller-Łukasiewicz 王小明 👩‍💻', 'zoë@exämple.gov',
        'Straße 1, 東京 🏠', 'Zürich', '8000', 'evt_ünïcode_🎉'),
  (604, repeat('é', 255), repeat('@', 255), repeat('🏠', 2000), repeat('ß', 100),
        repeat('9', 20), repeat('€', 200)),
  (605, ' ', '''', '', '-- comment', '/*', 'evt_%s%n%x');

SELECT t.cid, citizen_sync.apply_event(jsonb_build_object(
         'event_type', 'citizen.created', 'event_id', t.eid, 'event_version', 1,
         'data', jsonb_build_object('citizen_id', t.cid, 'snapshot',
                   jsonb_build_object('id', t.cid, 'name', t.name, 'email', t.email,
                                      'address', t.address, 'city', t.city,
                                      'postal_code', t.postal_code)))::text) AS result
  FROM tricky t ORDER BY t.cid;
SELECT t.cid,
       c.name = t.name AS name_ok, c.email = t.email AS email_ok,
       c.address = t.address AS address_ok, c.city = t.city AS city_ok,
       c.postal_code = t.postal_code AS postal_ok,
       EXISTS (SELECT 1 FROM cache.processed_events p WHERE p.event_id = t.eid) AS event_id_ok
  FROM tricky t LEFT JOIN cache.citizen_refs c ON c.citizen_id = t.cid
 ORDER BY t.cid;
SELECT citizen_id, name, email, city FROM cache.citizen_refs WHERE citizen_id BETWEEN 601 AND 602
 ORDER BY citizen_id;
-- the cache table is still there
SELECT count(*) FROM cache.citizen_refs;

TRUNCATE cache.citizen_refs, cache.processed_events;

-- top-level values that are JSON but not an object
SELECT citizen_sync.apply_event('42');
\echo :SQLSTATE
SELECT citizen_sync.apply_event('null');
\echo :SQLSTATE
SELECT citizen_sync.apply_event('"citizen.created"');
\echo :SQLSTATE
