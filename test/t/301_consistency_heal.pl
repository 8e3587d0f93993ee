# Consistency check and heal: the pipeline converges, then the permits_db
# cache is damaged on purpose (as superuser): rows deleted, fields changed,
# an older version with the older fields put back, rows soft-deleted, a
# citizen deleted in the source brought back, and extra active rows for ids
# the source never had.  consistency_check() must report exactly that drift
# (and record a report), heal() must have the source republish the drifted
# citizens, and the caches must end equal to the source again.
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
my $node = start_pipeline('heal', $kafka, conf => "citizen_sync.restart_delay = 1s\n");
my $auth = $node->connstr('auth_db');
$auth =~ s/'//g;    # dbname='auth_db' -> dbname=auth_db (no quote in the literal)
my $conninfo = "\$conn\$$auth\$conn\$";

$node->safe_psql('permits_db', 'CREATE EXTENSION dblink');

# 40 citizens; 1..10 updated once (version 2); 39 and 40 deleted.
$node->safe_psql('auth_db', q{
INSERT INTO citizens (name, email, phone, address, city, postal_code, email_verified)
SELECT 'Citizen ' || i, 'c' || i || '@example.gov',
       CASE WHEN i % 3 = 0 THEN NULL ELSE '+1-555-' || i END,
       i || ' Elm St', 'Springfield', lpad(i::text, 5, '0'), i % 2 = 0
  FROM generate_series(1, 40) AS i;
UPDATE citizens SET city = 'Shelbyville', identity_verified = true WHERE id <= 10;
DELETE FROM citizens WHERE id IN (39, 40);
});
wait_outbox_drained($node, 60);
wait_caches_converged($node, 90, 'converged before the drift');

# Pairs "id|problem" of a check, sorted.
sub check_pairs
{
	my ($stale_after) = @_;
	my $out = $node->safe_psql('permits_db', qq{
SELECT citizen_id || '|' || problem
  FROM citizen_sync.consistency_check($conninfo, interval '$stale_after')
 ORDER BY citizen_id});
	return [ split /\n/, $out ];
}

is_deeply(check_pairs('0 seconds'), [], 'no drift after convergence');
is( $node->safe_psql('permits_db', q{
SELECT source || ' ' || checked || ' ' || missing || ' ' || stale || ' ' || mismatched || ' ' || extra
  FROM citizen_sync.consistency_reports ORDER BY id DESC LIMIT 1}),
	'auth 40 0 0 0 0',
	'the check recorded a clean report: 40 source citizens, no problem');

# The drift, by hand.
$node->safe_psql('permits_db', q{
-- missing: deleted rows, soft-deleted rows
DELETE FROM cache.citizen_refs WHERE citizen_id IN (1, 2);
UPDATE cache.citizen_refs SET is_active = false, deleted_at = now() WHERE citizen_id IN (7, 8);
-- mismatched: same version, other fields
UPDATE cache.citizen_refs SET name = 'Tampered', phone = '+1-000-0000' WHERE citizen_id = 3;
UPDATE cache.citizen_refs SET email_verified = NOT email_verified WHERE citizen_id = 4;
-- stale: the older version with its older fields
UPDATE cache.citizen_refs SET event_version = 1, city = 'Springfield', identity_verified = false
 WHERE citizen_id IN (5, 6);
-- extra: a citizen deleted in the source active again, and ids the source
-- never had (one as if inserted by hand, one as if applied from an event)
UPDATE cache.citizen_refs SET is_active = true, deleted_at = NULL WHERE citizen_id = 39;
INSERT INTO cache.citizen_refs (citizen_id, name, email) VALUES (1001, 'Ghost', 'ghost@example.gov');
INSERT INTO cache.citizen_refs (citizen_id, name, email, event_version)
VALUES (1002, 'Phantom', 'phantom@example.gov', 1);
});

my @drift = (
	'1|missing', '2|missing', '3|mismatched', '4|mismatched', '5|stale',
	'6|stale', '7|missing', '8|missing', '39|extra', '1001|extra',
	'1002|extra');
is_deeply(check_pairs('0 seconds'), \@drift,
	'consistency_check finds exactly the drift made');
is( $node->safe_psql('permits_db', q{
SELECT source || ' ' || checked || ' ' || missing || ' ' || stale || ' ' || mismatched || ' ' || extra
  FROM citizen_sync.consistency_reports ORDER BY id DESC LIMIT 1}),
	'auth 40 4 2 2 3',
	'the report counts 4 missing, 2 stale, 2 mismatched, 3 extra');
my %last = map { split /\|/ } split /\n/, $node->safe_psql('auth_db', q{
SELECT aggregate_id || '|' || last_version FROM citizen_sync.aggregate_versions
 WHERE aggregate_type = 'citizen' AND aggregate_id::bigint IN (1, 5, 39)});
is( $node->safe_psql('permits_db', qq{
SELECT string_agg(citizen_id || ':' || coalesce(source_version::text, '-') || '/'
                  || coalesce(cache_version::text, '-'), ' ' ORDER BY citizen_id)
  FROM citizen_sync.consistency_check($conninfo, interval '0 seconds')
 WHERE citizen_id IN (1, 5, 39, 1001, 1002)}),
	"1:$last{1}/- 5:$last{5}/1 39:$last{39}/$last{39} 1001:-/0 1002:-/1",
	'source and cache versions are reported');
is( $node->safe_psql('permits_db', q{
SELECT missing || ' ' || stale || ' ' || mismatched || ' ' || extra || ' ' || (age_seconds < 60)
  FROM citizen_sync.consistency_status WHERE source = 'auth'}),
	'4 2 2 3 true',
	'consistency_status shows the latest report');

# Changes younger than stale_after may still be in flight and are not
# reported: with the default 5 minutes only the ids the source never
# changed (no version) remain.
is_deeply(check_pairs('5 minutes'), [ '1001|extra', '1002|extra' ],
	'recent source changes are not reported within stale_after');

# The check as a least-privileged auth-side role (docs/operations.md):
# source_state() and read access to the captured table and the bookkeeping.
$node->safe_psql('auth_db', q{
CREATE ROLE citizen_sync_check LOGIN;
GRANT USAGE ON SCHEMA citizen_sync TO citizen_sync_check;
GRANT EXECUTE ON FUNCTION citizen_sync.source_state(text) TO citizen_sync_check;
GRANT SELECT ON citizen_sync.captures, citizen_sync.aggregate_versions TO citizen_sync_check;
GRANT SELECT ON public.citizens TO citizen_sync_check;
});
my $check_conninfo = "\$conn\$$auth user=citizen_sync_check\$conn\$";
is( $node->safe_psql('permits_db', qq{
SELECT string_agg(citizen_id || '|' || problem, ',' ORDER BY citizen_id)
  FROM citizen_sync.consistency_check($check_conninfo, interval '0 seconds')}),
	join(',', @drift),
	'the check works as a role with only the documented grants in the auth database');

# Heal: the source republishes every drifted citizen.
my $written = $node->safe_psql('permits_db',
	"SELECT citizen_sync.heal($conninfo, interval '0 seconds')");
is($written, scalar(@drift), "heal() had the source write one event per drifted citizen");
wait_outbox_drained($node, 60, 'the republished events are published');

my $left;
my $healed = poll_until(30, sub {
		$left = eval { check_pairs('0 seconds') };
		return $left && !@$left;
	});
ok($healed, 'after heal the check finds no drift (cache equals source)')
  or diag('still drifted: ' . join(', ', @{ $left // [] }) . "\n"
	  . $node->safe_psql('permits_db', q{
SELECT citizen_id, event_version, is_active, name FROM cache.citizen_refs
 WHERE citizen_id IN (1001, 1002) ORDER BY 1}));
is( $node->safe_psql('permits_db', q{
SELECT string_agg(citizen_id || ':' || is_active, ' ' ORDER BY citizen_id)
  FROM cache.citizen_refs WHERE citizen_id IN (1, 7, 39, 1001, 1002)}),
	'1:true 7:true 39:false 1001:false 1002:false',
	'missing citizens are back, extra ones are soft-deleted');

# Both caches equal the source, revenue_db included (it received the
# republished events too, as duplicates of its state or tombstones).
wait_caches_converged($node, 30, 'cache equals the source after heal');
check_no_dead_letters($node, $_) for @SERVICE_DBS;

$node->stop;
$kafka->stop;
done_testing();
