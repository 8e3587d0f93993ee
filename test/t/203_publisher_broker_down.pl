# The Kafka cluster goes away while outbox rows are pending.
#
# While every broker is down the publisher must not mark anything published;
# it reports the outage (state / last_error), and once the outage outlasts the
# producer's message timeout (30 s) the round's rows fail and are retried
# (retry_count > 0).  More changes are made during the outage.  When the
# brokers are back, everything drains, the caches converge, and the topic
# holds every row, in per-key order.
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
my $node = start_pipeline('broker_down', $kafka,
	conf => "citizen_sync.restart_delay = 1s\n");

# A baseline that went through.
$node->safe_psql('auth_db', citizens_sql(500));
wait_outbox_drained($node, 30, 'baseline published');
wait_caches_converged($node, 60, 'baseline in the cache');

# Outage, with changes made during it.
$kafka->down(-1);
$node->safe_psql('auth_db', q{
UPDATE citizens SET city = 'Shelbyville' WHERE id % 2 = 0;
INSERT INTO citizens (name, email) SELECT 'Outage ' || i, 'o' || i || '@example.gov'
  FROM generate_series(1, 100) AS i;
});
my $during = $node->safe_psql('auth_db',
	'SELECT count(*) FROM citizen_sync.outbox WHERE published_at IS NULL');
cmp_ok($during, '>', 300, "$during rows pending at the start of the outage");

my $stats;
ok( poll_until(
		20,
		sub {
			$stats = publisher_stats($node);
			return $stats && $stats->{last_error} =~ /brokers? (are|is) down|Connection refused|Disconnected|transport/i;
		}),
	'the publisher reports the outage in worker_stats.last_error')
  or diag(explain($stats));
note("publisher during the outage: state $stats->{state}, last_error '$stats->{last_error}'");

# More changes while down, including the same citizens again and deletes.
$node->safe_psql('auth_db', q{
UPDATE citizens SET name = name || ' (moved)', email_verified = true WHERE id % 4 = 0;
DELETE FROM citizens WHERE id % 25 = 0;
});
my $pending = $node->safe_psql('auth_db',
	'SELECT count(*) FROM citizen_sync.outbox WHERE published_at IS NULL');
cmp_ok($pending, '>', $during, "more pending rows ($pending) after changes during the outage");

# Outlast the message timeout: the round fails and the rows are retried.
my $retried;
ok( poll_until(
		50,
		sub {
			$retried = query_or_undef($node, 'auth_db',
				'SELECT count(*) FROM citizen_sync.outbox WHERE retry_count > 0');
			return defined $retried && $retried > 0;
		},
		500),
	'rows whose delivery timed out are counted as retried');
$stats = publisher_stats($node);
note("after the message timeout: $retried rows retried; state $stats->{state}, last_error '$stats->{last_error}'");
like($stats->{state} . ' ' . $stats->{last_error}, qr/retrying|delivery failed|timed out/i,
	'worker_stats shows the failed deliveries');
is( $node->safe_psql('auth_db',
		'SELECT count(*) FROM citizen_sync.outbox WHERE published_at IS NULL'),
	$pending,
	'nothing was marked published during the outage');
is( $node->safe_psql('auth_db',
		'SELECT count(*) FROM citizen_sync.outbox WHERE set_aside_at IS NOT NULL'),
	'0',
	'timed-out deliveries are retried, never set aside');

$kafka->up(-1);
wait_outbox_drained($node, 60, 'everything drains once the brokers are back');
$stats = publisher_stats($node);
ok( poll_until(10, sub { $stats = publisher_stats($node); $stats->{state} eq 'running' }),
	"publisher state back to running (was '$stats->{state}')");
ok( poll_until(10, sub { $stats = publisher_stats($node); $stats->{last_error} eq '' }),
	"no stale last_error once deliveries succeed again (was '$stats->{last_error}')");
wait_caches_converged($node, 60);
check_outbox_complete($node);

my @events = topic_events($kafka);
my $dups = check_topic_has_outbox($node, \@events);
check_topic_complete($node, \@events);
is($dups, 0, 'no row was sent twice (timed-out messages were never persisted)');
check_topic_order(\@events);

$node->stop;
$kafka->stop;
done_testing();
