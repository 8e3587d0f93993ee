# Read-your-writes and change notifications with the embedded broker:
#
#   - a session blocked in wait_for() (wait event Extension: a latch, not a
#     poll) is woken by the consumer's commit and returns true, before its
#     timeout; false at the timeout for a version never sent; true at once
#     for an older version; true for a hard-deleted key (its tombstone);
#   - statement_timeout and pg_cancel_backend() interrupt it;
#   - the readonly role may wait, a role without SELECT on the target not;
#   - set_notify(): a LISTENer receives the changed keys in commit order,
#     only for committed batches (a batch that fails and is retried notifies
#     once), and the re-read marker past max_keys; unsubscribe drops it.
use strict;
use warnings;

use FindBin;
use lib "$FindBin::RealBin/../perl";

use IPC::Run;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time);

use CitizenSync::Broker;
use CitizenSync::Node;
use CitizenSync::Events;
use CitizenSync::Check qw(poll_until);

my $db = $CitizenSync::Node::DB;
my $topic = $CitizenSync::Broker::TOPIC;

my $broker = CitizenSync::Broker::start_broker(
	topics => [ "$topic:1", 'gov.auth.permission:1' ]);
my $node = CitizenSync::Node::new_node('wait_notify', $broker,
	extra => "citizen_sync.batch_size = 200\n");
$node->safe_psql($db, q{
CREATE TABLE cache.permissions (
    permission_id  text PRIMARY KEY,
    description    text,
    event_version  bigint NOT NULL,
    last_synced_at timestamptz);
SELECT citizen_sync.subscribe('cache.permissions', 'permission', delete_mode => 'hard',
    event_types => '{"permission.granted": "upsert", "permission.revoked": "delete"}');
CREATE ROLE stranger;
GRANT USAGE ON SCHEMA citizen_sync, cache TO stranger;
});

my $eid = 0;

sub citizen
{
	my ($cid, $v, $type) = @_;
	$type //= $v == 1 ? 'created' : 'updated';
	$eid++;
	return [
		"$cid",
		CitizenSync::Events::event_json(
			type => $type,
			event_id => "w$eid",
			citizen_id => $cid,
			version => $v,
			snapshot => $type eq 'deleted' ? undef : CitizenSync::Events::snapshot($cid, $v))
	];
}

sub permission
{
	my ($kind, $v, $id) = @_;
	$eid++;
	my $snap = $kind eq 'granted' ? qq(,"snapshot":{"id":"$id","description":"d$v"}) : '';
	return [ "permission_$id",
		sprintf('{"event_type":"permission.%s","event_id":"p%d","event_version":%d,'
			  . '"data":{"permission_id":"%s"%s}}', $kind, $eid, $v, $id, $snap) ];
}

sub produce_citizens
{
	$broker->produce($topic, [@_]);
}

sub wait_version
{
	my ($cid, $v) = @_;
	ok( poll_until($node, $db,
			"SELECT event_version >= $v FROM cache.citizen_refs WHERE citizen_id = $cid"),
		"citizen $cid version $v applied");
}

# A psql session in the background running $sql; returns (harness, \out, \err).
sub start_psql
{
	my ($sql) = @_;
	my ($out, $err) = ('', '');
	my $h = IPC::Run::start(
		[ 'psql', '-X', '-A', '-t', '-q', '-d', $node->connstr($db), '-c', $sql ],
		'>', \$out, '2>', \$err);
	return ($h, \$out, \$err);
}

sub wait_blocked
{
	my ($what) = @_;
	ok( poll_until($node, $db, q{
SELECT count(*) > 0 FROM pg_stat_activity
 WHERE wait_event_type = 'Extension' AND query LIKE '%wait_for(%' AND pid <> pg_backend_pid()}),
		"$what: the session sleeps in wait_for (wait event Extension)");
}

produce_citizens(citizen(42, 1));
wait_version(42, 1);

# --- woken by the consumer's commit ------------------------------------------
my ($h, $out, $err) = start_psql(
	q{SELECT r, round(extract(epoch FROM clock_timestamp() - statement_timestamp()) * 1000)
        FROM citizen_sync.wait_for('cache.citizen_refs', '42', 2, '60 s') AS r});
wait_blocked('version 2 not yet there');
my $t0 = time;
produce_citizens(citizen(42, 2));
$h->finish;
my $elapsed = time - $t0;
like($$out, qr/^t\|\d+$/m, 'wait_for returns true once the consumer applied version 2')
  or diag("out: $$out err: $$err");
my ($ms) = $$out =~ /\|(\d+)/;
ok(defined $ms && $ms < 50_000, "... well before its 60 s timeout (after ${\($ms // '?')} ms)");
note(sprintf('produce -> wait_for true: %.0f ms', $elapsed * 1000));

is($node->safe_psql($db, q{SELECT citizen_sync.wait_for('cache.citizen_refs', '42', 1, '0')}),
	't', 'an older version: true at once');
is($node->safe_psql($db, q{SELECT citizen_sync.wait_for('cache.citizen_refs', '42', 2, '0')}),
	't', 'the same version: true at once');
my $t1 = time;
is($node->safe_psql($db, q{SELECT citizen_sync.wait_for('cache.citizen_refs', '42', 99, '300 ms')}),
	'f', 'a version never sent: false at the timeout');
ok(time - $t1 >= 0.3, 'false only after the timeout elapsed');
is($node->safe_psql($db, q{SELECT citizen_sync.wait_for('cache.citizen_refs', '7', 1, '0')}),
	'f', 'a key never sent: false');

# REPEATABLE READ: its snapshot never sees a later commit
my ($rc, $stdout, $stderr) = $node->psql($db, q{
BEGIN ISOLATION LEVEL REPEATABLE READ;
SELECT 1;
SELECT citizen_sync.wait_for('cache.citizen_refs', '42', 99, '10 s');
});
like($stderr, qr/wait_for cannot wait under REPEATABLE READ/, 'REPEATABLE READ: an error, not a vain wait');

# --- hard delete: the tombstone counts -----------------------------------------
$broker->produce('gov.auth.permission',
	[ permission('granted', 1, 'p1'), permission('revoked', 2, 'p1') ]);
ok( poll_until($node, $db,
		q{SELECT count(*) = 1 FROM citizen_sync.tombstones WHERE key = 'p1'}),
	'permission p1 hard-deleted');
is($node->safe_psql($db, q{SELECT citizen_sync.wait_for('cache.permissions', 'p1', 2, '0')}),
	't', 'a hard-deleted key: its tombstone version counts');
is($node->safe_psql($db, q{SELECT citizen_sync.wait_for('cache.permissions', 'p1', 3, '0')}),
	'f', '... and not a newer one');

# --- interrupts ------------------------------------------------------------------
($rc, $stdout, $stderr) = $node->psql($db, q{
SET statement_timeout = '300ms';
SELECT citizen_sync.wait_for('cache.citizen_refs', '42', 99, '60 s');
});
like($stderr, qr/canceling statement due to statement timeout/, 'statement_timeout interrupts wait_for');

($h, $out, $err) = start_psql(q{SELECT citizen_sync.wait_for('cache.citizen_refs', '42', 99, '60 s')});
wait_blocked('before the cancel');
$node->safe_psql($db, q{
SELECT pg_cancel_backend(pid) FROM pg_stat_activity
 WHERE wait_event_type = 'Extension' AND query LIKE '%wait_for(%' AND pid <> pg_backend_pid()});
$h->finish;
like($$err, qr/canceling statement due to user request/, 'pg_cancel_backend interrupts wait_for');

# --- privileges --------------------------------------------------------------------
is( $node->safe_psql($db, q{
SET ROLE permits_readonly_user;
SELECT citizen_sync.wait_for('cache.citizen_refs', '42', 2, '0');
}), 't', 'the readonly role may wait for a table it reads');
($rc, $stdout, $stderr) = $node->psql($db, q{
SET ROLE stranger;
SELECT citizen_sync.wait_for('cache.citizen_refs', '42', 2, '0');
});
like($stderr, qr/permission denied to wait for table cache\.citizen_refs/,
	'a role without SELECT on the target is refused');
like($stderr, qr/HINT:  Grant SELECT/, '... with a hint');

# --- change notifications ----------------------------------------------------------
$node->safe_psql($db, q{SELECT citizen_sync.set_notify('cache.citizen_refs', 'citizen_changes')});

my ($lin, $lout, $lerr) = ('', '', '');
my $listener = IPC::Run::start(
	[ 'psql', '-X', '-A', '-t', '-d', $node->connstr($db) ],
	'<', \$lin, '>', \$lout, '2>', \$lerr);
my $sync_n = 0;

# Everything the listener received so far: the payloads in order, once at
# least $want arrived (psql prints a notification after the command during
# or after which its backend passed it on: sync queries until then).
sub notifications
{
	my ($want) = @_;
	my $deadline = time + $PostgreSQL::Test::Utils::timeout_default;
	my @p;
	do
	{
		$sync_n++;
		$lin .= "SELECT 'sync$sync_n';\n";
		$listener->pump until $lout =~ /^sync$sync_n$/m || time > $deadline;
		@p = $lout =~ /Asynchronous notification "citizen_changes" with payload "(.*)" received/g;
	} while (@p < ($want // 0) && time < $deadline);
	return @p;
}
$lin .= "LISTEN citizen_changes;\n";
notifications();

# three batches, one after the other
for my $cid (1, 2, 3)
{
	produce_citizens(citizen($cid, 1));
	wait_version($cid, 1);
}
my @p = notifications(3);
is_deeply(
	\@p,
	[
		'{"target": "cache.citizen_refs", "applied": ["1"], "deleted": []}',
		'{"target": "cache.citizen_refs", "applied": ["2"], "deleted": []}',
		'{"target": "cache.citizen_refs", "applied": ["3"], "deleted": []}'
	],
	'one notification per batch, in commit order, naming the applied keys');

# a batch that fails (a non-data error rolls it back) and is retried
$node->safe_psql($db, q{
CREATE TABLE public.fail_next (on_ boolean);
GRANT SELECT ON public.fail_next TO PUBLIC;
INSERT INTO public.fail_next VALUES (true);
CREATE FUNCTION public.fail_if_asked() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM public.fail_next) THEN
        RAISE EXCEPTION 'injected batch failure' USING ERRCODE = 'lock_not_available';
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER fail_if_asked BEFORE INSERT OR UPDATE ON cache.citizen_refs
    FOR EACH ROW EXECUTE FUNCTION public.fail_if_asked();
});
my $log_offset = -s $node->logfile;
produce_citizens(citizen(3, 2, 'deleted'));
ok($node->wait_for_log(qr/injected batch failure/, $log_offset), 'the batch failed');
$node->safe_psql($db, q{DELETE FROM public.fail_next});
wait_version(3, 2);
@p = notifications(4);
is_deeply(
	[ @p[ 3 .. $#p ] ],
	['{"target": "cache.citizen_refs", "applied": [], "deleted": ["3"]}'],
	'a failed and retried batch notifies once, after its commit');
$node->safe_psql($db, q{DROP TRIGGER fail_if_asked ON cache.citizen_refs});

# past max_keys: the re-read marker
$node->safe_psql($db, q{SELECT citizen_sync.set_notify('cache.citizen_refs', 'citizen_changes', max_keys => 0)});
produce_citizens(citizen(4, 1));
wait_version(4, 1);
@p = notifications(5);
is($p[-1], '{"target": "cache.citizen_refs", "reread": true}', 'past max_keys: the re-read marker');

# opted out: nothing more
$node->safe_psql($db, q{SELECT citizen_sync.set_notify('cache.citizen_refs', NULL)});
my $before = scalar @p;
produce_citizens(citizen(5, 1));
wait_version(5, 1);
@p = notifications($before);
is(scalar @p, $before, 'opted out: no notification');

$lin .= "\\q\n";
$listener->finish;

# unsubscribe drops the opt-in with the subscription
$node->safe_psql($db, q{
SELECT citizen_sync.set_notify('cache.permissions', 'permission_changes');
SELECT citizen_sync.unsubscribe('cache.permissions');
});
is($node->safe_psql($db, q{SELECT count(*) FROM citizen_sync.subscription_notify}),
	'0', 'unsubscribe drops the notification opt-in');

$node->stop;
done_testing();
