# The messages the publisher writes are exactly the DESIGN.md wire format.
#
# Read back from the topic with kcat and checked field by field: topic
# gov.auth.citizen (and no other), key citizen_<id>, JSON value with
# event_type citizen.created|updated|deleted, event_id evt_<outbox id>_<created_at in µs>,
# integer event_version strictly increasing per key in offset order within
# one partition, event_timestamp ISO 8601 UTC with milliseconds, data with
# citizen_id and (except for deletes) the snapshot of exactly the published
# columns; each message equals its outbox row's payload plus event_type and
# event_id, and each citizen's last snapshot equals the source row.
use strict;
use warnings;

use FindBin;
use lib "$FindBin::RealBin/../perl";
use CitizenSync::Broker qw(:all);
use CitizenSync::Node qw(:all);
use CitizenSync::Events qw(:all);
use CitizenSync::Check qw(:all);
use JSON::PP;
use IPC::Run;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $kafka = start_broker();
my $node = start_pipeline('wire', $kafka);
my $json = JSON::PP->new->utf8->allow_nonref->canonical;

# Varied data: NULLs, quotes, backslashes, tabs, non-ASCII, booleans;
# creates, several updates, deletes, an insert+delete in one transaction,
# and a change of an unpublished column only (no event).
$node->safe_psql('auth_db', q{
INSERT INTO citizens (name, email, phone, address, city, postal_code, email_verified, password_hash)
VALUES ('Maria Garcia', 'maria@example.gov', '+1-555-0199', '12 Elm St', 'Springfield', '12345', true, 'secret-hash'),
       ('José Ñúñez 東京', 'jose@example.gov', NULL, 'Apt "4B", 3\ Main', 'Zürich', NULL, false, NULL),
       (E'Tab\there', 'tab@example.gov', '', E'line1\nline2', '', '0', false, 'x');
INSERT INTO citizens (name, email, city)
SELECT 'Citizen ' || i, 'c' || i || '@example.gov', 'Shelbyville'
  FROM generate_series(4, 40) AS i;
UPDATE citizens SET identity_verified = true WHERE id <= 3;
UPDATE citizens SET phone = '+1-555-' || id WHERE id % 3 = 0;
UPDATE citizens SET city = 'Capital City', email_verified = NOT email_verified WHERE id % 4 = 0;
UPDATE citizens SET password_hash = 'rotated' WHERE id <= 10;
DELETE FROM citizens WHERE id % 7 = 0;
BEGIN;
INSERT INTO citizens (id, name, email) VALUES (1000, 'Short-lived', 'short@example.gov');
DELETE FROM citizens WHERE id = 1000;
COMMIT;
UPDATE citizens SET name = 'Maria Garcia-Lopez' WHERE id = 1;
});
wait_outbox_drained($node, 30);

# Only the one topic exists (besides Kafka's internal ones).
my ($meta, $err) = ('', '');
IPC::Run::run([ 'kcat', '-L', '-b', $kafka->bootstrap ], '<', \undef, '>', \$meta, '2>', \$err,
	IPC::Run::timeout(60))
  or BAIL_OUT("kcat -L failed: $err");
my @topics = grep { !/^__/ } ($meta =~ /topic "([^"]+)"/g);
is_deeply([ sort @topics ], [$TOPIC], "the only topic is $TOPIC");

# The outbox, by id.
my %outbox;
for my $line (split /\n/, $node->safe_psql('auth_db', q{
SELECT id || E'\t' || aggregate_id || E'\t' || event_type || E'\t'
       || (extract(epoch FROM created_at) * 1000000)::bigint || E'\t' || payload::text
  FROM citizen_sync.outbox ORDER BY id}))
{
	my ($id, $agg, $type, $created_us, $payload) = split /\t/, $line, 5;
	$outbox{$id} = { aggregate_id => $agg, event_type => $type,
		created_us => $created_us, payload => $json->decode($payload) };
}
my $nrows = keys %outbox;

my @msgs = topic_events($kafka);
is(scalar(@msgs), $nrows, "one message per outbox row ($nrows)");

my @snapshot_keys = sort @PUBLISHED_COLUMNS;
my (%count, %last_snapshot, @errors);
my $ts_re = qr/^\d{4}-(0[1-9]|1[0-2])-([0-2]\d|3[01])T([01]\d|2[0-3]):[0-5]\d:[0-5]\d\.\d{3}Z$/;
my $is_int = sub { defined $_[0] && !ref $_[0] && $json->encode($_[0]) =~ /^-?\d+$/ };
for my $m (@msgs)
{
	my $where = "p$m->{partition}\@$m->{offset}";
	my $e = $m->{event};
	my $err = sub { push @errors, "$where: $_[0]"; };

	if (!defined $m->{key} || $m->{key} !~ /^citizen_([1-9]\d*)$/)
	{
		$err->('key ' . ($m->{key} // 'NULL') . ' is not citizen_<id>');
		next;
	}
	my $cid = $1;
	if (ref $e ne 'HASH')
	{
		$err->('value is not a JSON object: ' . ($m->{value} // 'NULL'));
		next;
	}
	$err->('top-level fields ' . join(',', sort keys %$e))
	  unless join(',', sort keys %$e) eq 'data,event_id,event_timestamp,event_type,event_version';
	$err->("event_type $e->{event_type}")
	  unless ($e->{event_type} // '') =~ /^citizen\.(created|updated|deleted)$/;
	my $type = $1 // '';
	$err->('event_id ' . ($e->{event_id} // 'NULL')
		  . ' is not evt_<outbox id>_<its created_at in microseconds since 1970>')
	  unless ($e->{event_id} // '') =~ /^evt_(\d+)_(\d+)$/
	  && $outbox{$1} && $outbox{$1}->{created_us} eq $2;
	my $oid = $1;
	$count{ $e->{event_id} // '' }++;
	$err->('event_version ' . $json->encode($e->{event_version}) . ' is not a positive JSON integer')
	  unless $is_int->($e->{event_version}) && $e->{event_version} > 0;
	$err->('event_timestamp ' . ($e->{event_timestamp} // 'NULL'))
	  unless ($e->{event_timestamp} // '') =~ $ts_re;

	my $d = $e->{data};
	if (ref $d ne 'HASH')
	{
		$err->('data is not an object');
		next;
	}
	$err->('data.citizen_id ' . $json->encode($d->{citizen_id}) . " is not the integer $cid")
	  unless $is_int->($d->{citizen_id}) && $d->{citizen_id} == $cid;
	if ($type eq 'deleted')
	{
		$err->('deleted event with data fields ' . join(',', sort keys %$d))
		  unless join(',', sort keys %$d) eq 'citizen_id';
		delete $last_snapshot{$cid};
	}
	else
	{
		my $s = $d->{snapshot};
		$err->('data fields ' . join(',', sort keys %$d))
		  unless join(',', sort keys %$d) eq 'citizen_id,snapshot';
		if (ref $s ne 'HASH')
		{
			$err->('no snapshot object');
			next;
		}
		$err->('snapshot fields ' . join(',', sort keys %$s))
		  unless join(',', sort keys %$s) eq join(',', @snapshot_keys);
		$err->('snapshot.id is not the integer ' . $cid)
		  unless $is_int->($s->{id}) && $s->{id} == $cid;
		for my $b (qw(email_verified identity_verified))
		{
			$err->("snapshot.$b is not a JSON boolean")
			  unless JSON::PP::is_bool($s->{$b});
		}
		for my $t (qw(name email phone address city postal_code))
		{
			$err->("snapshot.$t is not a string or null")
			  if defined $s->{$t} && (ref $s->{$t} || $json->encode($s->{$t}) !~ /^"/);
		}
		$last_snapshot{$cid} = $s;
	}

	# The message is its outbox row: payload plus event_type and event_id.
	if ($oid && $outbox{$oid})
	{
		my $o = $outbox{$oid};
		$err->("outbox row $oid is citizen $o->{aggregate_id}, key says $cid")
		  unless $o->{aggregate_id} == $cid;
		$err->("outbox row $oid is $o->{event_type}, message says $type")
		  unless $o->{event_type} eq $type;
		my %want = (%{ $o->{payload} },
			event_type => "citizen.$o->{event_type}", event_id => "evt_${oid}_$o->{created_us}");
		$err->("differs from outbox row $oid: " . $m->{value})
		  unless $json->encode($e) eq $json->encode(\%want);
	}
}
is(scalar(@errors), 0, 'every message has exactly the documented format')
  or diag(join("\n", @errors[ 0 .. ($#errors < 19 ? $#errors : 19) ]));
is(scalar(grep { $_ != 1 } values %count), 0, 'every event_id appears once');

check_topic_order(\@msgs);

# Event types and versions match the changes made.
my %by_type;
$by_type{ $_->{event}->{event_type} }++ for @msgs;
is_deeply(
	\%by_type,
	{ map { split /\|/ } split /\n/, $node->safe_psql('auth_db', q{
SELECT 'citizen.' || event_type || '|' || count(*) FROM citizen_sync.outbox GROUP BY event_type}) },
	'as many created/updated/deleted events as changes of each kind');
ok($by_type{'citizen.created'} && $by_type{'citizen.updated'} && $by_type{'citizen.deleted'},
	'all three event types were published');

# Each live citizen's last snapshot is its current row (published columns
# only); deleted citizens ended with a delete.
my %source = map { my ($id, $j) = split /\t/, $_, 2; ($id => $json->decode($j)) }
  split /\n/, $node->safe_psql('auth_db', q{
SELECT id || E'\t' || (to_jsonb(c) - 'password_hash')::text FROM citizens c});
is_deeply(\%last_snapshot, \%source,
	'the last snapshot of every live citizen equals its row; deleted ones end deleted');
unlike(join("\n", map { $_->{value} // '' } @msgs), qr/password_hash|secret-hash|rotated/,
	'no message carries password_hash');

wait_caches_converged($node, 60);

$node->stop;
$kafka->stop;
done_testing();
