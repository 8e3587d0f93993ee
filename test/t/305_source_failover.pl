# The source fails over to an asynchronous standby that was behind (issue 9,
# item 1 (b)).
#
# An auth instance (the publisher) streams to a physical standby; a service
# instance runs the permits_db consumer.  Replay on the standby is paused
# while the primary takes more changes (more than 32, so that the standby's
# outbox sequence hands out ids the primary already published), which reach
# the cache.  The primary is stopped, the standby promoted: its launcher
# starts the publisher there (workers wait for the end of recovery), and the
# application writes on the new primary.
#
# Required: every change made on the new primary reaches the cache, nothing
# is dropped as duplicate or stale, and the cache then differs from the new
# primary only in the citizens whose last change the standby never received
# (lost at the source); heal() brings those back to the source's state.
#
# On 0.1.0 the promoted standby's versions and event ids repeat those the
# cache holds: its changes are dropped as stale or duplicate.
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
my $bootstrap = $kafka->bootstrap;

my $primary = PostgreSQL::Test::Cluster->new('auth_primary');
$primary->init(allows_streaming => 1);
$primary->append_conf('postgresql.conf', qq{
shared_preload_libraries = 'citizen_sync'
citizen_sync.brokers = '$bootstrap'
citizen_sync.outbox_database = 'auth_db'
citizen_sync.restart_delay = 1s
log_line_prefix = '%m [%p] %b '
});
$primary->start;
setup_auth_db($primary);

my $service = CitizenSync::Node::new_node('service', $kafka);
my $db = 'permits_db';

sub drops
{
	my $s = CitizenSync::Check::consumer_stats($service, $db);
	return "stale $s->{stale}, duplicate $s->{duplicate}";
}

$primary->safe_psql('auth_db', citizens_sql(30, phone => 1) . q{
UPDATE citizens SET city = 'Shelbyville' WHERE id <= 10;
});
wait_outbox_drained($primary, 60, 'the first changes are published');
wait_cache_equals_source($primary, $service, $db, 90, 'the cache equals the primary');

# The standby, caught up (outbox rows marked published included), then held
# behind.
$primary->backup('base');
my $standby = PostgreSQL::Test::Cluster->new('auth_standby');
$standby->init_from_backup($primary, 'base', has_streaming => 1);
$standby->start;
$primary->wait_for_catchup($standby);
# Promotion replays all the WAL the standby received, paused or not: a
# standby that is behind is one that did not receive it.  Cut the stream
# (while replay runs: a paused startup process does not restart the WAL
# receiver), then pause replay.
$standby->safe_psql('postgres', "ALTER SYSTEM SET primary_conninfo = ''");
$standby->reload;
ok(poll_until($standby, 'postgres', 'SELECT count(*) = 0 FROM pg_stat_wal_receiver'),
	'the standby receives no more WAL');
$standby->safe_psql('postgres', 'SELECT pg_wal_replay_pause()');
ok(poll_until($standby, 'postgres',
		q{SELECT pg_get_wal_replay_pause_state() = 'paused'}),
	'replay on the standby is paused');
is($standby->safe_psql('postgres', 'SELECT count(*) FROM pg_stat_activity WHERE backend_type LIKE \'citizen_sync%\''),
	'0', 'no citizen_sync worker runs on the standby');

my $max_held = $primary->safe_psql('auth_db', 'SELECT max(id) FROM citizen_sync.outbox');

# Changes the standby will never receive: 40 updates of 1..5, 6 deleted,
# citizens 31..33 created.
$primary->safe_psql('auth_db', q{
DO $$
BEGIN
    FOR i IN 1..8 LOOP
        UPDATE citizens SET phone = '+1-555-LOST-' || i WHERE id <= 5;
    END LOOP;
END
$$;
DELETE FROM citizens WHERE id = 6;
INSERT INTO citizens (name, email)
SELECT 'Lost ' || i, 'lost' || i || '@example.gov' FROM generate_series(31, 33) AS i;
});
wait_outbox_drained($primary, 60, 'the changes the standby misses are published');
wait_cache_equals_source($primary, $service, $db, 60, 'they reached the cache');
my $before = drops();
my $max_published = $primary->safe_psql('auth_db', 'SELECT max(id) FROM citizen_sync.outbox');

# Failover: the primary stops, the standby is promoted.
$primary->stop('fast');
$standby->promote;
is($standby->safe_psql('auth_db', 'SELECT count(*) FROM citizens'), '30',
	'the new primary has the 30 citizens of before the pause');
ok( poll_until(30, sub {
			(CitizenSync::Check::query_or_undef($standby, 'auth_db',
					q{SELECT count(*) FROM citizen_sync.worker_stats WHERE kind = 'publisher' AND pid IS NOT NULL})
				  // '') eq '1';
		}),
	'the publisher runs on the promoted standby');

# The application writes on the new primary.
$standby->safe_psql('auth_db', q{
UPDATE citizens SET phone = '+1-555-AFTER', city = 'Capital City' WHERE id <= 3;
DELETE FROM citizens WHERE id = 7;
UPDATE citizens SET email_verified = true WHERE id = 20;
INSERT INTO citizens (name, email, phone) VALUES ('New', 'new@example.gov', '+1-555-NEW');
});
ok( $standby->safe_psql('auth_db',
		"SELECT min(id) <= $max_published FROM citizen_sync.outbox WHERE id > $max_held") eq 't',
	"the new primary reuses outbox ids the old one published (up to $max_published)");
my $new_id = $standby->safe_psql('auth_db', q{SELECT id FROM citizens WHERE name = 'New'});
wait_outbox_drained($standby, 60, 'the new primary publishes its changes');

# Lost at the source: the updates of 4 and 5, the deletion of 6, the
# creation of 31..33 (unless the new citizen took one of their ids).
my @lost = (4, 5, 6, grep { $_ != $new_id } 31 .. 33);
wait_cache_equals_source($standby, $service, $db, 60,
	'every change on the new primary applied; the cache equals it but for the lost changes',
	\@lost);
is(drops(), $before, 'nothing dropped as stale or duplicate since the failover');
is( $service->safe_psql($db, q{
SELECT string_agg(citizen_id || ':' || coalesce(phone, '-') || ':' || is_active, ' ' ORDER BY citizen_id)
  FROM cache.citizen_refs WHERE citizen_id IN (1, 4, 6, 7)}),
	'1:+1-555-AFTER:true 4:+1-555-LOST-8:true 6:+1-555-6:false 7:+1-555-7:false',
	'the new primary\'s changes win; the changes lost at the source are still in the cache');

# heal() brings the cache back to the new primary's state.
$service->safe_psql($db, 'CREATE EXTENSION dblink');
my $conninfo = source_conninfo($standby);
is(drift($service, $db, $conninfo),
	join(',', '4|mismatched', '5|mismatched', '6|missing', map { "$_|extra" } grep { $_ > 30 } @lost),
	'consistency_check names exactly the changes lost at the source');
$service->safe_psql($db, "SELECT citizen_sync.heal($conninfo, interval '0 seconds')");
wait_outbox_drained($standby, 60, 'the healing events are published');
wait_cache_equals_source($standby, $service, $db, 60, 'after heal() the cache equals the new primary');
is(drift($service, $db, $conninfo), '', 'consistency_check reports nothing after heal()');
is(drops(), $before, 'no healing event was dropped as stale or duplicate');

$standby->stop;
$service->stop;
$kafka->stop;
done_testing();
