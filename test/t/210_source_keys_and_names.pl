# The generic source side, end to end through the publisher (issue 10):
# tables keyed by text, uuid and bigint captured under their own aggregate
# types, the seed's role.assigned/role.revoked and permission.granted names,
# read back from Kafka with kcat (an independent client).
#
# For each topic: one message per outbox row, key <aggregate_type>_<key>,
# event_type <aggregate_type>.<the capture's name for the operation>,
# data.<aggregate_type>_id a JSON string for text and uuid keys and a JSON
# integer for bigint keys (the citizen wire format), the snapshot of the
# published columns, versions strictly increasing per key in offset order.
# resync() with text keys publishes the live rows and the gone ones under the
# capture's names; current_version() gives, in the changing transaction and
# after its commit, the version the change was published with.
use strict;
use warnings;

use FindBin;
use lib "$FindBin::RealBin/../perl";
use JSON::PP;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use CitizenSync::Broker qw(:all);
use CitizenSync::Node qw(:all);
use CitizenSync::Events qw(:all);
use CitizenSync::Check qw(:all);

my @AGGS = qw(role permission employee);
my $kafka = start_broker(topics => [ "$TOPIC:4", map { "gov.auth.$_:3" } @AGGS ]);
my $node = start_pipeline('keys', $kafka);
my $json = JSON::PP->new->utf8->allow_nonref->canonical;

$node->safe_psql('auth_db', q{
CREATE TABLE role_assignments (
    assignment_id text PRIMARY KEY, citizen_id bigint NOT NULL, role text NOT NULL,
    note text);
CREATE TABLE permissions (
    id uuid PRIMARY KEY, code text NOT NULL, secret text);
CREATE TABLE employees (id bigint PRIMARY KEY, name text NOT NULL);
SELECT citizen_sync.capture('role_assignments', 'role', ARRAY['citizen_id', 'role'], 'assignment_id',
       '{"insert": "assigned", "update": "assigned", "delete": "revoked"}');
SELECT citizen_sync.capture('permissions', 'permission', ARRAY['code'], 'id',
       '{"insert": "granted", "update": "granted", "delete": "revoked"}');
SELECT citizen_sync.capture('employees', 'employee');
});

# Changes: creates, several updates, deletes, a key that comes back, a
# change of an unpublished column only (no event), a rollback.
$node->safe_psql('auth_db', q{
INSERT INTO role_assignments
SELECT 'ra-' || i, i, 'clerk', NULL FROM generate_series(1, 20) AS i;
INSERT INTO role_assignments VALUES ('ключ "é" \ 東京', 99, 'viewer', NULL);
UPDATE role_assignments SET role = 'reviewer' WHERE citizen_id % 3 = 0;
UPDATE role_assignments SET note = 'unpublished' WHERE citizen_id % 2 = 0;
DELETE FROM role_assignments WHERE citizen_id % 5 = 0;
INSERT INTO role_assignments VALUES ('ra-5', 5, 'clerk again', NULL);
INSERT INTO permissions
SELECT ('00000000-0000-4000-8000-' || lpad(i::text, 12, '0'))::uuid, 'code.' || i, 's'
  FROM generate_series(1, 10) AS i;
UPDATE permissions SET code = code || '.v2' WHERE right(id::text, 1) IN ('1', '2', '3');
DELETE FROM permissions WHERE right(id::text, 1) = '4';
INSERT INTO employees VALUES (9007199254740993, 'Big'), (1, 'One'), (2, 'Two');
UPDATE employees SET name = 'Uno' WHERE id = 1;
DELETE FROM employees WHERE id = 2;
BEGIN;
INSERT INTO role_assignments VALUES ('rolled-back', 1, 'x', NULL);
ROLLBACK;
});

# current_version(): in the transaction that made the change, and after.
my ($in_tx) = $node->safe_psql('auth_db', q{
BEGIN;
UPDATE role_assignments SET role = 'supervisor' WHERE assignment_id = 'ra-7';
SELECT citizen_sync.current_version('role', 'ra-7');
COMMIT;
});
like($in_tx, qr/^\d+$/, 'current_version() in the changing transaction is a version');
is($node->safe_psql('auth_db', q{SELECT citizen_sync.current_version('role', 'ra-7')}),
	$in_tx, 'current_version() after the commit is the same version');

# resync() with text keys: a live one, a deleted one, one never seen.
my $resync_from = $node->safe_psql('auth_db', q{SELECT max(id) FROM citizen_sync.outbox});
is($node->safe_psql('auth_db', q{SELECT citizen_sync.resync('role', ARRAY['ra-1', 'ra-10', 'ra-404'])}),
	'3', 'resync() with text keys writes one event per key');

wait_outbox_drained($node, 60);

# The outbox: per aggregate type, id => row.
my %outbox;
for my $line (split /\n/, $node->safe_psql('auth_db', q{
SELECT aggregate_type || E'\t' || id || E'\t' || aggregate_id || E'\t' || event_type || E'\t' || payload::text
  FROM citizen_sync.outbox WHERE aggregate_type <> 'citizen' ORDER BY id}))
{
	my ($agg, $id, $key, $type, $payload) = split /\t/, $line, 5;
	utf8::decode($key);
	$outbox{$agg}{$id} = { key => $key, type => $type, payload => $json->decode($payload) };
}

my %names = (
	role       => { map { $_ => 1 } qw(assigned revoked) },
	permission => { map { $_ => 1 } qw(granted revoked) },
	employee   => { map { $_ => 1 } qw(created updated deleted) });
my %snapshot_keys = (
	role       => 'assignment_id,citizen_id,role',
	permission => 'code,id',
	employee   => 'id,name');
my $is_string = sub { defined $_[0] && $json->encode($_[0]) =~ /^"/ };
my $is_int    = sub { defined $_[0] && $json->encode($_[0]) =~ /^-?\d+$/ };
my %last_version;    # "agg key" => last event_version seen on the topic

for my $agg (@AGGS)
{
	my @msgs = sort { $a->{partition} <=> $b->{partition} || $a->{offset} <=> $b->{offset} }
	  $kafka->consume("gov.auth.$agg");
	my $rows = $outbox{$agg} // {};
	is(scalar(@msgs), scalar(keys %$rows), "$agg: one message per outbox row (" . scalar(keys %$rows) . ')');
	my (@errors, %partition_of, %seen_types);
	for my $m (@msgs)
	{
		my $where = "$agg p$m->{partition}\@$m->{offset}";
		my $err = sub { push @errors, "$where: $_[0]" };
		my $e = eval { $json->decode($m->{value}) };
		if (ref $e ne 'HASH')
		{
			$err->('value is not a JSON object');
			next;
		}
		my ($oid) = ($e->{event_id} // '') =~ /^evt_(\d+)_\d+$/;
		my $row = defined $oid ? $rows->{$oid} : undef;
		if (!$row)
		{
			$err->('event_id ' . ($e->{event_id} // 'NULL') . ' names no outbox row');
			next;
		}
		utf8::decode(my $key = $m->{key} // '');
		$err->("key $key is not ${agg}_$row->{key}") unless $key eq "${agg}_$row->{key}";
		my ($name) = ($e->{event_type} // '') =~ /^\Q$agg\E\.(\w+)$/;
		$err->('event_type ' . ($e->{event_type} // 'NULL'))
		  unless defined $name && $names{$agg}{$name} && $name eq $row->{type};
		$seen_types{$name // ''}++;
		my $id = $e->{data}{"${agg}_id"};
		if ($agg eq 'employee')
		{
			$err->("data.${agg}_id " . $json->encode($id) . ' is not a JSON integer')
			  unless $is_int->($id) && "$id" eq $row->{key};
		}
		else
		{
			$err->("data.${agg}_id " . $json->encode($id) . ' is not a JSON string of the key')
			  unless $is_string->($id) && $id eq $row->{key};
		}
		my $deletion = $name && $name eq ($agg eq 'employee' ? 'deleted' : 'revoked');
		if ($deletion)
		{
			$err->('a deletion carries a snapshot') if exists $e->{data}{snapshot};
		}
		else
		{
			my $snap = $e->{data}{snapshot};
			$err->('snapshot fields ' . join(',', sort keys %{ $snap // {} }))
			  unless ref $snap eq 'HASH' && join(',', sort keys %$snap) eq $snapshot_keys{$agg};
		}
		$err->('the value is not the outbox payload plus event_type and event_id')
		  unless $json->encode({ %{ $row->{payload} }, event_type => $e->{event_type},
				event_id => $e->{event_id} }) eq $json->encode($e);
		my $k = "$agg $row->{key}";
		$err->("key in partitions $partition_of{$k} and $m->{partition}")
		  if defined $partition_of{$k} && $partition_of{$k} != $m->{partition};
		$partition_of{$k} = $m->{partition};
		$err->("version $e->{event_version} not above $last_version{$k}")
		  if defined $last_version{$k} && $e->{event_version} <= $last_version{$k};
		$last_version{$k} = $e->{event_version};
	}
	is_deeply(\@errors, [], "$agg: key, event_type, data.${agg}_id, snapshot and version order")
	  or diag(join("\n", @errors[ 0 .. ($#errors < 9 ? $#errors : 9) ]));
	is(join(',', sort grep { $seen_types{$_} } keys %seen_types),
		join(',', sort keys %{ $names{$agg} }), "$agg: every event name of its capture was published");
}

is($last_version{'role ra-7'}, $in_tx, 'the topic\'s last version of ra-7 is the one current_version() gave');

# The resync's events, as published.
is($node->safe_psql('auth_db', qq{
SELECT string_agg(aggregate_id || ' ' || event_type, ', ' ORDER BY aggregate_id)
  FROM citizen_sync.outbox WHERE id > $resync_from}),
	'ra-1 assigned, ra-10 revoked, ra-404 revoked', 'resync(): live key assigned, gone keys revoked');
ok(defined $last_version{'role ra-404'}, 'resync(): the key the source never had reached the topic');

# source_state() with text keys: every key, the live ones with their snapshot.
is($node->safe_psql('auth_db', q{
SELECT count(*) FILTER (WHERE present) || ' ' || count(*) FILTER (WHERE NOT present) || ' '
       || count(*) FILTER (WHERE id IS NOT NULL) || ' '
       || count(*) FILTER (WHERE present AND version = citizen_sync.current_version('role', key))
  FROM citizen_sync.source_state('role')}),
	'18 4 0 18', 'source_state(): 18 live and 4 gone keys (text, no bigint id), versions as current_version()');

$node->stop;
$kafka->stop;
done_testing();
