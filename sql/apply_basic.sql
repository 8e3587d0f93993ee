--
-- apply_basic: the apply core's outcomes on valid events.
--
-- created / updated / deleted, version guard (older or equal version = stale),
-- idempotency by event_id (duplicate), soft delete and tombstones, unknown
-- event types and fields, the updated_at trigger, and apply_events() giving
-- the same final state as applying the same events one by one.
--
-- Suites share one database: start from an empty cache.
TRUNCATE cache.citizen_refs, cache.processed_events;

-- A citizen event as the publisher sends it (data.snapshot omitted for deletes).
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
                                                 'phone', '+1-555-0199', 'address', '12 Elm St',
                                                 'city', 'Springfield', 'postal_code', '12345',
                                                 'email_verified', true,
                                                 'identity_verified', false))
                END)::text
$$;

-- The cache without its volatile timestamps.
CREATE TEMP VIEW cached AS
SELECT citizen_id, name, email, event_version AS ver, is_active,
       deleted_at IS NOT NULL AS has_deleted_at
  FROM cache.citizen_refs;

------------------------------------------------------------------------------
-- created -> updated, every column stored
------------------------------------------------------------------------------
SELECT citizen_sync.apply_event(pg_temp.ev('created', 'evt_1', 1, 100, 'Maria Garcia', 'maria@example.gov'));
SELECT citizen_id, name, email, phone, address, city, postal_code, email_verified,
       identity_verified, event_version, is_active, deleted_at
  FROM cache.citizen_refs;
-- The exact example of the design document (citizen.updated, version 42).
SELECT citizen_sync.apply_event('{"event_type": "citizen.updated", "event_id": "evt_123", "event_version": 42,
 "event_timestamp": "2026-11-25T10:15:00.123Z",
 "data": {"citizen_id": 100,
          "snapshot": {"id": 100, "name": "Maria Garcia", "email": "maria@example.gov",
                       "phone": "+1-555-0199", "address": "12 Elm St", "city": "Springfield",
                       "postal_code": "12345", "email_verified": true,
                       "identity_verified": false}}}');
SELECT citizen_sync.apply_event(pg_temp.ev('updated', 'evt_2', 43, 100, 'Maria G. Lopez', 'maria.lopez@example.gov'));
SELECT * FROM cached ORDER BY citizen_id;
SELECT event_id FROM cache.processed_events ORDER BY event_id;

------------------------------------------------------------------------------
-- Version guard: out of order and equal versions are stale
------------------------------------------------------------------------------
SELECT citizen_sync.apply_event(pg_temp.ev('updated', 'evt_4', 45, 100, 'Version 45', 'v45@example.gov'));
-- older after newer: stale, the row keeps version 45
SELECT citizen_sync.apply_event(pg_temp.ev('updated', 'evt_3', 44, 100, 'Version 44', 'v44@example.gov'));
-- the same version under another event id: stale
SELECT citizen_sync.apply_event(pg_temp.ev('updated', 'evt_4b', 45, 100, 'Other 45', 'o45@example.gov'));
SELECT * FROM cached ORDER BY citizen_id;
-- stale events are recorded too: a redelivery of one is a duplicate
SELECT event_id FROM cache.processed_events WHERE event_id IN ('evt_3', 'evt_4b') ORDER BY 1;

------------------------------------------------------------------------------
-- Idempotency: a redelivered event_id is a duplicate, whatever its content
------------------------------------------------------------------------------
SELECT citizen_sync.apply_event(pg_temp.ev('updated', 'evt_4', 45, 100, 'Version 45', 'v45@example.gov'));
SELECT citizen_sync.apply_event(pg_temp.ev('updated', 'evt_4', 99, 100, 'Forged', 'forged@example.gov'));
SELECT citizen_sync.apply_event(pg_temp.ev('updated', 'evt_3', 44, 100, 'Version 44', 'v44@example.gov'));
SELECT * FROM cached ORDER BY citizen_id;

------------------------------------------------------------------------------
-- Soft delete, late older update, newer update resurrects
------------------------------------------------------------------------------
SELECT citizen_sync.apply_event(pg_temp.ev('deleted', 'evt_5', 46, 100));
-- deleted: inactive, deleted_at set, the last known fields kept
SELECT * FROM cached ORDER BY citizen_id;
-- an update older than the delete arrives late: stale, still deleted
SELECT citizen_sync.apply_event(pg_temp.ev('updated', 'evt_late', 44, 100, 'Zombie', 'zombie@example.gov'));
SELECT * FROM cached ORDER BY citizen_id;
-- a second delete with the same version: stale
SELECT citizen_sync.apply_event(pg_temp.ev('deleted', 'evt_5b', 46, 100));
-- a newer update brings the citizen back
SELECT citizen_sync.apply_event(pg_temp.ev('updated', 'evt_6', 47, 100, 'Maria Back', 'back@example.gov'));
SELECT * FROM cached ORDER BY citizen_id;
-- a delete keeps its snapshot's id check but nothing else from it
SELECT citizen_sync.apply_event('{"event_type": "citizen.deleted", "event_id": "evt_7", "event_version": 48,
  "data": {"citizen_id": 100, "snapshot": {"id": 100, "name": "ignored"}}}');
SELECT * FROM cached ORDER BY citizen_id;

------------------------------------------------------------------------------
-- Delete of an unknown citizen: a tombstone that blocks an older create
------------------------------------------------------------------------------
SELECT citizen_sync.apply_event(pg_temp.ev('deleted', 'evt_200_3', 3, 200));
SELECT * FROM cached WHERE citizen_id = 200;
SELECT citizen_sync.apply_event(pg_temp.ev('created', 'evt_200_1', 1, 200, 'Ghost', 'ghost@example.gov'));
SELECT citizen_sync.apply_event(pg_temp.ev('updated', 'evt_200_2', 2, 200, 'Ghost', 'ghost@example.gov'));
SELECT * FROM cached WHERE citizen_id = 200;
-- a version newer than the tombstone is applied
SELECT citizen_sync.apply_event(pg_temp.ev('created', 'evt_200_4', 4, 200, 'Reborn', 'reborn@example.gov'));
SELECT * FROM cached WHERE citizen_id = 200;

------------------------------------------------------------------------------
-- Unknown event types are ignored (not recorded, not fatal)
------------------------------------------------------------------------------
SELECT citizen_sync.apply_event('{"event_type": "citizen.merged", "event_id": "evt_merge", "whatever": [1, 2]}');
SELECT citizen_sync.apply_event('{"event_type": "permit.created", "event_id": "evt_permit", "event_version": 1,
  "data": {"permit_id": 1}}');
SELECT count(*) AS recorded FROM cache.processed_events WHERE event_id IN ('evt_merge', 'evt_permit');

------------------------------------------------------------------------------
-- Unknown fields are ignored, at every level
------------------------------------------------------------------------------
SELECT citizen_sync.apply_event('{"event_type": "citizen.created", "event_id": "evt_300_1", "event_version": 1,
  "trace_id": "abc", "schema_version": 7, "headers": {"a": [1, {"b": null}]},
  "data": {"citizen_id": 300, "source": "auth", "extra": [true, false],
           "snapshot": {"id": 300, "name": "Ana Silva", "email": "ana@example.gov",
                        "middle_name": "X", "tags": ["a", "b"], "meta": {"x": {"y": {"z": 1}}},
                        "phone": null, "city": null}}}');
SELECT citizen_id, name, email, phone, address, city, postal_code, email_verified,
       identity_verified, event_version, is_active
  FROM cache.citizen_refs WHERE citizen_id = 300;

------------------------------------------------------------------------------
-- updated_at is kept by the trigger: changes on an applied update only
------------------------------------------------------------------------------
SELECT updated_at = created_at AS untouched_since_insert
  FROM cache.citizen_refs WHERE citizen_id = 300;
CREATE TEMP TABLE t300 AS
SELECT created_at, updated_at FROM cache.citizen_refs WHERE citizen_id = 300;
SELECT pg_sleep(0.01);
-- stale: no row update, updated_at unchanged
SELECT citizen_sync.apply_event(pg_temp.ev('updated', 'evt_300_0', 1, 300, 'Stale', 'stale@example.gov'));
SELECT c.updated_at = t.updated_at AS unchanged
  FROM cache.citizen_refs c, t300 t WHERE c.citizen_id = 300;
SELECT citizen_sync.apply_event(pg_temp.ev('updated', 'evt_300_2', 2, 300, 'Ana Silva', 'ana.silva@example.gov'));
SELECT c.created_at = t.created_at AS created_kept,
       c.updated_at > t.updated_at AS updated_advanced,
       c.updated_at = c.last_synced_at AS synced_with_update
  FROM cache.citizen_refs c, t300 t WHERE c.citizen_id = 300;
-- the trigger also stamps direct updates (an operator's fix)
UPDATE cache.citizen_refs SET updated_at = '2000-01-01' WHERE citizen_id = 300;
SELECT updated_at > '2000-01-01' AS trigger_overrode FROM cache.citizen_refs WHERE citizen_id = 300;

------------------------------------------------------------------------------
-- apply_events(): one batch with duplicates and stale events gives the same
-- final state as applying the same events one by one
------------------------------------------------------------------------------
-- Starting state of both runs.
CREATE TEMP TABLE base (ord int, payload text);
INSERT INTO base VALUES
  (1, pg_temp.ev('created', 'b_1', 1, 1001, 'One', 'one@example.gov')),
  (2, pg_temp.ev('created', 'b_2', 5, 1002, 'Two', 'two@example.gov')),
  (3, pg_temp.ev('created', 'b_3', 1, 1003, 'Three', 'three@example.gov')),
  (4, pg_temp.ev('created', 'b_7', 1, 1007, 'Seven', 'seven@example.gov'));

CREATE TEMP TABLE batch (ord int, payload text);
INSERT INTO batch VALUES
  -- 1001: v2, v3, then older v2 again under a new id, and a redelivery of v3
  ( 1, pg_temp.ev('updated', 'x_1', 2, 1001, 'One v2', 'one2@example.gov')),
  ( 2, pg_temp.ev('updated', 'x_2', 3, 1001, 'One v3', 'one3@example.gov')),
  ( 3, pg_temp.ev('updated', 'x_3', 2, 1001, 'One old', 'old@example.gov')),
  ( 4, pg_temp.ev('updated', 'x_2', 3, 1001, 'One v3', 'one3@example.gov')),
  -- 1002: older than the cached v5 (stale), then a delete, then a late update
  ( 5, pg_temp.ev('updated', 'x_5', 4, 1002, 'Two old', 'old@example.gov')),
  ( 6, pg_temp.ev('deleted', 'x_6', 6, 1002)),
  ( 7, pg_temp.ev('updated', 'x_7', 5, 1002, 'Two zombie', 'z@example.gov')),
  -- 1003: delete then a newer update (comes back), equal version after it
  ( 8, pg_temp.ev('deleted', 'x_8', 2, 1003)),
  ( 9, pg_temp.ev('updated', 'x_9', 3, 1003, 'Three back', 'back@example.gov')),
  (10, pg_temp.ev('updated', 'x_10', 3, 1003, 'Three same', 'same@example.gov')),
  -- 1004: unknown citizen deleted (tombstone), then an older create
  (11, pg_temp.ev('deleted', 'x_11', 2, 1004)),
  (12, pg_temp.ev('created', 'x_12', 1, 1004, 'Four', 'four@example.gov')),
  -- 1005: a new citizen; a redelivery of a base event; an unknown type
  (13, pg_temp.ev('created', 'x_13', 1, 1005, 'Five', 'five@example.gov')),
  (14, pg_temp.ev('created', 'b_1', 1, 1001, 'One', 'one@example.gov')),
  (15, '{"event_type": "citizen.merged", "event_id": "x_15"}'),
  -- 1005 again, then the same event id twice in the batch
  (16, pg_temp.ev('updated', 'x_16', 2, 1005, 'Five v2', 'five2@example.gov')),
  (17, pg_temp.ev('updated', 'x_16', 2, 1005, 'Five v2', 'five2@example.gov')),
  -- 1006: created, updated and deleted within the batch: one by one, the
  -- soft-deleted row keeps the fields of v2
  (18, pg_temp.ev('created', 'x_18', 1, 1006, 'Six', 'six@example.gov')),
  (19, pg_temp.ev('updated', 'x_19', 2, 1006, 'Six v2', 'six2@example.gov')),
  (20, pg_temp.ev('deleted', 'x_20', 3, 1006)),
  -- 1007: updated then deleted within the batch: keeps the fields of v2
  (21, pg_temp.ev('updated', 'x_21', 2, 1007, 'Seven v2', 'seven2@example.gov')),
  (22, pg_temp.ev('deleted', 'x_22', 3, 1007));

-- Apply payloads one by one, in order, each through apply_event().
CREATE FUNCTION pg_temp.one_by_one(tab regclass)
RETURNS TABLE (ord int, result text) LANGUAGE plpgsql AS $$
BEGIN
    FOR ord, result IN EXECUTE format(
        'SELECT ord, NULL::text FROM %s ORDER BY ord', tab) LOOP
        EXECUTE format('SELECT citizen_sync.apply_event(payload) FROM %s WHERE ord = $1', tab)
            INTO result USING ord;
        RETURN NEXT;
    END LOOP;
END
$$;

-- Run 1: one by one.
TRUNCATE cache.citizen_refs, cache.processed_events;
SELECT count(*) FROM pg_temp.one_by_one('base');
SELECT * FROM pg_temp.one_by_one('batch');
CREATE TEMP TABLE state_one AS SELECT * FROM cached;
CREATE TEMP TABLE ids_one AS SELECT event_id FROM cache.processed_events;
SELECT * FROM state_one ORDER BY citizen_id;

-- Run 2: the same events as one apply_events() batch.  Result labels may
-- differ (within a batch a citizen's older events are superseded by its
-- newest one and reported stale), the final state may not.
TRUNCATE cache.citizen_refs, cache.processed_events;
SELECT count(*) FROM pg_temp.one_by_one('base');
-- (Labels of 18-22, the events before a delete, are left out: whether a
-- superseded event that still gives a deleted row its fields is reported
-- stale or applied is not part of the contract.)
SELECT * FROM citizen_sync.apply_events(ARRAY(SELECT payload FROM batch ORDER BY ord))
 WHERE ordinality <= 17 OR result = 'deleted';
SELECT * FROM cached ORDER BY citizen_id;

-- Same cache rows and same processed event ids, in both directions.
(SELECT * FROM state_one EXCEPT SELECT * FROM cached)
UNION ALL
(SELECT * FROM cached EXCEPT SELECT * FROM state_one);
(SELECT * FROM ids_one EXCEPT SELECT event_id FROM cache.processed_events)
UNION ALL
(SELECT event_id FROM cache.processed_events EXCEPT SELECT * FROM ids_one);

-- Re-running the whole batch is all duplicates (and the unknown type ignored).
SELECT result, count(*) FROM citizen_sync.apply_events(ARRAY(SELECT payload FROM batch ORDER BY ord))
 GROUP BY result ORDER BY result;
-- An empty batch is fine.
SELECT * FROM citizen_sync.apply_events('{}');

-- Leave the shared database clean.
TRUNCATE cache.citizen_refs, cache.processed_events;
