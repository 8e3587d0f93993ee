# Generic sync end to end with the embedded broker: cache tables declared
# with citizen_sync.subscribe() while the consumer runs, no restart.
#
#   - employees (bigint key, soft deletes) with a column renamed through
#     `columns`; role assignments (uuid key, hard deletes) under the seed's
#     event names role.assigned / role.revoked; permissions (text key,
#     permission.granted);
#   - a value that does not convert is dead-lettered naming the column, then
#     retried with retry_dead_letters() after ALTER TABLE fixes the target;
#   - ADD COLUMN on a target while consuming: the next events fill it;
#   - a hard delete followed by a late older update stays deleted;
#   - unsubscribe while consuming: the topic is no longer applied;
#   - the same topic subscribed in a second database of the instance;
#   - kill -9 in the middle of a stream: nothing lost, nothing twice;
#   - least privilege: the sync role writes subscribed targets only;
#   - the built-in citizen subscription keeps working next to them.
use strict;
use warnings;

use FindBin;
use lib "$FindBin::RealBin/../perl";

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

use CitizenSync::Broker;
use CitizenSync::Node;
use CitizenSync::Events;
use CitizenSync::Check qw(poll_until);

my $db = $CitizenSync::Node::DB;
my $sync = $CitizenSync::Node::SYNC_ROLE;
my $db2 = 'revenue_db';

my $broker = CitizenSync::Broker::start_broker(
	topics => [
		'gov.auth.citizen:2', 'gov.auth.employee:3', 'gov.auth.role:2',
		'gov.auth.permission:1'
	]);
my $node = CitizenSync::Node::new_node('generic_sync', $broker,
	databases => "$db:$sync, $db2:revenue_sync_user",
	extra => "citizen_sync.batch_size = 200\nrestart_after_crash = on\n");
$node->safe_psql('postgres', "CREATE DATABASE $db2");
$node->safe_psql($db2, q{
CREATE EXTENSION citizen_sync;
SELECT citizen_sync.create_service_roles('revenue');
});

my $employees_ddl = q{
CREATE TABLE cache.employees (
    employee_id    bigint PRIMARY KEY,
    name           text,
    department     text,
    salary         integer,
    event_version  bigint NOT NULL DEFAULT 0,
    is_active      boolean NOT NULL DEFAULT true,
    deleted_at     timestamptz,
    last_synced_at timestamptz);
SELECT citizen_sync.subscribe('cache.employees', 'employee',
                              columns => '{"name": {"field": "full_name", "required": true}}');
};
$node->safe_psql($db, q{
CREATE TABLE cache.role_assignments (
    role_assignment_id uuid PRIMARY KEY,
    employee_id    bigint NOT NULL,
    role_name      text NOT NULL,
    event_version  bigint NOT NULL,
    last_synced_at timestamptz);
CREATE TABLE cache.permissions (
    permission_id  text PRIMARY KEY,
    description    text,
    event_version  bigint NOT NULL DEFAULT 0,
    is_active      boolean NOT NULL DEFAULT true,
    deleted_at     timestamptz,
    last_synced_at timestamptz);
});

# --- least privilege before subscribing -------------------------------------
is($node->safe_psql($db,
		"SELECT has_table_privilege('$sync', 'cache.role_assignments', 'SELECT, INSERT, UPDATE, DELETE')"),
	'f', "$sync cannot touch a cache table nobody subscribed");

$node->safe_psql($db, $employees_ddl . q{
SELECT citizen_sync.subscribe('cache.role_assignments', 'role_assignment', topic => 'gov.auth.role',
    delete_mode => 'hard', columns => '{"role_name": "role"}',
    event_types => '{"role.assigned": "upsert", "role.revoked": "delete"}');
SELECT citizen_sync.subscribe('cache.permissions', 'permission',
    event_types => '{"permission.granted": "upsert", "permission.revoked": "delete"}');
});
$node->safe_psql($db2, $employees_ddl);

is( $node->safe_psql($db, qq{
SELECT has_table_privilege('$sync', 'cache.employees', 'SELECT, INSERT, UPDATE')
   AND NOT has_table_privilege('$sync', 'cache.employees', 'DELETE')
   AND has_table_privilege('$sync', 'cache.role_assignments', 'DELETE')
   AND NOT has_table_privilege('$sync', 'cache.employees', 'TRUNCATE')}),
	't', "$sync writes the subscribed targets (DELETE only for hard deletes)");

# --- events ------------------------------------------------------------------
sub employee
{
	my ($kind, $eid, $v, $id, $snap) = @_;
	my $data = defined $snap ? qq("employee_id":$id,"snapshot":$snap) : qq("employee_id":$id);
	return [ "employee_$id",
		sprintf('{"event_type":"employee.%s","event_id":"%s","event_version":%d,'
			  . '"event_timestamp":"2026-11-25T10:15:00.000Z","data":{%s}}',
			$kind, $eid, $v, $data) ];
}

sub role
{
	my ($kind, $eid, $v, $id, $snap) = @_;
	my $data = defined $snap ? qq("role_assignment_id":"$id","snapshot":$snap)
	  : qq("role_assignment_id":"$id");
	return [ "role_$id",
		sprintf('{"event_type":"role.%s","event_id":"%s","event_version":%d,"data":{%s}}',
			$kind, $eid, $v, $data) ];
}

sub permission
{
	my ($eid, $v, $id, $desc) = @_;
	return [ "permission_$id",
		sprintf('{"event_type":"permission.granted","event_id":"%s","event_version":%d,'
			  . '"data":{"permission_id":"%s","snapshot":{"id":"%s","description":"%s"}}}',
			$eid, $v, $id, $id, $desc) ];
}

my $ra = 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11';
my $rb = 'b0eebc99-9c0b-4ef8-bb6d-6bb9bd380a22';
$broker->produce('gov.auth.employee', [
	employee('created', 'emp_1', 1, 1, '{"id":1,"full_name":"Ana","department":"parks","salary":50000}'),
	employee('created', 'emp_2', 1, 2, '{"id":2,"full_name":"Ben","department":"roads","salary":"abc"}'),
	employee('updated', 'emp_3', 2, 1, '{"id":1,"full_name":"Ana Ruiz","department":"parks","salary":51000}'),
]);
$broker->produce('gov.auth.role', [
	role('assigned', 'role_1', 1, $ra, '{"employee_id":1,"role":"inspector"}'),
	role('assigned', 'role_2', 1, $rb, '{"employee_id":2,"role":"clerk"}'),
	role('revoked', 'role_3', 3, $ra),
	role('assigned', 'role_4', 2, $ra, '{"employee_id":1,"role":"resurrected"}'),
]);
$broker->produce('gov.auth.permission',
	[ permission('perm_1', 1, 'permits.approve', 'Approve permits') ]);
$broker->produce('gov.auth.citizen', [ [
	'citizen_5',
	CitizenSync::Events::event_json(type => 'created', event_id => 'cit_1', citizen_id => 5, version => 1,
		snapshot => CitizenSync::Events::snapshot(5, 1)) ] ]);

ok( poll_until($node, $db, q{
SELECT (SELECT count(*) FROM cache.employees WHERE event_version = 2) = 1
   AND (SELECT count(*) FROM cache.role_assignments) = 1
   AND (SELECT count(*) FROM cache.permissions) = 1
   AND (SELECT count(*) FROM cache.citizen_refs WHERE citizen_id = 5) = 1
   AND (SELECT count(*) FROM citizen_sync.dead_letters) = 1}),
	'subscribed without a restart: every topic is applied into its table');
is($node->safe_psql($db, 'SELECT employee_id, name, department, salary FROM cache.employees'),
	'1|Ana Ruiz|parks|51000', 'employees: renamed column filled, newest version');
is($node->safe_psql($db, 'SELECT role_assignment_id, employee_id, role_name FROM cache.role_assignments'),
	"$rb|2|clerk", 'role.assigned applied; role.revoked removed the row (hard delete)');
is($node->safe_psql($db, qq{SELECT event_version FROM citizen_sync.tombstones WHERE key = '$ra'}),
	'3', 'the hard delete kept its version: the late older role.assigned stayed out');
is($node->safe_psql($db, 'SELECT permission_id, description FROM cache.permissions'),
	'permits.approve|Approve permits', 'permission.granted applied by text key');
like($node->safe_psql($db, 'SELECT error_message FROM citizen_sync.dead_letters'),
	qr/column salary of cache\.employees: invalid input syntax for type integer: "abc"/,
	'a value that does not convert is dead-lettered naming the column');
# (how many were stale depends on how the events fell into batches)
is( $node->safe_psql($db, q{
SELECT applied + stale, dead_lettered FROM citizen_sync.subscriptions WHERE target = 'cache.employees'::regclass}),
	'2|1', 'per-subscription counters: employees');
is( $node->safe_psql($db, q{
SELECT applied + stale, deleted FROM citizen_sync.subscriptions WHERE target = 'cache.role_assignments'::regclass}),
	'3|1', 'per-subscription counters: role assignments');

# --- the target fixed, the dead letter retried -------------------------------
$node->safe_psql($db, 'ALTER TABLE cache.employees ALTER COLUMN salary TYPE text');
is($node->safe_psql($db, 'SELECT result FROM citizen_sync.retry_dead_letters()'),
	'applied', 'after ALTER TABLE the dead letter applies');
is($node->safe_psql($db, 'SELECT name, salary FROM cache.employees WHERE employee_id = 2'),
	'Ben|abc', 'the retried event is in the cache');

# --- ADD COLUMN while consuming ------------------------------------------------
$node->safe_psql($db, 'ALTER TABLE cache.employees ADD COLUMN phone text');
$broker->produce('gov.auth.employee',
	[ employee('updated', 'emp_4', 3, 1, '{"id":1,"full_name":"Ana Ruiz","phone":"555-0101"}') ]);
ok( poll_until($node, $db,
		q{SELECT phone = '555-0101' FROM cache.employees WHERE employee_id = 1}),
	'a column added while consuming is filled by the next event');

# --- unsubscribe while consuming ----------------------------------------------
$node->safe_psql($db, q{SELECT citizen_sync.unsubscribe('cache.permissions')});
is( $node->safe_psql($db,
		"SELECT has_table_privilege('$sync', 'cache.permissions', 'INSERT, UPDATE, DELETE')"),
	'f', "unsubscribed: $sync no longer writes the table");
# the consumer re-subscribes within a second
ok( $node->wait_for_log(qr/consumer for database "$db" subscribed to topics "gov\.auth\.citizen,gov\.auth\.employee,gov\.auth\.role"/),
	'the consumer dropped the unsubscribed topic');
$broker->produce('gov.auth.permission',
	[ permission('perm_2', 2, 'permits.approve', 'Changed after unsubscribe') ]);
$broker->produce('gov.auth.employee',
	[ employee('updated', 'emp_5', 4, 1, '{"id":1,"full_name":"Ana R."}') ]);
ok(poll_until($node, $db, q{SELECT name = 'Ana R.' FROM cache.employees WHERE employee_id = 1}),
	'other topics go on');
is($node->safe_psql($db, 'SELECT description FROM cache.permissions'),
	'Approve permits', 'the unsubscribed topic is no longer applied');

# --- a second database of the instance ---------------------------------------
ok( poll_until($node, $db2, q{
SELECT name = 'Ana R.' FROM cache.employees WHERE employee_id = 1},
		't'),
	'revenue_db applies the same topic into its own table, newest version');
is($node->safe_psql($db2, 'SELECT count(*) FROM citizen_sync.dead_letters'),
	'1', "revenue_db dead-lettered the bad salary in its own database");

# --- kill -9 in the middle of a stream ----------------------------------------
my @bulk;
my %newest;
for my $v (1 .. 20)
{
	for my $id (100 .. 399)
	{
		push @bulk, employee('updated', "bulk_${id}_$v", $v, $id,
			qq{{"id":$id,"full_name":"E$id v$v","salary":"$v"}});
		$newest{$id} = $v;
	}
}
$broker->produce('gov.auth.employee', \@bulk);
ok( poll_until($node, $db, q{
SELECT count(*) > 500 FROM cache.processed_events WHERE event_id LIKE 'bulk_%'}),
	'the consumer is in the middle of the bulk stream');
my $pid = CitizenSync::Node::consumer_pid($node, $db);
my $log_offset = -s $node->logfile;
ok(kill('KILL', $pid), "kill -9 of the consumer (pid $pid)");
$node->wait_for_log(qr/all server processes terminated; reinitializing.*database system is ready to accept connections/s,
	$log_offset);
ok( poll_until($node, $db, q{
SELECT count(*) = 300 AND bool_and(event_version = 20) FROM cache.employees WHERE employee_id BETWEEN 100 AND 399},
		't'),
	'after the crash every employee converges to its newest version');
is($node->safe_psql($db, q{SELECT count(*) FROM cache.processed_events WHERE event_id LIKE 'bulk_%'}),
	scalar(@bulk), 'every bulk event recorded exactly once');
is( $node->safe_psql($db, q{
SELECT count(*) FROM cache.employees WHERE employee_id BETWEEN 100 AND 399
   AND (name <> 'E' || employee_id || ' v20' OR salary <> '20')}),
	'0', 'and each row holds its newest snapshot');
ok( poll_until($node, $db2, q{
SELECT count(*) = 300 AND bool_and(event_version = 20) FROM cache.employees WHERE employee_id BETWEEN 100 AND 399}),
	'revenue_db converges too');
is($node->safe_psql($db, 'SELECT count(*) FROM citizen_sync.dead_letters WHERE resolved_at IS NULL'),
	'0', 'no dead letter from the crash');

$node->stop;
done_testing();
