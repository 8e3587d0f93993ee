=pod

=head1 NAME

CitizenSyncTest - shared set-up, event streams and checks of citizen_sync's
TAP tests

=head1 SYNOPSIS

  use FindBin;
  use lib "$FindBin::RealBin/../perl";
  use CitizenSyncTest;

  my $broker = CitizenSyncTest::start_broker(topics => ['gov.auth.citizen:4']);
  my $node = CitizenSyncTest::new_node('consume', $broker);

  my $model = CitizenSyncTest::new_model(seed => 1);
  my $msgs = CitizenSyncTest::add_events($model, citizens => [1 .. 300]);
  CitizenSyncTest::produce($broker, 'gov.auth.citizen', $msgs);
  CitizenSyncTest::load_expected($node, 'permits_db', $model);
  CitizenSyncTest::wait_converged($node, 'permits_db', 'cache converges');
  CitizenSyncTest::check_counts($node, 'permits_db', $model->{counts}, exact => 1);

=head1 DESCRIPTION

=over

=item * start_broker / new_node / setup_db: the embedded broker and a node
configured as the tests need it (consumer of permits_db as
permits_sync_user, short session timeout for the mock cluster's rebalances,
10 ms batch wait), with the extension, the service roles and a schema
C<cs_test> holding the expected state.

=item * new_model / add_events: generate a stream of citizen events with
duplicates (the same message resent), out-of-order versions (an older
version after a newer one), deletes followed by late older updates and
unknown event types, and compute in Perl the state the cache must end in
and the counts the consumer must report.

=item * load_expected / wait_converged / mismatches: load the expected
state into C<cs_test.expected> and poll (with the test framework's deadline)
until one query finds no difference between it and C<cache.citizen_refs>.

=back

Semantics of the expected state (the design contract): per citizen the
newest event_version wins; a delete is soft (is_active = false, deleted_at
set) and keeps the fields the row had, as if the events were applied one
by one in stream order (cs_apply.c promises that outcome whatever the
batching); a delete of a citizen never seen leaves a tombstone (no fields).
Every row is compared field by field.

=cut

package CitizenSyncTest;

use strict;
use warnings;

use Carp;
use Encode ();
use File::Temp ();
use Time::HiRes ();
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

use CitizenSyncBroker;

our $DB = 'permits_db';
our $SERVICE = 'permits';
our $SYNC_ROLE = 'permits_sync_user';
our $TOPIC = 'gov.auth.citizen';

=pod

=head1 FUNCTIONS

=over

=item start_broker(%args)

CitizenSyncBroker->new(%args), by default one broker and
C<gov.auth.citizen:4>.

=cut

sub start_broker
{
	my (%args) = @_;
	$args{topics} //= ["$TOPIC:4"];
	$args{brokers} //= 1;
	return CitizenSyncBroker->new(%args);
}

=pod

=item base_conf($broker, %opts)

The postgresql.conf lines of a consumer node.  Options: C<databases>
(default 'permits_db:permits_sync_user'), C<extra> (more lines).

=cut

sub base_conf
{
	my ($broker, %opts) = @_;
	my $databases = $opts{databases} // "$DB:$SYNC_ROLE";
	my $bootstrap = $broker->bootstrap;

	return qq{
shared_preload_libraries = 'citizen_sync'
citizen_sync.brokers = '$bootstrap'
citizen_sync.databases = '$databases'
citizen_sync.kafka_properties = 'session.timeout.ms=6000;heartbeat.interval.ms=500'
citizen_sync.batch_wait = '10ms'
log_min_messages = info
} . ($opts{extra} // '');
}

=pod

=item new_node($name, $broker, %opts)

Creates, configures (base_conf, same options) and starts a node; unless
C<< setup => 0 >>, also creates permits_db with the extension and roles
(setup_db).  Returns the node.

=cut

sub new_node
{
	my ($name, $broker, %opts) = @_;
	my $node = PostgreSQL::Test::Cluster->new($name);

	$node->init;
	$node->append_conf('postgresql.conf', base_conf($broker, %opts));
	$node->start;
	setup_db($node) if $opts{setup} // 1;
	return $node;
}

=pod

=item setup_db($node, %opts)

CREATE DATABASE (C<db>, default permits_db) unless C<< create => 0 >>, then
in it: the extension, create_service_roles('permits') and the cs_test
schema (expected-state table).  C<< extension => 0 >> skips the extension
and roles (then call install_extension later).

=cut

sub setup_db
{
	my ($node, %opts) = @_;
	my $db = $opts{db} // $DB;

	$node->safe_psql('postgres', "CREATE DATABASE $db") if $opts{create} // 1;
	$node->safe_psql($db, q{
CREATE SCHEMA cs_test;
CREATE TABLE cs_test.expected (
    citizen_id bigint PRIMARY KEY, name text, email text, phone text,
    address text, city text, postal_code text, email_verified bool,
    identity_verified bool, event_version bigint NOT NULL,
    is_active bool NOT NULL);
});
	install_extension($node, $db) if $opts{extension} // 1;
	return;
}

=pod

=item install_extension($node, $db)

CREATE EXTENSION citizen_sync and the permits service roles.

=cut

sub install_extension
{
	my ($node, $db) = @_;
	$db //= $DB;
	$node->safe_psql($db, qq{
CREATE EXTENSION citizen_sync;
SELECT citizen_sync.create_service_roles('$SERVICE');
});
	return;
}

# ---------------------------------------------------------------------------
# Event streams and their expected outcome
# ---------------------------------------------------------------------------

=pod

=item new_model(seed => N)

A model of the source: per-citizen versions, the expected cache state and
running counts of what a consumer reading everything produced so far must
report:

  counts => { total, duplicate, ignored, distinct, increasing }

C<distinct> = applied + deleted + stale (each new event id is decided once),
C<duplicate> = messages whose event id came before, C<ignored> = unknown
event types, C<increasing> = events newer than every earlier one of their
citizen (an upper bound of applied + deleted: within a batch older events
are superseded).

=cut

sub new_model
{
	my (%opts) = @_;
	return {
		seed => $opts{seed} // 1,
		rand_state => $opts{seed} // 1,
		version => {},      # citizen => last version generated
		expected => {},     # citizen => row hash
		seen => {},         # event ids fed
		maxver => {},       # citizen => newest version fed
		counts => {
			total => 0, duplicate => 0, ignored => 0, distinct => 0,
			increasing => 0
		},
		nunknown => 0,
	};
}

# A small deterministic PRNG (xorshift), independent of perl's rand().
sub _rand
{
	my ($m) = @_;
	my $x = $m->{rand_state} || 88172645;
	$x ^= ($x << 13) & 0xFFFFFFFF;
	$x ^= ($x >> 17);
	$x ^= ($x << 5) & 0xFFFFFFFF;
	$x &= 0xFFFFFFFF;
	$m->{rand_state} = $x;
	return $x / 4294967296;
}

sub _json_str
{
	my ($s) = @_;
	return 'null' unless defined $s;
	$s =~ s/(["\\])/\\$1/g;
	return qq{"$s"};
}

my @CITIES = ('Springfield', 'Shelbyville', 'Ogdenville', 'North Haverbrook',
	'Capital City', 'São Paulo', 'Zürich');

=pod

=item snapshot($citizen_id, $version)

The snapshot fields of a citizen at a version (UTF-8 byte strings; some
optional ones are undef, i.e. omitted from the event).

=cut

sub snapshot
{
	my ($cid, $v) = @_;
	my $name = $cid % 7 == 0 ? "Zoë Ñúñez $cid v$v" : "Citizen $cid v$v";
	my %s = (
		name => $name,
		email => "c$cid.v$v\@example.gov",
		phone => $v % 3 == 0 ? undef : sprintf('+1-555-%04d', ($cid * 7 + $v) % 10000),
		address => "$v Elm St #$cid",
		city => $v % 4 == 1 ? undef : $CITIES[ ($cid + $v) % @CITIES ],
		postal_code => sprintf('%05d', ($cid * 31 + $v) % 100000),
		email_verified => ($cid + $v) % 2 == 0 ? 1 : 0,
		identity_verified => $v % 3 == 0 ? 1 : 0,
	);
	$s{$_} = defined $s{$_} ? Encode::encode_utf8($s{$_}) : undef
	  for qw(name email phone address city postal_code);
	return \%s;
}

=pod

=item event_json(%e)

The wire form (UTF-8 bytes) of an event: C<type> (created, updated, deleted
or anything else), C<event_id>, C<citizen_id>, C<version>, C<snapshot>
(hashref, for created/updated).

=cut

sub event_json
{
	my (%e) = @_;
	my $type = $e{type} =~ /\./ ? $e{type} : "citizen.$e{type}";
	my $ts = sprintf('2026-11-25T10:%02d:%02d.%03dZ',
		($e{version} / 60) % 60, $e{version} % 60, $e{citizen_id} % 1000);
	my $data = qq{"citizen_id":$e{citizen_id}};

	if (my $s = $e{snapshot})
	{
		my @f = (qq{"id":$e{citizen_id}});
		for my $k (qw(name email phone address city postal_code))
		{
			push @f, qq{"$k":} . _json_str($s->{$k}) if defined $s->{$k};
		}
		push @f, qq{"email_verified":} . ($s->{email_verified} ? 'true' : 'false');
		push @f, qq{"identity_verified":} . ($s->{identity_verified} ? 'true' : 'false');
		$data .= ',"snapshot":{' . join(',', @f) . '}';
	}
	return qq({"event_type":"$type","event_id":"$e{event_id}","event_version":$e{version},)
	  . qq("event_timestamp":"$ts","data":{$data}});
}

=pod

=item add_events($model, %opts)

Generates events for the citizens C<citizens> (arrayref of ids), continuing
each citizen's versions from the model, feeds them to the model and
returns them as an arrayref of hashes { key, value, event_id, citizen_id,
version, type } in production order (citizens interleaved, each citizen's
own order kept: one key, one partition).  Options (probabilities):

  max_versions => 6     new versions per citizen: 1 .. max_versions
  delete_ratio => 0.2   the citizen's newest new version is a delete
  late_ratio   => 0.6   ... and an older update arrives after that delete
  swap_ratio   => 0.15  two consecutive versions arrive swapped
  dup_ratio    => 0.1   a message is sent again later
  unknown      => 0     extra events of an unknown type (ignored)
  tag          => 'a'   part of the event ids

=cut

sub add_events
{
	my ($m, %o) = @_;
	my $maxv = $o{max_versions} // 6;
	my $p_delete = $o{delete_ratio} // 0.2;
	my $p_late = $o{late_ratio} // 0.6;
	my $p_swap = $o{swap_ratio} // 0.15;
	my $p_dup = $o{dup_ratio} // 0.1;
	my $tag = $o{tag} // 'a';
	my @lists;

	for my $cid (@{ $o{citizens} })
	{
		my $last = $m->{version}{$cid} // 0;
		my $k = 1 + int(_rand($m) * $maxv);
		my @ev;

		for my $i (1 .. $k)
		{
			my $v = $last + $i;
			my $type = $v == 1 ? 'created' : 'updated';
			$type = 'deleted' if $i == $k && $k > 1 && _rand($m) < $p_delete;
			my %e = (
				type => $type,
				event_id => "evt_${tag}_${cid}_$v",
				citizen_id => $cid,
				version => $v);
			$e{snapshot} = snapshot($cid, $v) unless $type eq 'deleted';
			push @ev, \%e;
		}
		$m->{version}{$cid} = $last + $k;

		if ($ev[-1]{type} eq 'deleted' && _rand($m) < $p_late)
		{
			# the update before the delete arrives after it
			@ev[ -2, -1 ] = @ev[ -1, -2 ];
		}
		else
		{
			for (my $j = 0; $j < $#ev; $j++)
			{
				next unless _rand($m) < $p_swap;
				@ev[ $j, $j + 1 ] = @ev[ $j + 1, $j ];
				$j++;
			}
		}
		# resend some messages later (same event id, same bytes)
		for (my $j = 0; $j < @ev; $j++)
		{
			next if $ev[$j]{resent} || _rand($m) >= $p_dup;
			my $pos = $j + 1 + int(_rand($m) * (@ev - $j));
			splice @ev, $pos, 0, { %{ $ev[$j] }, resent => 1 };
		}
		push @lists, \@ev;
	}
	for my $i (1 .. ($o{unknown} // 0))
	{
		my $cid = $o{citizens}[ int(_rand($m) * @{ $o{citizens} }) ];
		$m->{nunknown}++;
		push @lists,
		  [
			{
				type => 'citizen.merged',
				event_id => "evt_${tag}_unknown_$m->{nunknown}",
				citizen_id => $cid,
				version => 1
			}
		  ];
	}

	# interleave, keeping each list's order
	my @out;
	my @live = grep { @$_ } @lists;
	while (@live)
	{
		my $i = int(_rand($m) * @live);
		push @out, shift @{ $live[$i] };
		if (!@{ $live[$i] })
		{
			$live[$i] = $live[-1];
			pop @live;
		}
	}
	for my $e (@out)
	{
		$e->{key} = "citizen_$e->{citizen_id}";
		$e->{value} = event_json(%$e);
		feed($m, $e);
	}
	return \@out;
}

=pod

=item feed($model, $event)

Applies one event to the model as the consumer must (newer version wins,
soft deletes, duplicates by event id, unknown types ignored) and counts it.

=cut

sub feed
{
	my ($m, $e) = @_;
	my $c = $m->{counts};
	my $cid = $e->{citizen_id};

	$c->{total}++;
	if ($e->{type} !~ /^(created|updated|deleted)$/)
	{
		$c->{ignored}++;
		return;
	}
	if ($m->{seen}{ $e->{event_id} }++)
	{
		$c->{duplicate}++;
		return;
	}
	$c->{distinct}++;
	return if defined $m->{maxver}{$cid} && $m->{maxver}{$cid} >= $e->{version};
	$c->{increasing}++;
	$m->{maxver}{$cid} = $e->{version};

	my $row = $m->{expected}{$cid} //= {};
	$row->{event_version} = $e->{version};
	if ($e->{type} eq 'deleted')
	{
		# the cached fields are kept; a delete of a citizen never seen
		# leaves a tombstone (no fields)
		%$row = (email_verified => 0, identity_verified => 0)
		  unless defined $row->{is_active};
		$row->{is_active} = 0;
		$row->{event_version} = $e->{version};
	}
	else
	{
		%$row = (%$row, %{ $e->{snapshot} }, is_active => 1,
			event_version => $e->{version});
	}
	return;
}

# ---------------------------------------------------------------------------
# Kafka
# ---------------------------------------------------------------------------

=pod

=item produce($broker, $topic, $messages, %opts)

Produces the messages (hashes with key and value, or [key, value] pairs;
a key of undef means a null key) in order with kcat through a file, and
croaks if the mock cluster's retention dropped any.

=cut

sub produce
{
	my ($broker, $topic, $msgs, %opts) = @_;
	my $tmp = File::Temp->new(DIR => $PostgreSQL::Test::Utils::tmp_check,
		SUFFIX => '.tsv');

	binmode $tmp;
	for my $msg (@$msgs)
	{
		my ($k, $v) = ref $msg eq 'HASH' ? @$msg{qw(key value)} : @$msg;
		croak 'message with a newline' if $v =~ /\n/ || (defined $k && $k =~ /[\t\n]/);
		print $tmp (defined $k ? "$k\t$v\n" : "$v\n");
	}
	close $tmp;
	$broker->produce_file($topic, $tmp->filename, %opts);
	return scalar @$msgs;
}

=pod

=item positions($broker, $topic)

Everything in the topic (kcat, from the beginning) as a hashref
partition => [ { offset, key, value, event_id }, ... ] in offset order.

=cut

sub positions
{
	my ($broker, $topic) = @_;
	my %p;

	for my $msg ($broker->consume($topic))
	{
		($msg->{event_id}) = ($msg->{value} // '') =~ /"event_id":"([^"]*)"/;
		push @{ $p{ $msg->{partition} } }, $msg;
	}
	@$_ = sort { $a->{offset} <=> $b->{offset} } @$_ for values %p;
	return \%p;
}

=pod

=item suffix_counts($positions, \%stored, %opts)

What a consumer resuming at the stored next offsets (partition => offset;
absent = 0) must count for the rest of the topic, given that everything
before them was processed: { total, duplicate, distinct }.  Only valid
events of known types are expected in the topic.  Option C<partitions>
(arrayref): only those partitions.

=cut

sub suffix_counts
{
	my ($pos, $stored, %o) = @_;
	my %seen;
	my %c = (total => 0, duplicate => 0, distinct => 0);

	for my $p ($o{partitions} ? @{ $o{partitions} } : keys %$pos)
	{
		my $from = $stored->{$p} // 0;
		for my $msg (@{ $pos->{$p} })
		{
			if ($msg->{offset} < $from)
			{
				$seen{ $msg->{event_id} } = 1;
				next;
			}
			$c{total}++;
			if ($seen{ $msg->{event_id} }++) { $c{duplicate}++ }
			else { $c{distinct}++ }
		}
	}
	return \%c;
}

# ---------------------------------------------------------------------------
# Database checks
# ---------------------------------------------------------------------------

sub _copy_value
{
	my ($v) = @_;
	return '\N' unless defined $v;
	$v =~ s/\\/\\\\/g;
	$v =~ s/\t/\\t/g;
	$v =~ s/\n/\\n/g;
	return $v;
}

=pod

=item load_expected($node, $db, $model)

Replaces the content of cs_test.expected with the model's expected state.

=cut

sub load_expected
{
	my ($node, $db, $m) = @_;
	my $sql = "BEGIN;\nTRUNCATE cs_test.expected;\nCOPY cs_test.expected FROM STDIN;\n";

	for my $cid (sort { $a <=> $b } keys %{ $m->{expected} })
	{
		my $r = $m->{expected}{$cid};
		$sql .= join("\t",
			$cid,
			(map { _copy_value($r->{$_}) } qw(name email phone address city postal_code)),
			(map { defined $r->{$_} ? ($r->{$_} ? 't' : 'f') : '\N' } qw(email_verified identity_verified)),
			$r->{event_version},
			$r->{is_active} ? 't' : 'f') . "\n";
	}
	$sql .= "\\.\nCOMMIT;\n";
	$node->safe_psql($db, $sql);
	return;
}

=pod

=item mismatch_sql(%opts)

A query returning the differences between cs_test.expected and
cache.citizen_refs as rows (citizen_id, problem).  Option C<where>: an SQL
condition on the expected rows (alias e) restricting the comparison to
them (cache rows outside it are ignored, except with C<< strict => 1 >>).
C<expected_table>: another relation with the same columns.

=cut

sub mismatch_sql
{
	my (%o) = @_;
	my $where = $o{where} // 'true';
	my $table = $o{expected_table} // 'cs_test.expected';
	my $extra =
	  $o{where} && !$o{strict}
	  ? "AND (e.citizen_id IS NOT NULL OR c.citizen_id NOT IN (SELECT citizen_id FROM $table))"
	  : '';

	return qq{
SELECT coalesce(e.citizen_id, c.citizen_id) AS citizen_id,
       CASE WHEN c.citizen_id IS NULL THEN 'missing from the cache'
            WHEN e.citizen_id IS NULL THEN 'unexpected in the cache'
            WHEN c.event_version <> e.event_version
              THEN format('event_version %s, expected %s', c.event_version, e.event_version)
            WHEN c.is_active <> e.is_active
              THEN format('is_active %s, expected %s', c.is_active, e.is_active)
            WHEN c.is_active = (c.deleted_at IS NOT NULL)
              THEN format('is_active %s but deleted_at %s', c.is_active, c.deleted_at)
            ELSE format('fields %s, expected %s',
                        row(c.name, c.email, c.phone, c.address, c.city, c.postal_code,
                            c.email_verified, c.identity_verified),
                        row(e.name, e.email, e.phone, e.address, e.city, e.postal_code,
                            e.email_verified, e.identity_verified))
       END AS problem
  FROM (SELECT * FROM $table e WHERE $where) e
  FULL JOIN cache.citizen_refs c ON c.citizen_id = e.citizen_id
 WHERE (e.citizen_id IS NULL OR c.citizen_id IS NULL
        OR c.event_version <> e.event_version
        OR c.is_active <> e.is_active
        OR c.is_active = (c.deleted_at IS NOT NULL)
        OR ((c.name, c.email, c.phone, c.address, c.city, c.postal_code,
             c.email_verified, c.identity_verified)
            IS DISTINCT FROM
            (e.name, e.email, e.phone, e.address, e.city, e.postal_code,
             e.email_verified, e.identity_verified)))
   $extra
};
}

=pod

=item wait_converged($node, $db, $test_name, %opts)

Polls (poll_query_until: the framework's deadline) until the cache equals
the expected state (mismatch_sql(%opts) returns no row); passes or fails
$test_name, showing the first differences on failure.  Returns true when
converged.

=cut

sub wait_converged
{
	my ($node, $db, $name, %o) = @_;
	my $sql = mismatch_sql(%o);
	my $ok = $node->poll_query_until($db, "SELECT count(*) FROM ($sql) m", '0');

	ok($ok, $name);
	if (!$ok)
	{
		diag("first differences:\n"
			  . $node->safe_psql($db, "$sql ORDER BY 1 LIMIT 20"));
		diag("consumer_stats:\n"
			  . $node->safe_psql($db,
				'SELECT * FROM citizen_sync.consumer_stats'));
	}
	return $ok;
}

=pod

=item consumer_stats($node, $db, $monitor_db)

The consumer_stats row of database $db (queried in $monitor_db, default
$db) as a hashref.

=cut

my @STATS_COLS = qw(pid state partitions applied deleted stale duplicate
  ignored dead_lettered batches lag last_error);

sub consumer_stats
{
	my ($node, $db, $mon) = @_;
	$mon //= $db;
	my $row = $node->safe_psql($mon,
		'SELECT ' . join(', ', map { "coalesce(${_}::text, '')" } @STATS_COLS)
		  . " FROM citizen_sync.consumer_stats WHERE database = '$db'",
		extra_params => ['-F', "\x1f"]);
	my %h;
	@h{@STATS_COLS} = split /\x1f/, $row, -1;
	return \%h;
}

=pod

=item counted_sql($db)

SQL giving the number of messages the consumer of $db counted (every
outcome, dead letters included).

=cut

sub counted_sql
{
	my ($db) = @_;
	return "SELECT applied + deleted + stale + duplicate + ignored + dead_lettered"
	  . " FROM citizen_sync.consumer_stats WHERE database = '$db'";
}

=pod

=item check_counts($node, $db, \%counts, %opts)

Waits until the consumer counted C<< $counts->{total} >> messages, then
checks consumer_stats against the counts of the stream (see new_model):
applied + deleted + stale = distinct, duplicate, ignored, dead_lettered
(C<dead_lettered>, default 0), and applied + deleted between the number of
citizens touched (C<citizens>, if given) and C<increasing>.  With
C<< redelivery_ok => 1 >>, extra duplicates (re-delivered messages) are
allowed.  Returns the stats hashref.

=cut

sub check_counts
{
	my ($node, $db, $c, %o) = @_;
	my $total = $c->{total} + ($o{dead_lettered} // 0);
	my $ok = $node->poll_query_until($db, "SELECT (" . counted_sql($db) . ") >= $total");
	my $s = consumer_stats($node, $db);
	my $label = $o{label} // 'counts';

	ok($ok, "$label: the consumer counted all $total messages");
	is($s->{applied} + $s->{deleted} + $s->{stale}, $c->{distinct},
		"$label: applied + deleted + stale = $c->{distinct} distinct events"
		  . " (applied $s->{applied}, deleted $s->{deleted}, stale $s->{stale})");
	if ($o{redelivery_ok})
	{
		cmp_ok($s->{duplicate}, '>=', $c->{duplicate},
			"$label: at least $c->{duplicate} duplicates (re-deliveries allowed)");
	}
	else
	{
		is($s->{duplicate}, $c->{duplicate}, "$label: $c->{duplicate} duplicates");
	}
	is($s->{ignored}, $c->{ignored} // 0, "$label: ignored events");
	is($s->{dead_lettered}, $o{dead_lettered} // 0, "$label: dead-lettered messages");
	if (defined $c->{increasing})
	{
		cmp_ok($s->{applied} + $s->{deleted}, '<=', $c->{increasing},
			"$label: applied + deleted <= $c->{increasing} (events newer than all before them)");
		cmp_ok($s->{stale}, '>=', $c->{distinct} - $c->{increasing},
			"$label: stale >= " . ($c->{distinct} - $c->{increasing})
			  . ' (events older than one before them)');
	}
	cmp_ok($s->{applied} + $s->{deleted}, '>=', $o{citizens},
		"$label: at least one applied event per citizen")
	  if defined $o{citizens};
	return $s;
}

=pod

=item check_offsets_at_end($node, $db, $broker, $topic, %opts)

Checks that citizen_sync.consumer_offsets holds, for every partition of the
topic that has messages, next_offset = the partition's end (high
watermark), for group C<group> (default permits_db-citizen-sync).

=cut

sub check_offsets_at_end
{
	my ($node, $db, $broker, $topic, %o) = @_;
	my $group = $o{group} // "$db-citizen-sync";
	my $ends = $broker->offsets($topic)->{partitions};
	my $want = join(',',
		map { "$_:$ends->{$_}[1]" }
		sort { $a <=> $b } grep { $ends->{$_}[1] > 0 } keys %$ends);
	my $got = $node->safe_psql($db, qq{
SELECT string_agg(partition || ':' || next_offset, ',' ORDER BY partition)
  FROM citizen_sync.consumer_offsets
 WHERE group_id = '$group' AND topic = '$topic'});

	is($got, $want, ($o{label} // 'offsets')
		  . ": stored next_offset of every partition of $topic is its end");
	return;
}

=pod

=item stored_offsets($node, $db, $topic, $group)

partition => next_offset stored in the database.

=cut

sub stored_offsets
{
	my ($node, $db, $topic, $group) = @_;
	$group //= "$db-citizen-sync";
	my %o;
	for my $line (split /\n/, $node->safe_psql($db, qq{
SELECT partition, next_offset FROM citizen_sync.consumer_offsets
 WHERE group_id = '$group' AND topic = '$topic'}))
	{
		my ($p, $n) = split /\|/, $line;
		$o{$p} = $n;
	}
	return \%o;
}

=pod

=item timed_stop($node, $limit_s)

Stops the node with pg_ctl stop -m fast, giving up after $limit_s seconds
(then the node is stopped in immediate mode).  Returns the seconds the fast
stop took, or undef when it did not finish within $limit_s.

=cut

sub timed_stop
{
	my ($node, $limit) = @_;
	local $ENV{PGCTLTIMEOUT} = $limit;
	my $start = Time::HiRes::time();
	my $ok = $node->stop('fast', fail_ok => 1);
	my $took = Time::HiRes::time() - $start;

	return $took if $ok;
	$node->stop('immediate', fail_ok => 1);
	return undef;
}

=pod

=item stop_under_fault($node, $broker, $label, [$limit_s])

Test: with the broker fault in place, pg_ctl stop -m fast completes within
$limit_s seconds (default 10: loose, the promise is 3 s; the measured time
is printed).  Then the fault is healed (every broker up, no added round-trip
time) and the node started again.  Returns the seconds the stop took, or
undef.

=cut

sub stop_under_fault
{
	my ($node, $broker, $label, $limit) = @_;
	my $took = timed_stop($node, $limit // 10);

	ok(defined $took, "$label: pg_ctl stop -m fast completes")
	  and note(sprintf('%s: the server stopped in %.2f s', $label, $took));
	$broker->up(-1);
	$broker->rtt(-1, 0);
	$node->start;
	return $took;
}

=pod

=item consumer_pid($node, $db)

Pid of the running consumer of $db from pg_stat_activity (backend_type
'citizen_sync consumer'), or '' if none.

=cut

sub consumer_pid
{
	my ($node, $db) = @_;
	return $node->safe_psql('postgres', qq{
SELECT pid FROM pg_stat_activity
 WHERE backend_type = 'citizen_sync consumer' AND datname = '$db'});
}

=pod

=item wait_assigned($node, $db, $n)

Polls until the consumer of $db has $n partitions assigned (consumer_lag).

=cut

sub wait_assigned
{
	my ($node, $db, $n, $name) = @_;
	my $ok = $node->poll_query_until($db, qq{
SELECT count(*) FROM citizen_sync.consumer_lag WHERE database = '$db'}, $n);
	ok($ok, $name // "consumer of $db has $n partitions assigned");
	return $ok;
}

=pod

=item new_plain_node($name)

Creates and starts a UTF8 node with the library preloaded and no worker
configured (no broker): for tests of the SQL side only.

=cut

sub new_plain_node
{
	my ($name) = @_;
	my $node = PostgreSQL::Test::Cluster->new($name);

	$node->init(extra => [ '--encoding=UTF8', '--locale=C' ]);
	$node->append_conf('postgresql.conf', "shared_preload_libraries = 'citizen_sync'\n");
	$node->start;
	return $node;
}

=pod

=item run_sql($node, $db, $sql, %opts)

Runs $sql in $db with psql, stopping at the first error, as role C<user>
when given.  Returns (succeeded, stdout, stderr), so that a test can look
at what an expected error, WARNING or NOTICE says.

=cut

sub run_sql
{
	my ($node, $db, $sql, %opts) = @_;
	my ($out, $err) = ('', '');
	my $rc = $node->psql($db, $sql,
		stdout => \$out, stderr => \$err,
		extra_params => $opts{user} ? [ '-U', $opts{user} ] : []);
	return ($rc == 0, $out, $err);
}

1;

=pod

=back

=cut
