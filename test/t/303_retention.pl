# Retention done by the consumer (src/cs_housekeeping.c), with
# citizen_sync.processed_events_retention = 1s and dead_letter_retention = 1s:
#
#   1. at consumer start: processed_events rows older than the retention and
#      dead letters resolved longer ago are deleted; unresolved dead letters,
#      however old, are kept;
#   2. periodically (citizen_sync.housekeeping_interval, 5 s here): rows aged
#      after the start are deleted by a later run;
#   3. a redelivered event whose id was forgotten is stale by version: the
#      cache does not change;
#   4. retention 0 keeps rows forever.
#
# Runs are triggered by restarting the consumer (pg_terminate_backend: the
# launcher restarts a cleanly stopped worker at once, and the first run is
# right after the start).
use strict;
use warnings;

use FindBin;
use lib "$FindBin::RealBin/../perl";
use CitizenSync::Broker qw(:all);
use CitizenSync::Node qw(:all);
use CitizenSync::Check qw(:all);
use Time::HiRes qw(time);
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $db = 'permits_db';
my $kafka = start_broker();
my $node = start_pipeline('retention', $kafka, conf => q{
citizen_sync.restart_delay = 1s
citizen_sync.processed_events_retention = '1s'
citizen_sync.dead_letter_retention = '1s'
citizen_sync.housekeeping_interval = '5s'
});

is($node->safe_psql($db, 'SHOW citizen_sync.processed_events_retention'), '1s',
	'processed_events_retention is 1s');
is($node->safe_psql($db, 'SHOW citizen_sync.dead_letter_retention'), '1s',
	'dead_letter_retention is 1s');

$node->safe_psql('auth_db', citizens_sql(5));
wait_outbox_drained($node, 60);
wait_caches_converged($node, 90);

# Restart the consumer of $db and wait until a new process runs.
sub restart_consumer
{
	my ($label) = @_;
	my $old = $node->safe_psql('postgres', qq{
SELECT pid FROM pg_stat_activity WHERE backend_type = 'citizen_sync consumer' AND datname = '$db'});
	$node->safe_psql('postgres', "SELECT pg_terminate_backend($old)");
	ok( poll_until($node, 'postgres', qq{
SELECT count(*) = 1 FROM pg_stat_activity
 WHERE backend_type = 'citizen_sync consumer' AND datname = '$db' AND pid <> $old}),
		"$label: the consumer of $db restarted");
}

# Rows to be judged by the retention: old processed events, dead letters
# resolved an hour ago, unresolved ones (one 40 days old).
sub add_rows
{
	my ($tag) = @_;
	$node->safe_psql($db, qq{
INSERT INTO cache.processed_events (event_id, processed_at)
VALUES ('evt_${tag}_old_1', now() - interval '1 hour'),
       ('evt_${tag}_old_2', now() - interval '2 days');
INSERT INTO citizen_sync.dead_letters
       (payload, event_id, error_message, error_sqlstate, first_seen_at, resolved_at, resolution)
VALUES ('\\x7b', 'evt_${tag}_resolved', 'invalid citizen event', '22P02',
        now() - interval '2 hours', now() - interval '1 hour', 'retried: applied'),
       ('\\x7b', 'evt_${tag}_unresolved_old', 'invalid citizen event', '22P02',
        now() - interval '40 days', NULL, NULL),
       ('\\x7b', 'evt_${tag}_unresolved_new', 'invalid citizen event', '22P02',
        now(), NULL, NULL);
});
}

my $dead_sql = q{SELECT string_agg(event_id, ',' ORDER BY event_id) FROM citizen_sync.dead_letters};

# --- 1. the run at consumer start ------------------------------------------
add_rows('a');
# (the applied events themselves may already be gone: the periodic run
# deletes them once they are 1 s old)
is($node->safe_psql($db,
		q{SELECT count(*) FROM cache.processed_events WHERE event_id LIKE 'evt_a_old_%'}),
	'2', 'processed_events holds the two old rows');
restart_consumer('run at start');
# (the events applied just before may still be younger than 1 s: only the
# old rows are certain to go at this run)
ok( poll_until($node, $db,
		q{SELECT count(*) FROM cache.processed_events WHERE event_id LIKE 'evt_a_old_%'}, '0'),
	'at start, the processed events older than 1 s were deleted');
ok( poll_until($node, $db,
		q{SELECT count(*) FROM citizen_sync.dead_letters WHERE resolved_at IS NOT NULL}, '0'),
	'at start, the dead letter resolved an hour ago was deleted');
is($node->safe_psql($db, $dead_sql), 'evt_a_unresolved_new,evt_a_unresolved_old',
	'unresolved dead letters are kept, even 40 days old');

# --- 2. the periodic run ----------------------------------------------------
# The next run is due housekeeping_interval (5 s) after the one at start.
my $t0 = time;
add_rows('b');
my $gone = poll_until(90, sub {
		($node->safe_psql($db, q{
SELECT count(*) FROM cache.processed_events WHERE event_id LIKE 'evt_b_%'}) eq '0')
		  && ($node->safe_psql($db, q{
SELECT count(*) FROM citizen_sync.dead_letters WHERE resolved_at IS NOT NULL}) eq '0');
	}, 1000);
ok($gone, 'the periodic run deleted rows aged after the start');
is($node->safe_psql($db, q{
SELECT count(*) FROM cache.processed_events WHERE processed_at < now() - interval '2 seconds'}),
	'0', 'no processed event older than the retention is left');
note(sprintf('periodic run observed after %.1f s', time - $t0));
is($node->safe_psql($db, $dead_sql),
	'evt_a_unresolved_new,evt_a_unresolved_old,evt_b_unresolved_new,evt_b_unresolved_old',
	'unresolved dead letters are still kept');

# --- 3. a forgotten event id redelivered is stale ----------------------------
my ($first) = grep { $_->{event} && $_->{event}{data}{citizen_id} == 1 } topic_events($kafka);
my $before = $node->safe_psql($db, q{
SELECT event_version || '|' || name || '|' || updated_at FROM cache.citizen_refs WHERE citizen_id = 1});
my $stale0 = $node->safe_psql($db,
	"SELECT stale FROM citizen_sync.consumer_stats WHERE database = '$db'");
is($node->safe_psql($db, qq{
SELECT count(*) FROM cache.processed_events WHERE event_id = '$first->{event}{event_id}'}),
	'0', "the id of $first->{event}{event_id} was forgotten");
$kafka->produce($TOPIC, [ [ $first->{key}, $first->{value} ] ]);
ok( poll_until($node, $db,
		"SELECT stale FROM citizen_sync.consumer_stats WHERE database = '$db'", $stale0 + 1),
	'the redelivered event is counted stale');
is( $node->safe_psql($db, q{
SELECT event_version || '|' || name || '|' || updated_at FROM cache.citizen_refs WHERE citizen_id = 1}),
	$before, 'the cached citizen did not change');

# --- 4. retention 0 keeps rows forever ------------------------------------------
$node->append_conf('postgresql.conf', "citizen_sync.processed_events_retention = 0\n");
$node->reload;
ok(poll_until($node, $db, 'SHOW citizen_sync.processed_events_retention', '0'),
	'processed_events_retention reloaded to 0');
add_rows('c');
restart_consumer('retention 0');
# The resolved dead letter disappearing shows that a run happened.
ok( poll_until($node, $db,
		q{SELECT count(*) FROM citizen_sync.dead_letters WHERE resolved_at IS NOT NULL}, '0'),
	'a run happened (the resolved dead letter was deleted)');
is( $node->safe_psql($db, q{
SELECT count(*) FROM cache.processed_events WHERE event_id LIKE 'evt_c_old_%'}),
	'2', 'with retention 0 old processed events are kept');

$node->stop;
$kafka->stop;
done_testing();
