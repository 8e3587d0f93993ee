# A topic of 1,000 partitions (issue 11, target 6; issue 9, item 6): every
# view shows all of them and the freshness function is right.  0.2.0 before
# this test recorded 256 partitions per consumer: consumer_lag stopped at
# 256 rows.
#
# 1. The consumer holds the 1,000 partitions: consumer_lag has 1,000 rows,
#    worker_stats and worker_health say 1,000 of 1,000.
# 2. Events spread over the partitions are applied; once caught up every
#    partition's lag is 0 and fresh_as_of() is not NULL.
# 3. Shared memory is not held across librdkafka calls: with the broker
#    that leads half the partitions down (the consumer's watermark probe
#    then waits for those leaders), the views keep answering within a short
#    statement_timeout, again and again.
use strict;
use warnings;

use FindBin;
use lib "$FindBin::RealBin/../perl";

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time);

use CitizenSync::Broker;
use CitizenSync::Node;
use CitizenSync::Events;
use CitizenSync::Check qw(poll_until);

my $db = $CitizenSync::Node::DB;
my $topic = 'gov.auth.citizen';
my $np = 1000;

my $broker = CitizenSync::Broker::start_broker(topics => ["$topic:$np"], brokers => 2);
$broker->spread_leaders($topic, $np, 2);
my $node = CitizenSync::Node::new_node('many_partitions', $broker);

# 1. All partitions recorded and shown.
CitizenSync::Check::wait_assigned($node, $db, $np, "consumer_lag shows all $np partitions");
is( $node->safe_psql($db, q{
SELECT count(DISTINCT partition) || '/' || min(partition) || '/' || max(partition)
  FROM citizen_sync.consumer_lag}),
	"$np/0/" . ($np - 1), 'one row per partition, 0 .. 999');
is($node->safe_psql($db, q{SELECT partitions FROM citizen_sync.consumer_stats}),
	$np, "consumer_stats: $np partitions");
ok( poll_until($node, $db, qq{
SELECT topic_partitions = $np AND assigned_partitions = $np AND partial_assignment = 0
  FROM citizen_sync.worker_health WHERE kind = 'consumer'}),
	"worker_health: $np of $np partitions, not partial");

# 2. Applied and fresh.
my $m = CitizenSync::Events::new_model(seed => 115);
$broker->produce($topic,
	CitizenSync::Events::add_events($m, citizens => [ 1 .. 3000 ], tag => 'a'));
CitizenSync::Check::load_expected($node, $db, $m);
CitizenSync::Check::wait_converged($node, $db, 'the cache holds every citizen');
ok( poll_until($node, $db, q{
SELECT count(*) FILTER (WHERE high_watermark IS NOT NULL AND lag = 0) || '/'
       || count(DISTINCT partition) FILTER (WHERE next_offset > 0)
  FROM citizen_sync.consumer_lag},
		"$np/" . scalar(grep { $_->[1] > 0 } values %{ $broker->offsets($topic)->{partitions} })),
	'every partition has a known watermark and no lag; positions moved on every partition that holds events');
ok(poll_until($node, $db, 'SELECT citizen_sync.fresh_as_of() IS NOT NULL'),
	'fresh_as_of() is not NULL once caught up');
is( $node->safe_psql($db, q{
SELECT status || '/' || not_fresh FROM citizen_sync.worker_health WHERE kind = 'consumer'}),
	'ok/0', 'worker_health: ok, fresh');

# 3. Broker 2 (leader of the odd partitions) down: the consumer reports
# errors and probes the watermarks, which waits for broker 2; new events on
# partition 0 (broker 1) keep it applying.  The views answer promptly all
# along.
$broker->down(2);
$broker->produce($topic,
	CitizenSync::Events::add_events($m, citizens => [ 1 .. 200 ], tag => 'b'),
	partition => 0, check_retention => 0);
my ($slowest, $failed) = (0, 0);
my $deadline = time + 8;
while (time < $deadline)
{
	my $t0 = time;
	my ($ret, $out, $err) = $node->psql($db, q{
SET statement_timeout = '1s';
SELECT count(*) FROM citizen_sync.consumer_lag;
SELECT count(*) FROM citizen_sync.worker_stats;
SELECT count(*) FROM citizen_sync.worker_health;
SELECT citizen_sync.fresh_as_of();});
	$failed++ if $ret != 0;
	$slowest = time - $t0 if time - $t0 > $slowest;
}
is($failed, 0, 'with a broker down, every view query answered within its 1 s statement_timeout');
diag(sprintf('slowest round of view queries: %.3f s', $slowest));
$broker->up(2);
CitizenSync::Check::load_expected($node, $db, $m);
CitizenSync::Check::wait_converged($node, $db, 'after the broker is back, the cache converges');
ok(poll_until($node, $db, 'SELECT citizen_sync.fresh_as_of() IS NOT NULL'),
	'and is fresh again');

$node->stop;
$broker->stop;
done_testing();
