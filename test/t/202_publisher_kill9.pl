# kill -9 of the publisher in the middle of relaying ~30k outbox rows.
#
# The postmaster treats the lost worker as a crash: every process is
# terminated, the instance goes through crash recovery, and the launcher
# starts the publisher and the consumers again.  Nothing may be lost: every
# outbox row ends published and on the topic (rows delivered but not yet
# marked are sent again; consumers drop the duplicates), and every cache ends
# equal to the source.
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
my $node = start_pipeline('kill9', $kafka,
	conf => "citizen_sync.restart_delay = 1s\nrestart_after_crash = on\n"
	  . "citizen_sync.publisher_batch_size = 500\n");

# Slow every broker response down so that a publishing round (read up to
# 500 rows, produce them, wait for their delivery reports, mark them) lasts
# over a second: ~60 rounds, so that the kill lands in the middle of the
# relay however slowly this test's own queries run on a loaded machine.
$kafka->rtt(1, 1000);

# ~30k changes in a few big transactions.
$node->safe_psql('auth_db', citizens_sql(10000, phone => 1) . q{
UPDATE citizens SET email_verified = true;
UPDATE citizens SET city = 'Shelbyville', address = id || ' Elm St' WHERE id % 2 = 0;
UPDATE citizens SET name = name || ' Jr.' WHERE id % 3 = 0;
DELETE FROM citizens WHERE id % 10 = 0;
});
my $total = $node->safe_psql('auth_db', 'SELECT count(*) FROM citizen_sync.outbox');
cmp_ok($total, '>=', 29000, "$total outbox rows to publish");

# Wait until a first batch is marked published, then until the publisher has
# read its next batch (its activity goes "running" while it reads the outbox,
# then "idle" with a new state_change); that batch is now being produced and
# its delivery reports are ~1 s away: kill it.
my $published;
ok( poll_until(
		60,
		sub {
			$published = query_or_undef($node, 'auth_db',
				'SELECT count(*) FROM citizen_sync.outbox WHERE published_at IS NOT NULL');
			return defined $published && $published > 0;
		},
		20),
	'a first batch is published');
my $ppid = publisher_stats($node)->{pid};
my $activity = "SELECT state || '|' || state_change FROM pg_stat_activity WHERE pid = $ppid";
my $seen = $node->safe_psql('auth_db', $activity);
my $now;
ok( poll_until(
		30,
		sub {
			$now = $node->safe_psql('auth_db', $activity);
			return $now ne $seen && $now =~ /^idle\|/;
		},
		10),
	"the publisher read its next batch ('$seen' -> '$now')");

my $old_pid = $ppid;
$published = $node->safe_psql('auth_db',
	'SELECT count(*) FROM citizen_sync.outbox WHERE published_at IS NOT NULL');
my $log_offset = -s $node->logfile;
is(kill('KILL', $old_pid), 1, "kill -9 sent to the publisher (pid $old_pid)");
cmp_ok($published, '<', $total, "killed mid-way: $published of $total rows marked published");
$kafka->rtt(1, 0);

# Crash recovery, then a new publisher.
ok( poll_until(
		60,
		sub {
			my $s = publisher_stats($node);
			return $s && $s->{pid} > 0 && $s->{pid} != $old_pid
			  && $s->{state} eq 'running';
		}),
	'the launcher started a new publisher after crash recovery');
my $log = slurp_file($node->logfile, $log_offset);
like($log, qr/\(PID $old_pid\) was terminated by signal 9/,
	'the postmaster saw the publisher killed');
like($log, qr/all server processes terminated; reinitializing/,
	'the instance went through crash recovery');

wait_outbox_drained($node, 90);

# Every outbox row is on the topic at least once (some twice: those delivered
# but not marked when the publisher died).
my @events = topic_events($kafka);
my $dups = check_topic_has_outbox($node, \@events);
check_topic_complete($node, \@events);
note(scalar(@events) . " messages on the topic for $total rows; $dups sent more than once");
cmp_ok($dups, '>', 0,
	'the batch in flight at the kill was sent again after the restart (consumers drop the duplicates)');

wait_caches_converged($node, 120);
check_outbox_complete($node);
check_no_dead_letters($node, $_) for @SERVICE_DBS;

$node->stop;
$kafka->stop;
done_testing();
