# A table owner cannot gain rights through the capture (issue 8, item 1).
#
# auth_app, a LOGIN role that is not a superuser, owns a captured table and
# may create objects in public.  Under 0.1.0, capture_row() is SECURITY
# DEFINER owned by the installing superuser and renders rows with to_jsonb(),
# which calls a user type's cast to json: a cast whose function runs
# ALTER ROLE auth_app SUPERUSER makes auth_app a superuser at the next
# INSERT.  The test shows that on 0.1.0 (in database old_db), then that with
# the current version:
#
#  - the attack and its variants (a domain over the type, an array of it, a
#    composite holding it, a range type with its own cast, a cast or an owner
#    handed to auth_app after capture(), a type whose output function auth_app
#    owns) are refused with an error naming the column, and the function
#    body never runs;
#  - source_state() and resync(), run by a superuser directly or over dblink
#    (what heal() does), refuse a table that became unsafe while the event
#    trigger was disabled, without running the cast;
#  - even then, the capture trigger runs the cast as citizen_sync_capture,
#    which cannot become anything: no privilege is gained;
#  - functions and operators (=, ->>, to_jsonb) planted in public and in the
#    owner's schema, first on the owner's search_path, are never called;
#  - citizen_sync_capture holds exactly what the capture needs;
#  - ALTER EXTENSION UPDATE from 0.1.0 refuses to carry an unsafe capture
#    over, and once fixed the attack fails there too.
#
# Every attack function announces itself with a NOTICE naming current_user
# before it tries ALTER ROLE, so the test sees whether, and as whom, it ran.
use strict;
use warnings;

use FindBin;
use lib "$FindBin::RealBin/../perl";
use CitizenSync::Node;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = CitizenSync::Node::new_plain_node('capture_privilege');

$node->safe_psql('postgres', q{
CREATE ROLE auth_app LOGIN;
CREATE DATABASE old_db;
CREATE DATABASE auth_db;
CREATE DATABASE permits_db;
});

# Run SQL in $db; returns (ok, stdout, stderr).  As auth_app when $as_app.
sub run_sql
{
	my ($db, $sql, $as_app) = @_;
	return CitizenSync::Node::run_sql($node, $db, $sql, $as_app ? (user => 'auth_app') : ());
}

sub is_superuser
{
	return $node->safe_psql('postgres',
		q{SELECT rolsuper FROM pg_roles WHERE rolname = 'auth_app'});
}

# The attack's cast function for type $type (a plpgsql function of auth_app).
sub attack_function
{
	my ($name, $type) = @_;
	return qq{
CREATE FUNCTION public.$name(public.$type) RETURNS json LANGUAGE plpgsql AS \$f\$
BEGIN
    RAISE NOTICE 'attack ran as %', current_user;
    ALTER ROLE auth_app SUPERUSER;
    RETURN to_json(\$1::text);
END
\$f\$;
};
}

# A database where auth_app owns the captured table public.accounts.
sub setup_db
{
	my ($db, $version) = @_;
	my $ext = $version ? "CREATE EXTENSION citizen_sync VERSION '$version'" : 'CREATE EXTENSION citizen_sync';
	my ($ok, $out, $err) = run_sql($db, qq{
$ext;
GRANT CREATE ON SCHEMA public TO auth_app;
CREATE TABLE public.accounts (id bigint PRIMARY KEY, name text);
ALTER TABLE public.accounts OWNER TO auth_app;
SELECT citizen_sync.capture('public.accounts', 'account', ARRAY['name']);
});
	ok($ok, "$db: extension installed and public.accounts captured") or diag($err);
	return $err;
}

# The exact attack of the issue, as auth_app.
my $basic_attack = q{
CREATE TYPE public.flag AS ENUM ('on');
} . attack_function('flag_to_json', 'flag') . q{
CREATE CAST (public.flag AS json) WITH FUNCTION public.flag_to_json(public.flag);
ALTER TABLE public.accounts ADD COLUMN flag public.flag DEFAULT 'on';
INSERT INTO public.accounts VALUES (1, 'first');
};

# --- 0.1.0: the attack works ------------------------------------------------------
setup_db('old_db', '0.1.0');
is(is_superuser(), 'f', 'auth_app starts without superuser');
my ($ok, $out, $err) = run_sql('old_db', $basic_attack, 1);
ok($ok, '0.1.0: the attack runs through') or diag($err);
like($err, qr/NOTICE:  attack ran as postgres/, '0.1.0: the cast ran as the installing superuser');
is(is_superuser(), 't', '0.1.0: auth_app made itself superuser');
$node->safe_psql('postgres', 'ALTER ROLE auth_app NOSUPERUSER');

# --- the current version -------------------------------------------------------------
$err = setup_db('auth_db');
like($err, qr/WARNING:  table public\.accounts is owned by role "auth_app", which can log in/,
	'capture() warns that the owner can log in');
like($err, qr/HINT:  Have a NOLOGIN role own the table/, '... with a HINT');

($ok, $out, $err) = run_sql('auth_db', $basic_attack, 1);
ok(!$ok, 'the attack is refused');
like($err, qr/ERROR:  column "flag" of table public\.accounts has type public\.flag, which a non-superuser controls/,
	'the error names the column and its type');
like($err,
	qr/DETAIL:  The cast from public\.flag to json calls function public\.flag_to_json\(public\.flag\), owned by role "auth_app", which is not a superuser\./,
	'its DETAIL names the cast function and its owner');
like($err, qr/HINT:  Have a superuser own the type/, 'its HINT says what to do');
unlike($err, qr/attack ran/, 'the cast function never ran');
is(is_superuser(), 'f', 'auth_app did not become superuser');
is($node->safe_psql('auth_db',
		q{SELECT count(*) FROM pg_attribute WHERE attrelid = 'public.accounts'::regclass AND attname = 'flag'}),
	'0', 'the column was not added');

# Only the ALTER TABLE failed: auth_app keeps its type and cast (it may
# have them, and use them elsewhere), and the captured table stays usable.
is($node->safe_psql('auth_db', q{
SELECT count(*) FROM pg_cast WHERE castsource = 'public.flag'::regtype AND casttarget = 'json'::regtype}),
	'1', 'the statements before the refused one stand (the type and its cast)');
($ok, $out, $err) = run_sql('auth_db', q{
CREATE TABLE public.app_notes (id int, f public.flag);
INSERT INTO public.accounts VALUES (1, 'first');
}, 1);
ok($ok, 'auth_app can still use its type elsewhere and write the captured table') or diag($err);
is($node->safe_psql('auth_db', q{SELECT count(*) FROM citizen_sync.outbox WHERE aggregate_id = '1'}),
	'1', 'the insert was captured');

# Variants: every way of reaching the type from a column is refused.
my @variants = (
	[ 'a domain over the type', q{CREATE DOMAIN public.dflag AS public.flag;},
		q{ADD COLUMN d public.dflag}, 'd', 'public.dflag, which contains type public.flag' ],
	[ 'an array of the type', '', q{ADD COLUMN a public.flag[]}, 'a',
		'public.flag\[\], which contains type public.flag' ],
	[ 'a composite holding the type', q{CREATE TYPE public.wrap AS (f public.flag);},
		q{ADD COLUMN w public.wrap}, 'w', 'public.wrap, which contains type public.flag' ],
	[ 'a user range type with its own cast',
		q{CREATE TYPE public.trange AS RANGE (subtype = text);}
		  . attack_function('trange_to_json', 'trange')
		  . q{CREATE CAST (public.trange AS json) WITH FUNCTION public.trange_to_json(public.trange);},
		q{ADD COLUMN r public.trange}, 'r', 'public.trange, which a non-superuser controls' ],
	[ 'a changed column type', '', q{ALTER COLUMN name TYPE public.flag USING 'on'}, 'name',
		'public.flag, which a non-superuser controls' ],
	[ 'the row type of a table auth_app owns', q{CREATE TABLE public.flags (f public.flag);},
		q{ADD COLUMN fr public.flags}, 'fr', 'public.flags, which contains type public.flag' ]);
for my $v (@variants)
{
	my ($what, $prep, $alter, $col, $msg) = @$v;
	if ($prep)
	{
		($ok, $out, $err) = run_sql('auth_db', $prep, 1);
		ok($ok, "$what: auth_app creates the type") or diag($err);
	}
	($ok, $out, $err) = run_sql('auth_db', "ALTER TABLE public.accounts $alter", 1);
	ok(!$ok, "$what: refused");
	like($err, qr/ERROR:  column "$col" of table public\.accounts has type $msg/,
		"$what: the error names column \"$col\"");
	unlike($err, qr/attack ran/, "$what: the cast function never ran");
	is(is_superuser(), 'f', "$what: auth_app is not superuser");
}

# After capture(): a superuser-owned type in a captured column must not be
# handed to a non-superuser, nor get a cast whose function one owns.
$node->safe_psql('auth_db', q{
CREATE TYPE public.level AS ENUM ('low', 'high');
ALTER TABLE public.accounts ADD COLUMN level public.level DEFAULT 'low';
});
for my $c (
	[ 'a cast added after capture() with a function auth_app owns',
		attack_function('level_to_json', 'level') . q{
ALTER FUNCTION public.level_to_json(public.level) OWNER TO auth_app;
CREATE CAST (public.level AS json) WITH FUNCTION public.level_to_json(public.level);},
		qr/DETAIL:  The cast from public\.level to json calls function public\.level_to_json\(public\.level\), owned by role "auth_app"/ ],
	[ 'the type handed to auth_app after capture()',
		q{ALTER TYPE public.level OWNER TO auth_app;},
		qr/DETAIL:  Type public\.level is owned by role "auth_app", which is not a superuser/ ],
	[ 'a superuser cast whose function is handed to auth_app',
		q{CREATE FUNCTION public.level_json(public.level) RETURNS json LANGUAGE sql AS $$ SELECT to_json($1::text) $$;
CREATE CAST (public.level AS json) WITH FUNCTION public.level_json(public.level);
ALTER FUNCTION public.level_json(public.level) OWNER TO auth_app;},
		qr/DETAIL:  The cast from public\.level to json calls function public\.level_json\(public\.level\), owned by role "auth_app"/ ])
{
	my ($what, $sql, $detail) = @$c;
	($ok, $out, $err) = run_sql('auth_db', "BEGIN; $sql COMMIT;");
	ok(!$ok, "$what: refused (a superuser ran it)");
	like($err, qr/ERROR:  column "level" of table public\.accounts has type public\.level, which a non-superuser controls/,
		"$what: the error names the column");
	like($err, $detail, "$what: the DETAIL says why");
}
($ok, $out, $err) = run_sql('auth_db',
	q{CREATE CAST (public.level AS json) WITH FUNCTION public.flag_to_json(public.flag)}, 1);
ok(!$ok, 'auth_app cannot add a cast to a type it does not own');

# A type whose output function a non-superuser owns.
$node->safe_psql('auth_db', q{
CREATE TYPE public.code;
CREATE FUNCTION public.code_in(cstring) RETURNS public.code LANGUAGE internal IMMUTABLE STRICT AS 'textin';
CREATE FUNCTION public.code_out(public.code) RETURNS cstring LANGUAGE internal IMMUTABLE STRICT AS 'textout';
CREATE TYPE public.code (INPUT = public.code_in, OUTPUT = public.code_out, LIKE = text);
ALTER FUNCTION public.code_out(public.code) OWNER TO auth_app;
CREATE TABLE public.codes (id bigint PRIMARY KEY, code public.code);
});
($ok, $out, $err) = run_sql('auth_db', q{SELECT citizen_sync.capture('public.codes', 'code')});
ok(!$ok, 'capture() refuses a table whose type has an output function a non-superuser owns');
like($err, qr/ERROR:  column "code" of table public\.codes has type public\.code, which a non-superuser controls\n.*DETAIL:  The output function public\.code_out\(public\.code\) of type public\.code is owned by role "auth_app"/,
	'... naming the column and the output function');

# capture() of a table that already has such a column.
$node->safe_psql('auth_db', q{
CREATE TABLE public.profiles (id bigint PRIMARY KEY, f public.flag);
ALTER TABLE public.profiles OWNER TO auth_app;
});
($ok, $out, $err) = run_sql('auth_db', q{SELECT citizen_sync.capture('public.profiles', 'profile', ARRAY['id'])});
ok(!$ok, 'capture() refuses a table with an unsafe column, published or not');
like($err, qr/ERROR:  column "f" of table public\.profiles has type public\.flag, which a non-superuser controls/,
	'... naming the column');

# --- the event trigger disabled: source_state()/resync() and the capture role ---------
# A maintenance window: a superuser disables the event trigger, and auth_app
# adds the column.  (This also stands for what no event trigger sees, e.g. a
# type owner demoted from superuser.)
$node->safe_psql('auth_db', 'ALTER EVENT TRIGGER citizen_sync_guard DISABLE');
($ok, $out, $err) = run_sql('auth_db', q{ALTER TABLE public.accounts ADD COLUMN flag public.flag DEFAULT 'on'}, 1);
ok($ok, 'with the event trigger disabled, auth_app adds the column') or diag($err);

# The capture trigger (C, since 0.2.0) renders the published columns only:
# the unpublished column's cast never runs, with no privilege or any other.
($ok, $out, $err) = run_sql('auth_db', q{INSERT INTO public.accounts (id, name) VALUES (2, 'second')}, 1);
unlike($err, qr/attack ran/,
	'the capture trigger never runs the cast of an unpublished column');
ok($ok, '... and the insert is captured') or diag($err);
is(is_superuser(), 'f', 'auth_app did not become superuser through the capture role');

# A superuser's source_state() and resync() refuse the table before rendering it.
for my $call ([ 'source_state()', q{SELECT count(*) FROM citizen_sync.source_state('account')} ],
	[ 'resync()', q{SELECT citizen_sync.resync('account')} ],
	[ 'resync(ids)', q{SELECT citizen_sync.resync('account', ARRAY[1::bigint])} ])
{
	my ($what, $sql) = @$call;
	($ok, $out, $err) = run_sql('auth_db', $sql);
	ok(!$ok, "$what as superuser: refused");
	like($err, qr/ERROR:  column "flag" of table public\.accounts has type public\.flag, which a non-superuser controls/,
		"$what: the error names the column");
	unlike($err, qr/attack ran/, "$what: the cast never ran");
	is(is_superuser(), 'f', "$what: auth_app is not superuser");
}
# heal()'s path: source_state() over dblink, as a superuser.
my $auth_conn = $node->connstr('auth_db');
$auth_conn =~ s/'//g;
($ok, $out, $err) = run_sql('permits_db', qq{
CREATE EXTENSION dblink;
SELECT * FROM dblink('$auth_conn', 'SELECT id FROM citizen_sync.source_state(''account'')') AS t(id bigint);
});
ok(!$ok, 'source_state() over dblink (as heal() calls it): refused');
like($err, qr/column "flag" of table public\.accounts has type public\.flag/, '... naming the column');
unlike($err, qr/attack ran/, '... without running the cast');
is(is_superuser(), 'f', 'over dblink: auth_app is not superuser');

# Back on, the event trigger refuses further DDL until the table is safe
# again; dropping the column is allowed.
$node->safe_psql('auth_db', 'ALTER EVENT TRIGGER citizen_sync_guard ENABLE ALWAYS');
($ok, $out, $err) = run_sql('auth_db', q{ALTER TABLE public.accounts ADD COLUMN note text}, 1);
ok(!$ok, 'while a captured table is unsafe, DDL that the event trigger checks is refused');
like($err, qr/column "flag" of table public\.accounts/, '... naming the unsafe column');
($ok, $out, $err) = run_sql('auth_db', q{ALTER TABLE public.accounts DROP COLUMN flag}, 1);
ok($ok, 'dropping the unsafe column is allowed') or diag($err);

# --- planted functions and operators -----------------------------------------------------
# In public and in auth_app's own schema, first on auth_app's search_path
# (pg_catalog last), better matches than the built-ins for what the
# extension's code calls.
$node->safe_psql('auth_db', q{
CREATE SCHEMA auth_app AUTHORIZATION auth_app;
ALTER ROLE auth_app IN DATABASE auth_db SET search_path = auth_app, public, pg_catalog;
});
my $plant = '';
for my $schema ('auth_app', 'public')
{
	$plant .= qq{
CREATE FUNCTION $schema.planted_jsonb_eq(jsonb, jsonb) RETURNS boolean LANGUAGE plpgsql AS \$f\$
BEGIN RAISE NOTICE 'planted $schema.= ran as %', current_user; RETURN false; END \$f\$;
CREATE OPERATOR $schema.= (LEFTARG = jsonb, RIGHTARG = jsonb, FUNCTION = $schema.planted_jsonb_eq);
CREATE FUNCTION $schema.planted_arrow(jsonb, text) RETURNS text LANGUAGE plpgsql AS \$f\$
BEGIN RAISE NOTICE 'planted $schema.->> ran as %', current_user; RETURN '666'; END \$f\$;
CREATE OPERATOR $schema.->> (LEFTARG = jsonb, RIGHTARG = text, FUNCTION = $schema.planted_arrow);
CREATE FUNCTION $schema.planted_text_eq(text, text) RETURNS boolean LANGUAGE plpgsql AS \$f\$
BEGIN RAISE NOTICE 'planted $schema.= (text) ran as %', current_user; RETURN true; END \$f\$;
CREATE OPERATOR $schema.= (LEFTARG = text, RIGHTARG = text, FUNCTION = $schema.planted_text_eq);
CREATE FUNCTION $schema.planted_bigint_eq(bigint, bigint) RETURNS boolean LANGUAGE plpgsql AS \$f\$
BEGIN RAISE NOTICE 'planted $schema.= (bigint) ran as %', current_user; RETURN true; END \$f\$;
CREATE OPERATOR $schema.= (LEFTARG = bigint, RIGHTARG = bigint, FUNCTION = $schema.planted_bigint_eq);
CREATE FUNCTION $schema.to_jsonb(public.accounts) RETURNS jsonb LANGUAGE plpgsql AS \$f\$
BEGIN RAISE NOTICE 'planted $schema.to_jsonb ran as %', current_user; RETURN '{"id": 666}'; END \$f\$;
CREATE FUNCTION $schema.jsonb_build_object(text, bigint, text, jsonb) RETURNS jsonb LANGUAGE plpgsql AS \$f\$
BEGIN RAISE NOTICE 'planted $schema.jsonb_build_object ran as %', current_user; RETURN '{}'; END \$f\$;
CREATE FUNCTION $schema.jsonb_build_object(text, bigint, text, text, text, jsonb) RETURNS jsonb LANGUAGE plpgsql AS \$f\$
BEGIN RAISE NOTICE 'planted $schema.jsonb_build_object ran as %', current_user; RETURN '{}'; END \$f\$;
CREATE FUNCTION $schema.to_char(timestamp, text) RETURNS text LANGUAGE plpgsql AS \$f\$
BEGIN RAISE NOTICE 'planted $schema.to_char ran as %', current_user; RETURN 'x'; END \$f\$;
};
}
($ok, $out, $err) = run_sql('auth_db', $plant, 1);
ok($ok, 'auth_app planted operators and functions in public and in its schema') or diag($err);
($ok, $out, $err) = run_sql('auth_db', q{
SELECT 'planted operator resolves for auth_app: ' || ('{}'::jsonb = '{}'::jsonb)::text;
INSERT INTO accounts (id, name) VALUES (3, 'third');
UPDATE accounts SET name = 'third, renamed' WHERE id = 3;
UPDATE accounts SET name = name WHERE id = 3;
DELETE FROM accounts WHERE id = 3;
}, 1);
ok($ok, 'auth_app writes the captured table') or diag($err);
like($err, qr/NOTICE:  planted auth_app\.= ran as auth_app/,
	'the planted = is what auth_app itself resolves (the test plants a real trap)');
my $planted_notices = () = $err =~ /planted/g;
is($planted_notices, 1, 'no planted function ran inside the capture');
is($node->safe_psql('auth_db', q{
SELECT string_agg(event_type || ':' || COALESCE(payload -> 'data' -> 'snapshot' ->> 'name', ''), ',' ORDER BY id)
  FROM citizen_sync.outbox WHERE aggregate_id = '3'}),
	'created:third,updated:third, renamed,deleted:', 'the capture wrote the right events');
($ok, $out, $err) = run_sql('auth_db', q{
SET search_path = auth_app, public, pg_catalog;
SELECT count(*) FROM citizen_sync.source_state('account');
SELECT citizen_sync.resync('account', ARRAY[1, 3]::bigint[]);
});
ok($ok, 'a superuser with the planted schemas first runs source_state() and resync()') or diag($err);
unlike($err, qr/planted/, '... and no planted function runs');

# --- what citizen_sync_capture holds ------------------------------------------------------
is($node->safe_psql('auth_db', q{
SELECT rolsuper || ' ' || rolcanlogin || ' ' || rolinherit || ' ' || rolcreaterole || ' '
       || rolcreatedb || ' ' || rolbypassrls || ' ' || rolreplication
  FROM pg_roles WHERE rolname = 'citizen_sync_capture'}),
	'false false false false false false false',
	'citizen_sync_capture: no superuser, login, inherit, createrole, createdb, bypassrls, replication');
is($node->safe_psql('auth_db', q{
SELECT count(*) FROM pg_auth_members m
 WHERE 'citizen_sync_capture'::regrole IN (m.roleid, m.member)}),
	'0', 'citizen_sync_capture belongs to no role and has no members');
is($node->safe_psql('auth_db', q{
SELECT string_agg(c.oid::regclass || ':' || p.priv, ' ' ORDER BY c.oid::regclass::text, p.priv)
  FROM pg_class c
 CROSS JOIN unnest(ARRAY['SELECT', 'INSERT', 'UPDATE', 'DELETE', 'TRUNCATE', 'REFERENCES', 'TRIGGER']) AS p(priv)
 WHERE c.relkind IN ('r', 'v', 'p', 'm', 'f')
   AND c.relnamespace NOT IN ('pg_catalog'::regnamespace, 'information_schema'::regnamespace)
   AND has_table_privilege('citizen_sync_capture', c.oid, p.priv)}),
	'citizen_sync.aggregate_versions:INSERT citizen_sync.aggregate_versions:SELECT '
	  . 'citizen_sync.aggregate_versions:UPDATE citizen_sync.captures:SELECT citizen_sync.outbox:INSERT',
	'citizen_sync_capture may touch only the outbox, the version counters and the registrations');
is($node->safe_psql('auth_db', q{
SELECT string_agg(oid::regprocedure::text, ' ' ORDER BY oid::regprocedure::text) FROM pg_proc
 WHERE proowner = 'citizen_sync_capture'::regrole}),
	'citizen_sync.capture_row() citizen_sync.current_version(text,text) citizen_sync.guard_captures()',
	'citizen_sync_capture owns the capture trigger function, current_version() and the event trigger function only');
is($node->safe_psql('auth_db', q{
SELECT string_agg(oid::regprocedure::text, ' ' ORDER BY oid::regprocedure::text) FROM pg_proc
 WHERE proowner = 'citizen_sync_reader'::regrole}),
	'citizen_sync.subscription_fresh_as_of(regclass) citizen_sync.subscription_target(regclass)',
	'citizen_sync_reader owns the two subscription lookups only');
is($node->safe_psql('auth_db', q{
SELECT string_agg(c.oid::regclass || ':' || p.priv, ' ' ORDER BY c.oid::regclass::text, p.priv)
  FROM pg_class c
 CROSS JOIN unnest(ARRAY['SELECT', 'INSERT', 'UPDATE', 'DELETE', 'TRUNCATE', 'REFERENCES', 'TRIGGER']) AS p(priv)
 WHERE c.relkind IN ('r', 'v', 'p', 'm', 'f')
   AND c.relnamespace NOT IN ('pg_catalog'::regnamespace, 'information_schema'::regnamespace)
   AND has_table_privilege('citizen_sync_reader', c.oid, p.priv)}),
	'citizen_sync.subscription_catalog:SELECT citizen_sync.subscriptions:SELECT',
	'citizen_sync_reader may read the subscription catalog only');
is($node->safe_psql('auth_db', q{
SELECT rolsuper::text || rolcanlogin::text || rolinherit::text FROM pg_roles WHERE rolname = 'citizen_sync_reader'}),
	'falsefalsefalse', 'citizen_sync_reader: no superuser, no login, no inherit');
is($node->safe_psql('auth_db', q{
SELECT string_agg(oid::regprocedure::text, ' ' ORDER BY 1) FROM pg_proc
 WHERE prosecdef AND pronamespace = 'citizen_sync'::regnamespace
   AND proowner NOT IN ('citizen_sync_capture'::regrole, 'citizen_sync_reader'::regrole)}),
	'', 'no SECURITY DEFINER function of the extension runs as anyone but its two dedicated roles');

# --- the update from 0.1.0 ---------------------------------------------------------------
# old_db still carries the attack's column: the update refuses to carry it over.
($ok, $out, $err) = run_sql('old_db', 'ALTER EXTENSION citizen_sync UPDATE');
ok(!$ok, 'ALTER EXTENSION UPDATE refuses a table captured under 0.1.0 with an unsafe column');
like($err, qr/ERROR:  column "flag" of table public\.accounts has type public\.flag, which a non-superuser controls/,
	'... naming the column');
is($node->safe_psql('old_db', q{SELECT extversion FROM pg_extension WHERE extname = 'citizen_sync'}),
	'0.1.0', 'the database stays at 0.1.0');
unlike($err, qr/attack ran/, 'the update did not run the cast');
is(is_superuser(), 'f', 'auth_app is not superuser');
$node->safe_psql('old_db', 'ALTER TABLE public.accounts DROP COLUMN flag');
($ok, $out, $err) = run_sql('old_db', 'ALTER EXTENSION citizen_sync UPDATE');
ok($ok, 'once the column is gone, the update succeeds') or diag($err);
($ok, $out, $err) = run_sql('old_db', q{
ALTER TABLE public.accounts ADD COLUMN flag public.flag DEFAULT 'on';
INSERT INTO public.accounts VALUES (2, 'second');
}, 1);
ok(!$ok, 'after the update the attack is refused in the updated database');
unlike($err, qr/attack ran/, '... and the cast never ran');
is(is_superuser(), 'f', 'auth_app is not superuser');

$node->stop;
done_testing();
