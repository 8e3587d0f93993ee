# One undeliverable outbox row must not starve the publisher (issue 8,
# item 5).
#
# A DML-only application role inserts a citizen with a 1.1 MB address (the
# producer refuses it for good: "Message size too large", message.max.bytes
# is 1,000,000), then updates that citizen 60 times, with other citizens
# inserted and updated before and after.  publisher_batch_size = 50 stands
# for the default 5,000 against a larger burst: the citizen's 61 rows fill
# every round that reads the oldest pending rows.
#
# Required:
# 1. every other citizen reaches the caches within a deadline; the big
#    citizen's first row is set aside (set_aside_at, last_error), its 60
#    later rows stay pending (nothing of it on the topic, so nothing out of
#    order), outbox_backlog.set_aside = 1, and the row is not retried round
#    after round;
# 2. retry_set_aside() (operators only) releases it: without a fix it is set
#    aside again; after a fix (its payload shrunk) all 61 rows are delivered,
#    in order;
# 3. a round takes the oldest row of as many different aggregates as it can
#    hold: a citizen with 100 pending versions does not hold back 40 others;
# 4. errors reported by the broker: a permanent one hitting several rows of
#    one partition is not pinned on any of them (each is sent again on its
#    own); a permanent one hitting a row alone in its partition or sent alone
#    sets it aside; a transient one is retried, never set aside; a fatal
#    producer error replaces the producer.
#
# The topic has one partition, so every round's rows share it (phase 4).
use strict;
use warnings;

use FindBin;
use lib "$FindBin::RealBin/../perl";
use CitizenSync::Broker qw(:all);
use CitizenSync::Node qw(:all);
use CitizenSync::Events qw(:all);
use CitizenSync::Check qw(:all);
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $kafka = start_broker(topics => ["$TOPIC:1"]);
# linger.ms=20: the rows a round produces at once make one record batch.
my $node = start_pipeline('set_aside', $kafka, conf => q{
citizen_sync.publisher_batch_size = 50
citizen_sync.restart_delay = 1s
citizen_sync.kafka_properties = 'session.timeout.ms=6000;heartbeat.interval.ms=500;linger.ms=20'
});

$node->safe_psql('auth_db', q{
CREATE ROLE app_writer LOGIN;
GRANT SELECT, INSERT, UPDATE, DELETE ON citizens TO app_writer;
GRANT USAGE ON SEQUENCE citizens_id_seq TO app_writer;
});

# SQL as the application's DML-only role.
sub as_app
{
	my ($sql) = @_;
	return $node->safe_psql('auth_db', $sql, extra_params => [ '-U', 'app_writer' ]);
}

sub q1
{
	my ($sql) = @_;
	return $node->safe_psql('auth_db', $sql);
}

# source_state / cache_state without the lines of citizen $skip.
sub without
{
	my ($state, $skip) = @_;
	return undef unless defined $state;
	return join("\n", grep { !/^\Q$skip\E\|/ } split /\n/, $state);
}

# Messages of one key on the topic, as "v<event_version>" in offset order.
sub versions_on_topic
{
	my ($key) = @_;
	return join(' ', map { 'v' . ($_->{event} ? $_->{event}{event_version} : '?') }
		  grep { ($_->{key} // '') eq $key } topic_events($kafka));
}

######################################################################
# 1. The exact scenario.
######################################################################
as_app(q{
INSERT INTO citizens (name, email, city)
SELECT 'Before ' || i, 'b' || i || '@example.gov', 'Springfield' FROM generate_series(1, 20) AS i;
UPDATE citizens SET city = 'Shelbyville' WHERE id % 2 = 0;
});
wait_outbox_drained($node, 30, 'citizens changed before are published');

my $big = as_app(q{
INSERT INTO citizens (name, email, address)
VALUES ('Big v1', 'big@example.gov', repeat('x', 1100000)) RETURNING id});
as_app(join("\n",
		"UPDATE citizens SET name = 'Big v2', address = '1 Main St' WHERE id = $big;",
		map { "UPDATE citizens SET name = 'Big v$_' WHERE id = $big;" } 3 .. 61));
as_app(q{
INSERT INTO citizens (name, email, city)
SELECT 'After ' || i, 'a' || i || '@example.gov', 'Ogdenville' FROM generate_series(1, 30) AS i;
UPDATE citizens SET phone = '+1-555-0100' WHERE name LIKE 'Before %' AND id % 3 = 0;
DELETE FROM citizens WHERE name = 'Before 5';
});
my ($first, $nrows) = split /\|/,
  q1("SELECT min(id), count(*) FROM citizen_sync.outbox WHERE aggregate_id = '$big'");
is($nrows, 61, 'the big citizen has 61 outbox rows (insert + 60 updates)');

my %last;
my $others = poll_until(
	60,
	sub {
		my $want = without(source_state($node), $big);
		for my $db (@SERVICE_DBS)
		{
			$last{$db} = without(cache_state($node, $db), $big);
			return 0 unless defined $want && defined $last{$db} && $want eq $last{$db};
		}
		return 1;
	},
	500);
ok($others, 'every other citizen reaches both caches while the big one cannot be delivered')
  or diag('pending rows per citizen: '
	  . q1(q{SELECT string_agg(aggregate_id || ':' || n, ' ') FROM (
  SELECT aggregate_id, count(*) AS n FROM citizen_sync.outbox
   WHERE published_at IS NULL GROUP BY 1 ORDER BY 1) s})
	  . "\npublisher: " . join('', explain(publisher_stats($node))));

my ($aside, $retries, $err, $pending) = split /\|/, q1(qq{
SELECT set_aside_at IS NOT NULL, retry_count, coalesce(last_error, ''), published_at IS NULL
  FROM citizen_sync.outbox WHERE id = $first});
is($aside, 't', "the big citizen's first row ($first) is set aside");
is($pending, 't', 'a set-aside row is not marked published');
like($err, qr/too large/i, "its last_error says why ($err)");
is($retries, 1, 'it failed once');
is( q1(qq{
SELECT count(*) FILTER (WHERE published_at IS NULL AND set_aside_at IS NULL),
       count(*) FILTER (WHERE published_at IS NOT NULL)
  FROM citizen_sync.outbox WHERE aggregate_id = '$big' AND id > $first}),
	'60|0',
	'its 60 later rows wait, pending and not set aside');
is(versions_on_topic("citizen_$big"), '', 'nothing of the big citizen is on the topic');
is(q1('SELECT pending, set_aside FROM citizen_sync.outbox_backlog'), '61|1',
	'outbox_backlog: 61 pending rows, 1 set aside');
ok($node->log_contains(qr/outbox row $first .*set aside/), 'the server log names the set-aside row');

# Later rounds leave it alone.
as_app(q{INSERT INTO citizens (name, email) VALUES ('Later', 'later@example.gov')});
wait_outbox_drained_but($first, 61);
is(q1("SELECT retry_count, set_aside_at IS NOT NULL FROM citizen_sync.outbox WHERE id = $first"),
	'1|t', 'the set-aside row is not retried by later rounds');

# Waits until the only pending rows are the $n of the big citizen.
sub wait_outbox_drained_but
{
	my ($row, $n) = @_;
	local $Test::Builder::Level = $Test::Builder::Level + 1;
	ok( poll_until(30, sub {
				(query_or_undef($node, 'auth_db', qq{
SELECT count(*) FILTER (WHERE aggregate_id <> '$big'), count(*) FROM citizen_sync.outbox
 WHERE published_at IS NULL}) // '') eq "0|$n";
			}),
		'other changes are published');
	return;
}

######################################################################
# 2. Retry: operators only; without a fix, set aside again; after a fix,
#    all 61 rows in order.
######################################################################
my ($stdout, $stderr);
$node->psql('auth_db', 'SELECT * FROM citizen_sync.retry_set_aside()',
	extra_params => [ '-U', 'app_writer' ], stdout => \$stdout, stderr => \$stderr);
like($stderr, qr/permission denied/, 'the application role cannot call retry_set_aside()');

is(q1("SELECT id FROM citizen_sync.retry_set_aside(ARRAY[$first])"), $first,
	'retry_set_aside() releases the row');
ok( poll_until(30, sub {
			(query_or_undef($node, 'auth_db', qq{
SELECT retry_count = 2 AND set_aside_at IS NOT NULL FROM citizen_sync.outbox WHERE id = $first})
			  // '') eq 't';
		}),
	'without a fix, it fails again and is set aside again');
is(versions_on_topic("citizen_$big"), '', 'still nothing of the big citizen on the topic');

# The fix: the operator withholds the address in the stored event.
q1(qq{
UPDATE citizen_sync.outbox
   SET payload = jsonb_set(payload, '{data,snapshot,address}', '"(withheld: 1.1 MB)"')
 WHERE id = $first});
is(q1('SELECT count(*) FROM citizen_sync.retry_set_aside()'), '1',
	'retry_set_aside() with no argument releases every set-aside row');
wait_outbox_drained($node, 60, 'after the fix, the big citizen is published');
my $big_versions = q1(qq{
SELECT string_agg('v' || (payload ->> 'event_version'), ' ' ORDER BY id) FROM citizen_sync.outbox
 WHERE aggregate_type = 'citizen' AND aggregate_id = '$big'});
is(scalar(split / /, $big_versions), 61, 'the big citizen has 61 outbox rows');
is(versions_on_topic("citizen_$big"), $big_versions,
	'its 61 versions are on the topic once each, in order');
is(q1('SELECT pending, set_aside FROM citizen_sync.outbox_backlog'), '0|0',
	'outbox_backlog: nothing pending or set aside');
wait_caches_converged($node, 60, 'the caches hold the big citizen too');

######################################################################
# 3. Different aggregates per round: one commit makes 100 versions of a
#    hot citizen and 40 new citizens pending; the first round takes the hot
#    citizen's oldest row and all 40 others.
######################################################################
my $hot = q1(q{SELECT min(id) FROM citizens WHERE name LIKE 'After %'});
my $mark = q1('SELECT max(id) FROM citizen_sync.outbox');
as_app("BEGIN;\n"
	  . join("\n", map { "UPDATE citizens SET name = 'Hot v$_' WHERE id = $hot;" } 1 .. 100)
	  . q{
INSERT INTO citizens (name, email)
SELECT 'Burst ' || i, 'burst' || i || '@example.gov' FROM generate_series(1, 40) AS i;
COMMIT;});
wait_outbox_drained($node, 60, 'the burst is published');
is( q1(qq{
SELECT count(*), count(DISTINCT published_at) FROM citizen_sync.outbox
 WHERE id > $mark
   AND (aggregate_id <> '$hot'
        OR id = (SELECT min(id) FROM citizen_sync.outbox WHERE id > $mark AND aggregate_id = '$hot'))}),
	'41|1',
	"one round carried the hot citizen's oldest row and the 40 new citizens");

######################################################################
# 4. Errors reported by the broker (delivery reports).
######################################################################
# a. INVALID_RECORD (87, permanent) for a request carrying several rows of
#    the partition: no row is set aside on that evidence; the next round
#    sends each on its own, one after the other.  The broker rejects the
#    first of those too (the error is pushed twice): that row, sent alone,
#    is set aside; the others go through.
$mark = q1('SELECT max(id) FROM citizen_sync.outbox');
$kafka->push_errors(0, 87, 2);
as_app(q{UPDATE citizens SET city = 'Capital City' WHERE name LIKE 'Before 1%'});
my ($n, $min) = split /\|/, q1("SELECT count(*), min(id) FROM citizen_sync.outbox WHERE id > $mark");
cmp_ok($n, '>', 2, "one commit, $n rows in one round");
ok( poll_until(30, sub {
			(query_or_undef($node, 'auth_db', qq{
SELECT count(*) FILTER (WHERE published_at IS NULL) FROM citizen_sync.outbox WHERE id > $mark})
			  // '') eq '1';
		}),
	'rows rejected together are sent again, one at a time');
is( q1(qq{
SELECT string_agg(id || ':' || retry_count || ':' || (set_aside_at IS NOT NULL), ' ' ORDER BY id)
  FROM citizen_sync.outbox WHERE id > $mark AND published_at IS NULL}),
	"$min:2:true",
	'only the first of them, rejected again when alone, is set aside');
is( q1(qq{
SELECT count(*) FILTER (WHERE retry_count = 1) FROM citizen_sync.outbox
 WHERE id > $mark AND published_at IS NOT NULL}),
	$n - 1,
	'the others failed once (with the whole batch) and were then published');
is(q1('SELECT count(*) FROM citizen_sync.retry_set_aside()'), '1', 'released');
wait_outbox_drained($node, 30, 'and published');

# b. The same error for a row sent alone: set aside.
$mark = q1('SELECT max(id) FROM citizen_sync.outbox');
$kafka->push_errors(0, 87, 1);
as_app("UPDATE citizens SET city = 'North Haverbrook' WHERE id = $hot");
my $row = q1("SELECT max(id) FROM citizen_sync.outbox WHERE id > $mark");
ok( poll_until(30, sub {
			(query_or_undef($node, 'auth_db',
				"SELECT set_aside_at IS NOT NULL FROM citizen_sync.outbox WHERE id = $row") // '') eq 't';
		}),
	'a row the broker rejects for good is set aside');
like(q1("SELECT last_error FROM citizen_sync.outbox WHERE id = $row"), qr/INVALID_RECORD/,
	'last_error names the broker error');
is(q1('SELECT set_aside FROM citizen_sync.outbox_backlog'), '1', 'outbox_backlog counts it');
is(q1('SELECT count(*) FROM citizen_sync.retry_set_aside()'), '1', 'released');
wait_outbox_drained($node, 30, 'and published');

# c. UNKNOWN_SERVER_ERROR (-1, not retried by librdkafka): transient for the
#    publisher, retried and never set aside.
$mark = q1('SELECT max(id) FROM citizen_sync.outbox');
$kafka->push_errors(0, -1, 1);
as_app("UPDATE citizens SET city = 'Springfield' WHERE id = $hot");
wait_outbox_drained($node, 30, 'a row failing with a transient error is published');
is( q1(qq{SELECT retry_count, set_aside_at IS NULL FROM citizen_sync.outbox WHERE id > $mark}),
	'1|t',
	'it failed once, was retried, and was never set aside');

# d. OUT_OF_ORDER_SEQUENCE_NUMBER (45) for the head of the partition's
#    requests: librdkafka raises a fatal error (the idempotent producer
#    cannot go on).  Not the row's fault: the producer is replaced and the
#    row retried.
$mark = q1('SELECT max(id) FROM citizen_sync.outbox');
$kafka->push_errors(0, 45, 1);
as_app("UPDATE citizens SET city = 'Shelbyville' WHERE id = $hot");
wait_outbox_drained($node, 60, 'a row failing with a fatal producer error is published');
is( q1(qq{SELECT retry_count >= 1, set_aside_at IS NULL FROM citizen_sync.outbox WHERE id > $mark}),
	't|t',
	'it was retried with a new producer, never set aside');
ok($node->log_contains(qr/fatal Kafka producer error/), 'the fatal error and the new producer are logged');

######################################################################
# Everything, in order, exactly once.
######################################################################
wait_caches_converged($node, 60);
my @events = topic_events($kafka);
check_topic_complete($node, \@events);
check_topic_order(\@events);
check_topic_has_outbox($node, \@events);

$node->stop;
$kafka->stop;
done_testing();
