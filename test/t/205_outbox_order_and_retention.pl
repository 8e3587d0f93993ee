# Outbox ordering, commit wake-up and retention.
#
# The publisher runs with citizen_sync.publisher_sweep_interval = 1h, so
# every change below reaches Kafka only through the commit wake-up.
#
# 1. A transaction takes outbox ids, stays open while later ids commit and
#    get published, then commits: its rows are still published (no "last
#    published id" watermark skips them), and the citizen's order is kept.
# 2. A committed change reaches the caches quickly (wake-up, not sweep) --
#    also when it commits while the publisher is in the middle of a round.
# 3. With citizen_sync.outbox_retention = 1s, published rows are deleted by
#    the publisher (the purge runs every 60 s: bounded by that).
use strict;
use warnings;

use FindBin;
use lib "$FindBin::RealBin/../perl";
use CitizenSync::Broker qw(:all);
use CitizenSync::Node qw(:all);
use CitizenSync::Events qw(:all);
use CitizenSync::Check qw(:all);
use Time::HiRes qw(time);
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $kafka = start_broker();
my $node = start_pipeline('order_retention', $kafka, conf => q{
citizen_sync.publisher_sweep_interval = '1h'
citizen_sync.outbox_retention = '1s'
citizen_sync.restart_delay = 1s
});

sub published
{
	my ($ids) = @_;
	return (query_or_undef($node, 'auth_db',
		"SELECT bool_and(published_at IS NOT NULL) FROM citizen_sync.outbox WHERE id IN ($ids)")
	  // '') eq 't';
}

sub cached
{
	my ($where) = @_;
	for my $db (@SERVICE_DBS)
	{
		return 0 unless ($node->safe_psql($db,
				"SELECT count(*) FROM cache.citizen_refs WHERE $where") // '') eq '1';
	}
	return 1;
}

$node->safe_psql('auth_db', citizens_sql(20));
wait_outbox_drained($node, 30, 'seed published (commit wake-up)');
wait_caches_converged($node, 60, 'seed in the cache');

######################################################################
# 1. A transaction that holds lower outbox ids commits last.
######################################################################

my $held = $node->background_psql('auth_db');
$held->query_safe(q{
BEGIN;
UPDATE citizens SET name = 'Held update' WHERE id = 1;
INSERT INTO citizens (name, email) VALUES ('Held insert', 'held@example.gov');
});
my $held_ids = $held->query_safe(q{
SELECT string_agg(id::text, ',' ORDER BY id) FROM citizen_sync.outbox
 WHERE xmin::text = pg_current_xact_id()::text});
like($held_ids, qr/^\d+,\d+$/, "the open transaction holds outbox rows $held_ids");
my ($held_max) = (split /,/, $held_ids)[-1];

# Later ids commit (one transaction: one wake-up) and are published while it
# stays open.
$node->safe_psql('auth_db', q{
BEGIN;
UPDATE citizens SET city = 'After' WHERE id BETWEEN 2 AND 20;
INSERT INTO citizens (name, email) VALUES ('Later insert', 'later@example.gov');
COMMIT;
});
my $later = $node->safe_psql('auth_db',
	"SELECT string_agg(id::text, ',') FROM citizen_sync.outbox WHERE id > $held_max");
# (published_at is read as soon as it is there: with a 1 s retention the rows
# are purged a second later)
my $later_at;
ok( poll_until(20, sub {
			$later_at = query_or_undef($node, 'auth_db', qq{
SELECT max(published_at) FROM citizen_sync.outbox WHERE id IN ($later)
HAVING bool_and(published_at IS NOT NULL)});
			return $later_at;
		}),
	'later ids are published while the lower ones are uncommitted');
ok(poll_until(30, sub { cached("city = 'After' AND citizen_id = 20") }),
	'and reach the caches');

$held->query_safe('COMMIT');
$held->quit;
my $held_after;
ok( poll_until(10, sub {
			$held_after = query_or_undef($node, 'auth_db', qq{
SELECT bool_and(published_at > '$later_at') FROM citizen_sync.outbox WHERE id IN ($held_ids)
HAVING bool_and(published_at IS NOT NULL)});
			return $held_after;
		}),
	"the late-committing rows $held_ids are published too (no watermark skipped them)");
is($held_after, 't', 'they were published after the higher ids');

# The same citizen again after the late commit: its order must hold.
$node->safe_psql('auth_db', q{UPDATE citizens SET name = 'After held' WHERE id = 1});
wait_outbox_drained($node, 10, 'the next change of that citizen is published');
wait_caches_converged($node, 30, 'caches have the late-committed and the later changes');

######################################################################
# 2. The commit wake-up.
######################################################################

# 2a. An idle publisher is woken by a commit (the sweep is 1 h away).
my $t0 = time;
$node->safe_psql('auth_db', q{UPDATE citizens SET phone = 'wake-1' WHERE id = 5});
ok(poll_until(10, sub { cached("citizen_id = 5 AND phone = 'wake-1'") }, 50),
	'a commit reaches the caches without waiting for the sweep');
note(sprintf('commit to both caches: %.2f s', time - $t0));

# 2b. A commit while the publisher is waiting for the delivery reports of a
# round (slow broker responses keep the round open for ~5 s, long enough for
# this test's own queries on a loaded machine) must not be
# forgotten: the round read its rows before this commit.
my $ppid = publisher_stats($node)->{pid};
my $activity = "SELECT state || '|' || state_change FROM pg_stat_activity WHERE pid = $ppid";
my $before = $node->safe_psql('auth_db', $activity);
$kafka->rtt(1, 5000);
$node->safe_psql('auth_db', q{UPDATE citizens SET phone = 'round-A' WHERE id = 6});
# The publisher reports "running" while it reads the outbox and "idle" once
# the read committed: a new idle state_change means round A has its rows.
my $now;
ok( poll_until(
		10,
		sub {
			$now = $node->safe_psql('auth_db', $activity);
			return $now ne $before && $now =~ /^idle\|/;
		},
		10),
	"round A read the outbox (publisher activity '$before' -> '$now')");
$node->safe_psql('auth_db', q{UPDATE citizens SET phone = 'round-B' WHERE id = 7});
my $b_id = $node->safe_psql('auth_db', 'SELECT max(id) FROM citizen_sync.outbox');
is( $node->safe_psql('auth_db', q{
SELECT count(*) FROM citizen_sync.outbox
 WHERE published_at IS NULL AND payload -> 'data' -> 'snapshot' ->> 'phone' = 'round-A'}),
	'1',
	'B committed while round A was still waiting for its report');
my $b_ok = poll_until(30, sub { published($b_id) });
ok($b_ok, 'a change committed during a round is published without another commit or the sweep')
  or diag('outbox row ' . $b_id . ' still pending 30 s after its commit; publisher: '
	  . join('', explain(publisher_stats($node)))
	  . 'the wake-up was consumed by the round (see cs_publisher.c idle())');
$kafka->rtt(1, 0);
# Nudge the publisher if B was forgotten, so that the rest can go on.
$node->safe_psql('auth_db', q{UPDATE citizens SET phone = 'nudge' WHERE id = 8}) unless $b_ok;
wait_outbox_drained($node, 20);
wait_caches_converged($node, 30);

# Whole stream: every committed change on the topic once, in per-key order
# (the outbox itself may already be purged: retention is 1 s).
my @events = topic_events($kafka);
check_topic_complete($node, \@events);
check_topic_has_outbox($node, \@events);
check_topic_order(\@events);

######################################################################
# 3. Retention: published rows older than 1 s are purged by the publisher,
# which purges at its start and then every 60 s; give it until 75 s after
# its start, with no new change in the meantime.
######################################################################

my $stats = publisher_stats($node);
my $started = $node->safe_psql('auth_db',
	"SELECT extract(epoch FROM '$stats->{started_at}'::timestamptz)");
note($node->safe_psql('auth_db', 'SELECT count(*) FROM citizen_sync.outbox')
	  . ' rows left in the outbox');
my $deadline = $started + 75 - time;
note(sprintf('waiting up to %.0f s for the purge', $deadline));
my $left;
my $purged = poll_until(
	$deadline,
	sub {
		$left = query_or_undef($node, 'auth_db', q{
SELECT count(*) FROM citizen_sync.outbox
 WHERE published_at < now() - interval '1 s'});
		return defined $left && $left eq '0';
	},
	500);
ok($purged, 'published rows past the retention are deleted within 75 s of the publisher start, without new traffic')
  or diag("$left published rows older than the retention remain; the publisher"
	  . " idles for publisher_sweep_interval (1 h) and only checks the purge"
	  . " after a round (see cs_publisher.c cs_publisher_main/idle())");
if (!$purged)
{
	# Tell apart "the purge never runs while idle" from "the purge is broken".
	$node->safe_psql('auth_db', q{UPDATE citizens SET phone = 'wake-purge' WHERE id = 9});
	ok( poll_until(
			15,
			sub {
				query_or_undef($node, 'auth_db', q{
SELECT count(*) FROM citizen_sync.outbox
 WHERE published_at < now() - interval '2 s'}) eq '0';
			},
			500),
		'(diagnosis) once a commit wakes it, the publisher purges');
}
is( $node->safe_psql('auth_db', 'SELECT count(*) FROM citizen_sync.outbox WHERE published_at IS NULL'),
	'0', 'the purge removed no pending row');
wait_caches_converged($node, 30, 'caches unaffected by the purge');

$node->stop;
$kafka->stop;
done_testing();
