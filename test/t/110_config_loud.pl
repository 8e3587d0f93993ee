# Misconfiguration is loud, never a silent default (issue 9, item 4).
#
# - A citizen_sync.* value invalid when the server starts holds back the
#   workers it configures (PostgreSQL alone would run them with the default):
#   WARNING, consumer_stats/worker_health "waiting" with the reason,
#   citizen_sync.config_problems.  Fixed and reloaded: the consumer starts.
# - A value made invalid by a reload keeps the old one in force and is
#   reported the same way; the consumer is not restarted.
# - A database listed before it exists: one WARNING, state waiting, no
#   crash-restart loop; created: its consumer starts.
# - Removing one database from the list leaves the other consumers alone.
# - A new citizen_sync.group_id resumes from the positions stored in the
#   database instead of replaying the topic.
# - DROP DATABASE of a consumed database needs no FORCE; its consumer then
#   waits quietly until the list is edited.
use strict;
use warnings;

use FindBin;
use lib "$FindBin::RealBin/../perl";
use CitizenSync::Broker;
use CitizenSync::Node;
use CitizenSync::Events;
use CitizenSync::Check qw(poll_until);

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;


my $db = $CitizenSync::Node::DB;
my $topic = 'gov.auth.citizen';
my $role = $CitizenSync::Node::SYNC_ROLE;

my $broker = CitizenSync::Broker::start_broker(topics => ["$topic:4"]);
my $node = CitizenSync::Node::new_node('config_loud', $broker,
	extra => "citizen_sync.restart_delay = 1\ncitizen_sync.batch_size = 'lots'\n");

my $m = CitizenSync::Events::new_model(seed => 110);
$broker->produce($topic,
	CitizenSync::Events::add_events($m, citizens => [ 1 .. 100 ], tag => 'a'));

# --- invalid at start: the consumer is held back ------------------------------
ok($node->log_contains(
		qr/WARNING:  citizen_sync: "citizen_sync.batch_size" has been invalid since the server started; the consumers are not started\n.*DETAIL:  invalid value for parameter "citizen_sync.batch_size": "lots"/),
	'the launcher logs that the invalid batch_size holds back the consumers');
ok( poll_until($node, $db, qq{
SELECT state = 'waiting' AND pid IS NULL AND last_error ~ 'citizen_sync.batch_size'
  FROM citizen_sync.consumer_stats WHERE database = '$db'}),
	'consumer_stats: waiting, not running, and why');
is($node->safe_psql($db, q{
SELECT setting || '|' || affects || '|' || workers_held_back || '|' || (problem ~ 'lots')
  FROM citizen_sync.config_problems}),
	'citizen_sync.batch_size|consumers|true|true', 'config_problems names the setting');
is($node->safe_psql($db, 'SELECT problems || ' . q{'/'} . ' || holding_back FROM citizen_sync.config_status'),
	'1/1', 'config_status: one problem, holding workers back');
is($node->safe_psql($db, q{SELECT configured || '/' || running FROM citizen_sync.worker_counts WHERE kind = 'consumer'}),
	'1/0', 'worker_counts: 1 consumer configured, 0 running');
is(CitizenSync::Node::consumer_pid($node, $db), '', 'no consumer process runs with the default');
is($node->safe_psql($db, 'SELECT count(*) FROM cache.citizen_refs'), '0', 'nothing applied');

# fixed: the consumer starts
my $log_offset = -s $node->logfile;
$node->append_conf('postgresql.conf', "citizen_sync.batch_size = 50\n");
$node->reload;
CitizenSync::Check::load_expected($node, $db, $m);
CitizenSync::Check::wait_converged($node, $db, 'once fixed and reloaded, the consumer applies the events');
ok($node->wait_for_log(qr/citizen_sync: "citizen_sync.batch_size" is valid again/, $log_offset),
	'the launcher logs that the setting is valid again');
is($node->safe_psql($db, 'SELECT count(*) FROM citizen_sync.config_problems'), '0',
	'config_problems is empty');
my $pid = CitizenSync::Node::consumer_pid($node, $db);

# --- invalid by a reload: the old value stays in force, and it says so --------
$log_offset = -s $node->logfile;
$node->append_conf('postgresql.conf', "citizen_sync.databases = 'permits_db:bad role!'\n");
$node->reload;
ok( poll_until($node, $db, q{
SELECT setting = 'citizen_sync.databases' AND NOT workers_held_back FROM citizen_sync.config_problems}),
	'a bad reload is shown in config_problems (old value kept, nothing held back)');
ok($node->wait_for_log(
		qr/WARNING:  citizen_sync: the configuration file sets "citizen_sync.databases" to an invalid value; its previous value stays in force/,
		$log_offset),
	'and logged once by the launcher');
is($node->safe_psql($db, 'SHOW citizen_sync.databases'), "$db:$role", 'the old value is in force');
is(CitizenSync::Node::consumer_pid($node, $db), $pid, 'the consumer was not restarted');

# --- a database listed before it exists, first in the list ----------------------
$log_offset = -s $node->logfile;
$node->append_conf('postgresql.conf', "citizen_sync.databases = 'later_db, $db:$role'\n");
$node->reload;
ok( poll_until($node, $db, q{
SELECT state = 'waiting' AND pid IS NULL AND last_error = 'database "later_db" does not exist'
  FROM citizen_sync.consumer_stats WHERE database = 'later_db'}),
	'a listed database that does not exist: its consumer waits and says why');
ok( poll_until($node, $db, q{SELECT count(*) = 0 FROM citizen_sync.config_problems}),
	'the fixed list clears config_problems');
# several restart_delay periods pass
my $deadline = time + 4;
$node->safe_psql($db, 'SELECT pg_sleep(0.2)') while time < $deadline;
my $log = slurp_file($node->logfile, $log_offset);
my @warnings = $log =~ /WARNING:  citizen_sync: database "later_db" does not exist; the consumer waits for it/g;
is(scalar(@warnings), 1, 'one WARNING for the missing database, not one per retry');
ok($log !~ /FATAL|terminated by exit code 1/, 'no worker failed (no crash-restart loop)')
  or diag($log);
is(CitizenSync::Node::consumer_pid($node, $db), $pid, 'adding a database left permits_db\'s consumer alone');

$node->safe_psql('postgres', 'CREATE DATABASE later_db');
ok( poll_until($node, $db, q{
SELECT pid IS NOT NULL AND last_error ~ 'extension citizen_sync is not installed'
  FROM citizen_sync.consumer_stats WHERE database = 'later_db'}),
	'once created, its consumer starts (and waits for the extension)');

# --- removing a database restarts no other consumer --------------------------------
$node->append_conf('postgresql.conf', "citizen_sync.databases = '$db:$role'\n");
$node->reload;
ok( poll_until($node, $db, q{
SELECT count(*) = 0 FROM citizen_sync.worker_stats WHERE database = 'later_db'}),
	'later_db removed from the list: its consumer is gone');
is(CitizenSync::Node::consumer_pid($node, $db), $pid, 'permits_db\'s consumer kept running (same pid)');

# --- a new group id resumes from the stored positions ---------------------------
$node->append_conf('postgresql.conf', "citizen_sync.group_id = 'renamed-%d'\n");
$node->reload;
ok( poll_until($node, $db, q{
SELECT group_id = 'renamed-permits_db' AND state = 'running' FROM citizen_sync.consumer_stats}),
	'the consumer restarts in the new group');
CitizenSync::Check::wait_assigned($node, $db, 4);
my $more = CitizenSync::Events::add_events($m, citizens => [ 51 .. 150 ], tag => 'b');
$broker->produce($topic, $more);
CitizenSync::Check::load_expected($node, $db, $m);
CitizenSync::Check::wait_converged($node, $db, 'the new group applies the new events');
ok(poll_until($node, $db, "SELECT (" . CitizenSync::Check::counted_sql($db) . ") >= " . scalar(@$more)),
	'the new events are counted');
my $s = CitizenSync::Check::consumer_stats($node, $db);
is($s->{applied} + $s->{deleted} + $s->{stale} + $s->{duplicate} + $s->{ignored},
	scalar(@$more), 'the new group read only the new events: nothing replayed');
CitizenSync::Check::check_offsets_at_end($node, $db, $broker, $topic, group => 'renamed-permits_db');

# --- DROP DATABASE without FORCE ----------------------------------------------------
$log_offset = -s $node->logfile;
$node->safe_psql('postgres', 'CREATE EXTENSION IF NOT EXISTS citizen_sync');
my ($ret, $out, $err) = $node->psql('postgres', "DROP DATABASE $db");
is($ret, 0, 'DROP DATABASE of the consumed database succeeds without FORCE') or diag($err);
ok( poll_until($node, 'postgres', qq{
SELECT state = 'waiting' AND pid IS NULL AND last_error = 'database "$db" does not exist'
  FROM citizen_sync.consumer_stats WHERE database = '$db'}),
	'its consumer then waits quietly');
$node->append_conf('postgresql.conf', "citizen_sync.databases = ''\n");
$node->reload;
ok( poll_until($node, 'postgres', q{SELECT count(*) = 0 FROM citizen_sync.worker_stats WHERE kind = 'consumer'}),
	'removed from the list: nothing left');
$log = slurp_file($node->logfile, $log_offset);
ok($log !~ /FATAL|terminated by exit code 1/, 'no worker failed around the drop') or diag($log);

$node->stop;
$broker->stop;
done_testing();
