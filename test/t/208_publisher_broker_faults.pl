# The publisher under broker faults: one broker down, every broker down, high
# round-trip time.
#
# Three brokers each lead two of the topic's six partitions (the consumers'
# group coordinators are on broker 3, which stays up).  With broker 1 down,
# successive changes of citizens whose partitions are led by brokers 2 and 3
# keep reaching both caches within a few seconds, and their outbox rows are
# marked published, while the rows of broker 1's partitions wait for their
# delivery reports.  On 0.1.0 a round waited for every report, and those of
# a downed leader only come at message.timeout.ms (30 s): the second change
# of a healthy citizen waited as long as the others.  For each fault,
# `pg_ctl stop -m fast` completes (loose bound, measured figure printed).
# Afterwards everything is delivered, once and in order per key.
use strict;
use warnings;

use FindBin;
use lib "$FindBin::RealBin/../perl";
use CitizenSync::Broker qw(:all);
use CitizenSync::Node qw(:all);
use CitizenSync::Check qw(:all);
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time);

my $stop_limit = 10;    # seconds; the promise is 3 s, this is the loose bound
my $kafka = start_broker(brokers => 3, topics => ["$TOPIC:6"]);
my $leader = $kafka->spread_leaders($TOPIC, 6, 3);
$kafka->set_coordinator('group', "$_-citizen-sync", 3) for @SERVICE_DBS;
my $node = start_pipeline('publisher_faults', $kafka,
	conf => "citizen_sync.restart_delay = 1s\n");

$node->safe_psql('auth_db', citizens_sql(60));
wait_outbox_drained($node, 60, 'baseline published');
wait_caches_converged($node, 90, 'baseline in the caches');

# Which citizens the brokers that stay up lead.
my %partition_of;
$partition_of{ $_->{key} } = $_->{partition} for topic_events($kafka);
my @healthy = sort { $a <=> $b } grep { $leader->{ $partition_of{"citizen_$_"} } != 1 } 1 .. 60;
my $healthy_list = join(',', @healthy);
cmp_ok(scalar(@healthy), '>', 10, scalar(@healthy) . ' of 60 citizens on partitions of brokers 2 and 3');
cmp_ok(scalar(@healthy), '<', 60, 'and the others on broker 1');

# Seconds until every healthy citizen shows $city in both caches, or undef.
sub healthy_within
{
	my ($city, $timeout) = @_;
	my $start = time;
	my $n = scalar @healthy;

	my $done = poll_until(
		$timeout,
		sub {
			for my $db (@SERVICE_DBS)
			{
				my $got = query_or_undef($node, $db, qq{
SELECT count(*) FROM cache.citizen_refs
 WHERE citizen_id IN ($healthy_list) AND city = '$city'});
				return 0 unless defined $got && $got == $n;
			}
			return 1;
		},
		100);
	return $done ? time - $start : undef;
}


# --- one broker down ---------------------------------------------------------
$kafka->down(1);
for my $i (1 .. 3)
{
	$node->safe_psql('auth_db', "UPDATE citizens SET city = 'Down $i'");
	my $took = healthy_within("Down $i", 10);
	ok(defined $took, "one down: change $i of the healthy citizens reached both caches")
	  and note(sprintf('one down: change %d applied within %.2f s', $i, $took));
}
ok( poll_until(10, sub {
		my $n = query_or_undef($node, 'auth_db', qq{
SELECT count(*) FROM citizen_sync.outbox
 WHERE published_at IS NULL AND aggregate_id::bigint IN ($healthy_list)});
		defined $n && $n == 0;
	}),
	'one down: the outbox rows of the healthy citizens are marked published');
cmp_ok(pending_count($node), '>', 0, 'one down: the rows of broker 1 wait');
CitizenSync::Node::stop_under_fault($node, $kafka, 'one down', $stop_limit);
wait_outbox_drained($node, 60, 'one down: everything published once broker 1 is back');

# --- all brokers down --------------------------------------------------------
$kafka->down(-1);
$node->safe_psql('auth_db', "UPDATE citizens SET city = 'All down'");
ok(poll_until(20, sub { (publisher_stats($node) // {})->{last_error} }),
	'all down: the publisher reports the outage');
CitizenSync::Node::stop_under_fault($node, $kafka, 'all down', $stop_limit);
wait_outbox_drained($node, 60, 'all down: everything published once the brokers are back');

# --- high round-trip time ----------------------------------------------------
$kafka->rtt(-1, 2000);
$node->safe_psql('auth_db', "UPDATE citizens SET city = 'Slow'");
my $took = healthy_within('Slow', 60);
ok(defined $took, 'rtt 2 s: changes still delivered')
  and note(sprintf('rtt 2 s: applied within %.2f s', $took));
$node->safe_psql('auth_db', "UPDATE citizens SET city = 'Slow 2'");
CitizenSync::Node::stop_under_fault($node, $kafka, 'rtt 2 s', $stop_limit);

# --- nothing lost, nothing reordered -----------------------------------------
wait_outbox_drained($node, 60, 'everything published at the end');
wait_caches_converged($node, 90, 'the caches equal the source at the end');
check_outbox_complete($node);
my @events = topic_events($kafka);
check_topic_has_outbox($node, \@events);
check_topic_complete($node, \@events);
# A stop drops the rows in flight without marks: they go out again after the
# restart, so a version may be repeated (consumers dedupe by event_id), but
# never come after a later version of its key.
my (%last, @bad);
for my $e (@events)
{
	my ($k, $v) = ($e->{key} // '', $e->{event} && $e->{event}->{event_version});
	push @bad, "key $k: version $v at p$e->{partition}\@$e->{offset} after version $last{$k}"
	  if defined $v && defined $last{$k} && $v < $last{$k};
	$last{$k} = $v if defined $v;
}
is(scalar(@bad), 0, 'per key, versions never go backwards on the topic')
  or diag(join("\n", @bad[ 0 .. ($#bad < 9 ? $#bad : 9) ]));

$node->stop;
$kafka->stop;
done_testing();
