# One failed delivery must not reorder a citizen's events on the topic.
#
# DESIGN.md: the publisher "keeps per-aggregate order"; event_version is
# strictly increasing per citizen in commit order, and other services read the
# topic.  Here one Produce request is rejected by the broker with an error
# librdkafka does not retry itself (UNKNOWN_SERVER_ERROR: transient for the
# publisher, which retries the row rather than setting it aside; see 207 for
# permanent errors).  The rejected row must go out again before any later
# version of its citizen.
#
# batch.num.messages=1 makes every message its own batch, so the failure hits
# exactly one version deterministically; in production the same happens
# whenever one citizen's versions in a round span more than one batch (linger
# boundaries, batch size limits, several requests in flight).
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

my $kafka = start_broker();
my $node = start_pipeline('failed_delivery', $kafka, conf => q{
citizen_sync.kafka_properties = 'session.timeout.ms=6000;heartbeat.interval.ms=500;batch.num.messages=1'
});

$node->safe_psql('auth_db', q{
INSERT INTO citizens (name, email)
SELECT 'Citizen ' || i, 'c' || i || '@example.gov' FROM generate_series(1, 3) AS i;
});
wait_outbox_drained($node, 30, 'seed published');

# The broker rejects the next Produce request: -1 UNKNOWN_SERVER_ERROR, not
# retried by librdkafka.  Then several versions of the same citizens commit
# at once, so one round could carry them all.
$kafka->push_errors(0, -1, 1);
$node->safe_psql('auth_db', q{
BEGIN;
UPDATE citizens SET name = name || ' a';
UPDATE citizens SET name = name || ' b';
UPDATE citizens SET name = name || ' c';
UPDATE citizens SET name = name || ' d';
COMMIT;
});
wait_outbox_drained($node, 30, 'the rejected row is retried and published');
cmp_ok($node->safe_psql('auth_db', 'SELECT max(retry_count) FROM citizen_sync.outbox'),
	'>', 0, 'a row failed once and was retried');
is($node->safe_psql('auth_db', 'SELECT count(*) FROM citizen_sync.outbox WHERE set_aside_at IS NOT NULL'),
	'0', 'a transient error sets nothing aside');

my @events = topic_events($kafka);
note(join(' ', map { "$_->{key}\@$_->{partition}:$_->{offset}=v$_->{event}{event_version}" } @events));
check_topic_complete($node, \@events);
check_topic_order(\@events,
	'per key, versions strictly increase with the offset even after a failed delivery');

# The cache is right anyway ("newer version wins" skips the late, stale one).
wait_caches_converged($node, 60);

$node->stop;
$kafka->stop;
done_testing();
