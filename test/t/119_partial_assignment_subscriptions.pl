# A clone in the same consumer group is detected across every subscribed
# topic, not only citizen_sync.topics (issue 10: every guarantee holds per
# subscription).  permits_db subscribes cache.employees (gov.auth.employee, 3
# partitions) beside the built-in citizens (4 partitions): alone, its
# consumer holds 7 of 7; when a clone with the same subscriptions joins the
# group, both report the partial assignment and are not called fresh.
use strict;
use warnings;

use FindBin;
use lib "$FindBin::RealBin/../perl";
use CitizenSync::Broker;
use CitizenSync::Node;
use CitizenSync::Check qw(poll_until);

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $db = $CitizenSync::Node::DB;
my $conf = "citizen_sync.group_id = 'one-group'\n";
my $subscribe = q{
CREATE TABLE cache.employees (
    employee_id bigint PRIMARY KEY, name text,
    event_version bigint NOT NULL DEFAULT 0, last_synced_at timestamptz,
    is_active boolean NOT NULL DEFAULT true, deleted_at timestamptz);
SELECT citizen_sync.subscribe('cache.employees', 'employee');
};

my $broker = CitizenSync::Broker::start_broker(
	topics => [ 'gov.auth.citizen:4', 'gov.auth.employee:3' ]);
my $primary = CitizenSync::Node::new_node('partial_subs_primary', $broker, extra => $conf);
$primary->safe_psql($db, $subscribe);
CitizenSync::Check::wait_assigned($primary, $db, 7,
	'alone, the primary holds the 4 + 3 partitions of its two topics');
ok( poll_until($primary, $db, q{
SELECT status || '/' || partial_assignment || '/' || topic_partitions || '/' || assigned_partitions
  FROM citizen_sync.worker_health WHERE kind = 'consumer'}, 'ok/0/7/7'),
	'worker_health: ok, 7 of the 7 partitions of every subscribed topic');

my $clone = CitizenSync::Node::new_node('partial_subs_clone', $broker, extra => $conf);
$clone->safe_psql($db, $subscribe);
for my $n ([ 'primary', $primary ], [ 'clone', $clone ])
{
	my ($name, $node) = @$n;
	ok( poll_until($node, $db, q{
SELECT partial_assignment = 1 AND status = 'partial_assignment' AND assigned_partitions < 7
       AND topic_partitions = 7 AND fresh_as_of IS NULL
  FROM citizen_sync.worker_health WHERE kind = 'consumer'}),
		"$name: worker_health reports the partial assignment over both topics");
}

$clone->stop;
CitizenSync::Check::wait_assigned($primary, $db, 7, 'after the clone stopped, the primary holds all 7');
ok( poll_until($primary, $db, q{
SELECT status = 'ok' AND partial_assignment = 0
  FROM citizen_sync.worker_health WHERE kind = 'consumer'}),
	'worker_health: ok again');

done_testing();
