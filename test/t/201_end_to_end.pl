# End to end: many concurrent source transactions in auth_db (inserts,
# updates of random citizens and of the same few hot citizens, deletes,
# multi-statement transactions, changes of an unpublished column, and
# transactions that roll back) go through the outbox, the publisher, Kafka and
# the consumers; every service cache must end equal to the source.
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

my $clients = 8;
my $transactions = 150;    # per client
my $seed = 200;            # citizens before the load; 1..3 are the hot ones

my $kafka = start_broker();
my $node = start_pipeline('e2e', $kafka);

$node->safe_psql('auth_db', qq{
INSERT INTO citizens (name, email, phone, address, city, postal_code)
SELECT 'Citizen ' || i, 'c' || i || '\@example.gov', '+1-555-' || i,
       i || ' Elm St', 'Springfield', lpad(i::text, 5, '0')
  FROM generate_series(1, $seed) AS i;
});

my $total = $clients * $transactions;
$node->pgbench(
	"--no-vacuum --client=$clients --jobs=$clients --transactions=$transactions",
	0,
	[qr{processed: $total/$total}],
	[qr{^$}],
	'concurrent source transactions',
	{
		'201_insert.sql@2' => q{
INSERT INTO citizens (name, email, phone, city, email_verified)
VALUES ('New ' || txid_current(), 'n' || txid_current() || '@example.gov',
        CASE WHEN random() < 0.5 THEN NULL ELSE '+1-555-' || txid_current() END,
        'Shelbyville', random() < 0.5);
},
		'201_update_random.sql@3' => q{
\set cid random(1, 200)
UPDATE citizens SET city = 'City ' || txid_current(), phone = NULL,
       identity_verified = NOT identity_verified
 WHERE id = :cid;
},
		'201_update_hot.sql@5' => q{
\set cid random(1, 3)
UPDATE citizens SET name = 'Hot ' || txid_current(),
       email_verified = NOT email_verified
 WHERE id = :cid;
},
		'201_multi.sql@2' => q{
\set cid random(1, 3)
BEGIN;
UPDATE citizens SET address = txid_current() || ' Oak Ave' WHERE id = :cid;
INSERT INTO citizens (name, email) VALUES ('Multi ' || txid_current(), 'm' || txid_current() || '@example.gov');
UPDATE citizens SET postal_code = (txid_current() % 100000)::text WHERE id = :cid;
COMMIT;
},
		'201_delete.sql@1' => q{
\set cid random(4, 200)
DELETE FROM citizens WHERE id = :cid;
},
		'201_rollback.sql@2' => q{
\set cid random(1, 3)
\set other random(4, 200)
BEGIN;
INSERT INTO citizens (name, email) VALUES ('rolled back ' || txid_current(), 'rb@example.gov');
UPDATE citizens SET name = 'rolled back ' || txid_current() WHERE id = :cid;
DELETE FROM citizens WHERE id = :other;
ROLLBACK;
},
		'201_unpublished.sql@1' => q{
\set cid random(1, 200)
UPDATE citizens SET password_hash = md5(random()::text) WHERE id = :cid;
},
	},
	'auth_db');

my ($hot_min, $deleted, $changes) = split /\|/, $node->safe_psql('auth_db', q{
SELECT (SELECT min(n) FROM (SELECT count(*) AS n FROM citizen_sync.outbox
                             WHERE aggregate_id::bigint <= 3 GROUP BY aggregate_id) AS h),
       (SELECT count(*) FROM citizen_sync.aggregate_versions v
         WHERE NOT EXISTS (SELECT 1 FROM citizens c WHERE c.id::text = v.aggregate_id)),
       (SELECT count(*) FROM citizen_sync.outbox)});
cmp_ok($hot_min, '>', 50, "each hot citizen got many versions (at least $hot_min)");
cmp_ok($deleted, '>', 10, "some citizens were deleted ($deleted)");
note("committed changes: $changes");

# Rolled-back transactions left nothing behind, and the outbox holds exactly
# one row per committed change.
is( $node->safe_psql('auth_db', q{
SELECT count(*) FROM citizen_sync.outbox
 WHERE payload -> 'data' -> 'snapshot' ->> 'name' LIKE 'rolled back%'}),
	'0',
	'rolled-back changes left no outbox row');
check_outbox_complete($node);

wait_outbox_drained($node, 60);
wait_caches_converged($node, 90);

# On the topic: every committed change exactly once, in per-key order (the
# concurrent transactions committed out of outbox id order).
my @events = topic_events($kafka);
check_topic_complete($node, \@events);
is(check_topic_has_outbox($node, \@events), 0, 'no row was sent twice');
check_topic_order(\@events);

# Nothing was dead-lettered on the way.
check_no_dead_letters($node, $_) for @SERVICE_DBS;
my $stats = publisher_stats($node);
cmp_ok($stats->{published}, '>=', $changes,
	"the publisher counts at least $changes published messages ($stats->{published})");

$node->stop;
$kafka->stop;
done_testing();
