# The owner of a captured table cannot change its rows without an event
# (issue 8, item 6, second bullet).
#
# auth_app, a LOGIN role that is not a superuser, owns the captured table
# public.citizens.  Under 0.1.0 (database old_db) it can disable the capture
# trigger, or attach an INHERITS child, and change rows that no event ever
# reports.  With the current version every bypass is refused with an error
# and a HINT: disabling the triggers (one, USER, ALL, REPLICA, ORIGIN),
# dropping, replacing or renaming them, INHERITS children and partitions,
# dropping the table, dropping or renaming a published column, TRUNCATE.
# Afterwards the outbox still describes the table exactly: every row's
# latest event carries its current published values, and every change made
# produced one event.  Also:
#  - the triggers are ENABLE ALWAYS: session_replication_role = replica
#    does not skip them;
#  - uncapture() is the way out, after which the table is free again;
#  - DDL elsewhere is not disturbed, with or without captured tables;
#  - pg_dump | psql restores a database with captured tables (the guards do
#    not trip over the restore order), and DROP EXTENSION CASCADE works;
#  - ALTER EXTENSION UPDATE brings a 0.1.0 capture whose trigger the owner
#    disabled back to the 0.2.0 form (enabled ALWAYS, guarded).
use strict;
use warnings;

use FindBin;
use lib "$FindBin::RealBin/../perl";
use CitizenSync::Node;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = CitizenSync::Node::new_plain_node('capture_guards');

$node->safe_psql('postgres', q{
CREATE ROLE auth_app LOGIN;
CREATE ROLE auth_owner NOLOGIN;
CREATE DATABASE old_db;
CREATE DATABASE auth_db;
CREATE DATABASE plain_db;
});

# Run SQL in $db; returns (ok, stdout, stderr).  As auth_app when $as_app.
sub run_sql
{
	my ($db, $sql, $as_app) = @_;
	return CitizenSync::Node::run_sql($node, $db, $sql, $as_app ? (user => 'auth_app') : ());
}

# A database where auth_app owns public.citizens, captured with its
# published columns, holding three citizens.
sub setup_db
{
	my ($db, $version) = @_;
	my $ext = $version ? "CREATE EXTENSION citizen_sync VERSION '$version'" : 'CREATE EXTENSION citizen_sync';
	my ($ok, $out, $err) = run_sql($db, qq{
$ext;
GRANT CREATE ON SCHEMA public TO auth_app;
CREATE TABLE public.citizens (id bigint PRIMARY KEY, name text, email text, note text);
ALTER TABLE public.citizens OWNER TO auth_app;
SELECT citizen_sync.capture('public.citizens', 'citizen', ARRAY['name', 'email']);
});
	ok($ok, "$db: public.citizens captured") or diag($err);
	my $capture_err = $err;
	($ok, $out, $err) = run_sql($db, q{
INSERT INTO public.citizens VALUES (1, 'Ana', 'ana@example.gov'), (2, 'Ben', 'ben@example.gov'),
                                   (3, 'Cy', 'cy@example.gov');
}, 1);
	ok($ok, "$db: auth_app inserts citizens") or diag($err);
	return $capture_err;
}

# The rows whose current published values differ from their latest event
# (rows without any event, events of rows that are gone included): empty
# when every change was published.
my $unpublished_sql = q{
SELECT coalesce(string_agg(coalesce(c.id, e.agg_id)::text, ',' ORDER BY coalesce(c.id, e.agg_id)), '')
  FROM public.citizens c
  FULL JOIN (SELECT DISTINCT ON (aggregate_id) aggregate_id::bigint AS agg_id, event_type,
                    payload -> 'data' -> 'snapshot' AS snap
               FROM citizen_sync.outbox WHERE aggregate_type = 'citizen'
              ORDER BY aggregate_id, id DESC) e ON e.agg_id = c.id
 WHERE CASE WHEN c.id IS NULL THEN e.event_type <> 'deleted'
            WHEN e.agg_id IS NULL OR e.event_type = 'deleted' THEN true
            ELSE jsonb_build_object('id', c.id, 'name', c.name, 'email', c.email) IS DISTINCT FROM e.snap
       END
};
my $events_sql = q{SELECT count(*) FROM citizen_sync.outbox WHERE aggregate_type = 'citizen'};

# --- 0.1.0: the owner changes rows without an event ------------------------------
setup_db('old_db', '0.1.0');
my ($ok, $out, $err) = run_sql('old_db', q{
ALTER TABLE public.citizens DISABLE TRIGGER citizen_sync_capture;
UPDATE public.citizens SET email = 'ana@evil.example' WHERE id = 1;
CREATE TABLE public.citizens_extra () INHERITS (public.citizens);
INSERT INTO public.citizens_extra VALUES (4, 'Ghost', 'ghost@evil.example');
}, 1);
ok($ok, '0.1.0: the owner disables the trigger and adds an INHERITS child') or diag($err);
is($node->safe_psql('old_db', $unpublished_sql), '1,4',
	'0.1.0: citizen 1 changed, and citizen 4 appeared through the child, without an event');

# --- the current version: every bypass is refused -------------------------------------
$err = setup_db('auth_db');
like($err, qr/WARNING:  table public\.citizens is owned by role "auth_app", which can log in/,
	'capture() warns that the owner can log in');
is($node->safe_psql('auth_db', q{
SELECT string_agg(tgname || ':' || tgenabled::text, ' ' ORDER BY tgname) FROM pg_trigger
 WHERE tgrelid = 'public.citizens'::regclass}),
	'citizen_sync_capture:A citizen_sync_no_truncate:A', 'capture() creates its triggers ENABLE ALWAYS');

$node->safe_psql('auth_db', q{
CREATE FUNCTION public.noop() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RETURN NULL; END $$;
ALTER FUNCTION public.noop() OWNER TO auth_app;
CREATE TABLE public.archive (id bigint NOT NULL, name text, email text, note text);
ALTER TABLE public.archive OWNER TO auth_app;
});
my $hint_uncapture = qr/HINT:  Run citizen_sync\.uncapture\('public\.citizens'\)/;
my @bypasses = (
	[ 'DISABLE TRIGGER citizen_sync_capture',
		'ALTER TABLE public.citizens DISABLE TRIGGER citizen_sync_capture',
		qr/ERROR:  cannot disable trigger "citizen_sync_capture" on table public\.citizens, its changes are captured by citizen_sync/,
		$hint_uncapture ],
	[ 'DISABLE TRIGGER USER', 'ALTER TABLE public.citizens DISABLE TRIGGER USER',
		qr/ERROR:  cannot disable trigger "citizen_sync_capture"/, $hint_uncapture ],
	[ 'DISABLE TRIGGER ALL', 'ALTER TABLE public.citizens DISABLE TRIGGER ALL',
		qr/ERROR:  cannot disable trigger "citizen_sync_capture"/, $hint_uncapture ],
	[ 'DISABLE TRIGGER citizen_sync_no_truncate',
		'ALTER TABLE public.citizens DISABLE TRIGGER citizen_sync_no_truncate',
		qr/ERROR:  cannot disable trigger "citizen_sync_no_truncate"/, $hint_uncapture ],
	[ 'ENABLE REPLICA TRIGGER', 'ALTER TABLE public.citizens ENABLE REPLICA TRIGGER citizen_sync_capture',
		qr/ERROR:  cannot disable trigger "citizen_sync_capture"/, $hint_uncapture ],
	[ 'ENABLE TRIGGER (origin only)', 'ALTER TABLE public.citizens ENABLE TRIGGER citizen_sync_capture',
		qr/ERROR:  cannot disable trigger "citizen_sync_capture"/, $hint_uncapture ],
	[ 'DROP TRIGGER citizen_sync_capture', 'DROP TRIGGER citizen_sync_capture ON public.citizens',
		qr/ERROR:  cannot drop trigger "citizen_sync_capture" on table public\.citizens, its changes are captured by citizen_sync/,
		$hint_uncapture ],
	[ 'DROP TRIGGER citizen_sync_no_truncate', 'DROP TRIGGER citizen_sync_no_truncate ON public.citizens',
		qr/ERROR:  cannot drop trigger "citizen_sync_no_truncate"/, $hint_uncapture ],
	[ 'ALTER TRIGGER ... RENAME', 'ALTER TRIGGER citizen_sync_capture ON public.citizens RENAME TO capture',
		qr/ERROR:  cannot replace or rename trigger "capture" on table public\.citizens/, $hint_uncapture ],
	[ 'CREATE OR REPLACE TRIGGER with another function',
		'CREATE OR REPLACE TRIGGER citizen_sync_capture AFTER INSERT ON public.citizens FOR EACH ROW EXECUTE FUNCTION public.noop()',
		qr/ERROR:  cannot replace or rename trigger "citizen_sync_capture" on table public\.citizens/,
		qr/DETAIL:  Trigger "citizen_sync_capture" calls public\.noop\(\)/ ],
	[ 'CREATE OR REPLACE TRIGGER with capture_row() and other arguments',
		q{CREATE OR REPLACE TRIGGER citizen_sync_capture AFTER INSERT ON public.citizens FOR EACH ROW EXECUTE FUNCTION citizen_sync.capture_row('other', 'id')},
		qr/ERROR:  permission denied for (schema citizen_sync|function capture_row)/, qr/./ ],
	[ 'CREATE TABLE ... INHERITS', 'CREATE TABLE public.citizens_extra () INHERITS (public.citizens)',
		qr/ERROR:  cannot make public\.citizens_extra a child or partition of table public\.citizens, its changes are captured by citizen_sync/,
		$hint_uncapture ],
	[ 'ALTER TABLE ... INHERIT', 'ALTER TABLE public.archive INHERIT public.citizens',
		qr/ERROR:  cannot make public\.archive a child or partition of table public\.citizens/, $hint_uncapture ],
	[ 'DROP TABLE', 'DROP TABLE public.citizens',
		qr/ERROR:  cannot drop table public\.citizens, its changes are captured by citizen_sync/,
		qr/HINT:  Delete its rows first if the caches should see them go, then run citizen_sync\.uncapture\(\)/ ],
	[ 'DROP OWNED BY the owner', 'DROP OWNED BY auth_app',
		qr/ERROR:  cannot drop table public\.citizens, its changes are captured by citizen_sync/, qr/./ ],
	[ 'RENAME COLUMN of a published column', 'ALTER TABLE public.citizens RENAME COLUMN email TO mail',
		qr/ERROR:  cannot drop or rename column "email" of table public\.citizens, it is captured by citizen_sync/,
		qr/HINT:  Capture the table again without it first/ ],
	[ 'DROP COLUMN of a published column', 'ALTER TABLE public.citizens DROP COLUMN name',
		qr/ERROR:  cannot drop or rename column "name" of table public\.citizens/, qr/./ ],
	[ 'RENAME COLUMN of the id column', 'ALTER TABLE public.citizens RENAME COLUMN id TO citizen_id',
		qr/ERROR:  cannot drop or rename column "id" of table public\.citizens/, qr/./ ],
	[ 'TRUNCATE', 'TRUNCATE public.citizens',
		qr/ERROR:  cannot truncate public\.citizens, its changes are captured by citizen_sync/, qr/./ ]);

my $events_before = $node->safe_psql('auth_db', $events_sql);
my $n = 0;
for my $b (@bypasses)
{
	my ($what, $sql, $error, $hint) = @$b;
	$n++;
	# The bypass, then a change that it would hide, in one transaction.
	($ok, $out, $err) = run_sql('auth_db', qq{
BEGIN;
$sql;
UPDATE public.citizens SET email = 'hidden$n\@evil.example' WHERE id = 2;
INSERT INTO public.citizens VALUES (100 + $n, 'Hidden $n', 'hidden$n\@evil.example');
COMMIT;
}, 1);
	ok(!$ok, "$what: refused");
	like($err, $error, "$what: clear error");
	like($err, $hint, "$what: HINT");
}
is($node->safe_psql('auth_db', $events_sql), $events_before, 'no refused attempt wrote anything');
is($node->safe_psql('auth_db', q{
SELECT string_agg(tgname || ':' || tgenabled::text || ':' || tgfoid::regproc, ' ' ORDER BY tgname) FROM pg_trigger
 WHERE tgrelid = 'public.citizens'::regclass}),
	'citizen_sync_capture:A:citizen_sync.capture_row citizen_sync_no_truncate:A:citizen_sync.refuse_truncate',
	'the triggers are as capture() made them');
is($node->safe_psql('auth_db', q{SELECT count(*) FROM pg_inherits WHERE inhparent = 'public.citizens'::regclass}),
	'0', 'the table has no child');

# What the owner may still do: unpublished columns, other DDL, DML.
($ok, $out, $err) = run_sql('auth_db', q{
ALTER TABLE public.citizens RENAME COLUMN note TO remark;
ALTER TABLE public.citizens ADD COLUMN phone text;
CREATE INDEX ON public.citizens (email);
CREATE TABLE public.archive_2024 () INHERITS (public.archive);
UPDATE public.citizens SET email = 'ana@new.example' WHERE id = 1;
DELETE FROM public.citizens WHERE id = 3;
INSERT INTO public.citizens (id, name, email) VALUES (4, 'Dee', 'dee@example.gov');
}, 1);
ok($ok, 'other DDL and all DML of the owner work') or diag($err);

# Replication role: a superuser loading with session_replication_role =
# replica still fires the capture (ENABLE ALWAYS).
($ok, $out, $err) = run_sql('auth_db', q{
SET session_replication_role = replica;
UPDATE public.citizens SET name = 'Ana R.' WHERE id = 1;
});
ok($ok, 'a change under session_replication_role = replica') or diag($err);
is($node->safe_psql('auth_db', q{
SELECT payload -> 'data' -> 'snapshot' ->> 'name' FROM citizen_sync.outbox ORDER BY id DESC LIMIT 1}),
	'Ana R.', '... is captured all the same');

is($node->safe_psql('auth_db', $unpublished_sql), '',
	'every row\'s latest event carries its current published values: nothing changed without an event');
is($node->safe_psql('auth_db', $events_sql), $events_before + 4,
	'one event per change (two updates, a delete, an insert)');

# --- the way out: uncapture() ------------------------------------------------------------
($ok, $out, $err) = run_sql('auth_db', q{SELECT citizen_sync.uncapture('public.citizens')});
ok($ok, 'uncapture() drops the triggers the guard protects') or diag($err);
($ok, $out, $err) = run_sql('auth_db', q{
CREATE TABLE public.citizens_extra () INHERITS (public.citizens);
ALTER TABLE public.citizens RENAME COLUMN email TO mail;
DROP TABLE public.citizens CASCADE;
}, 1);
ok($ok, 'once uncaptured, the table is the owner\'s again') or diag($err);

# A NOLOGIN owner: no warning.
($ok, $out, $err) = run_sql('auth_db', q{
CREATE TABLE public.staff (id bigint PRIMARY KEY, name text);
ALTER TABLE public.staff OWNER TO auth_owner;
GRANT SELECT, INSERT, UPDATE, DELETE ON public.staff TO auth_app;
SELECT citizen_sync.capture('public.staff', 'staff');
});
ok($ok, 'capture() of a table owned by a NOLOGIN role') or diag($err);
unlike($err, qr/WARNING/, '... gives no warning');
($ok, $out, $err) = run_sql('auth_db', q{ALTER TABLE public.staff DISABLE TRIGGER citizen_sync_capture}, 1);
like($err, qr/ERROR:  must be owner of table staff/, 'and the application role cannot even try DDL');

# --- DDL elsewhere -----------------------------------------------------------------------
($ok, $out, $err) = run_sql('plain_db', q{
CREATE EXTENSION citizen_sync;
CREATE TABLE p (id int);
CREATE TABLE c () INHERITS (p);
ALTER TABLE p DISABLE TRIGGER ALL;
CREATE TYPE t AS ENUM ('a');
ALTER TABLE p ADD COLUMN t t;
DROP TABLE p CASCADE;
DROP TYPE t;
});
ok($ok, 'a database with nothing captured: DDL works as without the extension') or diag($err);

# --- dump and restore; DROP EXTENSION ----------------------------------------------------
$node->safe_psql('postgres', 'CREATE DATABASE restored_db');
my ($dump, $dump_err);
IPC::Run::run([ 'pg_dump', '-d', $node->connstr('auth_db') ], '>', \$dump, '2>', \$dump_err)
  or die "pg_dump failed: $dump_err";
($ok, $out, $err) = run_sql('restored_db', $dump);
ok($ok, 'pg_dump output of a database with captured tables restores with ON_ERROR_STOP')
  or diag($err);
is($node->safe_psql('restored_db', q{
SELECT string_agg(tgrelid::regclass || '.' || tgname || ':' || tgenabled::text, ' ' ORDER BY 1) FROM pg_trigger
 WHERE tgname LIKE 'citizen_sync%'}),
	'staff.citizen_sync_capture:A staff.citizen_sync_no_truncate:A',
	'the restored capture triggers are ENABLE ALWAYS');
($ok, $out, $err) = run_sql('restored_db', q{ALTER TABLE public.staff DISABLE TRIGGER citizen_sync_capture});
like($err, qr/ERROR:  cannot disable trigger "citizen_sync_capture"/, 'and guarded');
($ok, $out, $err) = run_sql('restored_db', 'DROP EXTENSION citizen_sync CASCADE');
ok($ok, 'DROP EXTENSION citizen_sync CASCADE works with captured tables') or diag($err);
is($node->safe_psql('restored_db', q{SELECT count(*) FROM pg_trigger WHERE tgname LIKE 'citizen_sync%'}),
	'0', '... and takes the triggers with it');

# --- ALTER EXTENSION UPDATE of the tampered 0.1.0 capture ----------------------------
# old_db: auth_app disabled the trigger and attached a child under 0.1.0.
# The update refuses the child (capture()'s check); once detached, the
# capture comes back ENABLE ALWAYS and guarded.
($ok, $out, $err) = run_sql('old_db', 'ALTER EXTENSION citizen_sync UPDATE');
ok(!$ok, 'the update refuses a captured table with an inheritance child');
like($err, qr/ERROR:  cannot capture public\.citizens, it has inheritance children/, '... saying so');
$node->safe_psql('old_db', 'ALTER TABLE public.citizens_extra NO INHERIT public.citizens');
($ok, $out, $err) = run_sql('old_db', 'ALTER EXTENSION citizen_sync UPDATE');
ok($ok, 'once detached, the update succeeds') or diag($err);
is($node->safe_psql('old_db', q{
SELECT string_agg(tgname || ':' || tgenabled::text, ' ' ORDER BY tgname) FROM pg_trigger
 WHERE tgrelid = 'public.citizens'::regclass}),
	'citizen_sync_capture:A citizen_sync_no_truncate:A',
	'the disabled 0.1.0 trigger is back, ENABLE ALWAYS');
($ok, $out, $err) = run_sql('old_db', q{
BEGIN;
ALTER TABLE public.citizens DISABLE TRIGGER citizen_sync_capture;
UPDATE public.citizens SET email = 'ben@evil.example' WHERE id = 2;
COMMIT;
}, 1);
like($err, qr/ERROR:  cannot disable trigger "citizen_sync_capture"/, 'and guarded after the update');
($ok, $out, $err) = run_sql('old_db', q{UPDATE public.citizens SET email = 'ana@example.gov' WHERE id = 1}, 1);
is($node->safe_psql('old_db', $unpublished_sql), '',
	'the next change of the row that changed unseen under 0.1.0 is published');

$node->stop;
done_testing();
