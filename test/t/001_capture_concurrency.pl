# Concurrent updates of one citizen get strictly increasing versions.
#
# Eight pgbench clients update the same captured row at once (plus a few other
# citizens, and some transactions that roll back).  The outbox must then hold,
# for every citizen, one row per committed change (the INSERT plus every
# committed UPDATE) whose versions strictly increase in outbox id order, none
# below the clock (microseconds since 1970) of its transaction's start, and
# the newest version must carry the row's final state.
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

use FindBin;
use lib "$FindBin::RealBin/../perl";
use CitizenSync::Node;

my $clients      = 8;
my $transactions = 60;    # per client

my $node = CitizenSync::Node::new_plain_node('capture_concurrency',
	conf => "max_connections = 50\n");

$node->safe_psql('postgres', q{
CREATE EXTENSION citizen_sync;
CREATE TABLE public.citizens (
    id bigint PRIMARY KEY, name text, email text, phone text, address text,
    city text, postal_code text, email_verified bool DEFAULT false,
    identity_verified bool DEFAULT false, password_hash text,
    -- not published: counts the committed updates
    n_updates int NOT NULL DEFAULT 0);
SELECT citizen_sync.capture('public.citizens', 'citizen',
       ARRAY['name', 'email', 'phone', 'address', 'city', 'postal_code',
             'email_verified', 'identity_verified']);
INSERT INTO public.citizens (id, name, email)
SELECT i, 'Citizen ' || i, 'c' || i || '@example.gov' FROM generate_series(1, 4) AS i;
});

# Every committed UPDATE changes a published column (the transaction id is
# unique), so each writes exactly one outbox row.
$node->pgbench(
	"--no-vacuum --client=$clients --jobs=$clients --transactions=$transactions",
	0,
	[qr{processed: @{[ $clients * $transactions ]}/@{[ $clients * $transactions ]}}],
	[qr{^$}],
	'concurrent updates of captured citizens',
	{
		# the hot row: most transactions
		'001_hot.sql@6' => q{
UPDATE public.citizens
   SET name = 'hot ' || txid_current(), n_updates = n_updates + 1
 WHERE id = 1;
},
		# a few other citizens, interleaved
		'001_other.sql@2' => q{
\set cid random(2, 4)
UPDATE public.citizens
   SET city = 'city ' || txid_current(), n_updates = n_updates + 1
 WHERE id = :cid;
},
		# changes that roll back must leave no outbox row and no version gap
		'001_rollback.sql@1' => q{
BEGIN;
UPDATE public.citizens
   SET name = 'rolled back ' || txid_current(), n_updates = n_updates + 1
 WHERE id = 1;
ROLLBACK;
},
		# a change of an unpublished column only: no event
		'001_unpublished.sql@1' => q{
UPDATE public.citizens SET password_hash = md5(random()::text) WHERE id = 1;
},
	});

my $hot_updates = $node->safe_psql('postgres',
	'SELECT n_updates FROM public.citizens WHERE id = 1');
cmp_ok($hot_updates, '>', $clients, "the hot citizen got $hot_updates committed updates");

# Per citizen: the versions in outbox id order, their count, and the
# committed changes of the row.
my $rows = $node->safe_psql('postgres', q{
SELECT c.id,
       count(o.id),
       1 + c.n_updates,
       array_agg((o.payload ->> 'event_version')::bigint ORDER BY o.id)
         = ARRAY(SELECT DISTINCT v FROM unnest(array_agg((o.payload ->> 'event_version')::bigint)) AS v
                  ORDER BY v),
       bool_and((o.payload ->> 'event_version') IS NOT NULL),
       array_to_string((array_agg((o.payload ->> 'event_version')::bigint ORDER BY o.id))[1:12], ',')
  FROM public.citizens c
  LEFT JOIN citizen_sync.outbox o
    ON o.aggregate_type = 'citizen' AND o.aggregate_id = c.id::text
 GROUP BY c.id, c.n_updates
 ORDER BY c.id});

for my $line (split /\n/, $rows)
{
	my ($id, $events, $committed, $increasing, $all_versioned, $head) =
	  split /\|/, $line;
	is($events, $committed,
		"citizen $id: one outbox row per committed change ($committed)");
	is($increasing, 't',
		"citizen $id: versions strictly increase in outbox id order (starts $head)");
	is($all_versioned, 't', "citizen $id: every row has a version");
}

# No version is below the clock of its transaction's start (created_at):
# a restored source issues versions above the ones issued before it.
is( $node->safe_psql('postgres', q{
SELECT count(*) FROM citizen_sync.outbox
 WHERE (payload ->> 'event_version')::bigint < extract(epoch FROM created_at) * 1000000}),
	'0',
	'every version is at least the microseconds since 1970 of its transaction start');

# No version appears twice for a citizen.
is( $node->safe_psql('postgres', q{
SELECT count(*) FROM (
  SELECT aggregate_id, payload ->> 'event_version'
    FROM citizen_sync.outbox
   GROUP BY 1, 2 HAVING count(*) > 1) AS d}),
	'0',
	'no repeated version');

# Nothing that rolled back reached the outbox.
is( $node->safe_psql('postgres', q{
SELECT count(*) FROM citizen_sync.outbox
 WHERE payload -> 'data' -> 'snapshot' ->> 'name' LIKE 'rolled back%'}),
	'0',
	'rolled-back changes left no outbox row');

# The counter holds the newest version, which carries the final state.
is( $node->safe_psql('postgres', q{
SELECT bool_and(o.payload -> 'data' -> 'snapshot' ->> 'name' = c.name
                AND o.payload -> 'data' -> 'snapshot' ->> 'city' IS NOT DISTINCT FROM c.city)
       AND count(*) = (SELECT count(*) FROM public.citizens)
  FROM public.citizens c
  JOIN citizen_sync.aggregate_versions v
    ON v.aggregate_type = 'citizen' AND v.aggregate_id = c.id::text
  JOIN citizen_sync.outbox o
    ON o.aggregate_type = 'citizen' AND o.aggregate_id = c.id::text
   AND (o.payload ->> 'event_version')::bigint = v.last_version}),
	't',
	'the last version is the final committed state of each citizen');

# Replayed through the apply core in outbox order, the cache ends equal to the
# source table.
$node->safe_psql('postgres', q{
SELECT count(citizen_sync.apply_event(
         (o.payload || jsonb_build_object('event_type', o.aggregate_type || '.' || o.event_type,
                                          'event_id', 'evt_' || o.id))::text))
  FROM (SELECT * FROM citizen_sync.outbox ORDER BY id OFFSET 0) AS o});
is( $node->safe_psql('postgres', q{
SELECT count(*) FROM (
  (SELECT id, name, city, last_version FROM public.citizens JOIN citizen_sync.aggregate_versions ON aggregate_id = id::text
   EXCEPT SELECT citizen_id, name, city, event_version FROM cache.citizen_refs)
  UNION ALL
  (SELECT citizen_id, name, city, event_version FROM cache.citizen_refs
   EXCEPT SELECT id, name, city, last_version FROM public.citizens JOIN citizen_sync.aggregate_versions ON aggregate_id = id::text)) AS d}),
	'0',
	'the cache replayed from the outbox equals the source table');

$node->stop;
done_testing();
