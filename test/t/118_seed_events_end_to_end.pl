# The seed's whole event list, from an auth database into a service's caches,
# through capture() and subscribe() alone:
#   citizen.created/updated/deleted   (the built-in cache.citizen_refs)
#   employee.created/updated/deleted  (bigint key, a renamed field, soft deletes)
#   role.assigned/revoked             (uuid key, hard deletes)
#   permission.granted/revoked        (text key, soft deletes)
# The changes are made on the source with ordinary DML; the publisher relays
# them; the consumer of permits_db applies each topic into its table. Then every
# cache equals the source: content, versions, deletions.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::RealBin/../perl";
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use CitizenSync::Broker qw(:all);
use CitizenSync::Node qw(:all);
use CitizenSync::Check qw(:all);

my $kafka = start_broker(
	topics => [ "$TOPIC:4", map { "gov.auth.$_:3" } qw(employee role permission) ]);
my $node = start_pipeline('seed_events', $kafka);

# --- the source: the auth service's tables, captured ------------------------
$node->safe_psql('auth_db', q{
CREATE TABLE employees (
    id bigint PRIMARY KEY, full_name text NOT NULL, department text, salary numeric(12,2),
    password_hash text);
CREATE TABLE role_assignments (
    assignment_id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    employee_id bigint NOT NULL REFERENCES employees, role text NOT NULL);
CREATE TABLE permissions (
    code text PRIMARY KEY, description text, granted_to text NOT NULL);
SELECT citizen_sync.capture('employees', 'employee', ARRAY['full_name', 'department', 'salary']);
SELECT citizen_sync.capture('role_assignments', 'role', NULL, 'assignment_id',
       '{"insert": "assigned", "update": "assigned", "delete": "revoked"}');
SELECT citizen_sync.capture('permissions', 'permission', NULL, 'code',
       '{"insert": "granted", "update": "granted", "delete": "revoked"}');
});

# --- the service: its cache tables, subscribed --------------------------------
$node->safe_psql('permits_db', q{
CREATE TABLE cache.employees (
    employee_id bigint PRIMARY KEY, name text, department text, salary numeric(12,2),
    event_version bigint NOT NULL DEFAULT 0, last_synced_at timestamptz,
    is_active boolean NOT NULL DEFAULT true, deleted_at timestamptz);
CREATE TABLE cache.role_assignments (
    assignment_id uuid PRIMARY KEY, employee_id bigint NOT NULL, role text NOT NULL,
    event_version bigint NOT NULL DEFAULT 0, last_synced_at timestamptz);
CREATE TABLE cache.permissions (
    code text PRIMARY KEY, description text, granted_to text,
    event_version bigint NOT NULL DEFAULT 0, last_synced_at timestamptz,
    is_active boolean NOT NULL DEFAULT true, deleted_at timestamptz);
SELECT citizen_sync.subscribe('cache.employees', 'employee', columns => '{"name": "full_name"}');
SELECT citizen_sync.subscribe('cache.role_assignments', 'role', key_column => 'assignment_id',
       delete_mode => 'hard',
       event_types => '{"role.assigned": "upsert", "role.revoked": "delete"}');
SELECT citizen_sync.subscribe('cache.permissions', 'permission', key_column => 'code',
       event_types => '{"permission.granted": "upsert", "permission.revoked": "delete"}');
});
is($node->safe_psql('permits_db',
		q{SELECT count(*) FROM citizen_sync.subscriptions WHERE NOT builtin}),
	'3', 'three subscriptions besides the built-in one');

# --- the application writes, as it would ---------------------------------------
$node->safe_psql('auth_db', citizens_sql(30) . q{
UPDATE citizens SET phone = '+1-555-' || id WHERE id % 3 = 0;
DELETE FROM citizens WHERE id % 10 = 0;
INSERT INTO employees
SELECT i, 'Employee ' || i, CASE WHEN i % 2 = 0 THEN 'permits' ELSE 'revenue' END,
       1000 + i * 10.5, 'secret'
  FROM generate_series(1, 40) AS i;
UPDATE employees SET salary = salary * 2, department = 'parks' WHERE id % 4 = 0;
UPDATE employees SET password_hash = 'rotated' WHERE id % 5 = 0;   -- unpublished: no event
INSERT INTO role_assignments (employee_id, role)
SELECT i, r FROM generate_series(1, 40) AS i, unnest(ARRAY['clerk', 'inspector']) AS r;
UPDATE role_assignments SET role = 'supervisor' WHERE employee_id % 7 = 0 AND role = 'clerk';
DELETE FROM role_assignments WHERE employee_id % 3 = 0 AND role = 'inspector';
DELETE FROM role_assignments WHERE employee_id IN (38, 39);
DELETE FROM employees WHERE id IN (38, 39);
INSERT INTO permissions
SELECT 'permit.' || i, 'Permit action ' || i, 'role:' || (i % 3) FROM generate_series(1, 25) AS i;
UPDATE permissions SET granted_to = 'role:admin' WHERE code LIKE 'permit.1%';
DELETE FROM permissions WHERE code IN ('permit.2', 'permit.20');
});

is($node->safe_psql('auth_db', q{
SELECT string_agg(DISTINCT aggregate_type || '.' || event_type, ',' ORDER BY aggregate_type || '.' || event_type)
  FROM citizen_sync.outbox}),
	'citizen.created,citizen.deleted,citizen.updated,employee.created,employee.deleted,'
	  . 'employee.updated,permission.granted,permission.revoked,role.assigned,role.revoked',
	"the source emitted the seed's whole event list");

wait_outbox_drained($node, 120);

# --- every cache equals the source ---------------------------------------------
# Each pair: the source's state (live rows with their versions, deleted keys
# with theirs) and the cache's, as comparable text.
my %pairs = (
	employees => [
		q{SELECT string_agg(line, E'\n' ORDER BY k) FROM (
  SELECT v.aggregate_id::bigint AS k,
         v.aggregate_id || '|' || v.last_version || '|' ||
         coalesce(e.full_name || '|' || e.department || '|' || e.salary, 'deleted') AS line
    FROM citizen_sync.aggregate_versions v LEFT JOIN employees e ON e.id::text = v.aggregate_id
   WHERE v.aggregate_type = 'employee') s},
		q{SELECT string_agg(line, E'\n' ORDER BY k) FROM (
  SELECT employee_id AS k,
         employee_id || '|' || event_version || '|' ||
         CASE WHEN is_active THEN name || '|' || department || '|' || salary ELSE 'deleted' END AS line
    FROM cache.employees) s}
	],
	role_assignments => [
		q{SELECT string_agg(line, E'\n' ORDER BY k) FROM (
  SELECT v.aggregate_id AS k,
         v.aggregate_id || '|' || v.last_version || '|' ||
         coalesce(r.employee_id || '|' || r.role, 'deleted') AS line
    FROM citizen_sync.aggregate_versions v
    LEFT JOIN role_assignments r ON r.assignment_id::text = v.aggregate_id
   WHERE v.aggregate_type = 'role') s},
		q{SELECT string_agg(line, E'\n' ORDER BY k) FROM (
  SELECT assignment_id::text AS k,
         assignment_id || '|' || event_version || '|' || employee_id || '|' || role AS line
    FROM cache.role_assignments
  UNION ALL
  SELECT key, key || '|' || event_version || '|deleted'
    FROM citizen_sync.tombstones WHERE target = 'cache.role_assignments'::regclass) s}
	],
	permissions => [
		q{SELECT string_agg(line, E'\n' ORDER BY k) FROM (
  SELECT v.aggregate_id AS k,
         v.aggregate_id || '|' || v.last_version || '|' ||
         coalesce(p.description || '|' || p.granted_to, 'deleted') AS line
    FROM citizen_sync.aggregate_versions v LEFT JOIN permissions p ON p.code = v.aggregate_id
   WHERE v.aggregate_type = 'permission') s},
		q{SELECT string_agg(line, E'\n' ORDER BY k) FROM (
  SELECT code AS k,
         code || '|' || event_version || '|' ||
         CASE WHEN is_active THEN description || '|' || granted_to ELSE 'deleted' END AS line
    FROM cache.permissions) s}
	]);

for my $t (sort keys %pairs)
{
	my ($src_sql, $cache_sql) = @{ $pairs{$t} };
	my $want = $node->safe_psql('auth_db', $src_sql);
	my $got;
	ok( poll_until(
			90,
			sub {
				$got = query_or_undef($node, 'permits_db', $cache_sql);
				return defined $got && $got eq $want;
			}),
		"cache.$t equals the source (content, versions, deletions)")
	  or diag("source:\n$want\ncache:\n" . ($got // '<error>'));
}
wait_caches_converged($node, 90, 'cache.citizen_refs equals the source in both databases');

# Hard deletes left no row and a tombstone; soft deletes kept the row inactive.
my $revoked = $node->safe_psql('auth_db', q{
SELECT count(*) FROM citizen_sync.aggregate_versions v
 WHERE aggregate_type = 'role'
   AND NOT EXISTS (SELECT 1 FROM role_assignments r WHERE r.assignment_id::text = v.aggregate_id)});
cmp_ok($revoked, '>', 10, "$revoked role assignments revoked on the source");
is($node->safe_psql('permits_db', q{
SELECT (SELECT count(*) FROM citizen_sync.tombstones WHERE target = 'cache.role_assignments'::regclass)
    || '|' || (SELECT count(*) FROM cache.permissions WHERE NOT is_active)
    || '|' || (SELECT count(*) FROM cache.employees WHERE NOT is_active)}),
	"$revoked|2|2", 'a tombstone per revoked role, inactive rows for the revoked permissions and gone employees');

# The unpublished column never reached the service.
is($node->safe_psql('permits_db', q{
SELECT count(*) FROM information_schema.columns
 WHERE table_schema = 'cache' AND column_name = 'password_hash'}),
	'0', 'no cache has the unpublished column');
check_no_dead_letters($node, 'permits_db');

# The per-subscription counters add up.
is($node->safe_psql('permits_db', q{
SELECT string_agg(target::text || '=' || (applied + deleted > 0), ',' ORDER BY target::text)
  FROM citizen_sync.subscriptions WHERE NOT builtin}),
	'cache.employees=true,cache.permissions=true,cache.role_assignments=true',
	'each subscription counted what it applied');

done_testing();
