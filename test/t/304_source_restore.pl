# The source restored from a logical dump (issue 9, item 1 (a) and (c)).
#
# pg_dump of auth_db; more changes (updates, new citizens, a delete) reach
# the caches; auth_db is dropped and restored from the dump as
# docs/operations.md says; the application goes on writing: to the citizens
# whose later changes the restore lost, to one it never touched, and new
# citizens that take ids the lost ones had.
#
# Required:
# (a) every change made after the restore reaches every cache: nothing is
#     dropped as duplicate (event ids stay unique across the restore) or as
#     stale (versions issued after the restore exceed every version issued
#     before); each cache then differs from the source only in the citizens
#     whose last change the restore lost;
# (c) heal() from a service database has the source republish exactly those,
#     after which consistency_check() reports nothing and every cache equals
#     the source.
#
# On 0.1.0 (versions 1, 2, ... from the restored counters, event ids
# evt_<outbox id> from the restored sequence) the caches drop the changes
# made after the restore as duplicate or stale, and heal()'s events too.
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
my $node = start_pipeline('restore', $kafka, conf => "citizen_sync.restart_delay = 1s\n");

# "stale|duplicate" counted by each consumer.
sub drops
{
	my %d;
	for my $db (@SERVICE_DBS)
	{
		my $s = CitizenSync::Check::consumer_stats($node, $db);
		$d{$db} = "$s->{stale}|$s->{duplicate}";
	}
	return \%d;
}

# 30 citizens, 1..10 updated once.
$node->safe_psql('auth_db', citizens_sql(30, phone => 1) . q{
UPDATE citizens SET city = 'Shelbyville' WHERE id <= 10;
});
wait_outbox_drained($node, 60, 'the first changes are published');
wait_caches_converged($node, 90, 'converged before the dump');

my $dump = $node->basedir . '/auth_db.dump';
$node->command_ok([ 'pg_dump', '--format=custom', "--file=$dump", '--dbname=auth_db' ],
	'pg_dump of auth_db');

# Changes the restore will lose: updates of 1..5, citizen 6 deleted, new
# citizens 31..33 (31 updated too).
$node->safe_psql('auth_db', q{
UPDATE citizens SET phone = '+1-555-LOST' WHERE id <= 5;
DELETE FROM citizens WHERE id = 6;
INSERT INTO citizens (name, email)
SELECT 'Lost ' || i, 'lost' || i || '@example.gov' FROM generate_series(31, 33) AS i;
UPDATE citizens SET city = 'Lost City' WHERE id = 31;
});
wait_outbox_drained($node, 60, 'the changes after the dump are published');
wait_caches_converged($node, 90, 'the changes after the dump reached the caches');
my $before = drops();

# The restore, as docs/operations.md prescribes.
$node->safe_psql('postgres', 'DROP DATABASE auth_db WITH (FORCE)');
$node->safe_psql('postgres', 'CREATE DATABASE auth_db');
$node->command_ok(
	[ 'pg_restore', '--single-transaction', '--exit-on-error', '--dbname=auth_db', $dump ],
	'pg_restore of the dump into a new auth_db');
is($node->safe_psql('auth_db', q{SELECT count(*), max(id) FROM citizens}), '30|30',
	'auth_db is back at the dump: 30 citizens');

# The application goes on: citizens 1..3 (whose later update was lost)
# change again, 7 is deleted, 20 (untouched since the dump) changes, and new
# citizens take ids 31 and 32 (the restored sequence) that the lost
# citizens had.
$node->safe_psql('auth_db', q{
UPDATE citizens SET phone = '+1-555-AFTER', city = 'Capital City' WHERE id <= 3;
DELETE FROM citizens WHERE id = 7;
UPDATE citizens SET email_verified = true WHERE id = 20;
INSERT INTO citizens (name, email, phone)
SELECT 'New ' || i, 'new' || i || '@example.gov', '+1-555-NEW' FROM generate_series(1, 2) AS i;
});
is($node->safe_psql('auth_db', q{SELECT string_agg(id::text, ',' ORDER BY id) FROM citizens WHERE id > 30}),
	'31,32', 'the new citizens reuse the ids 31 and 32 of citizens the restore lost');
wait_outbox_drained($node, 60, 'the changes after the restore are published');

# (a) Lost in the source only: 4, 5 (update), 6 (delete), 33 (creation).
my @lost = (4, 5, 6, 33);
for my $db (@SERVICE_DBS)
{
	wait_cache_equals_source($node, $node, $db, 60,
		"$db: every change after the restore applied, the cache equals the source but for the lost changes",
		\@lost);
}
is_deeply(drops(), $before, 'no event was dropped as stale or duplicate since the restore');
for my $db (@SERVICE_DBS)
{
	is($node->safe_psql($db, q{
SELECT string_agg(citizen_id || ':' || coalesce(phone, '-') || ':' || is_active, ' ' ORDER BY citizen_id)
  FROM cache.citizen_refs WHERE citizen_id IN (1, 4, 6, 7, 31, 32, 33)}),
		'1:+1-555-AFTER:true 4:+1-555-LOST:true 6:+1-555-6:false 7:+1-555-7:false '
		  . '31:+1-555-NEW:true 32:+1-555-NEW:true 33:-:true',
		"$db: changes after the restore win, the lost ones are still there");
}

# (c) heal() republishes the citizens the restore lost.
my $conninfo = source_conninfo($node);
$node->safe_psql($_, 'CREATE EXTENSION dblink') for @SERVICE_DBS;
is(drift($node, 'permits_db', $conninfo), '4|mismatched,5|mismatched,6|missing,33|extra',
	'consistency_check names exactly the changes the restore lost');
is($node->safe_psql('permits_db', "SELECT citizen_sync.heal($conninfo, interval '0 seconds')"),
	'4', 'heal() has the source republish the 4 citizens');
wait_outbox_drained($node, 60, 'the healing events are published');
wait_caches_converged($node, 60, 'after heal() every cache equals the source');
for my $db (@SERVICE_DBS)
{
	is(drift($node, $db, $conninfo), '', "$db: consistency_check reports nothing after heal()");
}
is_deeply(drops(), $before, 'no healing event was dropped as stale or duplicate');

$node->stop;
$kafka->stop;
done_testing();
