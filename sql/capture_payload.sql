--
-- capture_payload: the C capture trigger writes, for every column type, the
-- snapshot to_jsonb() of the row gives (published columns only), byte for
-- byte, and the payload emit_change() (resync()) writes.
--
-- A table with many column types (numeric, floats with infinities,
-- timestamptz in a non-UTC zone, intervals, arrays with NULLs and two
-- dimensions, json, jsonb, domains, a composite, an enum, a range, bytea,
-- a TOASTed text, NULLs everywhere); INSERT, UPDATEs (one that changes
-- only bytes, 1.0 -> 1.00, writes nothing, as jsonb equality says), DELETE.
\set SHOW_CONTEXT never
SET client_min_messages = warning;
SET TimeZone = 'America/Sao_Paulo';
SET DateStyle = 'SQL, DMY';
SET IntervalStyle = 'postgres_verbose';
SET extra_float_digits = 0;

CREATE DOMAIN public.cp_positive AS numeric(12, 3) CHECK (VALUE > 0);
CREATE DOMAIN public.cp_tags AS text[];
CREATE TYPE public.cp_point AS (x float8, label text);
CREATE TYPE public.cp_mood AS ENUM ('sad', 'ok', 'happy');
CREATE TABLE public.cp_all (
    id        bigint PRIMARY KEY,
    i2        smallint,
    i4        integer,
    num       numeric,
    num_s     numeric(10, 2),
    f4        real,
    f8        double precision,
    t         text,
    vc        varchar(20),
    ch        char(5),
    b         boolean,
    d         date,
    tm        time,
    tmtz      timetz,
    ts        timestamp,
    tstz      timestamptz,
    iv        interval,
    by        bytea,
    u         uuid,
    ip        inet,
    js        json,
    jb        jsonb,
    ia        integer[],
    ta        text[],
    na2       numeric[][],
    tsa       timestamptz[],
    pos       public.cp_positive,
    tags      public.cp_tags,
    pt        public.cp_point,
    mood      public.cp_mood,
    rng       int4range,
    big       text,
    secret    text
);
-- all columns published but secret
SELECT citizen_sync.capture('public.cp_all', 'cp',
       ARRAY(SELECT attname::text FROM pg_attribute
              WHERE attrelid = 'public.cp_all'::regclass AND attnum > 0 AND NOT attisdropped
                AND attname <> 'secret'));
SELECT COALESCE(max(id), 0) AS start FROM citizen_sync.outbox \gset

INSERT INTO public.cp_all VALUES
  (1, -32768, 2147483647, 123456789012345678901234567890.000000000000000001, 1.10,
   'Infinity', '-Infinity', E'quote " backslash \\ tab \t newline \n nul-free \u00e9 \U0001F600',
   'varchar', 'ab', true, '2026-11-25', '23:59:59.999999', '10:00:00+05:30',
   '2026-11-25 10:15:00.123456', '2026-11-25 10:15:00.123456+00', '1 year 2 months 3 days 04:05:06.789',
   '\x00ff10', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '192.168.0.1/24',
   '{"b": 1, "a": [1, 2.50, "x"], "a": "dup kept in json"}', '{"z": null, "a": 1.50}',
   '{1,NULL,3}', '{"a b",NULL,"\"q\""}', '{{1.5,2},{NULL,4.00}}',
   '{"2026-01-01 00:00:00+00",NULL}', 12.5, '{x,y}', ROW(-0.0, 'pt'), 'happy', '[1,10)',
   repeat('long text ', 20000), 'hidden'),
  (2, NULL, NULL, 'NaN', NULL, 'NaN', 1e-300, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
   NULL, NULL, NULL, NULL, NULL, NULL, 'null', 'null', '{}', '{}', NULL, NULL, NULL, NULL,
   ROW(NULL, NULL), NULL, 'empty', NULL, NULL),
  (3, 0, 0, 0.000, 0, 0, -0.0, '', '', '', false, 'infinity', '00:00', '00:00+00',
   '-infinity', 'infinity', '0', '', '00000000-0000-0000-0000-000000000000', '::1',
   '[]', '[]', '{}', '{""}', '{{0}}', '{}', 0.001, '{}', ROW(1e15, ''), 'sad', '(,)',
   '', NULL);
-- what to_jsonb() says of the rows as inserted
CREATE TEMP TABLE cp_inserted AS SELECT c.id, to_jsonb(c) - 'secret' AS j FROM public.cp_all c;
UPDATE public.cp_all SET num_s = 2.20, tstz = tstz + interval '1 second', jb = jb || '{"n": 2}'
 WHERE id = 1;
UPDATE public.cp_all SET secret = 'rotated';              -- unpublished only: nothing
UPDATE public.cp_all SET num = 0.0 WHERE id = 3;          -- 0.000 -> 0.0: same JSON value
UPDATE public.cp_all SET big = big || '!' WHERE id = 1;   -- a TOASTed column changes
DELETE FROM public.cp_all WHERE id = 2;

-- The events: one per real change.
SELECT o.id - :start AS n, o.aggregate_id, o.event_type,
       o.payload -> 'data' ? 'snapshot' AS has_snapshot,
       jsonb_typeof(o.payload -> 'data' -> 'cp_id') AS key_type
  FROM citizen_sync.outbox o WHERE o.id > :start ORDER BY o.id;

-- Each created event's snapshot is to_jsonb() of the row as inserted,
-- without secret, compared as text (so 1.0 and 1.00 count as different).
SELECT i.id, (o.payload -> 'data' -> 'snapshot')::text = i.j::text AS identical
  FROM cp_inserted i
  JOIN citizen_sync.outbox o ON o.aggregate_type = 'cp' AND o.aggregate_id = i.id::text
                            AND o.event_type = 'created'
 ORDER BY i.id;
-- Each row's last snapshot is to_jsonb() of the row now: as text for row 1
-- (updated twice); row 3's 0.000 -> 0.0 wrote nothing (equal as jsonb), so
-- its last snapshot still says 0.000: equal as jsonb, not as text.
SELECT c.id, s.snap::text = (to_jsonb(c) - 'secret')::text AS identical_text,
       s.snap = to_jsonb(c) - 'secret' AS equal_jsonb
  FROM public.cp_all c,
       LATERAL (SELECT o.payload -> 'data' -> 'snapshot' AS snap FROM citizen_sync.outbox o
                 WHERE o.aggregate_type = 'cp' AND o.aggregate_id = c.id::text
                 ORDER BY o.id DESC LIMIT 1) s
 ORDER BY c.id;
-- the snapshot keeps the TOASTed value whole
SELECT length(o.payload -> 'data' -> 'snapshot' ->> 'big') AS big_length
  FROM citizen_sync.outbox o WHERE o.aggregate_type = 'cp' AND o.aggregate_id = '1'
 ORDER BY o.id DESC LIMIT 1;

-- The trigger's payload has the shape emit_change()'s has: same keys, same
-- timestamp format, version a JSON integer.
SELECT ARRAY(SELECT jsonb_object_keys(o.payload) ORDER BY 1) AS payload_keys,
       ARRAY(SELECT jsonb_object_keys(o.payload -> 'data') ORDER BY 1) AS data_keys,
       o.payload ->> 'event_timestamp' ~ '^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$' AS timestamp_format,
       jsonb_typeof(o.payload -> 'event_version') AS version_type
  FROM citizen_sync.outbox o WHERE o.id > :start ORDER BY o.id LIMIT 1;
-- resync() (emit_change()) writes the same data as the trigger (row 3: the
-- current 0.0, see above)
SELECT citizen_sync.resync('cp', ARRAY['1', '3']) AS events_written;
SELECT r.aggregate_id,
       (r.payload -> 'data')::text = (t.payload -> 'data')::text AS same_data
  FROM citizen_sync.outbox r
  JOIN LATERAL (SELECT o.payload FROM citizen_sync.outbox o
                 WHERE o.aggregate_type = 'cp' AND o.aggregate_id = r.aggregate_id AND o.id < r.id
                 ORDER BY o.id DESC LIMIT 1) t ON true
 WHERE r.aggregate_type = 'cp' AND r.id > (SELECT max(id) - 2 FROM citizen_sync.outbox)
 ORDER BY r.aggregate_id;

-- A key change is refused; a NULL key is impossible with a primary key, but a
-- table without one: refused as in 0.1.0.
UPDATE public.cp_all SET id = 4 WHERE id = 3;
CREATE TABLE public.cp_nokey (id text, v int);
SELECT citizen_sync.capture('public.cp_nokey', 'cp_nokey');
INSERT INTO public.cp_nokey VALUES (NULL, 1);
\echo :SQLSTATE
-- columns added later: published by a capture of all columns at once (the
-- trigger's cached column list follows the table)
INSERT INTO public.cp_nokey VALUES ('k', 1);
ALTER TABLE public.cp_nokey ADD COLUMN added text DEFAULT 'new';
INSERT INTO public.cp_nokey VALUES ('k2', 2);
SELECT o.aggregate_id, o.payload -> 'data' -> 'snapshot' AS snapshot
  FROM citizen_sync.outbox o WHERE o.aggregate_type = 'cp_nokey' ORDER BY o.id;

SELECT citizen_sync.uncapture('public.cp_all'), citizen_sync.uncapture('public.cp_nokey');
DROP TABLE public.cp_all, public.cp_nokey;
DROP TYPE public.cp_point, public.cp_mood;
DROP DOMAIN public.cp_positive, public.cp_tags;
RESET TimeZone;
RESET DateStyle;
RESET IntervalStyle;
RESET extra_float_digits;
