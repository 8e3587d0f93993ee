# The consumer applies as the service's sync user, with that user's
# privileges only.
#
# A privilege it lacks makes every batch fail visibly (consumer_stats shows
# the permission error; nothing is dead-lettered for it, nothing is lost,
# the process survives); granted back, it catches up by itself.  And the
# sync user cannot touch the service's own tables (schema permits) nor
# anything in public, creates nothing anywhere, and the worker resolves
# nothing through public: its statements run with search_path pg_catalog,
# pg_temp (README, Roles).
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

my $broker = CitizenSync::Broker::start_broker(topics => ["$topic:4"]);
my $node = CitizenSync::Node::new_node('least_privilege', $broker, setup => 0);
CitizenSync::Node::setup_db($node, extension => 0);
# a table in public, from before the roles
$node->safe_psql($db, q{CREATE TABLE public.legacy (id bigint)});
CitizenSync::Node::install_extension($node, $db);
# the service's tables, in its schema: one the DBA creates (default
# privileges apply), one the service user creates
$node->safe_psql($db, q{
CREATE TABLE permits.permit_fees (permit_id bigint, amount numeric);
SET ROLE permits_service_user;
CREATE TABLE permits.permits (id bigserial PRIMARY KEY, citizen_id bigint NOT NULL, kind text);
INSERT INTO permits.permits (citizen_id, kind) VALUES (1, 'parking');
RESET ROLE;
CREATE TABLE public.after_roles (id bigint);
});

# --- the ownership matrix --------------------------------------------------
my $all = 'SELECT, INSERT, UPDATE, DELETE, TRUNCATE, REFERENCES, TRIGGER';
for my $t (qw(permits.permits permits.permit_fees public.legacy public.after_roles))
{
	is($node->safe_psql($db, "SELECT has_table_privilege('$sync', '$t', '$all')"),
		'f', "$sync has no privilege at all on $t");
}
for my $t (qw(permits.permits permits.permit_fees))
{
	is($node->safe_psql($db,
			"SELECT has_table_privilege('permits_service_user', '$t', 'SELECT, INSERT, UPDATE, DELETE')"),
		't', "permits_service_user writes $t");
}
is( $node->safe_psql($db, qq{
SELECT string_agg(nspname, ', ') FROM pg_namespace WHERE has_schema_privilege('$sync', oid, 'CREATE')}),
	'', "$sync cannot create objects in any schema");
is( $node->safe_psql($db, q{
SELECT string_agg(nspname, ', ') FROM pg_namespace
 WHERE has_schema_privilege('permits_service_user', oid, 'CREATE')}),
	'permits', 'permits_service_user creates objects in its own schema only');
is( $node->safe_psql($db, qq{
SELECT has_table_privilege('$sync', 'cache.citizen_refs', 'SELECT, INSERT, UPDATE')
   AND NOT has_table_privilege('$sync', 'cache.citizen_refs', 'DELETE, TRUNCATE')}),
	't', "$sync writes cache.citizen_refs (no DELETE or TRUNCATE)");
is( $node->safe_psql($db, q{
SELECT has_table_privilege('permits_service_user', 'cache.citizen_refs', 'INSERT, UPDATE, DELETE, TRUNCATE')}),
	'f', 'permits_service_user only reads the cache');
my ($ret, $out, $err) = $node->psql($db,
	"SET ROLE $sync; INSERT INTO permits.permits (citizen_id, kind) VALUES (2, 'forged')");
like($err, qr/permission denied for schema permits/, "$sync cannot insert into permits.permits");
($ret, $out, $err) = $node->psql($db, "SET ROLE $sync; SELECT count(*) FROM public.legacy");
like($err, qr/permission denied for table legacy/, "$sync cannot read public.legacy");

# What the consumer runs as the sync user resolves nothing through public:
# a trigger on the cache (no search_path of its own) logs the session's.
$node->safe_psql($db, q{
CREATE FUNCTION public.cs106_log_path() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE LOG 'cs106 applied as % with search_path %', current_user, current_setting('search_path');
    RETURN NULL;
END
$$;
CREATE TRIGGER cs106_log_path AFTER INSERT OR UPDATE ON cache.citizen_refs
    FOR EACH STATEMENT EXECUTE FUNCTION public.cs106_log_path();
});

# --- applying as the sync user ---------------------------------------------
my $m = CitizenSync::Events::new_model(seed => 106);
my $ev1 = CitizenSync::Events::add_events($m, citizens => [ 1 .. 300 ], tag => 'a');
$broker->produce($topic, $ev1);
CitizenSync::Check::load_expected($node, $db, $m);
CitizenSync::Check::wait_converged($node, $db, 'the cache converges (first stream)');
CitizenSync::Check::check_counts($node, $db, $m->{counts}, label => 'first stream');
my $pid = CitizenSync::Node::consumer_pid($node, $db);
my $log_offset = -s $node->logfile;
my @paths = slurp_file($node->logfile) =~ /LOG:  cs106 applied as (.*)$/mg;
ok(scalar(@paths), 'the consumer fired the logging trigger (' . scalar(@paths) . ' statements)');
is_deeply([ sort keys %{ { map { $_ => 1 } @paths } } ], ["$sync with search_path pg_catalog, pg_temp"],
	'the consumer applies as the sync user with search_path pg_catalog, pg_temp');
$node->safe_psql($db, 'DROP TRIGGER cs106_log_path ON cache.citizen_refs');

# Without INSERT on the cache every batch fails.
$node->safe_psql($db, "REVOKE INSERT ON cache.citizen_refs FROM $sync");
my $ev2 = CitizenSync::Events::add_events($m, citizens => [ 201 .. 500 ], tag => 'b');
$broker->produce($topic, $ev2);
ok( poll_until($node, $db, qq{
SELECT state = 'error' AND last_error ~ 'permission denied'
  FROM citizen_sync.consumer_stats WHERE database = '$db'}),
	'consumer_stats shows the batch failing with permission denied');
my $s = CitizenSync::Check::consumer_stats($node, $db);
note("state $s->{state}, last_error: $s->{last_error}");
like($s->{last_error}, qr/permission denied for table citizen_refs/,
	'last_error names the table');
ok($node->log_contains(qr/ERROR:  permission denied for table citizen_refs/, $log_offset),
	'the server log has the error');
CitizenSync::Check::check_no_dead_letters($node, $db, 'nothing is dead-lettered for a missing privilege');
is($node->safe_psql($db, "SELECT count(*) FROM (" . CitizenSync::Check::mismatch_sql() . ") m"),
	0, 'the cache still holds exactly the first stream');
is($node->safe_psql($db, q{SELECT count(*) FROM cache.processed_events WHERE event_id LIKE 'evt_b_%'}),
	0, 'no event of the second stream is recorded as processed');
is(CitizenSync::Node::consumer_pid($node, $db), $pid, 'the consumer process survives the failures');
my $stored = CitizenSync::Check::stored_offsets($node, $db, $topic);
my $ends = $broker->offsets($topic)->{partitions};
ok(grep({ ($stored->{$_} // 0) < $ends->{$_}[1] } keys %$ends),
	'the stored offsets did not move past the failing events');

# Granted back: it catches up by itself, nothing lost.
$node->safe_psql($db, "GRANT INSERT ON cache.citizen_refs TO $sync");
CitizenSync::Check::load_expected($node, $db, $m);
CitizenSync::Check::wait_converged($node, $db, 'after GRANT the cache converges (both streams)');
CitizenSync::Check::check_counts($node, $db, $m->{counts}, label => 'both streams');
CitizenSync::Check::check_offsets_at_end($node, $db, $broker, $topic);
CitizenSync::Check::check_no_dead_letters($node, $db, 'still nothing dead-lettered');
ok(poll_until($node, $db, qq{
SELECT state FROM citizen_sync.consumer_stats WHERE database = '$db'}, 'running'),
	'the consumer is running again');
is(CitizenSync::Node::consumer_pid($node, $db), $pid, 'the same consumer process caught up');
is($node->safe_psql($db, 'SELECT count(*), min(kind) FROM permits.permits'),
	'1|parking', 'permits.permits is untouched');

$node->stop;
$broker->stop;
done_testing();
