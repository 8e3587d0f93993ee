# Kafka secrets never reach the server log, pg_settings/SHOW or a file other
# users can read.
#
# - Secrets live in the file named by citizen_sync.kafka_properties_file
#   (0600, owned by the server's user): the consumer runs with it; a changed
#   file (or path) plus a reload restarts the workers with the new content.
# - A bad file (unknown property, syntax error, group/world access) is
#   reported with the file and line, never a value; running workers keep
#   their configuration, a worker that has to start waits (state 'waiting',
#   last_error) until the file is fixed.
# - citizen_sync.kafka_properties refuses secret properties, from
#   postgresql.conf and from ALTER SYSTEM/SET, without logging them: the
#   control at the end shows why (PostgreSQL logs every changed value of a
#   setting on reload, which is how 0.1.0 leaked sasl.password).
# - After every step the whole server log is searched for every secret; a
#   pg_monitor member sees none in pg_settings or SHOW ALL.
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

# Secrets unique to this run, so that finding one can only mean a leak.
my $run = sprintf('%x%x', $$, time);
my %secret = map { $_ => "Sec-$_-$run-pw" } qw(a a2 b c c2 d e f g h);
my @leaked;

# The whole server log holds none of the secrets used so far.
sub no_secret_in_log
{
	my ($node, $label) = @_;
	my $log = slurp_file($node->logfile);
	my @found = grep { index($log, $secret{$_}) >= 0 } sort keys %secret;

	ok(!@found, "$label: no secret in the server log")
	  or diag('found secrets ' . join(', ', @found));
	return;
}

sub write_properties
{
	my ($path, $mode, $content) = @_;
	my $tmp = "$path.tmp";

	# Written aside and renamed: the launcher may read the file at any
	# moment and must never see it half written.
	open my $fh, '>', $tmp or die "$tmp: $!";
	print $fh $content;
	close $fh or die "$tmp: $!";
	chmod $mode, $tmp or die "chmod $tmp: $!";
	rename $tmp, $path or die "rename $tmp: $!";
	return;
}

sub wait_new_consumer
{
	my ($node, $old_pid, $name) = @_;
	ok( poll_until($node, 'postgres', qq{
SELECT count(*) = 1 AND bool_and(pid <> $old_pid) FROM pg_stat_activity
 WHERE backend_type = 'citizen_sync consumer' AND datname = '$db'}),
		$name);
	return CitizenSync::Node::consumer_pid($node, $db);
}

my $dir = PostgreSQL::Test::Utils::tempdir;
my $file = "$dir/kafka.properties";
write_properties($file, 0600, <<"EOF");
# citizen_sync's Kafka client secrets
security.protocol = plaintext
sasl.password = $secret{a}

ssl.key.password=$secret{a2}
debug=conf
EOF

my $broker = CitizenSync::Broker::start_broker(topics => ["$topic:2"]);
# log_statement = none as in production (the test framework logs every
# statement; a secret typed in SQL is then logged whatever the extension does)
my $node = CitizenSync::Node::new_node('kafka_secrets', $broker, extra => qq{
log_statement = none
citizen_sync.restart_delay = 1
citizen_sync.kafka_properties_file = '$file'
});
$node->safe_psql('postgres', 'CREATE EXTENSION citizen_sync');
$node->safe_psql('postgres', 'CREATE ROLE mon LOGIN IN ROLE pg_monitor; CREATE ROLE nobody LOGIN');

# --- secrets in the file: the consumer runs ---------------------------------
my $m = CitizenSync::Events::new_model(seed => 108);
$broker->produce($topic,
	CitizenSync::Events::add_events($m, citizens => [ 1 .. 100 ], tag => 'a'));
CitizenSync::Check::load_expected($node, $db, $m);
CitizenSync::Check::wait_converged($node, $db, 'the consumer runs with the secrets of the file');
my $pid = CitizenSync::Node::consumer_pid($node, $db);
no_secret_in_log($node, 'after start (librdkafka debug=conf included)');

# --- not in pg_settings, SHOW or the views -----------------------------------
my $settings_sql = q{SELECT string_agg(name || '=' || setting, E'\n') FROM pg_settings};
for my $role ('mon', 'the superuser')
{
	my $set = $role eq 'mon' ? 'SET ROLE mon;' : '';
	my $seen = $node->safe_psql('postgres', "$set $settings_sql")
	  . $node->safe_psql('postgres', "$set SHOW ALL");
	ok(index($seen, $secret{a}) < 0 && index($seen, $secret{a2}) < 0,
		"$role sees no secret in pg_settings or SHOW ALL");
}
is($node->safe_psql('postgres', 'SET ROLE mon; SHOW citizen_sync.kafka_properties_file'),
	$file, 'pg_monitor sees the path of the file, not its content');
my ($ret, $out, $err) = $node->psql('postgres',
	'SET ROLE nobody; SHOW citizen_sync.kafka_properties_file');
like($err, qr/must be superuser or have privileges of pg_read_all_settings/,
	'other roles do not see even the path');
my $views = $node->safe_psql('postgres',
	'SELECT * FROM pg_file_settings; SELECT * FROM citizen_sync.worker_stats');
ok(index($views, $secret{a}) < 0, 'pg_file_settings and worker_stats hold no secret');

# --- a changed file plus a reload restarts the workers with it --------------
my $offset = -s $node->logfile;
write_properties($file, 0600, <<"EOF");
security.protocol=plaintext
sasl.password=$secret{b}
batch.num.messages=77
EOF
$node->reload;
$pid = wait_new_consumer($node, $pid, 'a changed file plus a reload restarts the consumer');
ok( $node->wait_for_log(
		qr/citizen_sync: .*kafka CONFWARN: .*batch\.num\.messages is a producer property/, $offset),
	'the new consumer uses the new content (librdkafka warns about its producer property)');
$broker->produce($topic,
	CitizenSync::Events::add_events($m, citizens => [ 50 .. 150 ], tag => 'b'));
CitizenSync::Check::load_expected($node, $db, $m);
CitizenSync::Check::wait_converged($node, $db, 'and applies events');
no_secret_in_log($node, 'after a reload with a changed file');

# ... and so does a new path
my $file2 = "$dir/kafka2.properties";
write_properties($file2, 0600, "security.protocol=plaintext\nsasl.password=$secret{b}\n");
$node->append_conf('postgresql.conf', "citizen_sync.kafka_properties_file = '$file2'\n");
$node->reload;
$pid = wait_new_consumer($node, $pid, 'a new path plus a reload restarts the consumer');

# --- a bad file: reported by file and line, never shown ----------------------
sub bad_file_reported
{
	my ($content, $message, $what) = @_;
	my $off = -s $node->logfile;

	write_properties($file2, 0600, $content);
	$node->reload;
	ok( $node->wait_for_log(
			qr/WARNING:  citizen_sync: \Q$message\E\n.*DETAIL:  \S.*Running workers keep the configuration they started with.*\n.*HINT:  \S/,
			$off),
		"$what: WARNING naming file and line, with DETAIL and HINT");
	ok( poll_until($node, 'postgres', qq{
SELECT state = 'running' AND last_error = '$message'
  FROM citizen_sync.consumer_stats WHERE database = '$db'}),
		"$what: the running consumer goes on and shows the problem");
	is(CitizenSync::Node::consumer_pid($node, $db), $pid, "$what: it was not restarted");
	no_secret_in_log($node, $what);
	return;
}

bad_file_reported("security.protocol=plaintext\n$secret{c}=1\nsasl.password=$secret{c2}\n",
	qq{unknown property in Kafka properties file "$file2" line 2}, 'an unknown property');
bad_file_reported("# comment\nsecurity.protocol=plaintext\nsasl.password $secret{d}\n",
	qq{syntax error in Kafka properties file "$file2" line 3}, 'a line without =');

# fixed: the workers restart with the new content, the problem is cleared
$offset = -s $node->logfile;
write_properties($file2, 0600, "security.protocol=plaintext\nsasl.password=$secret{d}\n");
$node->reload;
ok($node->wait_for_log(qr/the Kafka properties file "\Q$file2\E" is usable again/, $offset),
	'the fix is noticed on reload');
$pid = wait_new_consumer($node, $pid, 'and the consumer restarts with the fixed file');
ok( poll_until($node, 'postgres', qq{
SELECT state = 'running' AND last_error IS NULL
  FROM citizen_sync.consumer_stats WHERE database = '$db'}),
	'the problem is cleared from consumer_stats');

# --- group/world access: a worker that has to start waits -------------------
# No reload this time: the consumer finds the problem itself when it starts.
write_properties($file2, 0644, "security.protocol=plaintext\nsasl.password=$secret{e}\n");
$offset = -s $node->logfile;
$node->safe_psql('postgres', "SELECT pg_terminate_backend($pid)");
ok( poll_until($node, 'postgres', qq{
SELECT state = 'waiting' AND last_error = 'Kafka properties file "$file2" has group or world access'
  FROM citizen_sync.consumer_stats WHERE database = '$db'}),
	'a file others can read: the consumer waits and says why');
ok( $node->wait_for_log(
		qr/citizen_sync: Kafka properties file "\Q$file2\E" has group or world access\n.*DETAIL:  Its permissions are 0644\..*\n.*HINT:  Run chmod 600 "\Q$file2\E"/,
		$offset),
	'the log names the file and its mode, with the chmod to run');
is($node->safe_psql('postgres', q{
SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'citizen_sync consumer'}),
	'0', 'no consumer runs meanwhile');
$broker->produce($topic,
	CitizenSync::Events::add_events($m, citizens => [ 120 .. 200 ], tag => 'e'));
chmod 0600, $file2;
$offset = -s $node->logfile;
$node->reload;
ok($node->wait_for_log(qr/the Kafka properties file "\Q$file2\E" is usable again/, $offset),
	'chmod 600 is noticed on reload');
CitizenSync::Check::load_expected($node, $db, $m);
CitizenSync::Check::wait_converged($node, $db, 'the consumer starts again and catches up');
is($node->safe_psql('postgres', qq{
SELECT state || '/' || coalesce(last_error, '') FROM citizen_sync.consumer_stats WHERE database = '$db'}),
	'running/', 'running, the problem cleared');
$pid = CitizenSync::Node::consumer_pid($node, $db);
no_secret_in_log($node, 'after the permission error');

# --- kafka_properties refuses secrets ---------------------------------------
my $good_props = 'session.timeout.ms=6000;heartbeat.interval.ms=500';
$offset = -s $node->logfile;
$node->append_conf('postgresql.conf',
	"citizen_sync.kafka_properties = '$good_props;sasl.password=$secret{f}'\n");
$node->reload;
ok( $node->wait_for_log(
		qr/invalid value for parameter "citizen_sync.kafka_properties"\n.*DETAIL:  The property "sasl.password" holds a secret.*\n.*HINT:  Put secrets in the file named by citizen_sync.kafka_properties_file/,
		$offset),
	'postgresql.conf: a secret in kafka_properties is refused on reload, with DETAIL and HINT');
is($node->safe_psql('postgres', 'SHOW citizen_sync.kafka_properties'), $good_props,
	'the old value is kept');
$node->append_conf('postgresql.conf', "citizen_sync.kafka_properties = '$good_props'\n");
$node->reload;

for my $case (
	[ "ALTER SYSTEM SET citizen_sync.kafka_properties = '$good_props;sasl.password=$secret{g}'",
		qr/DETAIL:  The property "sasl.password" holds a secret/, 'ALTER SYSTEM with sasl.password' ],
	[ "ALTER SYSTEM SET citizen_sync.kafka_properties = 'ssl.key.password=$secret{g}'",
		qr/DETAIL:  The property "ssl.key.password" holds a secret/, 'ALTER SYSTEM with ssl.key.password' ],
	[ "ALTER SYSTEM SET citizen_sync.kafka_properties = 'sasl.password $secret{h}'",
		qr/DETAIL:  An item of citizen_sync.kafka_properties is not of the form key=value/,
		'ALTER SYSTEM with a malformed item' ],
	[ "SET citizen_sync.kafka_properties = 'sasl.password=$secret{h}'",
		qr/DETAIL:  The property "sasl.password" holds a secret/, 'SET with sasl.password' ],
	[ "ALTER ROLE mon SET citizen_sync.kafka_properties = 'sasl.oauthbearer.config=$secret{h}'",
		qr/DETAIL:  The property "sasl.oauthbearer.config" holds a secret/,
		'ALTER ROLE ... SET with sasl.oauthbearer.config' ],
	[ "DO \$\$BEGIN EXECUTE 'ALTER SYSTEM SET citizen_sync.kafka_properties = ''sasl.password=$secret{h}'''; END\$\$",
		qr/DETAIL:  The property "sasl.password" holds a secret/, 'ALTER SYSTEM from a DO block' ])
{
	my ($sql, $detail, $what) = @$case;
	($ret, $out, $err) = $node->psql('postgres', $sql);
	like($err, qr/ERROR:  invalid value for parameter "citizen_sync.kafka_properties"\n$detail/,
		"$what is refused");
}
no_secret_in_log($node, 'after the refused settings');
ok(index(slurp_file($node->data_dir . '/postgresql.auto.conf'), $run) < 0,
	'postgresql.auto.conf holds no secret');
is(CitizenSync::Node::consumer_pid($node, $db), $pid, 'the consumer was not disturbed');

# --- control: why secrets are refused ----------------------------------------
# PostgreSQL logs the new value of every setting a reload changes, flags or
# not: a secret in kafka_properties (accepted by 0.1.0) was logged like this
# harmless marker.
my $marker = "rack-$run";
$offset = -s $node->logfile;
$node->safe_psql('postgres',
	"ALTER SYSTEM SET citizen_sync.kafka_properties = '$good_props;client.rack=$marker'");
$node->reload;
ok( $node->wait_for_log(
		qr/parameter "citizen_sync.kafka_properties" changed to ".*\Q$marker\E"/, $offset),
	'control: a reload logs the value of kafka_properties (so no secret may go there)');
$node->safe_psql('postgres', 'ALTER SYSTEM RESET citizen_sync.kafka_properties');
$node->reload;

no_secret_in_log($node, 'at the end');
$node->stop;
no_secret_in_log($node, 'after shutdown');
$broker->stop;
done_testing();
