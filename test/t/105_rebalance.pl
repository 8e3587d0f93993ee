# Two instances in one consumer group share the partitions; when one stops,
# the other takes over its partitions and, since the database (not Kafka's
# committed offsets) is the truth, reads them from its own stored offsets:
# from the beginning, as it never stored any for them.
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
my $group = 'shared-group';
my $conf = "citizen_sync.group_id = '$group'\n";

my $broker = CitizenSync::Broker::start_broker(topics => ["$topic:4"]);
my $node_a = CitizenSync::Node::new_node('rebalance_a', $broker, extra => $conf);
my $node_b = CitizenSync::Node::new_node('rebalance_b', $broker, extra => $conf);

sub assigned
{
	my ($node) = @_;
	return [ split /,/, $node->safe_psql($db, qq{
SELECT string_agg(partition::text, ',' ORDER BY partition)
  FROM citizen_sync.consumer_lag WHERE topic = '$topic'}) ];
}

# Both members got a share.
my $share_sql = qq{
SELECT count(*) BETWEEN 1 AND 3 FROM citizen_sync.consumer_lag WHERE topic = '$topic'};
ok(poll_until($node_a, $db, $share_sql) && poll_until($node_b, $db, $share_sql)
	  && poll_until($node_a, $db, $share_sql),
	'each instance is assigned a proper subset of the 4 partitions');
my ($pa, $pb) = (assigned($node_a), assigned($node_b));
note("A: @$pa; B: @$pb");
my %union;
$union{$_}++ for @$pa, @$pb;
is(join(',', sort keys %union), '0,1,2,3', 'together they hold all 4 partitions');
ok(!grep({ $_ > 1 } values %union), 'no partition is assigned to both');
is($node_a->safe_psql($db, "SELECT DISTINCT group_id FROM citizen_sync.consumer_stats"),
	$group, "the consumer uses group '$group'");

# The stream, after the split.
my $m = CitizenSync::Events::new_model(seed => 105);
my $events = CitizenSync::Events::add_events($m, citizens => [ 1 .. 600 ], tag => 'a');
$broker->produce($topic, $events);
my $pos = CitizenSync::Broker::positions($broker, $topic);
my %part_of;
for my $p (keys %$pos)
{
	$part_of{$_} = $p for map { $_->{key} =~ /^citizen_(\d+)$/ } @{ $pos->{$p} };
}

for my $n ([ "A", $node_a, $pa ], [ "B", $node_b, $pb ])
{
	my ($name, $node, $parts) = @$n;
	my %mine = map { $_ => 1 } @$parts;
	my @citizens = grep { $mine{ $part_of{$_} } } keys %part_of;

	CitizenSync::Check::load_expected($node, $db, $m);
	CitizenSync::Check::wait_converged($node, $db,
		"instance $name caches exactly the citizens of its partitions (@$parts)",
		where => @citizens ? 'e.citizen_id IN (' . join(',', @citizens) . ')' : 'false',
		strict => 1);
	CitizenSync::Check::check_counts($node, $db,
		CitizenSync::Events::suffix_counts($pos, {}, partitions => $parts),
		label => "instance $name");
	is( $node->safe_psql($db, qq{
SELECT string_agg(partition::text, ',' ORDER BY partition) FROM citizen_sync.consumer_offsets
 WHERE group_id = '$group' AND topic = '$topic'}),
		join(',', sort { $a <=> $b } grep { @{ $pos->{$_} } } @$parts),
		"instance $name stored offsets for its own partitions only");
}
is( $node_a->safe_psql($db, 'SELECT count(*) FROM cache.citizen_refs')
	  + $node_b->safe_psql($db, 'SELECT count(*) FROM cache.citizen_refs'),
	scalar(keys %{ $m->{expected} }),
	'the union of both caches is the whole expected state');

# A stops: B takes over A's partitions and reads them from the beginning.
$node_a->stop;
CitizenSync::Check::wait_assigned($node_b, $db, 4, 'after A stopped, B holds all 4 partitions');
CitizenSync::Check::wait_converged($node_b, $db,
	"B's cache converges to the FULL expected state");
CitizenSync::Check::check_counts($node_b, $db, CitizenSync::Events::suffix_counts($pos, {}),
	label => 'instance B, whole topic', redelivery_ok => 1);
CitizenSync::Check::check_offsets_at_end($node_b, $db, $broker, $topic, group => $group);

# And B goes on alone with new events.
my $more = CitizenSync::Events::add_events($m, citizens => [ 500 .. 700 ], tag => 'b');
$broker->produce($topic, $more);
CitizenSync::Check::load_expected($node_b, $db, $m);
CitizenSync::Check::wait_converged($node_b, $db, 'B applies new events of all partitions');
is($node_b->safe_psql($db, 'SELECT count(*) FROM cache.processed_events'),
	$m->{counts}{distinct}, "B's processed_events has one row per distinct event id");

$node_b->stop;
$broker->stop;
done_testing();
