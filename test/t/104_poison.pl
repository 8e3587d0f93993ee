# Poison messages among good ones.
#
# Messages that cannot be applied (not JSON, invalid UTF-8, a NUL byte,
# \u0000 in a value or a key, a lone surrogate escape, a duplicated field,
# missing fields, wrong types, larger than citizen_sync.max_event_size, an id
# mismatch, an empty value, a null value (tombstone), a constraint violation
# in the database, ...) must land in citizen_sync.dead_letters, exactly
# those, with their raw bytes (NULL for a null value, '' for an empty one),
# key, topic/partition/offset and an SQLSTATE, while every good message
# around them is applied: the stream is never blocked.  A tombstone's dead
# letter stays one when retried.
use strict;
use warnings;

use FindBin;
use lib "$FindBin::RealBin/../perl";
use CitizenSync::Broker;
use CitizenSync::Node;
use CitizenSync::Events;
use CitizenSync::Check;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;


my $db = $CitizenSync::Node::DB;
my $topic = 'gov.auth.citizen';

my $broker = CitizenSync::Broker::start_broker(topics => ["$topic:4"]);
my $node = CitizenSync::Node::new_node('poison', $broker,
	extra => "citizen_sync.max_event_size = '2kB'\ncitizen_sync.batch_size = 100\n");

# A valid event, as a base for the broken ones.
sub good_json
{
	my ($cid, $v, %over) = @_;
	return CitizenSync::Events::event_json(type => 'updated', event_id => "evt_poison_${cid}_$v",
		citizen_id => $cid, version => $v,
		snapshot => CitizenSync::Events::snapshot($cid, $v), %over);
}

my $good = good_json(9000, 1);
my $bad = CitizenSync::Events::broken_variants($good);
my $oversize = $bad->{oversize};

# An event that parses but that the database refuses (a constraint the DBA
# added): isolated from its batch and dead-lettered, the rest applied.
$node->safe_psql($db, q{
ALTER TABLE cache.citizen_refs ADD CONSTRAINT test_no_evil CHECK (name IS DISTINCT FROM 'Evil Twin')});
my %evil_v1 = (type => 'created', event_id => 'evt_evil_1', citizen_id => 8100, version => 1,
	snapshot => CitizenSync::Events::snapshot(8100, 1), key => 'citizen_8100');
$evil_v1{value} = CitizenSync::Events::event_json(%evil_v1);
my $evil_v2 = CitizenSync::Events::event_json(type => 'updated', event_id => 'evt_evil_2',
	citizen_id => 8100, version => 2,
	snapshot => { %{ CitizenSync::Events::snapshot(8100, 2) }, name => 'Evil Twin' });

# [name, key, value (undef = null), expected SQLSTATE]
my @poison = (
	[ 'not JSON',              'citizen_11', 'this is not JSON {',   '22P02' ],
	[ 'truncated JSON',        'citizen_12', $bad->{truncated},     '22P02' ],
	[ 'JSON array',            'citizen_13', '[1,2,3]',              '22023' ],
	[ 'invalid UTF-8 bytes',   'citizen_14', $bad->{bad_utf8},      '22021' ],
	[ 'NUL in a string',       'citizen_15', $bad->{nul},           '22P05' ],
	[ 'NUL byte in a string',  'citizen_26', $bad->{nul_byte},      '22021' ],
	[ 'NUL in a key',          'citizen_27', $bad->{nul_key},       '22P05' ],
	[ 'lone surrogate escape', 'citizen_28', $bad->{lone_surrogate}, '22P02' ],
	[ 'duplicated field',      'citizen_29', $bad->{duplicate},     '22030' ],
	[ 'missing event_id',      'citizen_16', $bad->{no_event_id},   '22004' ],
	[ 'missing citizen_id',    'citizen_17', $bad->{no_key},        '22004' ],
	[ 'missing email',         'citizen_18', $bad->{no_email},      '22004' ],
	[ 'version as a string',   'citizen_19', $bad->{version_string}, '22023' ],
	[ 'version zero',          'citizen_20', $bad->{version_zero},  '22003' ],
	[ 'boolean as a string',   'citizen_21', $bad->{bool_string},   '22023' ],
	[ 'snapshot id mismatch',  'citizen_22', $bad->{id_mismatch},   '22023' ],
	[ 'larger than max_event_size', 'citizen_23', $oversize,         '54000' ],
	[ 'tombstone (empty value)', 'citizen_24', '',                   '22P02' ],
	[ 'tombstone (null value)', 'citizen_25', undef,                 '22004' ],
	[ 'no key, not JSON',      undef,        'garbage without a key', '22P02' ],
	[ 'check constraint violation', 'citizen_8100', $evil_v2,       '23514' ],);
cmp_ok(length($oversize), '>', 2048, 'the oversize event is larger than 2kB');
cmp_ok(length($good), '<', 1024, 'a good event is smaller than 1kB');

# Good events for the citizens whose keys the poison uses (same partitions),
# and others; poison spread through the stream.
my $m = CitizenSync::Events::new_model(seed => 104);
my $events = CitizenSync::Events::add_events($m, citizens => [ 1 .. 300 ], tag => 'g');
CitizenSync::Events::feed($m, \%evil_v1);
my @first = (\%evil_v1, @$events[ 0 .. int(@$events / 2) - 1 ]);
my @second = @$events[ int(@$events / 2) .. $#$events ];
my @with_value = grep { defined $_->[2] } @poison;
for my $i (0 .. $#with_value)
{
	my $p = $with_value[$i];
	my $list = ($i % 2 || $p->[3] eq '23514') ? \@second : \@first;
	splice @$list, int(@$list * ($i + 1) / (@with_value + 1)), 0, [ $p->[1], $p->[2] ];
}
$broker->produce($topic, \@first);
# a real Kafka tombstone: kcat -Z sends the empty value as null
$broker->produce($topic,
	[ map { [ $_->[1], '' ] } grep { !defined $_->[2] } @poison ],
	kcat_args => ['-Z']);
$broker->produce($topic, \@second);

# Where each poison message landed.
my $pos = CitizenSync::Broker::positions($broker, $topic);
my @dl;
for my $p (@poison)
{
	my ($name, $key, $value, $state) = @$p;
	my @hits;
	for my $part (keys %$pos)
	{
		push @hits, map { [ $part, $_ ] } grep {
			(defined $key ? (defined $_->{key} && $_->{key} eq $key) : !defined $_->{key})
			  && (defined $value ? (defined $_->{value} && $_->{value} eq $value) : !defined $_->{value})
		} @{ $pos->{$part} };
	}
	is(scalar(@hits), 1, "poison '$name' is in the topic once");
	my ($part, $msg) = @{ $hits[0] };
	push @dl, [ $name, $key, $value, $part, $msg->{offset}, $state ];
}

CitizenSync::Check::load_expected($node, $db, $m);
CitizenSync::Check::wait_converged($node, $db, 'every good event is applied around the poison');
CitizenSync::Check::check_counts($node, $db, $m->{counts}, dead_lettered => scalar(@poison),
	citizens => 300);
CitizenSync::Check::check_offsets_at_end($node, $db, $broker, $topic);

# The dead letters are exactly the poison, byte for byte, where it was.
$node->safe_psql($db, 'CREATE TABLE cs_test.poison (name text, message_key bytea, payload bytea,'
	  . ' partition int, "offset" bigint, sqlstate text)');
$node->safe_psql($db, 'INSERT INTO cs_test.poison VALUES '
	  . join(",\n", map {
		sprintf("('%s', %s, %s, %d, %d, '%s')", $_->[0],
			defined $_->[1] ? "'\\x" . unpack('H*', $_->[1]) . "'" : 'NULL',
			defined $_->[2] ? "'\\x" . unpack('H*', $_->[2]) . "'" : 'NULL',
			$_->[3], $_->[4], $_->[5])
	  } @dl));
is($node->safe_psql($db, 'SELECT count(*) FROM citizen_sync.dead_letters'),
	scalar(@poison), 'as many dead letters as poison messages');
is( $node->safe_psql($db, qq{
SELECT coalesce(p.name, 'unexpected dead letter at ' || d.partition || '/' || d."offset")
       || ': ' || concat_ws(', ',
            CASE WHEN d.id IS NULL THEN 'not dead-lettered' END,
            CASE WHEN d.payload IS DISTINCT FROM p.payload THEN 'payload differs' END,
            CASE WHEN d.message_key IS DISTINCT FROM p.message_key THEN 'key differs' END,
            CASE WHEN d.topic IS DISTINCT FROM '$topic' THEN 'topic ' || d.topic END,
            CASE WHEN d.error_sqlstate IS DISTINCT FROM p.sqlstate
                 THEN 'SQLSTATE ' || d.error_sqlstate || ', expected ' || p.sqlstate END,
            CASE WHEN coalesce(d.error_message, '') = '' THEN 'no error message' END)
  FROM cs_test.poison p
  FULL JOIN citizen_sync.dead_letters d
    ON d.partition = p.partition AND d."offset" = p."offset"
 WHERE d.id IS NULL OR p.name IS NULL
    OR d.payload IS DISTINCT FROM p.payload
    OR d.message_key IS DISTINCT FROM p.message_key
    OR d.topic IS DISTINCT FROM '$topic'
    OR d.error_sqlstate IS DISTINCT FROM p.sqlstate
    OR coalesce(d.error_message, '') = ''
 ORDER BY 1}),
	'', 'each dead letter holds the raw bytes, key, position and SQLSTATE of its poison message');
note($node->safe_psql($db, q{
SELECT p.name || ': ' || d.error_sqlstate || ' ' || d.error_message || ' / ' || coalesce(d.error_detail, '')
  FROM citizen_sync.dead_letters d JOIN cs_test.poison p USING (partition, "offset") ORDER BY d.id}));
is($node->safe_psql($db, q{
SELECT count(*) FROM citizen_sync.dead_letters WHERE resolved_at IS NULL AND attempts = 1}),
	scalar(@poison), 'every dead letter is unresolved, seen once');
is($node->safe_psql($db, 'SELECT count(*) FROM cache.processed_events'),
	$m->{counts}{distinct}, 'processed_events holds the good events only');
is($node->safe_psql($db, q{SELECT count(*) FROM cache.citizen_refs WHERE citizen_id >= 9000}),
	0, 'no poison reached the cache');
is($node->safe_psql($db, q{SELECT event_version || ' ' || name FROM cache.citizen_refs WHERE citizen_id = 8100}),
	'1 Citizen 8100 v1', 'the citizen of the refused update keeps its previous version');
like($node->safe_psql($db, q{SELECT error_message FROM citizen_sync.dead_letters WHERE event_id = 'evt_evil_2'}),
	qr/test_no_evil/, 'the dead letter of the refused update names the constraint');
ok($node->log_contains(qr/isolating the failing event/),
	'the batch holding the refused update was re-applied event by event');

# A null value and an empty one are told apart: payload NULL or '', and the
# error says which.
is( $node->safe_psql($db, q{
SELECT p.name || ': ' || coalesce(encode(d.payload, 'hex'), 'NULL') || ' ' || d.error_detail
  FROM citizen_sync.dead_letters d JOIN cs_test.poison p USING (partition, "offset")
 WHERE p.name LIKE 'tombstone%' ORDER BY p.name}),
	"tombstone (empty value):  The event is empty (0 bytes).\n"
	  . 'tombstone (null value): NULL The message value is null (a Kafka tombstone), not an event.',
	'a null value is stored as NULL, an empty one as empty bytes, each with its own error');
is( $node->safe_psql($db, q{
SELECT d.error_detail FROM citizen_sync.dead_letters d JOIN cs_test.poison p USING (partition, "offset")
 WHERE p.name = 'NUL in a key'}),
	'A key in "data.snapshot" contains the escape \u0000 at byte '
	  . index($bad->{nul_key}, '\u0000') . '; text cannot hold NUL characters.',
	'the dead letter of a key with \u0000 says where it is');

# Retrying them: both stay dead letters; the null one with a clear error.
is( $node->safe_psql($db, q{
SELECT p.name || ': ' || r.result || ', ' || r.error
  FROM citizen_sync.dead_letters d JOIN cs_test.poison p USING (partition, "offset"),
       citizen_sync.retry_dead_letters(ARRAY[d.id]) r
 WHERE p.name LIKE 'tombstone%' ORDER BY p.name}),
	"tombstone (empty value): failed, invalid citizen event\n"
	  . 'tombstone (null value): failed, null message value (a Kafka tombstone) cannot be applied',
	'retrying a tombstone fails');
is( $node->safe_psql($db, q{
SELECT string_agg(p.name || ': ' || (d.resolved_at IS NULL) || ' ' || d.attempts || ' '
                  || d.error_sqlstate, ', ' ORDER BY p.name)
  FROM citizen_sync.dead_letters d JOIN cs_test.poison p USING (partition, "offset")
 WHERE p.name LIKE 'tombstone%'}),
	'tombstone (empty value): true 2 22P02, tombstone (null value): true 2 22004',
	'both tombstones stay unresolved dead letters, retried once');

$node->stop;
$broker->stop;
done_testing();
