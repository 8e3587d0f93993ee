# Errors with context, queryable by an operator.
#
# A batch failing for a system reason (the sync user lost INSERT on the
# cache) is logged with an error context naming the database, the topic,
# partition and offset range of the batch and its first event id, and the
# view citizen_sync.worker_errors keeps it with SQLSTATE 42501, DETAIL-less
# message and that context (on 0.1.0 only a 512-byte message survived, in
# consumer_stats.last_error).  Retries of the same failure are counted, not
# piled up.  Workers log when they start and stop, and each dead letter;
# pg_monitor reads the view, PUBLIC does not.
use strict;
use warnings;

use FindBin;
use lib "$FindBin::RealBin/../perl";
use CitizenSync::Broker;
use CitizenSync::Node;
use CitizenSync::Events;
use CitizenSync::Check qw(poll_until);

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;


my $db = $CitizenSync::Node::DB;
my $topic = 'gov.auth.citizen';
my $sync = $CitizenSync::Node::SYNC_ROLE;

my $broker = CitizenSync::Broker::start_broker(topics => ["$topic:1"]);
my $node = CitizenSync::Node::new_node('error_context', $broker);

ok( poll_until($node, $db, qq{
SELECT count(*) = 1 FROM citizen_sync.consumer_stats WHERE database = '$db' AND state = 'running'}),
	'the consumer runs');
ok($node->log_contains(qr/LOG:  citizen_sync: consumer for database "$db" started \(pid \d+\)/),
	'the consumer logged its start, naming its database');

my $m = CitizenSync::Events::new_model(seed => 112);
my $ev1 = CitizenSync::Events::add_events($m, citizens => [ 1 .. 20 ], tag => 'a');
$broker->produce($topic, $ev1);
CitizenSync::Check::load_expected($node, $db, $m);
CitizenSync::Check::wait_converged($node, $db, 'the cache converges (first stream)');
my $first_offset = $broker->offsets($topic)->{partitions}{0}[1];
my $log_offset = -s $node->logfile;

# --- a batch failing for a system reason -----------------------------------
$node->safe_psql($db, "REVOKE INSERT ON cache.citizen_refs FROM $sync");
my $ev2 = CitizenSync::Events::add_events($m, citizens => [ 101 .. 110 ], tag => 'b');
$broker->produce($topic, $ev2);
ok( poll_until($node, $db, q{
SELECT count(*) > 0 FROM citizen_sync.worker_errors WHERE sqlstate = '42501'}),
	'worker_errors shows the failing batch with SQLSTATE 42501');
my $row = $node->safe_psql($db, qq{
SELECT kind, database, source, message, context
  FROM citizen_sync.worker_errors WHERE sqlstate = '42501'});
note("worker_errors: $row");
my ($kind, $database, $source, $message, $context) = split /\|/, $row, 5;
is($kind, 'consumer', 'kind is consumer');
is($database, $db, 'database names the consumed database');
is($source, 'database', 'source is database');
like($message, qr/permission denied for table citizen_refs/, 'message is the error');
# A batch of one event (the first message of the stream alone, on a loaded
# machine) is named as that event.
like($context,
	qr/applying (?:a batch of \d+ events in database "$db": topic "$topic", partition 0, offsets $first_offset\.\.\d+, first event "evt_b_|event "evt_b_[^"]*" in database "$db": topic "$topic", partition 0, offset $first_offset)/,
	'context names database, topic, partition, offset range and first event id');
like($context, qr/citizen_sync consumer for database "$db"/, 'context names the worker');

ok( poll_until($node, $db, q{
SELECT repeats >= 2 FROM citizen_sync.worker_errors WHERE sqlstate = '42501'}),
	'a retry of the same failure counts as a repeat');
is($node->safe_psql($db, q{SELECT count(*) FROM citizen_sync.worker_errors WHERE sqlstate = '42501'}),
	1, 'one entry for the repeated failure');

ok( $node->log_contains(
		qr/ERROR:  permission denied for table citizen_refs\n.*CONTEXT:  (?:.*\n)*?\tapplying (?:a batch of \d+ events|event "evt_b_[^"]*") in database "$db": topic "$topic", partition 0, offsets? \d+/,
		$log_offset),
	'the server log line has the context');

# --- access ------------------------------------------------------------------
$node->safe_psql($db, 'CREATE ROLE watcher LOGIN IN ROLE pg_monitor; CREATE ROLE nobody LOGIN');
is($node->safe_psql($db, 'SELECT count(*) > 0 FROM citizen_sync.worker_errors', extra_params => [ '-U', 'watcher' ]),
	't', 'pg_monitor reads worker_errors');
my ($ret, $out, $err) = $node->psql($db, 'SELECT count(*) FROM citizen_sync.worker_errors',
	extra_params => [ '-U', 'nobody' ]);
like($err, qr/permission denied/, 'PUBLIC does not');

# --- back to normal; dead letters are logged ---------------------------------
$node->safe_psql($db, "GRANT INSERT ON cache.citizen_refs TO $sync");
CitizenSync::Check::load_expected($node, $db, $m);
CitizenSync::Check::wait_converged($node, $db, 'after GRANT the cache converges');
$log_offset = -s $node->logfile;
$broker->produce($topic, [ [ 'k', '{"not": "an event"' ] ]);
ok(poll_until($node, $db, 'SELECT count(*) = 1 FROM citizen_sync.dead_letters'),
	'the broken message is dead-lettered');
ok( $node->wait_for_log(
		qr/LOG:  citizen_sync: consumer for database "$db" dead-lettered event "[^"]*" \(topic "$topic", partition 0, offset \d+\): invalid citizen event/,
		$log_offset),
	'the dead letter is logged');

# --- stop --------------------------------------------------------------------
$node->stop('fast');
ok($node->log_contains(qr/LOG:  citizen_sync: consumer for database "$db" stopped/),
	'the consumer logged its stop');

$broker->stop;
done_testing();
