# Configuration errors are reported clearly and recovered from.
#
# - A database listed in citizen_sync.databases without the extension (then
#   without the role): the consumer waits, says why in consumer_stats and in
#   the log (WARNING with a HINT), and starts applying once it is fixed.
# - An invalid citizen_sync.databases in postgresql.conf: the reload logs the
#   error with DETAIL and HINT and keeps the old value; the consumer goes on.
# - SIGTERM of the consumer: the launcher restarts it and it resumes.
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
my $good_databases = "$db:$CitizenSync::Node::SYNC_ROLE";

my $broker = CitizenSync::Broker::start_broker(topics => ["$topic:4"]);
my $node = CitizenSync::Node::new_node('config_errors', $broker, setup => 0,
	extra => "citizen_sync.restart_delay = 1\n");
# the stats views are instance-wide: watch them from another database
$node->safe_psql('postgres', 'CREATE EXTENSION citizen_sync');

my $log_offset = -s $node->logfile;
CitizenSync::Node::setup_db($node, extension => 0);

# Events wait in Kafka meanwhile.
my $m = CitizenSync::Events::new_model(seed => 107);
$broker->produce($topic,
	CitizenSync::Events::add_events($m, citizens => [ 1 .. 200 ], tag => 'a'));

# --- no extension ----------------------------------------------------------
ok( poll_until($node, 'postgres', qq{
SELECT state = 'waiting' AND last_error ~ 'extension citizen_sync is not installed in database "$db"'
  FROM citizen_sync.consumer_stats WHERE database = '$db'}),
	'without the extension the consumer is waiting and says why');
ok( $node->wait_for_log(
		qr/WARNING:  citizen_sync: extension citizen_sync is not installed in database "$db"\n.*HINT:  Run CREATE EXTENSION citizen_sync/,
		$log_offset),
	'the log has the WARNING with a HINT');

# --- extension, but no role ------------------------------------------------
$node->safe_psql($db, 'CREATE EXTENSION citizen_sync');
ok( poll_until($node, 'postgres', qq{
SELECT state = 'waiting' AND last_error ~ 'role "permits_sync_user" named in citizen_sync.databases does not exist'
  FROM citizen_sync.consumer_stats WHERE database = '$db'}),
	'without the role the consumer is waiting and says why');
is($node->safe_psql($db, 'SELECT count(*) FROM cache.citizen_refs'), 0,
	'nothing is applied meanwhile');

$node->safe_psql($db, q{SELECT citizen_sync.create_service_roles('permits')});
CitizenSync::Check::load_expected($node, $db, $m);
CitizenSync::Check::wait_converged($node, $db, 'once extension and role exist, the events are applied');
CitizenSync::Check::check_counts($node, $db, $m->{counts}, label => 'first stream');
is($node->safe_psql('postgres', qq{
SELECT state || '/' || coalesce(last_error, '') FROM citizen_sync.consumer_stats WHERE database = '$db'}),
	'running/', 'the consumer is running and the waiting message is cleared');
my $pid = CitizenSync::Node::consumer_pid($node, $db);

# --- an invalid citizen_sync.databases ----------------------------------------
$log_offset = -s $node->logfile;
$node->append_conf('postgresql.conf', "citizen_sync.databases = 'bad db name!'\n");
$node->reload;
ok( $node->wait_for_log(
		qr/invalid value for parameter "citizen_sync.databases": "bad db name!"\n.*DETAIL:  \S.*\n.*HINT:  List the service databases/,
		$log_offset),
	'the reload logs the invalid value with DETAIL and HINT');
ok($node->wait_for_log(qr/configuration file ".*" contains errors; unaffected changes were applied/,
		$log_offset),
	'the reload reports that the file contains errors');
is($node->safe_psql('postgres', 'SHOW citizen_sync.databases'),
	$good_databases, 'the old value is kept');

$broker->produce($topic,
	CitizenSync::Events::add_events($m, citizens => [ 101 .. 300 ], tag => 'b'));
CitizenSync::Check::load_expected($node, $db, $m);
CitizenSync::Check::wait_converged($node, $db, 'the consumer goes on applying after the bad reload');
is(CitizenSync::Node::consumer_pid($node, $db), $pid, 'the consumer was not restarted');
ok(!$node->log_contains(qr/FATAL|PANIC|server process .* terminated/, $log_offset),
	'no process failed because of the bad value');

# fix the file again
$node->append_conf('postgresql.conf', "citizen_sync.databases = '$good_databases'\n");
$node->reload;

# --- SIGTERM of the consumer ------------------------------------------------
is($node->safe_psql('postgres', "SELECT pg_terminate_backend($pid)"), 't',
	'pg_terminate_backend on the consumer');
ok( poll_until($node, 'postgres', qq{
SELECT count(*) = 1 AND bool_and(pid <> $pid) FROM pg_stat_activity
 WHERE backend_type = 'citizen_sync consumer' AND datname = '$db'}),
	'the launcher starts a new consumer');
$broker->produce($topic,
	CitizenSync::Events::add_events($m, citizens => [ 250 .. 400 ], tag => 'c'));
CitizenSync::Check::load_expected($node, $db, $m);
CitizenSync::Check::wait_converged($node, $db, 'the new consumer resumes and the cache converges');
CitizenSync::Check::check_counts($node, $db, $m->{counts}, label => 'all streams');
CitizenSync::Check::check_offsets_at_end($node, $db, $broker, $topic);
is($node->safe_psql($db, 'SELECT count(*) FROM cache.processed_events'),
	$m->{counts}{distinct}, 'processed_events has one row per distinct event id');

$node->stop;
$broker->stop;
done_testing();
