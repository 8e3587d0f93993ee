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
-- (data.snapshot.id may be absent since 0.2.0: the key is data.citizen_id;
-- when present it must agree, below)
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
-- the boundary: the event object is level 1, so 32 more levels make 33
-- (32 are accepted: see the end of this file)
SELECT citizen_sync.apply_event(left(pg_temp.good()::text, -1) || ', "deep": '
                                || repeat('[', 32) || repeat(']', 32) || '}');
\echo :SQLSTATE
SELECT citizen_sync.apply_event(left(pg_temp.good()::text, -1) || ', "deep": '
                                || repeat('{"a": ', 31) || '{}' || repeat('}', 31) || '}');
\echo :SQLSTATE

------------------------------------------------------------------------------
-- Strings: NUL, length, encoding
------------------------------------------------------------------------------
-- \u0000 inside a string (text cannot hold NUL)
SELECT citizen_sync.apply_event(replace(pg_temp.good()::text, 'Maria Garcia', 'Maria\u0000Garcia'));
\echo :SQLSTATE
SELECT citizen_sync.apply_event(replace(pg_temp.good()::text, 'evt_bad', 'evt\u0000bad'));
\echo :SQLSTATE
-- \u0000 in a key: json-c would cut the key at the NUL, and the cut key
-- would override the real one (Mallory for Alice, an update turned into a
-- delete); any \u0000, in a key or in a value we do not read, is refused
-- (22P05, as PostgreSQL's jsonb does)
SELECT citizen_sync.apply_event(replace(pg_temp.good()::text, '"name": "Maria Garcia"',
                                        '"name": "Alice", "name\u0000": "Mallory"'));
\echo :SQLSTATE
SELECT citizen_sync.apply_event(replace(pg_temp.good()::text, '"event_id"',
                                        '"event_type\u0000": "citizen.deleted", "event_id"'));
\echo :SQLSTATE
SELECT citizen_sync.apply_event(left(pg_temp.good()::text, -1) || ', "note": "a\u0000b"}');
\echo :SQLSTATE
SELECT citizen_sync.apply_event(left(pg_temp.good()::text, -1) || ', "x": [{"\u0000": 1}]}');
\echo :SQLSTATE
-- PostgreSQL's own parser, for reference
SELECT '{"name\u0000": 1}'::jsonb;
\echo :SQLSTATE
-- a raw NUL byte cannot reach apply_event (text cannot hold it); from Kafka
-- it is refused like invalid UTF-8 (22021): see test/t/104_poison.pl

-- lone or mismatched surrogate escapes (22P02, as PostgreSQL's json parser)
SELECT citizen_sync.apply_event(replace(pg_temp.good()::text, 'Maria Garcia', 'Maria \ud876 Garcia'));
\echo :SQLSTATE
SELECT citizen_sync.apply_event(replace(pg_temp.good()::text, 'Maria Garcia', 'Maria Garcia\ud876'));
\echo :SQLSTATE
SELECT citizen_sync.apply_event(replace(pg_temp.good()::text, 'Maria Garcia', 'Maria \udc00 Garcia'));
\echo :SQLSTATE
SELECT citizen_sync.apply_event(replace(pg_temp.good()::text, 'Maria Garcia', 'Maria \ud876\ud876 Garcia'));
\echo :SQLSTATE
SELECT citizen_sync.apply_event(replace(pg_temp.good()::text, 'Maria Garcia', 'Maria \uDBFF\u0041 Garcia'));
\echo :SQLSTATE
SELECT citizen_sync.apply_event(replace(pg_temp.good()::text, 'Maria Garcia', 'Maria \ud876\\udc00 Garcia'));
\echo :SQLSTATE
SELECT citizen_sync.apply_event(replace(pg_temp.good()::text, 'Maria Garcia', 'Maria \udc00\ud876 Garcia'));
\echo :SQLSTATE
SELECT citizen_sync.apply_event(left(pg_temp.good()::text, -1) || ', "\ud876": 1}');
\echo :SQLSTATE
SELECT '"\ud876"'::jsonb;
\echo :SQLSTATE

------------------------------------------------------------------------------
-- Duplicate keys among the fields the parser reads (22030): which one wins
-- differs between JSON parsers, so the event is ambiguous
------------------------------------------------------------------------------
SELECT citizen_sync.apply_event(replace(pg_temp.good()::text, '"name": "Maria Garcia"',
                                        '"name": "Alice", "name": "Mallory"'));
\echo :SQLSTATE
-- the same key spelled with an escape
SELECT citizen_sync.apply_event(replace(pg_temp.good()::text, '"name": "Maria Garcia"',
                                        '"name": "Alice", "nam\u0065": "Mallory"'));
\echo :SQLSTATE
SELECT citizen_sync.apply_event(replace(pg_temp.good()::text, '"event_id"',
                                        '"event_type": "citizen.deleted", "event_id"'));
\echo :SQLSTATE
SELECT citizen_sync.apply_event(replace(pg_temp.good()::text, '"citizen_id": 500',
                                        '"citizen_id": 500, "citizen_id": 501'));
\echo :SQLSTATE
SELECT citizen_sync.apply_event(left(pg_temp.good()::text, -1) || ', "data": {"citizen_id": 502}}');
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

------------------------------------------------------------------------------
-- What was sent is what is stored: escaped surrogate pairs, compared with
-- PostgreSQL's own jsonb decoding and with chr(), for the first, last and
-- boundary code points of every supplementary plane (json-c alone turned
-- U+xD800..U+xDFFF into U+FFFD)
------------------------------------------------------------------------------
CREATE TEMP TABLE astral AS
SELECT row_number() OVER (ORDER BY cp) + 1000 AS cid, cp,
       format('\u%s\u%s', to_hex(55296 + ((cp - 65536) >> 10)),
              upper(to_hex(56320 + ((cp - 65536) & 1023)))) AS esc
  FROM (SELECT plane * 65536 + low AS cp
          FROM generate_series(1, 16) plane,
               unnest(ARRAY[0, 55296, 56319, 56320, 57343, 65535]) low
        UNION VALUES (128512), (129489)) c;
SELECT count(*) AS code_points, min(esc) AS first_escape, max(esc) AS last_escape FROM astral;
SELECT count(*) AS applied
  FROM astral a,
       citizen_sync.apply_event(replace(pg_temp.good('evt_astral_' || a.cp, 1, a.cid)::text,
                                        'Maria Garcia', 'A' || a.esc || 'Z')) r
 WHERE r = 'applied';
SELECT a.cp, a.esc, encode(convert_to(c.name, 'UTF8'), 'hex') AS stored,
       encode(convert_to(('"A' || a.esc || 'Z"')::jsonb #>> '{}', 'UTF8'), 'hex') AS jsonb
  FROM astral a LEFT JOIN cache.citizen_refs c ON c.citizen_id = a.cid
 WHERE c.name IS DISTINCT FROM ('"A' || a.esc || 'Z"')::jsonb #>> '{}'
    OR c.name IS DISTINCT FROM 'A' || chr(a.cp) || 'Z';
SELECT a.esc, c.name, encode(convert_to(c.name, 'UTF8'), 'hex') AS utf8
  FROM astral a JOIN cache.citizen_refs c ON c.citizen_id = a.cid
 WHERE a.cp IN (65536, 186368, 1114111, 128512);
-- escapes in keys are decoded too, and an escaped backslash is not an escape
SELECT citizen_sync.apply_event(replace(replace(pg_temp.good('evt_keys', 1, 720)::text,
                                        '"name": "Maria Garcia"', '"n\u0061me": "x\\u0000y\\ud800"'),
                                '"city"', '"\ud83d\ude00": "\ud83d\ude00", "city"'));
SELECT name, name = E'x\\u0000y\\ud800' AS verbatim FROM cache.citizen_refs WHERE citizen_id = 720;
-- duplicates of fields the parser does not read are allowed (the last wins,
-- as in jsonb), also a read field's name inside an unknown object
SELECT citizen_sync.apply_event(left(pg_temp.good('evt_dup_ok', 1, 721)::text, -1)
                                || ', "x": 1, "x": 2, "other": {"name": "a", "name": "b"}}');
-- exactly 32 levels of nesting are accepted (the event object is level 1)
SELECT citizen_sync.apply_event(left(pg_temp.good('evt_deep_32a', 1, 722)::text, -1) || ', "deep": '
                                || repeat('[', 31) || '1' || repeat(']', 31) || '}');
SELECT citizen_sync.apply_event(left(pg_temp.good('evt_deep_32b', 1, 723)::text, -1) || ', "deep": '
                                || repeat('{"a": ', 30) || '{"b": "s"}' || repeat('}', 30) || '}');
