--
-- wait_notify: wait_for() and set_notify() argument errors (each with a
-- HINT), and what needs no consumer: an older version is there at once.
--
\set SHOW_CONTEXT never
SET client_min_messages = warning;

SELECT citizen_sync.wait_for('cache.citizen_refs', '1', NULL, '0');
SELECT citizen_sync.wait_for('cache.citizen_refs', '1', 1, NULL);
SELECT citizen_sync.wait_for('cache.citizen_refs', NULL, 1, '0');
SELECT citizen_sync.wait_for('cache.citizen_refs', '1', 1, '-1 s');
CREATE TABLE cache.not_subscribed (id bigint PRIMARY KEY, event_version bigint);
SELECT citizen_sync.wait_for('cache.not_subscribed', '1', 1, '0');
SELECT citizen_sync.wait_for('cache.citizen_refs', 'abc', 1, '0');

-- the cache at hand: no consumer needed
INSERT INTO cache.citizen_refs (citizen_id, name, email, event_version)
VALUES (1, 'Ana', 'ana@example.gov', 5);
SELECT citizen_sync.wait_for('cache.citizen_refs', '1', 5, '0') AS v5,
       citizen_sync.wait_for('cache.citizen_refs', '1', 6, '10 ms') AS v6,
       citizen_sync.wait_for('cache.citizen_refs', '2', 1, '0') AS other_key;
BEGIN ISOLATION LEVEL REPEATABLE READ;
SELECT citizen_sync.wait_for('cache.citizen_refs', '1', 5, '1 s') AS rr_there;
SELECT citizen_sync.wait_for('cache.citizen_refs', '1', 6, '1 s');
ROLLBACK;

-- set_notify
SELECT citizen_sync.set_notify('cache.not_subscribed', 'changes');
SELECT citizen_sync.set_notify('cache.citizen_refs', 'Bad-Name');
SELECT citizen_sync.set_notify('cache.citizen_refs', 'changes', -1);
SELECT citizen_sync.set_notify('cache.citizen_refs', 'citizen_changes');
SELECT citizen_sync.set_notify('cache.citizen_refs', 'citizen_changes', 10);
SELECT target, channel, max_keys FROM citizen_sync.subscription_notify;
SELECT citizen_sync.set_notify('cache.citizen_refs');
SELECT count(*) FROM citizen_sync.subscription_notify;

DELETE FROM cache.citizen_refs;
DROP TABLE cache.not_subscribed;
