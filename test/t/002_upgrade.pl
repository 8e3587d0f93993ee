# Upgrade from the released 0.1.0 with data in every table.
#
# One database gets 0.1.0 exactly as released (sql/citizen_sync--0.1.0.sql),
# data in every table, then ALTER EXTENSION citizen_sync UPDATE; another gets a
# fresh install of the current version.  The two schemas must be identical
# (pg_dump --schema-only --binary-upgrade dumps every member object of the
# extension; OID assignments are filtered out) and the data must survive.
#
# Also: the current library with a database still at 0.1.0 does not run its
# workers there; it says so (WARNING with HINT, state "waiting", last_error).
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

use FindBin;
use lib "$FindBin::RealBin/../perl";
use CitizenSync::Check qw(poll_until);
use CitizenSync::Node;

# A broker address nothing listens on: the workers must stop at the version
# check, before they ever talk to Kafka.
my $node = CitizenSync::Node::new_old_db_node('upgrade');

my $current = $node->safe_psql('postgres',
	q{SELECT default_version FROM pg_available_extensions WHERE name = 'citizen_sync'});
isnt($current, '0.1.0', "the current version ($current) is not 0.1.0");

$node->safe_psql('postgres', 'CREATE DATABASE old_db');
$node->safe_psql('postgres', 'CREATE DATABASE fresh_db');

# --- 0.1.0 with data in every table ------------------------------------------
$node->safe_psql('old_db', q{
CREATE EXTENSION citizen_sync VERSION '0.1.0';
CREATE TABLE public.citizens (id bigint PRIMARY KEY, name text, email text, phone text);
SELECT citizen_sync.capture('public.citizens', 'citizen', ARRAY['name', 'email', 'phone']);
INSERT INTO public.citizens VALUES (1, 'Ana', 'ana@example.gov', '+1-555-0101'),
                                   (2, 'Ben', 'ben@example.gov', NULL);
UPDATE public.citizens SET phone = '+1-555-0202' WHERE id = 2;
UPDATE citizen_sync.outbox SET published_at = now() WHERE id = 1;
-- what apply_event() of 0.1.0 left (the current library applies through the
-- subscription catalog of 0.2.0 only)
INSERT INTO cache.citizen_refs (citizen_id, name, email, phone, event_version)
VALUES (7, 'Maria', 'maria@example.gov', '+1-555-0199', 1);
INSERT INTO cache.citizen_refs (citizen_id, event_version, is_active, deleted_at)
VALUES (8, 2, false, now());
INSERT INTO cache.processed_events (event_id) VALUES ('evt_1'), ('evt_2');
INSERT INTO citizen_sync.consumer_offsets (group_id, topic, partition, next_offset)
VALUES ('old_db-citizen-sync', 'gov.auth.citizen', 0, 42);
INSERT INTO citizen_sync.dead_letters (payload, message_key, topic, partition, "offset",
                                       error_message, error_sqlstate)
VALUES ('\x7b7d', '\x6b', 'gov.auth.citizen', 0, 41, 'invalid citizen event', '22004');
INSERT INTO citizen_sync.consistency_reports (source, checked, missing, stale, mismatched, extra)
VALUES ('auth', 10, 1, 0, 0, 0);
});

# Every table of the extension holds data (so the test notices a new table
# that it does not fill).
my $empty = $node->safe_psql('old_db', q{
SELECT string_agg(c.oid::regclass::text, ', ' ORDER BY c.oid::regclass::text)
  FROM pg_depend d JOIN pg_class c ON c.oid = d.objid AND d.classid = 'pg_class'::regclass
 WHERE d.refclassid = 'pg_extension'::regclass AND d.deptype = 'e'
   AND d.refobjid = (SELECT oid FROM pg_extension WHERE extname = 'citizen_sync')
   AND c.relkind = 'r'
   AND (xpath('/row/n/text()', query_to_xml(format('SELECT count(*) AS n FROM %s', c.oid::regclass),
                                            false, true, '')))[1]::text::int = 0
});
is($empty, '', 'every table of 0.1.0 holds data before the update');

# What every table holds, as text, in a stable order.
my $data_sql = q{
SELECT string_agg(format('%s: %s', t, d), E'\n' ORDER BY t) FROM (
  SELECT 'citizen_refs' AS t, string_agg(format('%s|%s|%s|%s|%s|%s', citizen_id, name, email, phone,
         event_version, is_active), ';' ORDER BY citizen_id) AS d FROM cache.citizen_refs
  UNION ALL SELECT 'processed_events', string_agg(event_id, ';' ORDER BY event_id) FROM cache.processed_events
  UNION ALL SELECT 'consumer_offsets', string_agg(format('%s|%s|%s|%s', group_id, topic, partition, next_offset), ';')
              FROM citizen_sync.consumer_offsets
  UNION ALL SELECT 'dead_letters', string_agg(format('%s|%s|%s|%s|%s', encode(payload, 'hex'), topic, "offset",
              error_message, error_sqlstate), ';' ORDER BY id) FROM citizen_sync.dead_letters
  UNION ALL SELECT 'outbox', string_agg(format('%s|%s|%s|%s|%s|%s', id, aggregate_type, aggregate_id, event_type,
              payload - 'event_timestamp', published_at IS NOT NULL), ';' ORDER BY id) FROM citizen_sync.outbox
  UNION ALL SELECT 'aggregate_versions', string_agg(format('%s|%s|%s', aggregate_type, aggregate_id, last_version),
              ';' ORDER BY aggregate_id) FROM citizen_sync.aggregate_versions
  UNION ALL SELECT 'captures', string_agg(format('%s|%s|%s', source, aggregate_type, columns), ';')
              FROM citizen_sync.captures
  UNION ALL SELECT 'consistency_reports', string_agg(format('%s|%s|%s', source, checked, missing), ';')
              FROM citizen_sync.consistency_reports) x
};
my $before = $node->safe_psql('old_db', $data_sql);

# --- the current library with a database at 0.1.0 -----------------------------
poll_until($node, 'old_db', q{
SELECT count(*) = 2 FROM citizen_sync.worker_stats
 WHERE state = 'waiting' AND last_error LIKE '%has citizen_sync 0.1.0 but the loaded library is%'
}) or die 'the workers did not report the old version';
pass('consumer and publisher wait, naming the version mismatch, while the database is at 0.1.0');
my $log = slurp_file($node->logfile);
like($log, qr/WARNING:.*database "old_db" has citizen_sync 0\.1\.0 but the loaded library is \Q$current\E/,
	'a WARNING names both versions');
like($log, qr/HINT:.*ALTER EXTENSION citizen_sync UPDATE in database "old_db"/,
	'its HINT says to run ALTER EXTENSION ... UPDATE');

# --- the update ----------------------------------------------------------------
$node->safe_psql('old_db', 'ALTER EXTENSION citizen_sync UPDATE');
is($node->safe_psql('old_db', q{SELECT extversion FROM pg_extension WHERE extname = 'citizen_sync'}),
	$current, "ALTER EXTENSION UPDATE reaches $current");
is($node->safe_psql('old_db', $data_sql), $before, 'the data survived the update');

# 0.1.0's outbox rows (bigint ids, now text) give the publisher the same
# Kafka key and value as before (FETCH_SQL's expressions), and a change
# after the update continues the citizen's versions with the same wire form.
my $wire_sql = q{
SELECT string_agg(format('%s %s %s', aggregate_type || '_' || aggregate_id,
                         aggregate_type || '.' || event_type,
                         jsonb_typeof(payload -> 'data' -> 'citizen_id')), ';' ORDER BY id)
  FROM citizen_sync.outbox};
is($node->safe_psql('old_db', $wire_sql),
	'citizen_1 citizen.created number;citizen_2 citizen.created number;citizen_2 citizen.updated number',
	'0.1.0 outbox rows: Kafka key citizen_<id>, data.citizen_id a JSON number');
$node->safe_psql('old_db', q{UPDATE public.citizens SET phone = '+1-555-0303' WHERE id = 2});
is($node->safe_psql('old_db', q{
SELECT format('%s %s %s %s', o.aggregate_type || '_' || o.aggregate_id, o.event_type,
              o.payload -> 'data' -> 'citizen_id',
              (o.payload ->> 'event_version')::bigint > (SELECT max((p.payload ->> 'event_version')::bigint)
                                                           FROM citizen_sync.outbox p
                                                          WHERE p.aggregate_id = '2' AND p.id < o.id))
  FROM citizen_sync.outbox o ORDER BY o.id DESC LIMIT 1}),
	'citizen_2 updated 2 t', 'a change after the update: same key and data.citizen_id, a higher version');
is($node->safe_psql('old_db', q{
SELECT citizen_sync.current_version('citizen', '2') = max((payload ->> 'event_version')::bigint)
  FROM citizen_sync.outbox WHERE aggregate_id = '2'}),
	't', 'current_version() of an aggregate captured under 0.1.0');

# The same application table, captured the same way (captures made by 0.1.0
# must end up as the current version makes them).
$node->safe_psql('fresh_db', q{
CREATE EXTENSION citizen_sync;
CREATE TABLE public.citizens (id bigint PRIMARY KEY, name text, email text, phone text);
SELECT citizen_sync.capture('public.citizens', 'citizen', ARRAY['name', 'email', 'phone']);
});

# --- same schema ---------------------------------------------------------------
sub schema_of
{
	my ($db) = @_;
	my ($stdout, $stderr);
	IPC::Run::run(
		[ 'pg_dump', '--schema-only', '--binary-upgrade', '-d', $node->connstr($db) ],
		'>', \$stdout, '2>', \$stderr) or die "pg_dump $db failed: $stderr";
	# OIDs, xids and sequence positions differ between any two databases
	my @lines = grep {
		!/binary_upgrade_set_next_/ && !/^\\(un)?restrict /
		  && !/^SET relfrozenxid = / && !/^WHERE oid = '/ && !/^UPDATE pg_catalog\.pg_class$/
		  && !/pg_catalog\.setval\(/ && !/^--/ && !/^\s*$/
	} split /\n/, $stdout;
	# extconfig is a list of OIDs: compare it as names (below)
	s/(binary_upgrade_create_empty_extension\('citizen_sync', [^,]+, [^,]+, [^,]+), '\{[0-9,]*\}'/$1, '<extconfig>'/
	  for @lines;
	my $extconfig = $node->safe_psql($db, q{
SELECT string_agg(c::regclass::text, ',' ORDER BY c::regclass::text)
  FROM pg_extension e, unnest(e.extconfig) AS c WHERE e.extname = 'citizen_sync'});
	return join("\n", @lines) . "\nextconfig: $extconfig\n";
}
my $upgraded = schema_of('old_db');
my $fresh    = schema_of('fresh_db');
if ($upgraded ne $fresh)
{
	my $dir = $PostgreSQL::Test::Utils::tmp_check;
	open my $a, '>', "$dir/schema_upgraded.sql" or die;
	print $a $upgraded;
	close $a;
	open my $b, '>', "$dir/schema_fresh.sql" or die;
	print $b $fresh;
	close $b;
	my $diff = `diff -u $dir/schema_fresh.sql $dir/schema_upgraded.sql | head -80`;
	diag("schema differs (fresh vs upgraded):\n$diff");
}
ok($upgraded eq $fresh, 'the updated schema equals a fresh install');

# --- the workers start once the database is current -----------------------------
poll_until($node, 'old_db', q{
SELECT count(*) = 0 FROM citizen_sync.worker_stats
 WHERE last_error LIKE '%has citizen_sync 0.1.0%'
}) or die 'the version error stayed after the update';
pass('the version error clears once the database is updated');

$node->stop;
done_testing();
