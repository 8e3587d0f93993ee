# Broker outage while events are produced and applied.
#
# The whole cluster (3 brokers) goes down, for longer than the consumer
# group's session timeout, while the consumer is applying a stream;
# consumer_stats must show the problem; when the brokers come back (and more
# events are produced), the consumer rejoins the group and catches up by
# itself to the full expected state, having counted every message of the
# topic exactly once.
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

my $broker = CitizenSync::Broker::start_broker(brokers => 3, topics => ["$topic:4"]);
my $node = CitizenSync::Node::new_node('broker_outage', $broker,
	extra => "citizen_sync.batch_size = 200\n");

my $m = CitizenSync::Events::new_model(seed => 103);
my $ev1 = CitizenSync::Events::add_events($m, citizens => [ 1 .. 3000 ], tag => 'a');
$broker->produce($topic, $ev1);
ok(poll_until($node, $db, 'SELECT count(*) > 500 FROM cache.processed_events'),
	'the consumer is applying the first stream');
my $pid = CitizenSync::Node::consumer_pid($node, $db);
my $log_offset = -s $node->logfile;
my $t_down = $node->safe_psql($db, 'SELECT now()');

# All brokers go down.
$broker->down(-1);
my $applied_at_down = $node->safe_psql($db, 'SELECT count(*) FROM cache.processed_events');
note("brokers down with $applied_at_down events applied");

ok( poll_until($node, $db, qq{
SELECT last_error_at > '$t_down' AND last_error ~* 'kafka'
  FROM citizen_sync.consumer_stats WHERE database = '$db'}),
	'consumer_stats.last_error reports the Kafka problem');
my $s = CitizenSync::Check::consumer_stats($node, $db);
note("during the outage: state $s->{state}, last_error: $s->{last_error}");
note('applied during the outage so far (what was fetched before): '
	  . $node->safe_psql($db, 'SELECT count(*) FROM cache.processed_events'));

# The outage lasts longer than the group session (session.timeout.ms=6000):
# this is the length of the fault, not a synchronisation.
ok(poll_until($node, $db, qq{SELECT clock_timestamp() - '$t_down' > interval '8 s'}),
	'the brokers stay down for more than the session timeout');

# Back up: the consumer catches up on its own.
$broker->up(-1);
# A second stream once the brokers are back (kcat gives up on brokers that
# refuse connections, so it cannot queue messages during the outage).
my $ev2 = CitizenSync::Events::add_events($m, citizens => [ 2001 .. 4000 ], tag => 'b');
$broker->produce($topic, $ev2);
ok( $node->wait_for_log(
		qr/session timed out.*citizen_sync: consumer for "$db" assigned 4 partition\(s\)/s,
		$log_offset),
	'the consumer lost its group session and was assigned its partitions again');

CitizenSync::Check::load_expected($node, $db, $m);
CitizenSync::Check::wait_converged($node, $db,
	'after the outage the cache converges to the full expected state');

# Count what the topic really holds (a producer retry could have written a
# batch twice).
my $expect = CitizenSync::Events::suffix_counts(CitizenSync::Broker::positions($broker, $topic), {});
cmp_ok($expect->{total}, '>=', $m->{counts}{total}, 'the topic holds both streams');
CitizenSync::Check::check_counts($node, $db, $expect, label => 'whole topic');
is($node->safe_psql($db, 'SELECT count(*) FROM cache.processed_events'),
	$m->{counts}{distinct}, 'processed_events has one row per distinct event id');
CitizenSync::Check::check_offsets_at_end($node, $db, $broker, $topic);
CitizenSync::Check::check_no_dead_letters($node, $db, 'nothing was dead-lettered');
is(CitizenSync::Node::consumer_pid($node, $db), $pid,
	'the same consumer process rode out the outage');
is($node->safe_psql($db, qq{
SELECT state FROM citizen_sync.consumer_stats WHERE database = '$db'}),
	'running', 'the consumer is running');
# No stale last_error after recovery: cleared by the first batch applied
# after it, its time and the error itself kept (last_error_at, worker_errors).
is( $node->safe_psql($db, qq{
SELECT coalesce(last_error, '<none>') || ' | ' || (last_error_at > '$t_down')
  FROM citizen_sync.consumer_stats WHERE database = '$db'}),
	'<none> | true', 'last_error cleared after recovery, last_error_at kept');
cmp_ok( $node->safe_psql($db, qq{
SELECT count(*) FROM citizen_sync.worker_errors
 WHERE kind = 'consumer' AND database = '$db' AND source = 'kafka' AND last_at > '$t_down'}),
	'>=', 1, 'worker_errors keeps the outage');

$node->stop;
$broker->stop;
done_testing();
