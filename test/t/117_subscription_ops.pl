# Operations per subscription, end to end with the embedded broker: an
# employees table captured in auth_db (bigint key) and a permissions topic
# produced directly (text key), both subscribed in permits_db.
#
#   - subscription_lag: the partitions of each subscription's topic, lag 0
#     and fresh_as_of once caught up;
#   - read() and read_for_critical(): fresh while the consumer keeps up,
#     CS001 (stale) while it is held (a SHARE lock on the cache table keeps
#     its batch from committing), CS002 for a key not cached; a role without
#     SELECT on the target is refused;
#   - subscription_consistency_check() on employees finds planted drift (a
#     deleted cache row, a lowered version, an extra row) and
#     subscription_heal() has the source republish exactly those keys.
use strict;
use warnings;

use FindBin;
use lib "$FindBin::RealBin/../perl";
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use CitizenSync::Broker qw(:all);
use CitizenSync::Node qw(:all);
use CitizenSync::Events qw(:all);
use CitizenSync::Check qw(:all);

my $db = 'permits_db';
my $kafka = start_broker(topics => [ "$TOPIC:2", 'gov.auth.employee:3', 'gov.auth.permission:1' ]);
my $node = start_pipeline('subops', $kafka, conf => "citizen_sync.restart_delay = 1s\n");
my $conninfo = source_conninfo($node);
$node->safe_psql($db, 'CREATE EXTENSION dblink');

$node->safe_psql('auth_db', q{
CREATE TABLE employees (id bigserial PRIMARY KEY, name text NOT NULL, department text);
SELECT citizen_sync.capture('employees', 'employee', ARRAY['name', 'department']);
INSERT INTO employees (name, department)
SELECT 'Employee ' || i, CASE WHEN i % 2 = 0 THEN 'parks' ELSE 'roads' END
  FROM generate_series(1, 20) AS i;
});
$node->safe_psql($db, q{
CREATE TABLE cache.employees (
    employee_id    bigint PRIMARY KEY,
    name           text,
    department     text,
    event_version  bigint NOT NULL DEFAULT 0,
    is_active      boolean NOT NULL DEFAULT true,
    deleted_at     timestamptz,
    last_synced_at timestamptz);
SELECT citizen_sync.subscribe('cache.employees', 'employee');
CREATE TABLE cache.permissions (
    permission_id  text PRIMARY KEY,
    description    text,
    event_version  bigint NOT NULL,
    last_synced_at timestamptz);
SELECT citizen_sync.subscribe('cache.permissions', 'permission', delete_mode => 'hard',
    event_types => '{"permission.granted": "upsert", "permission.revoked": "delete"}');
});
$kafka->produce('gov.auth.permission', [
	[ 'permits.approve', '{"event_type": "permission.granted", "event_id": "p1", "event_version": 1, "data": {"permission_id": "permits.approve", "snapshot": {"description": "Approve permits"}}}' ],
	[ 'permits.read', '{"event_type": "permission.granted", "event_id": "p2", "event_version": 1, "data": {"permission_id": "permits.read", "snapshot": {"description": "Read permits"}}}' ] ]);
wait_outbox_drained($node, 60);

ok( poll_until($node, $db, q{
SELECT (SELECT count(*) FROM cache.employees) = 20
   AND (SELECT count(*) FROM cache.permissions) = 2}),
	'both subscriptions are applied through the broker');

# --- lag and freshness per subscription ----------------------------------
ok( poll_until($node, $db, q{
SELECT string_agg(target || ':' || partitions || ':' || lag || ':' || (fresh_as_of IS NOT NULL),
                  ' ' ORDER BY target::text)
  FROM citizen_sync.subscription_lag},
		'cache.citizen_refs:2:0:true cache.employees:3:0:true cache.permissions:1:0:true'),
	'subscription_lag: each topic\'s partitions, lag 0 and a fresh_as_of once caught up');
is( $node->safe_psql($db, q{
SELECT has_table_privilege('citizen_sync_monitor', 'citizen_sync.subscription_lag', 'SELECT'),
       has_table_privilege('permits_service_user', 'citizen_sync.subscription_lag', 'SELECT')}),
	't|f', 'subscription_lag is granted to citizen_sync_monitor only');

# --- display and critical reads -----------------------------------------
is( $node->safe_psql($db, q{
SELECT data ->> 'name', data ->> 'department', is_fresh
  FROM citizen_sync.read('cache.employees', '4', '1 minute')}),
	'Employee 4|parks|t', 'read(): a fresh employee row as jsonb');
is( $node->safe_psql($db, q{
SELECT citizen_sync.read_for_critical('cache.permissions', 'permits.read', '1 minute') ->> 'description'}),
	'Read permits', 'read_for_critical(): a fresh text-keyed row');

# SQLSTATE of a statement ('' when it succeeded)
sub sqlstate
{
	my ($sql, %opts) = @_;
	my ($out, $err) = ('', '');
	$node->psql($db, "\\set VERBOSITY sqlstate\n$sql", stdout => \$out, stderr => \$err,
		on_error_die => 0, %opts);
	return $err =~ /ERROR:\s+(\w{5})/ ? $1 : '';
}

is(sqlstate(q{SELECT citizen_sync.read_for_critical('cache.employees', '999', '1 minute')}),
	'CS002', 'read_for_critical(): a key not cached is CS002');

# Hold the consumer: a SHARE lock on cache.employees lets readers in but
# keeps the consumer's next batch from committing, so the topic's
# freshness stops advancing.
my $holder = $node->background_psql($db);
$holder->query_safe('BEGIN; LOCK TABLE cache.employees IN SHARE MODE;');
$node->safe_psql('auth_db', q{UPDATE employees SET department = 'water' WHERE id = 4});
ok( poll_until($node, $db, q{
SELECT count(*) > 0 FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
 WHERE NOT l.granted AND l.relation = 'cache.employees'::regclass}),
	'the consumer waits for the held table');
ok( poll_until($node, $db, q{
SELECT NOT is_fresh FROM citizen_sync.read('cache.employees', '4', '1 second')}),
	'read(): is_fresh turns false while the consumer is held');
is(sqlstate(q{SELECT citizen_sync.read_for_critical('cache.employees', '4', '1 second')}),
	'CS001', 'read_for_critical(): a row not known current within max_age is CS001');
is( $node->safe_psql($db, q{
SELECT data ->> 'department' FROM citizen_sync.read('cache.employees', '4')}),
	'parks', 'the display read still returns the cached (older) row');
$holder->query_safe('COMMIT');
$holder->quit;
ok( poll_until($node, $db, q{
SELECT data ->> 'department' = 'water' AND is_fresh
  FROM citizen_sync.read('cache.employees', '4', '1 minute')}),
	'released: the change is applied and the row is fresh again');
ok( poll_until($node, $db, q{
SELECT lag = 0 AND fresh_as_of > now() - interval '10 seconds'
  FROM citizen_sync.subscription_lag WHERE target = 'cache.employees'::regclass}),
	'subscription_lag of employees: caught up again, fresh_as_of recent');

# Privilege: the caller's SELECT on the target decides.
$node->safe_psql($db, q{
CREATE ROLE subops_reader LOGIN;
GRANT USAGE ON SCHEMA cache, citizen_sync TO subops_reader;
GRANT SELECT ON cache.permissions TO subops_reader;
});
is(sqlstate(q{SELECT * FROM citizen_sync.read('cache.employees', '4')}, extra_params => [ '-U', 'subops_reader' ]),
	'42501', 'a role without SELECT on the target is refused');
is( $node->safe_psql($db, q{
SET ROLE subops_reader;
SELECT citizen_sync.read_for_critical('cache.permissions', 'permits.approve', '1 minute') ->> 'description'}),
	'Approve permits', 'the same role reads a target it may SELECT');

# --- consistency check and heal per subscription ------------------------
sub drift_pairs
{
	return $node->safe_psql($db, qq{
SELECT coalesce(string_agg(key || '|' || problem, ',' ORDER BY key::bigint), '')
  FROM citizen_sync.subscription_consistency_check($conninfo, 'cache.employees', interval '0 seconds')});
}

is(drift_pairs(), '', 'no drift on employees after convergence');
$node->safe_psql($db, q{
DELETE FROM cache.employees WHERE employee_id = 2;
UPDATE cache.employees SET event_version = 0 WHERE employee_id = 5;
UPDATE cache.employees SET event_version = event_version + 5 WHERE employee_id = 6;
UPDATE cache.employees SET is_active = false, deleted_at = now() WHERE employee_id = 7;
INSERT INTO cache.employees (employee_id, name, event_version) VALUES (1001, 'Ghost', 1);
});
is(drift_pairs(), '2|missing,5|stale,6|mismatched,7|missing,1001|extra',
	'subscription_consistency_check finds exactly the planted drift');
is( $node->safe_psql($db, q{
SELECT source || ' ' || checked || ' ' || missing || ' ' || stale || ' ' || mismatched || ' ' || extra
  FROM citizen_sync.consistency_reports ORDER BY id DESC LIMIT 1}),
	'cache.employees 20 2 1 1 1', 'the report is recorded under the target\'s name');
is( $node->safe_psql($db, qq{
SELECT citizen_sync.subscription_heal($conninfo, 'cache.employees', interval '0 seconds')}),
	'5', 'subscription_heal() had the source write one event per drifted key');
wait_outbox_drained($node, 60, 'the republished events are published');
ok(poll_until(60, sub { drift_pairs() eq '' }), 'after heal the employees cache equals the source');
is( $node->safe_psql($db, q{
SELECT count(*) FILTER (WHERE is_active), count(*) FROM cache.employees}),
	'20|21', 'the extra row is deactivated, the missing ones are back');

done_testing();
