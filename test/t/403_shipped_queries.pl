# Every query citizen_sync ships or documents is immune to objects planted in
# public.
#
# The queries are extracted from the shipped files (CitizenSync::Shipped:
# monitoring/*.yaml, README.md, docs/*.md, demo/run_demo.sh); what the test
# cannot take verbatim (shell variables, placeholders, other programs) is in
# the manifest below, and a shipped statement missing from it (or an entry
# no longer shipped) fails the test.
#
# For each statement, as the role the documentation says runs it and with
# that role's default search_path:
#   1. its parse tree (a BEGIN ATOMIC function body) gives every function,
#      operator and aggregate it calls, with the types of the arguments as
#      written and as passed;
#   2. a role with CREATE on public ("mallory") plants, for every such call
#      resolved in pg_catalog, functions/aggregates/operators of the same name
#      taking every combination of those types and of the usual literal and
#      numeric types (text, varchar, name, bpchar, int4, int8, numeric,
#      float8), plus a variant with an extra defaulted argument; each planted
#      object raises a WARNING "HIJACKED ..." when it runs;
#   3. the statement is parsed again: it must resolve to exactly the same
#      objects, all in pg_catalog or citizen_sync;
#   4. it is run (in a transaction that is rolled back) against a live
#      pipeline with data in every view: no planted object may run.
# Controls: the 0.1.0 versions of the exporter's latency query and of the
# runbook's dead-letter query go through the same steps and must be caught.
use strict;
use warnings;

use FindBin;
use lib "$FindBin::RealBin/../perl";
use CitizenSync::Broker qw(:all);
use CitizenSync::Node qw(:all);
use CitizenSync::Check qw(:all);
use File::Spec;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use CitizenSync::Shipped;

my $root = File::Spec->rel2abs("$FindBin::RealBin/../..");
my $SAFE = 'SET search_path = pg_catalog, pg_temp;';    # the test's own queries
my $SUPER = 'superuser';
my $SVC = 'permits_service_user';
my $RO = 'permits_readonly_user';
my $EXPORTER = 'cs_exporter';

#---------------------------------------------------------------------------
# Manifest: how the test runs what it cannot run verbatim
#---------------------------------------------------------------------------

# demo/run_demo.sh: every SQL string of the demo (normalized, shell
# variables as written).  Shell variables are replaced as listed in
# %DEMO_VARS; a condition passed to wait_caches runs inside the demo's
# EXISTS query.  Options: db, as (roles), skip (reason), ok_error.
my %DEMO_VARS = ('${s}' => 'permits', '$s' => 'permits', '$v' => '2', '$n' => '0',
	'$V1' => '1', '$V2' => '2',
	'$ts' => '2026-11-25T10:15:00.123Z', '$cond' => 'citizen_id = 1');
my %DEMO = (
	'CREATE DATABASE auth_db' => { skip => 'CREATE DATABASE evaluates no expression' },
	'CREATE DATABASE ${s}_db' => { skip => 'CREATE DATABASE evaluates no expression' },
	'CREATE EXTENSION citizen_sync' => { db => 'scratch_db' },
	'CREATE TABLE public.citizens ( id bigserial PRIMARY KEY, name text NOT NULL, email text NOT NULL, phone text, address text, city text, postal_code text, email_verified boolean NOT NULL DEFAULT false, identity_verified boolean NOT NULL DEFAULT false, password_hash text)'
	  => { db => 'permits_db' },
	q{SELECT citizen_sync.capture('public.citizens', 'citizen', ARRAY['name','email','phone','address','city','postal_code', 'email_verified','identity_verified'])}
	  => {},
	q{SELECT citizen_sync.create_service_roles('$s')} => {},
	q{SELECT source, aggregate_type, id_column, columns FROM citizen_sync.captures} => {},
	q{SELECT pg_catalog.pg_reload_conf()} => {},
	q{SELECT coalesce(sum(partitions), 0) = 4 FROM citizen_sync.consumer_stats WHERE database = '${s}_db'} => {},
	q{SELECT EXISTS (SELECT 1 FROM cache.citizen_refs WHERE $cond)} => {},
	q{SELECT '${s}_db' AS cache, citizen_id AS id, name, phone, event_version AS version, is_active, (deleted_at IS NOT NULL) AS deleted FROM cache.citizen_refs WHERE citizen_id = 1}
	  => {},
	q{SELECT payload ->> 'event_version'::text FROM citizen_sync.outbox WHERE aggregate_id = '1' ORDER BY id LIMIT 1 OFFSET $n}
	  => {},
	q{SELECT payload ->> 'event_timestamp'::text FROM citizen_sync.outbox WHERE aggregate_id = '1' AND (payload ->> 'event_version'::text)::bigint = $v}
	  => {},
	q{SELECT round(extract(epoch FROM last_synced_at - timestamptz '$ts') * 1000.0, 1) FROM cache.citizen_refs WHERE citizen_id = 1}
	  => {},
	q{INSERT INTO public.citizens (name, email, phone, address, city, postal_code, email_verified, password_hash) VALUES ('Maria Garcia', 'maria@example.gov', '+1-555-0100', '12 Elm St', 'Springfield', '12345', true, 'secret-hash')}
	  => {},
	q{SELECT id, event_type, payload -> 'event_version'::text AS version, published_at IS NOT NULL AS published FROM citizen_sync.outbox}
	  => {},
	q{UPDATE public.citizens SET phone = '+1-555-0199' WHERE id = 1} => {},
	q{SELECT (payload OPERATOR(pg_catalog.||) pg_catalog.jsonb_build_object('event_type', 'citizen.updated', 'event_id', pg_catalog.format('evt_%s_%s', id, (pg_catalog.extract('epoch', created_at) OPERATOR(pg_catalog.*) 1000000)::pg_catalog.int8)))::text FROM citizen_sync.outbox WHERE aggregate_id = '1' ORDER BY id DESC LIMIT 1}
	  => {},
	q{SELECT duplicate >= 1 AND stale >= 1 FROM citizen_sync.consumer_stats WHERE database = '${s}_db'} => {},
	q{SELECT database, applied, stale, duplicate FROM citizen_sync.consumer_stats} => {},
	q{DELETE FROM public.citizens WHERE id = 1} => {},
	q{SET ROLE permits_service_user} => {},
	q{SELECT count(*) AS readable FROM cache.citizen_refs} => { as => [$SVC] },
	q{UPDATE cache.citizen_refs SET phone = 'x'} =>
	  { as => [$SVC], ok_error => qr/permission denied for table citizen_refs/ },
	q{SELECT kind, database, role, state, partitions, applied, deleted, stale, duplicate, dead_lettered, published, lag FROM citizen_sync.worker_stats ORDER BY kind, database}
	  => {},
	# conditions of wait_caches
	'citizen_id = 1 AND event_version = $V1' => {},
	'citizen_id = 1 AND event_version = $V2' => {},
	'citizen_id = 1 AND NOT is_active' => {},
);

# README.md and docs/*.md: statements that are not runnable as written
# (placeholders, other programs) or run somewhere else than the default.
# Options: run (what runs instead), analyze (statements to resolve instead),
# skip (reason), db, as, ok_error.
my %DOCS = (
	q{SELECT citizen_sync.create_service_roles('<s>')} =>
	  { run => q{SELECT citizen_sync.create_service_roles('permits')} },
	"SELECT citizen_sync.capture('public.citizens', 'citizen', ARRAY[\x{2026}new list\x{2026}])" =>
	  { run => q{SELECT citizen_sync.capture('public.citizens', 'citizen', ARRAY['name', 'email', 'phone'])} },
	q{SELECT citizen_sync.capture('public.role_assignments', 'role', NULL, 'assignment_id', '{"insert": "assigned", "update": "assigned", "delete": "revoked"}')}
	  => { run => q{SELECT citizen_sync.capture('public.citizens', 'citizen', NULL, 'id', '{"insert": "assigned", "update": "assigned", "delete": "revoked"}')},
		why => 'the example table does not exist here: the same call on the citizens table' },
	'LISTEN citizen_changes' => { skip => 'LISTEN evaluates no expression' },
	'GRANT USAGE ON SCHEMA citizen_sync TO auth_app' =>
	  { skip => 'GRANT evaluates no expression; auth_app stands for the reader\'s application role' },
	'GRANT EXECUTE ON FUNCTION citizen_sync.current_version(text, text) TO auth_app' =>
	  { skip => 'GRANT evaluates no expression; auth_app stands for the reader\'s application role' },
	# README, Generic sync: the example's tables are created by the same block,
	# after which each statement is analyzed on its own; to_regclass() lets it
	# parse before they exist
	q{SELECT citizen_sync.subscribe('cache.employees', 'employee', columns => '{"name": "full_name"}')} =>
	  { run => q{SELECT citizen_sync.subscribe(pg_catalog.to_regclass('cache.employees'), 'employee', columns => '{"name": "full_name"}')} },
	q{SELECT citizen_sync.subscribe('cache.role_assignments', 'role', key_column => 'assignment_id', delete_mode => 'hard', event_types => '{"role.assigned": "upsert", "role.revoked": "delete"}')} =>
	  { run => q{SELECT citizen_sync.subscribe(pg_catalog.to_regclass('cache.role_assignments'), 'role', key_column => 'assignment_id', delete_mode => 'hard', event_types => '{"role.assigned": "upsert", "role.revoked": "delete"}')} },
	q{SELECT citizen_sync.unsubscribe('cache.employees')} =>
	  { run => q{SELECT citizen_sync.unsubscribe(pg_catalog.to_regclass('cache.employees'))} },
	'SELECT citizen_sync.heal(...)' =>
	  { skip => 'an elided reference to the heal() call the runbook shows in full' },
	q{SELECT cron.schedule('citizen-consistency', '17 * * * *', $$SELECT count(*) FROM citizen_sync.consistency_check('host=auth-db dbname=auth_db user=citizen_sync_check')$$)}
	  => { run => q{SELECT count(*) FROM citizen_sync.consistency_check('host=auth-db dbname=auth_db user=citizen_sync_check')},
		why => 'pg_cron is not installed here: the job runs its query' },
);
# PL/pgSQL fragments (```plpgsql blocks): the block that runs them and the
# expressions they evaluate.
my %FRAGMENTS = (
	q{BEGIN r := citizen_sync.citizen_for_critical(cid, interval '30 seconds'); EXCEPTION WHEN SQLSTATE 'CS001' OR SQLSTATE 'CS002' THEN END}
	  => { run => "DO \$cs\$ DECLARE r cache.citizen_refs; cid bigint := 123; BEGIN\n%s\nEND \$cs\$",
		analyze => [q{SELECT citizen_sync.citizen_for_critical(NULL::bigint, interval '30 seconds')}] },
);

# Which database and which roles run a documented statement (by content).
sub doc_db
{
	my ($sql) = @_;
	return 'scratch_db' if $sql =~ /\bCREATE EXTENSION\b/;
	return 'auth_db'
	  if $sql =~ /\b(resync|source_state|capture|outbox|outbox_backlog|aggregate_versions|captures|citizen_sync_check|citizens)\b|kind = 'publisher'|outbox_database/;
	return 'permits_db';
}

sub doc_roles
{
	my ($sql) = @_;
	# the freshness-aware reads are the service's and the read-only user's
	return [ $SVC, $RO ] if $sql =~ /citizen_sync\.citizen(_for_critical)?\(/;
	return [$SUPER];
}

# Utility statements evaluate no expression: nothing to resolve.
my $UTILITY = qr/^\s*(?:CREATE\s+(?:EXTENSION|ROLE|USER|DATABASE|SCHEMA)|GRANT|REVOKE|SHOW|COMMENT\s+ON|TRUNCATE
	|(?:SET|RESET)\s+(?:ROLE|SESSION\s+AUTHORIZATION|search_path)
	|ALTER\s+(?:ROLE|USER|DEFAULT\s+PRIVILEGES|EXTENSION|SYSTEM|DATABASE)
	|ALTER\s+TABLE\s+\S+\s+(?:SET\s+SCHEMA|OWNER\s+TO|ENABLE|DISABLE)
	|DROP\s+(?:OWNED|ROLE|USER|EXTENSION|SCHEMA|TABLE|VIEW|FUNCTION|TRIGGER|DATABASE))\b/xi;
# ... of which these cannot run in a transaction (and would change the
# instance): not run.
my $NO_TX = qr/^\s*(?:ALTER\s+SYSTEM|(?:CREATE|DROP)\s+DATABASE|VACUUM)\b/i;
my $ANALYZABLE = qr/^\s*(?:SELECT|WITH|INSERT|UPDATE|DELETE|VALUES|TABLE)\b/i;

#---------------------------------------------------------------------------
# The pipeline, with data in every view
#---------------------------------------------------------------------------
my $kafka = start_broker();
my $node = start_pipeline('shipped', $kafka, conf => "citizen_sync.restart_delay = 1s\n");

$node->safe_psql('auth_db', citizens_sql(130) . q{
UPDATE citizens SET phone = '+1-555-0199' WHERE id = 1;
DELETE FROM citizens WHERE id = 130;
});
wait_outbox_drained($node, 60);
wait_caches_converged($node, 90);
$kafka->produce($TOPIC, [ [ 'citizen_1', '{not json' ] ]);
ok( poll_until($node, 'permits_db',
		q{SELECT count(*) > 0 FROM citizen_sync.dead_letters WHERE resolved_at IS NULL}),
	'a dead letter in permits_db');
$node->safe_psql('permits_db', 'CREATE EXTENSION dblink');
my $auth_conninfo = sprintf('host=%s port=%d dbname=auth_db', $node->host, $node->port);
$node->safe_psql('permits_db',
	"SELECT count(*) FROM citizen_sync.consistency_check('$auth_conninfo', '0 seconds')");
ok(poll_until($node, 'permits_db', q{SELECT count(*) > 0 FROM citizen_sync.sync_latency}),
	'latency histogram rows');
# A database without the extension, for statements that install it.
$node->safe_psql('postgres', 'CREATE DATABASE scratch_db');
$node->safe_psql('scratch_db', q{
CREATE TABLE public.citizens (id bigserial PRIMARY KEY, name text NOT NULL, email text NOT NULL,
    phone text, address text, city text, postal_code text,
    email_verified bool NOT NULL DEFAULT false, identity_verified bool NOT NULL DEFAULT false,
    password_hash text);
});
# A service table left in public by 0.1.0 (the README's migration moves it).
$node->safe_psql('permits_db', 'CREATE TABLE public.permits (id bigserial PRIMARY KEY, citizen_id bigint)');
my @DBS = qw(auth_db permits_db scratch_db);

# The exporter's role, created as docs/operations.md says (renamed, so that
# the documented statement itself can run below), with the default
# search_path whatever the documentation adds for defence in depth.
my @blocks = CitizenSync::Shipped::doc_blocks($root);
my @exporter_setup = grep { /\bcitizen_sync_exporter\b/ && /^\s*(CREATE|ALTER|GRANT)\s+ROLE\b|^\s*GRANT\b/i }
  map { @{ $_->{statements} } } grep { $_->{file} eq 'docs/operations.md' } @blocks;
ok(scalar(grep { /^\s*CREATE ROLE citizen_sync_exporter\b/ } @exporter_setup),
	'docs/operations.md creates the exporter role')
  or diag(explain(\@exporter_setup));
$node->safe_psql('postgres', s/\bcitizen_sync_exporter\b/$EXPORTER/gr) for @exporter_setup;
$node->safe_psql('postgres', "ALTER ROLE $EXPORTER RESET ALL");
$node->safe_psql('postgres', "ALTER ROLE $_ LOGIN") for ($SVC, $RO);
# The attacker: any role with CREATE on public (0.1.0 gave that to every
# service user).
$node->safe_psql('postgres', 'CREATE ROLE mallory LOGIN');
$node->safe_psql($_, 'GRANT CREATE ON SCHEMA public TO mallory') for @DBS;

#---------------------------------------------------------------------------
# The plan: units of statements, each run by some roles in one database
#---------------------------------------------------------------------------
my @units;
my %seen_manifest;

sub add_unit
{
	my (%u) = @_;
	$u{as} //= [$SUPER];
	$u{analyze} //= [ grep { CitizenSync::Shipped::normalize($_) =~ /$ANALYZABLE/ } @{ $u{run} } ];
	# statements that run before an analyzed one (CREATE EXTENSION, ...)
	$u{prelude} //= [ grep { my $n = CitizenSync::Shipped::normalize($_); $n =~ /$UTILITY/ && $n !~ /^SHOW\b/i }
		  @{ $u{run} } ];
	for my $s (map { CitizenSync::Shipped::normalize($_) } @{ $u{run} })
	{
		next if $s =~ /$ANALYZABLE/ || $s =~ /$UTILITY/ || $s =~ /^\s*DO\b/;
		# CREATE TABLE: only constant defaults (bigserial's is bound by OID)
		if ($s =~ /^\s*CREATE TABLE\b/i)
		{
			my @defaults = $s =~ /\bDEFAULT\s+(\S+?)[,)\s]/gi;
			next unless grep { !/^(?:true|false|NULL|-?\d+(?:\.\d+)?|'[^']*')$/i } @defaults;
		}
		fail("$u{id}: a statement of unknown kind (the test cannot tell what it evaluates): $s");
	}
	push @units, \%u;
}

# Replace documentation placeholders the test can fill in.
sub fill_docs
{
	my ($sql) = @_;
	$sql =~ s/'host=auth-db[^']*'/'$auth_conninfo'/g;
	return $sql;
}

sub has_placeholder
{
	my ($sql) = @_;
	my $code = join '', map { $_->[0] eq 'code' ? $_->[1] : "''" } CitizenSync::Shipped::_lex_sql($sql);
	return $code =~ /\.\.\.|\x{2026}/;
}

# monitoring/*.yaml: every exporter query, as the exporter's role, in the
# database the exporter is pointed at and in an auto-discovered one.
my @exporter = CitizenSync::Shipped::exporter_queries($root);
cmp_ok(scalar(@exporter), '>=', 9, 'exporter queries found: ' . join(', ', map { $_->{name} } @exporter));
for my $q (@exporter)
{
	for my $db ('permits_db', 'auth_db')
	{
		add_unit(id => "$q->{file} $q->{name} ($db)", db => $db, as => [$EXPORTER],
			run => [ $q->{sql} ]);
	}
}
# (the statements of a file's comments run one after the other: one unit)
my %comment_sql;
push @{ $comment_sql{ $_->{file} } }, $_->{sql} for CitizenSync::Shipped::yaml_comment_statements($root);
for my $file (sort keys %comment_sql)
{
	add_unit(id => "$file (comments)", db => 'permits_db', run => $comment_sql{$file});
}

# README.md, docs/*.md
for my $b (@blocks)
{
	my $id = "$b->{file}:$b->{line} ($b->{lang})";
	if ($b->{lang} eq 'plpgsql')
	{
		my $key = CitizenSync::Shipped::normalize($b->{text});
		my $m = $FRAGMENTS{$key};
		$seen_manifest{"fragment:$key"} = 1;
		ok($m, "$id: the PL/pgSQL fragment is in the manifest") or diag($key), next;
		add_unit(id => $id, db => doc_db($b->{text}), as => doc_roles($b->{text}),
			run => [ sprintf($m->{run}, $b->{text}) ], analyze => $m->{analyze},
			ok_error => qr/CS00[12]/);
		next;
	}
	my (@run, @analyze, %opt);
	for my $s (@{ $b->{statements} })
	{
		my $key = CitizenSync::Shipped::normalize($s);
		my $m = $DOCS{$key} // {};
		$seen_manifest{"doc:$key"} = 1 if $DOCS{$key};
		if ($m->{skip})
		{
			note("$id: not run: $key ($m->{skip})");
			next;
		}
		my $sql = fill_docs($m->{run} // $s);
		ok(!has_placeholder($sql), "$id: runnable as written or in the manifest: $key") or next;
		if (CitizenSync::Shipped::normalize($sql) =~ $NO_TX)
		{
			note("$id: not run: $key (cannot run in a transaction; evaluates no expression)");
			next;
		}
		push @run, $sql;
		%opt = (%opt, map { $_ => $m->{$_} } grep { $_ ne 'run' && $_ ne 'why' } keys %$m);
	}
	next unless @run;
	my $all = join "\n", @run;
	add_unit(id => $id, db => $opt{db} // doc_db($all), as => $opt{as} // doc_roles($all),
		run => \@run, ok_error => $opt{ok_error} // ($all =~ /citizen_for_critical/ ? qr/CS00[12]/ : undef));
}

# demo/run_demo.sh
for my $d (CitizenSync::Shipped::demo_strings($root))
{
	my $key = CitizenSync::Shipped::normalize($d->{text});
	my $m = $DEMO{$key};
	my $id = "$d->{file}:$d->{line}";
	ok($m, "$id: the demo's SQL is in the manifest: $key") or next;
	$seen_manifest{"demo:$key"} = 1;
	if ($m->{skip})
	{
		note("$id: not run: $key ($m->{skip})");
		next;
	}
	my $sql = $d->{kind} eq 'condition'
	  ? "SELECT EXISTS (SELECT 1 FROM cache.citizen_refs WHERE $d->{text})" : $d->{text};
	$sql =~ s/(\$\{\w+\}|\$\w+)/$DEMO_VARS{$1} \/\/ die "$id: no value for $1"/ge;
	add_unit(id => $id, db => $m->{db} // doc_db($sql), as => $m->{as} // [$SUPER], run => [$sql],
		ok_error => $m->{ok_error});
}

# Every manifest entry is still shipped.
my @stale = (
	(grep { !$seen_manifest{"demo:$_"} } sort keys %DEMO),
	(grep { !$seen_manifest{"doc:$_"} } sort keys %DOCS),
	(grep { !$seen_manifest{"fragment:$_"} } sort keys %FRAGMENTS));
is_deeply(\@stale, [], 'every manifest entry is a statement the project still ships');

# Controls: what 0.1.0 shipped, which a planted object hijacks.
my @controls = (
	{ id => 'control: 0.1.0 exporter latency histogram', db => 'permits_db', as => [$EXPORTER],
		run => [ q{SELECT database, array_agg(le_ms / 1000.0 ORDER BY le_ms) FILTER (WHERE le_ms <> 'Infinity') AS latency_seconds, max(sum_ms) / 1000.0 AS latency_seconds_sum FROM citizen_sync.sync_latency GROUP BY database} ] },
	{ id => 'control: 0.1.0 runbook dead letters', db => 'permits_db', as => [$SUPER],
		run => [ q{SELECT id, error_sqlstate, error_message, convert_from(payload, 'UTF8') AS payload FROM citizen_sync.dead_letters WHERE resolved_at IS NULL} ] },
);
$_->{control} = 1, $_->{analyze} = $_->{run}, $_->{prelude} = [] for @controls;

my $nstmts = 0;
$nstmts += @{ $_->{run} } for @units;
note(scalar(@units) . " units, $nstmts statements");

#---------------------------------------------------------------------------
# Resolution: what a statement calls, as a role sees it
#---------------------------------------------------------------------------
sub connstr_for
{
	my ($db, $role) = @_;
	my $c = $node->connstr($db);
	$c .= " user=$role" unless $role eq $SUPER;
	return $c;
}

# What statements resolve to, each parsed as $role in $db after the utility
# statements of its unit, in a transaction rolled back (one session for
# them all).  $items: [ [key, sql, prelude], ... ].  Returns key =>
# {calls => [...], objects => {f<oid>|o<oid> => {nsp, name, kind, sig}}},
# or {error => message} for a statement that does not parse.
sub resolve_batch
{
	my ($db, $role, $items) = @_;
	my $script = '';
	for my $it (@$items)
	{
		my ($key, $sql, $prelude) = @$it;
		my $pre = join '', map { "$_\n;\n" } @$prelude;
		$script .= qq{\\echo cs-item $key
\\warn cs-item $key
BEGIN;
$pre
CREATE FUNCTION pg_temp.cs_shipped() RETURNS void LANGUAGE sql
BEGIN ATOMIC
$sql
;
END;
SET LOCAL search_path = pg_catalog, pg_temp;
CREATE TEMP TABLE cs_body ON COMMIT DROP AS
    SELECT prosqlbody::text AS t FROM pg_proc WHERE oid = 'pg_temp.cs_shipped()'::regprocedure;
SELECT 'body' || E'\\t' || t FROM cs_body;
WITH f AS (SELECT m[1]::oid AS oid FROM cs_body, regexp_matches(t, ':(?:funcid|aggfnoid|winfnoid) (\\d+)', 'g') m),
     o AS (SELECT m[1]::oid AS oid FROM cs_body, regexp_matches(t, ':opno (\\d+)', 'g') m
           UNION
           SELECT unnest(string_to_array(trim(m[1]), ' '))::oid
             FROM cs_body, regexp_matches(t, ':opnos \\(o ([0-9 ]+)\\)', 'g') m)
SELECT concat_ws(E'\\t', 'f' || oid, pronamespace::regnamespace, proname, prokind,
                 '(' || pg_get_function_identity_arguments(oid) || ')')
  FROM pg_proc WHERE oid IN (SELECT oid FROM f)
UNION ALL
SELECT concat_ws(E'\\t', 'o' || oid, oprnamespace::regnamespace, oprname, oprkind,
                 '(' || format_type(oprleft, NULL) || ', ' || format_type(oprright, NULL) || ')')
  FROM pg_operator WHERE oid IN (SELECT oid FROM o);
ROLLBACK;
};
	}
	my ($out, $err) = ('', '');
	$node->psql($db, $script, connstr => connstr_for($db, $role), stdout => \$out, stderr => \$err,
		on_error_stop => 0);
	my (%body, %objects, %errors, $key);
	for my $line (split /\n/, $out)
	{
		if ($line =~ /^cs-item (\S+)$/)
		{
			$key = $1;
			next;
		}
		my ($k, @f) = split /\t/, $line, 6;
		if ($k eq 'body')
		{
			$body{$key} = $f[0];
		}
		elsif ($k =~ /^[fo]\d+$/)
		{
			$objects{$key}{$k} = { nsp => $f[0], name => $f[1], kind => $f[2], sig => $f[3] };
		}
	}
	undef $key;
	for my $line (split /\n/, $err)
	{
		if ($line =~ /^cs-item (\S+)$/)
		{
			$key = $1;
			next;
		}
		$errors{$key} .= "$line\n" if defined $key;
	}
	my %res;
	for my $it (@$items)
	{
		my ($k, $sql) = @$it;
		$res{$k} = defined $body{$k}
		  ? { calls => [ CitizenSync::Shipped::calls_in_tree(CitizenSync::Shipped::parse_node_tree($body{$k})) ],
			objects => $objects{$k} // {} }
		  : { error => "cannot parse as $role in $db: " . ($errors{$k} // '(no error)') . "\n$sql\n" };
	}
	return %res;
}

sub object_of
{
	my ($res, $call) = @_;
	return $res->{objects}{ ($call->{kind} eq 'operator' ? 'o' : 'f') . $call->{oid} };
}

# schema.name(types) of a call, OPERATOR(schema.op)(types) for operators.
sub label
{
	my ($res, $call) = @_;
	my $o = object_of($res, $call) or return "?$call->{kind} $call->{oid}";
	return $call->{kind} eq 'operator' ? "OPERATOR($o->{nsp}.$o->{name})$o->{sig}" : "$o->{nsp}.$o->{name}$o->{sig}";
}

sub foreign_calls
{
	my ($res) = @_;
	return map { label($res, $_) } grep {
		my $o = object_of($res, $_);
		!$o || $o->{nsp} !~ /^(?:pg_catalog|citizen_sync)$/
	} @{ $res->{calls} };
}

# Resolve every analyzable statement of every unit, for every role: a hash
# "unit index|role|statement index" => resolution (or the parse error).
sub resolve_all
{
	my (%batch, %res);
	for my $n (0 .. $#units)
	{
		my $u = $units[$n];
		for my $role (@{ $u->{as} })
		{
			push @{ $batch{"$u->{db}|$role"} }, [ "$n|$role|$_", $u->{analyze}[$_], $u->{prelude} ]
			  for 0 .. $#{ $u->{analyze} };
		}
	}
	for my $b (sort keys %batch)
	{
		my ($db, $role) = split /\|/, $b;
		%res = (%res, resolve_batch($db, $role, $batch{$b}));
	}
	return \%res;
}

push @units, @controls;
my $before = resolve_all();
for my $k (sort keys %$before)
{
	my ($n, $role, $i) = split /\|/, $k;
	my $u = $units[$n];
	ok(!$before->{$k}{error}, "$u->{id}: resolves as $role in $u->{db} (before planting)")
	  or diag("$before->{$k}{error}");
}

#---------------------------------------------------------------------------
# Planting
#---------------------------------------------------------------------------
my @LITERAL = qw(25 1043 19 1042 23 20 1700 701);    # text varchar name bpchar int4 int8 numeric float8
my @EXTRA = qw(25 1700 701);                         # text numeric float8
my %type_info;                                       # db => oid => [name, typtype, elem]

sub load_types
{
	my ($db, @oids) = @_;
	my %l = map { $_ => 1 } grep { defined && /^\d+$/ && $_ != 0 && !$type_info{$db}{$_} } @oids;
	return unless %l;
	my $l = join ',', sort keys %l;
	for my $r (split /\n/, $node->safe_psql($db, qq{$SAFE
SELECT concat_ws(E'\t', oid, format_type(oid, NULL), typtype, typelem)
  FROM pg_type WHERE oid = ANY ('{$l}'::oid[])}))
	{
		my ($oid, $name, $typtype, $elem) = split /\t/, $r;
		$type_info{$db}{$oid} = [ $name, $typtype, $elem ];
	}
	return;
}

sub plantable
{
	my ($db, $oid) = @_;
	my $t = $type_info{$db}{ $oid // 0 };
	return $t && $t->[1] ne 'p';
}

# Candidate argument types at one position: the type as written and as
# passed; for a literal (an unknown-type literal takes whatever type the
# candidate wants) also the usual literal types and those of the other
# arguments (x op 'literal' first looks for an exact op(type of x, type of
# x)); always text, numeric and float8.
sub candidates
{
	my ($db, $arg, $elem, @others) = @_;
	my @c = grep { defined } ($arg->{type}, $arg->{written});
	load_types($db, @c);
	# x op ANY (array): the operator's right argument is the element type
	@c = map { $type_info{$db}{$_} ? $type_info{$db}{$_}[2] : () } @c if $elem;
	push @c, @LITERAL, grep { defined } map { ($_->{type}, $_->{written}) } @others if $arg->{literal};
	push @c, @EXTRA;
	load_types($db, @c);
	my %u = map { $_ => 1 } grep { plantable($db, $_) } @c;
	return [ sort keys %u ];
}

# Every combination of candidates (one position at a time when too many).
sub combinations
{
	my (@pos) = @_;
	my $n = 1;
	$n *= scalar(@$_) for @pos;
	my @combos = ([]);
	if ($n <= 400)
	{
		@combos = map { my $c = $_; map { [ @$c, $_ ] } @{ $pos[ scalar @$c ] } } @combos
		  for 0 .. $#pos;
		return @combos;
	}
	my @base = map { $_->[0] } @pos;
	for my $i (0 .. $#pos)
	{
		push @combos, map { my @x = @base; $x[$i] = $_; \@x } @{ $pos[$i] };
	}
	return @combos;
}

my $planted = 0;

sub plant
{
	my ($db, $resolved) = @_;
	my (%done, @sql);
	my $n = 0;
	my $tn = sub { $type_info{$db}{ $_[0] }[0] };
	my $warn = sub { my ($l) = @_; $l =~ s/'/''/g; "RAISE WARNING 'HIJACKED %', '$l';" };
	for my $res (@$resolved)
	{
		for my $c (@{ $res->{calls} })
		{
			my $o = object_of($res, $c) or next;
			next unless $o->{nsp} eq 'pg_catalog';
			next if $c->{kind} eq 'window';
			next if $c->{kind} eq 'function' && $c->{format} =~ /^[12]$/;    # casts: pg_cast
			load_types($db, $c->{result});
			next unless plantable($db, $c->{result});
			my $ret = $tn->($c->{result});
			my @a = @{ $c->{args} };
			my @pos = map {
				my $i = $_;
				candidates($db, $a[$i], $c->{array_right} && $i == 1, @a[ grep { $_ != $i } 0 .. $#a ])
			} 0 .. $#a;
			next if grep { !@$_ } @pos;
			for my $combo (combinations(@pos))
			{
				my $types = join ', ', map { $tn->($_) } @$combo;
				if ($c->{kind} eq 'operator')
				{
					my $key = "op $o->{name}($types)";
					next if $done{$key}++;
					my ($l, $r) = @$combo == 2 ? @$combo : (undef, $combo->[0]);
					my $f = 'cs_hijack_' . ++$n;
					my $lbl = "public.OPERATOR($o->{name})($types)";
					push @sql, "CREATE FUNCTION public.$f($types) RETURNS $ret LANGUAGE plpgsql AS \$h\$BEGIN "
					  . $warn->($lbl) . " RETURN NULL; END\$h\$;",
					  "CREATE OPERATOR public.$o->{name} (" . (defined $l ? 'LEFTARG = ' . $tn->($l) . ', ' : '')
					  . 'RIGHTARG = ' . $tn->($r) . ", FUNCTION = public.$f);";
				}
				elsif ($c->{kind} eq 'aggregate')
				{
					my $sig = $c->{star} ? '*' : $types;
					next if $done{"fn $o->{name}($types)"}++;
					my $f = 'cs_hijack_' . ++$n;
					my $lbl = "public.$o->{name}($sig)";
					push @sql, "CREATE FUNCTION public.$f($ret" . ($c->{star} ? '' : ", $types")
					  . ") RETURNS $ret LANGUAGE plpgsql AS \$h\$BEGIN " . $warn->($lbl)
					  . " RETURN \$1; END\$h\$;",
					  "CREATE AGGREGATE public.$o->{name}($sig) (SFUNC = public.$f, STYPE = $ret);";
				}
				else
				{
					my $setof = $c->{retset} ? 'SETOF ' : '';
					my $body = $c->{retset} ? 'RETURN;' : 'RETURN NULL;';
					for my $extra ('', 'cs_extra int DEFAULT 0')
					{
						my $args = join ', ', grep { $_ ne '' } $types, $extra;
						next if $done{ "fn $o->{name}($types" . ($extra ? ', +int' : '') . ')' }++;
						my $lbl = "public.$o->{name}($args)";
						push @sql, "CREATE FUNCTION public.$o->{name}($args) RETURNS $setof$ret LANGUAGE plpgsql AS "
						  . "\$h\$BEGIN " . $warn->($lbl) . " $body END\$h\$;";
					}
				}
			}
		}
	}
	my $script = join "\n", @sql;
	my ($out, $err);
	my $rc = $node->psql($db, $script, connstr => connstr_for($db, 'mallory'),
		stdout => \$out, stderr => \$err, on_error_stop => 0);
	my @errors = grep { /ERROR/ } split /\n/, $err;
	is(scalar(@errors), 0, "$db: mallory planted " . scalar(@sql) . ' objects in public')
	  or diag(join("\n", @errors[ 0 .. ($#errors < 9 ? $#errors : 9) ]));
	$planted += @sql;
	return;
}

for my $db (@DBS)
{
	plant($db, [ map { $before->{$_} } grep { /^(\d+)\|/ && $units[$1]{db} eq $db && !$before->{$_}{error} }
		  sort keys %$before ]);
}
note("$planted statements planted");
my $log_offset = -s $node->logfile;

# The workers do not see them: a change still reaches every cache.  (From
# here on, the test's own queries pin their search_path.)
$node->safe_psql('auth_db', qq{$SAFE UPDATE public.citizens SET city = 'Ogdenville' WHERE id = 2});
for my $db (@SERVICE_DBS)
{
	ok( poll_until($node, $db, q{
SELECT city::text OPERATOR(pg_catalog.=) 'Ogdenville' FROM cache.citizen_refs
 WHERE citizen_id OPERATOR(pg_catalog.=) 2}),
		"$db: a change made after planting is applied");
}

#---------------------------------------------------------------------------
# After planting: same resolution, nothing planted runs
#---------------------------------------------------------------------------
my $after = resolve_all();
for my $k (sort keys %$before)
{
	my ($n, $role, $i) = split /\|/, $k;
	my $u = $units[$n];
	my ($b, $a) = ($before->{$k}, $after->{$k});
	next if $b->{error};
	my $what = "$u->{id} (as $role, statement $i)";
	my $resolved = sub { my ($r) = @_; join ', ', sort map { label($r, $_) } @{ $r->{calls} } };
	if ($u->{control})
	{
		ok($a->{error} || foreign_calls($a), "$what: hijacked after planting, as expected ("
			  . ($a->{error} ? $a->{error} =~ s/\n.*//sr : join(', ', foreign_calls($a))) . ')');
		next;
	}
	ok(!$a->{error}, "$what: still resolves after planting") or diag($a->{error}), next;
	is($resolved->($a), $resolved->($b), "$what: resolves as before planting")
	  && is(join(', ', foreign_calls($a)), '', "$what: every call is in pg_catalog or citizen_sync")
	  or diag($u->{analyze}[$i]);
}

# Run every unit as each of its roles, rolled back.
sub run_unit
{
	my ($u, $role) = @_;
	my $sql = "BEGIN;\n" . join("\n", map { "$_\n;" } @{ $u->{run} }) . "\nROLLBACK;\n";
	my ($out, $err) = ('', '');
	my $rc = $node->psql($u->{db}, $sql, connstr => connstr_for($u->{db}, $role),
		stdout => \$out, stderr => \$err, on_error_die => 0);
	return ($rc, $out, $err);
}

for my $u (grep { !$_->{control} } @units)
{
	for my $role (@{ $u->{as} })
	{
		my ($rc, $out, $err) = run_unit($u, $role);
		my $ok_error = $u->{ok_error} && $rc != 0 && $err =~ $u->{ok_error};
		ok($rc == 0 || $ok_error, "$u->{id}: runs as $role in $u->{db}")
		  or diag("$err\n" . join(";\n", @{ $u->{run} }));
		unlike("$out\n$err", qr/HIJACKED/, "$u->{id}: nothing planted ran (as $role)");
	}
}
my $log = slurp_file($node->logfile, $log_offset);
my @hij = $log =~ /^.*WARNING:\s+HIJACKED.*$/mg;
is(scalar(@hij), 0, 'no planted object ran in any session (server log)')
  or diag(join("\n", @hij[ 0 .. ($#hij < 9 ? $#hij : 9) ]));

# The controls are caught when they run, too.
for my $u (@controls)
{
	my ($rc, $out, $err) = run_unit($u, $u->{as}[0]);
	like("$out\n$err", qr/HIJACKED|is not unique/,
		"$u->{id}: a planted object ran (or made the call ambiguous), as expected");
}

$node->stop;
$kafka->stop;
done_testing();
