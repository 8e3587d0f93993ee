# Events flow from Kafka into cache.citizen_refs and converge.
#
# The stream holds duplicates (the same message sent again), out-of-order
# versions (an older version after a newer one), deletes followed by a late
# older update, and events of an unknown type.  The cache must end in the
# state the events imply, consumer_stats must count them consistently, the
# stored offsets must reach each partition's end, and a reload with another
# citizen_sync.topics must move the worker to the new topic without
# restarting the instance.
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
my $topic2 = 'gov.auth.citizen.v2';

my $broker = CitizenSync::Broker::start_broker(topics => ["$topic:4"]);
my $node = CitizenSync::Node::new_node('consume_converge', $broker);

ok( poll_until($node, $db, qq{
SELECT count(*) = 1 FROM pg_stat_activity
 WHERE backend_type = 'citizen_sync consumer' AND datname = '$db'}),
	"pg_stat_activity shows one backend of type 'citizen_sync consumer' in $db");

# --- the stream ------------------------------------------------------------
my $m = CitizenSync::Events::new_model(seed => 101);
my $events = CitizenSync::Events::add_events(
	$m,
	citizens => [ 1 .. 400 ],
	max_versions => 6,
	delete_ratio => 0.25,
	dup_ratio => 0.1,
	swap_ratio => 0.2,
	unknown => 5,
	tag => 'a');

# Make sure the stream holds what the test is about.
my (%first_pos, $late_after_delete, $out_of_order, %max_seen);
for my $i (0 .. $#$events)
{
	my $e = $events->[$i];
	my $cid = $e->{citizen_id};
	next if $e->{type} !~ /^(created|updated|deleted)$/;
	$out_of_order++ if ($max_seen{$cid} // 0) > $e->{version};
	$late_after_delete++
	  if $e->{type} eq 'updated' && !$e->{resent}
	  && grep { $_->{citizen_id} == $cid && $_->{type} eq 'deleted' && $_->{version} > $e->{version} }
	  @$events[ 0 .. $i - 1 ];
	$max_seen{$cid} = $e->{version} if ($max_seen{$cid} // 0) < $e->{version};
}
my $c = $m->{counts};
note("stream: $c->{total} messages, $c->{duplicate} duplicates, "
	  . "$out_of_order out of order, $late_after_delete late updates after a delete, "
	  . "$c->{ignored} of an unknown type");
cmp_ok($c->{duplicate}, '>', 20, 'the stream resends messages');
cmp_ok($out_of_order, '>', 50, 'the stream has older versions after newer ones');
cmp_ok($late_after_delete, '>', 20, 'the stream has older updates after deletes');
cmp_ok(scalar(grep { !$_->{is_active} } values %{ $m->{expected} }),
	'>', 50, 'the expected state has soft-deleted citizens');

# Produce in three parts, so that batches and fetches split the stream.
my $third = int(@$events / 3);
$broker->produce($topic, [ @$events[ 0 .. $third - 1 ] ]);
$broker->produce($topic, [ @$events[ $third .. 2 * $third - 1 ] ]);
$broker->produce($topic, [ @$events[ 2 * $third .. $#$events ] ]);
CitizenSync::Check::load_expected($node, $db, $m);

CitizenSync::Check::wait_converged($node, $db,
	'the cache converges to the state the events imply');
CitizenSync::Check::check_counts($node, $db, $c, citizens => 400,
	label => 'first topic');
is($node->safe_psql($db, 'SELECT count(*) FROM cache.processed_events'),
	$c->{distinct}, 'processed_events has one row per distinct event id');
CitizenSync::Check::check_no_dead_letters($node, $db, 'nothing was dead-lettered');
CitizenSync::Check::check_offsets_at_end($node, $db, $broker, $topic);
CitizenSync::Check::wait_assigned($node, $db, 4);
is( $node->safe_psql($db, qq{
SELECT string_agg(topic || '/' || partition || ':' || next_offset || '/' || high_watermark || '/' || lag, ' ' ORDER BY partition)
  FROM citizen_sync.consumer_lag WHERE database = '$db'}),
	join(' ', map { my $e = $broker->offsets($topic)->{partitions}{$_}[1]; "$topic/$_:$e/$e/0" } 0 .. 3),
	'consumer_lag: every partition at its high watermark, lag 0');

# The monitoring views are for pg_monitor, not for the service's users.
is( $node->safe_psql($db, q{
SELECT has_table_privilege('permits_service_user', 'citizen_sync.consumer_stats', 'SELECT'),
       has_table_privilege('pg_monitor', 'citizen_sync.consumer_stats', 'SELECT')}),
	'f|t', 'consumer_stats is readable by pg_monitor only');

# --- reload with another topic --------------------------------------------
my $ends_before = $broker->offsets($topic)->{partitions};
my $started = $node->safe_psql('postgres', 'SELECT pg_postmaster_start_time()');
my $old_pid = CitizenSync::Node::consumer_pid($node, $db);
$broker->create_topic($topic2, 4);
$node->append_conf('postgresql.conf', "citizen_sync.topics = '$topic2'\n");
$node->reload;

ok( poll_until($node, $db, qq{
SELECT count(*) FILTER (WHERE topic = '$topic2') = 4 AND count(*) = 4
  FROM citizen_sync.consumer_lag WHERE database = '$db'}),
	'after the reload the consumer is assigned the 4 partitions of the new topic only');
isnt(CitizenSync::Node::consumer_pid($node, $db), $old_pid,
	'the consumer was restarted with the new settings');
is($node->safe_psql('postgres', 'SELECT pg_postmaster_start_time()'),
	$started, 'the instance was not restarted');

# An event on the old topic is no longer read.
$broker->produce($topic, [ {
	key => 'citizen_1',
	value => CitizenSync::Events::event_json(
		type => 'updated', event_id => 'evt_old_topic', citizen_id => 1,
		version => 1000, snapshot => CitizenSync::Events::snapshot(1, 1000)) } ]);

# Newer versions of half of the citizens and 100 new ones, on the new topic.
my $events2 = CitizenSync::Events::add_events($m, citizens => [ 201 .. 500 ], tag => 'b');
$broker->produce($topic2, $events2);
CitizenSync::Check::load_expected($node, $db, $m);
CitizenSync::Check::wait_converged($node, $db,
	'the cache converges with the events of the new topic');
CitizenSync::Check::check_counts($node, $db, $m->{counts}, citizens => 500,
	label => 'both topics');
CitizenSync::Check::check_offsets_at_end($node, $db, $broker, $topic2,
	label => 'new topic');
is( $node->safe_psql($db, qq{
SELECT string_agg(partition || ':' || next_offset, ',' ORDER BY partition)
  FROM citizen_sync.consumer_offsets WHERE topic = '$topic'}),
	join(',', map { "$_:$ends_before->{$_}[1]" } 0 .. 3),
	'the old topic\'s stored offsets did not move after the switch');
is( $node->safe_psql($db, q{
SELECT count(*) FROM cache.processed_events WHERE event_id = 'evt_old_topic'}),
	0, 'the event produced to the old topic after the switch was not applied');

$node->stop;
$broker->stop;
done_testing();
