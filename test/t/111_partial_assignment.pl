# A clone joining the consumer group never silently halves a cache (issue 9,
# item 2).  Two instances consume permits_db's topic in one group (as a
# promoted standby beside its primary would): each detects that its
# consumers hold fewer partitions than the topic has - WARNING, worker_health
# (status partial_assignment), and fresh_as_of() is NULL so that critical
# reads do not trust a half-fed cache beyond each row's own last sync.  They keep applying what they
# hold.  When the clone stops, the other holds all partitions again, says
# so, and is fresh once caught up.
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
my $conf = "citizen_sync.group_id = 'one-group'\n";

my $broker = CitizenSync::Broker::start_broker(topics => ["$topic:4"]);
my $primary = CitizenSync::Node::new_node('partial_primary', $broker, extra => $conf);
CitizenSync::Check::wait_assigned($primary, $db, 4, 'alone, the primary holds all 4 partitions');
my $m = CitizenSync::Events::new_model(seed => 111);
$broker->produce($topic,
	CitizenSync::Events::add_events($m, citizens => [ 1 .. 100 ], tag => 'a'));
CitizenSync::Check::load_expected($primary, $db, $m);
CitizenSync::Check::wait_converged($primary, $db, 'the primary caches everything');
ok(poll_until($primary, $db, 'SELECT citizen_sync.fresh_as_of() IS NOT NULL'),
	'and is known fresh');
is($primary->safe_psql($db, q{
SELECT status || '/' || partial_assignment || '/' || topic_partitions || '/' || assigned_partitions
  FROM citizen_sync.worker_health WHERE kind = 'consumer'}),
	'ok/0/4/4', 'worker_health: ok, 4 of 4 partitions');

# The clone joins the same group.
my $log_offset = -s $primary->logfile;
my $clone = CitizenSync::Node::new_node('partial_clone', $broker, extra => $conf);
for my $n ([ 'primary', $primary ], [ 'clone', $clone ])
{
	my ($name, $node) = @$n;
	ok( poll_until($node, $db, q{
SELECT partial_assignment = 1 AND status = 'partial_assignment' AND assigned_partitions < 4
       AND topic_partitions = 4 AND fresh_as_of IS NULL
  FROM citizen_sync.worker_health WHERE kind = 'consumer'}),
		"$name: worker_health reports the partial assignment");
	is($node->safe_psql($db, 'SELECT citizen_sync.fresh_as_of() IS NULL'), 't',
		"$name: fresh_as_of() is NULL while it holds part of the topic");
}
ok( $primary->wait_for_log(
		qr/WARNING:  citizen_sync: the consumers of "$db" hold \d of the 4 partitions of their topics in group "one-group"\n.*DETAIL:  Another member of the consumer group/,
		$log_offset),
	'the primary logs a WARNING naming the group');

# They keep applying what they hold.
my $more = CitizenSync::Events::add_events($m, citizens => [ 1 .. 100 ], tag => 'b');
$broker->produce($topic, $more);
ok( poll_until($primary, $db,
		"SELECT (" . CitizenSync::Check::counted_sql($db) . ") > " . (0 + $m->{counts}{total} - @$more)),
	'the primary goes on applying the events of its partitions');

# The clone stops: the primary holds all 4 again and is fresh once caught up.
$log_offset = -s $primary->logfile;
$clone->stop;
CitizenSync::Check::wait_assigned($primary, $db, 4, 'after the clone stopped, the primary holds all 4');
CitizenSync::Check::load_expected($primary, $db, $m);
CitizenSync::Check::wait_converged($primary, $db, 'and converges to the whole stream');
ok( poll_until($primary, $db, q{
SELECT status = 'ok' AND partial_assignment = 0 AND fresh_as_of IS NOT NULL
  FROM citizen_sync.worker_health WHERE kind = 'consumer'}),
	'worker_health: ok again, fresh');
ok($primary->wait_for_log(qr/citizen_sync: the consumers of "$db" hold all 4 partitions of their topics again/,
		$log_offset), 'the end of the partial assignment is logged');

$primary->stop;
$broker->stop;
done_testing();
