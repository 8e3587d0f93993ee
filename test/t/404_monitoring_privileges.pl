# The exporter's role, set up as docs/operations.md says, reads the
# monitoring aggregates and nothing else: it runs every query of
# monitoring/postgres_exporter_queries.yaml, but cannot read any table of the
# extension (outbox, dead letters, cache, processed events, consistency
# reports), the Kafka credentials in citizen_sync.kafka_properties, or other
# sessions' query text; it holds none of the predefined roles that would
# allow it.
use strict;
use warnings;

use FindBin;
use lib "$FindBin::RealBin/../perl";
use CitizenSync::Check qw(poll_until);
use File::Spec;
use IPC::Run ();
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use CitizenSync::Shipped;

my $root = File::Spec->rel2abs("$FindBin::RealBin/../..");
my $db = 'permits_db';
# (a value only superusers may see: kafka_properties is superuser-only)
my $secret = 's3cret-404-kafka';

my $node = PostgreSQL::Test::Cluster->new('monitoring_privileges');
$node->init;
$node->append_conf('postgresql.conf', qq{
shared_preload_libraries = 'citizen_sync'
citizen_sync.kafka_properties = 'client.id=$secret'
});
$node->start;
$node->safe_psql('postgres', "CREATE DATABASE $db");
$node->safe_psql($db, q~
CREATE EXTENSION citizen_sync;
SELECT citizen_sync.create_service_roles('permits');
SELECT citizen_sync.apply_event('{"event_type": "citizen.created", "event_id": "evt_1", "event_version": 1,
  "data": {"citizen_id": 1, "snapshot": {"id": 1, "name": "Maria Garcia", "email": "maria@example.gov"}}}');
INSERT INTO citizen_sync.dead_letters (payload, topic, partition, "offset", error_message, error_sqlstate)
VALUES (convert_to('{"name": "Maria Garcia"', 'UTF8'), 'gov.auth.citizen', 0, 7, 'invalid citizen event', '22P02');
INSERT INTO citizen_sync.consistency_reports (source, checked, missing, stale, mismatched, extra)
VALUES ('auth', 1, 0, 0, 0, 0);
CREATE TABLE public.citizens (id bigint PRIMARY KEY, name text, email text);
SELECT citizen_sync.capture('public.citizens', 'citizen');
INSERT INTO public.citizens VALUES (1, 'Maria Garcia', 'maria@example.gov');
~);

# The role as the documentation creates it.
my @setup = grep { /\bcitizen_sync_exporter\b/ }
  map { @{ $_->{statements} } }
  grep { $_->{file} eq 'docs/operations.md' } CitizenSync::Shipped::doc_blocks($root);
ok(scalar(grep { /^\s*CREATE ROLE citizen_sync_exporter\b.*\bLOGIN\b/ } @setup),
	'docs/operations.md creates a login role for the exporter')
  or diag(explain(\@setup));
$node->safe_psql('postgres', $_) for @setup;
my $as_exporter = $node->connstr($db) . ' user=citizen_sync_exporter';

sub exporter_psql
{
	my ($sql) = @_;
	my ($out, $err) = ('', '');
	my $rc = $node->psql($db, $sql, connstr => $as_exporter, stdout => \$out, stderr => \$err);
	return ($rc, $out, $err);
}

# --- what it may do --------------------------------------------------------
for my $q (CitizenSync::Shipped::exporter_queries($root))
{
	my ($rc, $out, $err) = exporter_psql($q->{sql});
	is($rc, 0, "the exporter runs query $q->{name}") or diag($err);
}

my @views = qw(config_problems config_status consistency_status consumer_lag consumer_stats
  dead_letter_summary metrics_consumers metrics_dead_letters metrics_latency
  metrics_latency_summary metrics_outbox metrics_publishers metrics_workers outbox_backlog subscription_lag sync_latency
  sync_latency_summary worker_counts worker_health worker_stats worker_up);
is( $node->safe_psql($db, q{
SELECT string_agg(c.relname, ' ' ORDER BY c.relname) FROM pg_class c
 WHERE c.relnamespace = 'citizen_sync'::regnamespace AND c.relkind = 'v'
   AND has_table_privilege('citizen_sync_exporter', c.oid, 'SELECT')}),
	join(' ', @views), 'it reads exactly the aggregate views');

# --- what it may not read ----------------------------------------------------
my @tables = split /\n/, $node->safe_psql($db, q{
SELECT c.oid::regclass FROM pg_class c
 WHERE c.relnamespace IN ('citizen_sync'::regnamespace, 'cache'::regnamespace) AND c.relkind IN ('r', 'p')
 ORDER BY 1});
cmp_ok(scalar(@tables), '>=', 7, "the extension's tables: @tables");
for my $t (@tables)
{
	my ($rc, $out, $err) = exporter_psql("SELECT * FROM $t LIMIT 1");
	ok($rc != 0 && $err =~ /permission denied/, "the exporter cannot read $t") or diag("$out$err");
}
for my $f ('citizen_sync.citizen(1)', 'citizen_sync.citizen_for_critical(1, interval \'1 hour\')',
	'citizen_sync.source_state()', 'citizen_sync.retry_dead_letters()')
{
	my ($rc, $out, $err) = exporter_psql("SELECT * FROM $f");
	ok($rc != 0 && $err =~ /permission denied/, "the exporter cannot call $f") or diag("$out$err");
}
my @executable = split /\n/, $node->safe_psql($db, q{
SELECT p.oid::regprocedure FROM pg_proc p
 WHERE p.pronamespace = 'citizen_sync'::regnamespace AND p.prorettype <> 'trigger'::regtype
   AND has_function_privilege('citizen_sync_exporter', p.oid, 'EXECUTE') ORDER BY 1});
note("functions of citizen_sync the exporter may execute: @executable");

# Secrets in settings: hidden whatever way it asks.
my ($rc, $out, $err) = exporter_psql('SHOW citizen_sync.kafka_properties');
ok($rc != 0 && $err =~ /must be superuser or have privileges of pg_read_all_settings/,
	'SHOW citizen_sync.kafka_properties is refused');
($rc, $out, $err) = exporter_psql(q{SELECT current_setting('citizen_sync.kafka_properties')});
ok($rc != 0, 'current_setting() of it is refused');
($rc, $out, $err) = exporter_psql(q{
SELECT count(*) FROM pg_settings WHERE name LIKE 'citizen_sync.kafka%'});
is($out, '0', 'pg_settings shows no Kafka setting');
($rc, $out, $err) = exporter_psql(q{SELECT * FROM pg_settings; SELECT * FROM pg_file_settings});
unlike("$out$err", qr/\Q$secret\E/, 'the secret appears nowhere it can read');

# Other sessions' query text (personal data in literals, passwords).
my $marker = "maria.garcia\@example.gov";
my ($bout, $berr) = ('', '');
my $busy = IPC::Run::start(
	[ $node->installed_command('psql'), '-XAtq', '-d', $node->connstr($db), '-c', "SELECT pg_sleep(300) /* $marker */" ],
	'>', \$bout, '2>', \$berr);
ok( poll_until($node, $db,
		"SELECT count(*) = 1 FROM pg_stat_activity WHERE query LIKE '%$marker%' AND pid <> pg_backend_pid()"),
	'another session runs a query holding personal data');
($rc, $out, $err) = exporter_psql(q{SELECT string_agg(coalesce(query, '<null>'), ' | ') FROM pg_stat_activity});
unlike($out, qr/\Q$marker\E/, "the exporter cannot read other sessions' query text");
$node->safe_psql($db, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE query LIKE '%$marker%' AND pid <> pg_backend_pid()");
$busy->finish;

# No predefined role that would open any of this.
for my $r (qw(pg_monitor pg_read_all_settings pg_read_all_stats pg_read_all_data pg_read_server_files))
{
	is($node->safe_psql($db, "SELECT pg_has_role('citizen_sync_exporter', '$r', 'MEMBER')"),
		'f', "the exporter is not a member of $r");
}

# Roles are cluster-wide: a citizen_sync_monitor that can log in (created
# beforehand by someone else, or changed) is reported, not silently used.
$node->safe_psql('postgres', 'ALTER ROLE citizen_sync_monitor LOGIN');
$node->safe_psql('postgres', 'CREATE DATABASE other_db');
my ($ret, $stdout, $stderr) = $node->psql('other_db', 'CREATE EXTENSION citizen_sync');
is($ret, 0, 'CREATE EXTENSION in another database');
like($stderr, qr/WARNING:  role citizen_sync_monitor exists and can log in/,
	'it warns that citizen_sync_monitor can log in');
$node->safe_psql('postgres', 'ALTER ROLE citizen_sync_monitor NOLOGIN');

$node->stop;
done_testing();
