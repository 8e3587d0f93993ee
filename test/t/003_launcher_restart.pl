# A launcher restarted after an error never leaves two workers in a slot.
#
# Dynamic workers outlive the launcher that started them; PostgreSQL restarts
# the launcher (5 s after it exits with an error) with no handles for them.
# It used to start a second consumer and a second publisher beside them; the
# old ones ran on, unmanaged: a reload that removed the publisher stopped
# only the new one and cleared the slot, so the old publisher kept running
# with no row in worker_stats.  The new launcher stops them first.
#
# No Kafka is needed: the workers wait at the version check (database at
# 0.1.0), which keeps them running in a known state.
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

use FindBin;
use lib "$FindBin::RealBin/../perl";
use CitizenSync::Check qw(poll_until);
use CitizenSync::Node;

my $node = CitizenSync::Node::new_old_db_node('launcher_restart');
$node->safe_psql('postgres', 'CREATE DATABASE old_db');
$node->safe_psql('old_db', q{CREATE EXTENSION citizen_sync VERSION '0.1.0'});

my $waiting = q{
SELECT count(*) = 2 FROM citizen_sync.worker_stats
 WHERE state = 'waiting' AND pid IS NOT NULL AND last_error LIKE '%has citizen_sync 0.1.0%'
};
poll_until($node, 'old_db', $waiting) or die 'the workers did not start';

my %old = split /[|\n]/, $node->safe_psql('old_db',
	q{SELECT kind, pid FROM citizen_sync.worker_stats ORDER BY kind});
my $launcher_sql = q{SELECT pid FROM pg_stat_activity WHERE backend_type = 'citizen_sync launcher'};
my $old_launcher = $node->safe_psql('postgres', $launcher_sql);
ok($old{consumer} && $old{publisher} && $old_launcher, 'launcher, consumer and publisher run');

# A cancel makes the launcher exit with an error; PostgreSQL restarts it.
$node->safe_psql('postgres', "SELECT pg_cancel_backend($old_launcher)");
poll_until($node, 'postgres',
	"SELECT count(*) = 1 FROM pg_stat_activity WHERE backend_type = 'citizen_sync launcher' AND pid <> $old_launcher")
  or die 'the launcher was not restarted';
poll_until($node, 'old_db', qq{
SELECT count(*) = 2 FROM citizen_sync.worker_stats
 WHERE state = 'waiting' AND pid NOT IN ($old{consumer}, $old{publisher})
   AND last_error LIKE '%has citizen_sync 0.1.0%'
}) or die 'the new launcher did not start its workers';

my $worker_pids = q{
SELECT string_agg(format('%s %s', backend_type, pid), ', ' ORDER BY backend_type, pid)
  FROM pg_stat_activity WHERE backend_type IN ('citizen_sync consumer', 'citizen_sync publisher')
};
my $slot_pids = q{
SELECT string_agg(format('citizen_sync %s %s', kind, pid), ', ' ORDER BY kind, pid)
  FROM citizen_sync.worker_stats
};
is($node->safe_psql('old_db', $worker_pids), $node->safe_psql('old_db', $slot_pids),
	'one consumer and one publisher run, each the one its slot names (the old ones are gone)');
like(slurp_file($node->logfile),
	qr/stopping the publisher for database "old_db" \(pid $old{publisher}\) that a previous launcher started/,
	'the new launcher logs that it stops the old publisher');

# A reload that removes the publisher stops it: none runs without a slot.
$node->append_conf('postgresql.conf', "citizen_sync.outbox_database = ''");
$node->reload;
poll_until($node, 'old_db', q{
SELECT count(*) = 0 FROM pg_stat_activity WHERE backend_type = 'citizen_sync publisher'
}) or die 'a publisher still runs after it was removed';
is($node->safe_psql('old_db', q{SELECT string_agg(kind, ',') FROM citizen_sync.worker_stats}),
	'consumer', 'only the consumer remains');

$node->stop;
done_testing();
