=pod

=head1 NAME

CitizenSync::Events - THE generator of citizen events for citizen_sync's
tests and benchmarks, with the outcome a consumer must reach

=head1 SYNOPSIS

  use CitizenSync::Events qw(new_model add_events);

  my $model = new_model(seed => 1);
  my $msgs = add_events($model, citizens => [1 .. 300]);   # { key, value, ... }
  $broker->produce('gov.auth.citizen', $msgs);
  # $model->{expected}: the state the cache must end in; $model->{counts}

  # benchmarks: test/bench/gen_events.pl prints bench_stream()'s lines

=head1 DESCRIPTION

new_model / add_events generate a stream of citizen events with duplicates
(the same message resent), out-of-order versions (an older version after a
newer one), deletes followed by late older updates and unknown event types,
and compute in Perl the state the cache must end in and the counts the
consumer must report.  event_json() writes any event (valid or not: tests
that need a broken event start from its output); bench_stream() is the
benchmarks' long stream of duplicates and stale versions.

Semantics of the expected state (the design contract): per citizen the
newest event_version wins; a delete is soft (is_active = false, deleted_at
set) and keeps the fields the row had, as if the events were applied one
by one in stream order (cs_apply.c promises that outcome whatever the
batching); a delete of a citizen never seen leaves a tombstone (no fields).

This module needs no PostgreSQL test framework (the benchmarks use it).

=cut

package CitizenSync::Events;

use strict;
use warnings;

use Encode ();
use Exporter 'import';
use JSON::PP ();

our @EXPORT_OK = qw(new_model add_events feed snapshot event_json
  aggregate_event_json broken_variants suffix_counts bench_stream);
our %EXPORT_TAGS = (all => \@EXPORT_OK);

=pod

=head1 FUNCTIONS

=over

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
	return _envelope('citizen', $e{type}, $e{event_id}, $e{version},
		$e{citizen_id}, $data);
}

=pod

=item aggregate_event_json(%e)

The wire form (UTF-8 bytes) of an event of any aggregate, as capture()
publishes it: C<aggregate> (e.g. employee), C<type> (created, updated,
deleted, a full name such as role.assigned, or anything else),
C<event_id>, C<key> (a number, or a string such as a uuid),
C<version> and C<snapshot> (hashref of field => value, for
created/updated: Perl strings, numbers, undef for null,
C<JSON::PP::true>/C<false>; written in field name order).  The data holds
C<< <aggregate>_id >> = key; the Kafka key capture() uses is
C<< <aggregate>_<key> >>.  Invalid events start from this output (see
broken_variants).

=cut

sub aggregate_event_json
{
	my (%e) = @_;
	my $key = $e{key} =~ /^-?[0-9]+$/ ? $e{key} : _json_str($e{key});
	my $data = qq{"$e{aggregate}_id":$key};

	$data .= ',"snapshot":' . JSON::PP->new->utf8->canonical->encode($e{snapshot})
	  if $e{snapshot};
	return _envelope($e{aggregate}, $e{type}, $e{event_id}, $e{version},
		$e{key} =~ /^[0-9]+$/ ? $e{key} : length($e{key}), $data);
}

# The event around its data: type (prefixed with the aggregate unless it
# has a dot), id, version and a timestamp derived from the version and
# $n (a number).
sub _envelope
{
	my ($aggregate, $type, $event_id, $version, $n, $data) = @_;
	my $ts = sprintf('2026-11-25T10:%02d:%02d.%03dZ',
		($version / 60) % 60, $version % 60, $n % 1000);

	$type = "$aggregate.$type" unless $type =~ /\./;
	return qq({"event_type":"$type","event_id":"$event_id","event_version":$version,)
	  . qq("event_timestamp":"$ts","data":{$data}});
}

=pod

=item broken_variants($json)

Invalid events made from the valid event $json (see event_json), as a
hashref name => bytes, each broken in one way: C<truncated> JSON,
C<bad_utf8> (invalid UTF-8 bytes in the name), C<nul> (C<\u0000> in the
name), C<nul_byte> (a NUL byte in it), C<nul_key> (C<\u0000> in a second
name key), C<lone_surrogate>, C<duplicate> (the name field twice),
C<no_event_id>, C<no_key> (no C<< <aggregate>_id >>), C<no_email>,
C<version_string>, C<version_zero>, C<bool_string> (email_verified
"yes"), C<id_mismatch> (snapshot id = key + 1), C<oversize> (padded
beyond 2100 bytes).

=cut

sub broken_variants
{
	my ($g) = @_;
	my $name = qr/"name":"[^"]*"/;

	return {
		oversize => $g =~ s/^\{/'{"padding":"' . ('x' x 2100) . '",'/er,
		nul => $g =~ s/$name/"name":"Ann\\u0000Lee"/r,
		bad_utf8 => $g =~ s/$name/"name":"Ann \xff\xfe Lee"/r,
		nul_byte => $g =~ s/$name/"name":"Ann\x00Lee"/r,
		# json-c alone cut the key at \u0000 and stored Mallory
		nul_key => $g =~ s/$name/"name":"Alice","name\\u0000":"Mallory"/r,
		lone_surrogate => $g =~ s/$name/"name":"Ann \\ud876 Lee"/r,
		duplicate => $g =~ s/$name/"name":"Alice","name":"Mallory"/r,
		no_event_id => $g =~ s/"event_id":"[^"]*",//r,
		no_key => $g =~ s/"[a-z_]+_id":[^,{}]*,(?="snapshot")//r,
		no_email => $g =~ s/"email":"[^"]*",//r,
		version_string => $g =~ s/"event_version":(\d+)/"event_version":"$1"/r,
		version_zero => $g =~ s/"event_version":\d+/"event_version":0/r,
		bool_string => $g =~ s/"email_verified":(true|false)/"email_verified":"yes"/r,
		id_mismatch => $g =~ s/"id":(\d+)/'"id":' . ($1 + 1)/er,
		truncated => substr($g, 0, length($g) - 10),
	};
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


=pod

=item bench_stream($print, %opts)

The benchmarks' stream: calls $print->("citizen_<id>\t<json>\n") for each of
C<events> events (the Kafka key and value, as C<kcat -P -K '\t'> and COPY
read them) and returns the counts { new, dup, stale, citizens }.  Each
event is, with the given probabilities:

  dup   => 0.10    an exact duplicate: a line sent before (same event id),
                   picked from the last C<window> (20000) new lines
  stale => 0.10    a stale version: a new event id for a citizen that
                   already has version v >= 2, carrying a version in
                   [1, v-1] (and another email), i.e. an older version
                   after a newer one
  otherwise        the next version of a random citizen among C<citizens>
                   (20000) from C<first_citizen> (1): created for version
                   1, else updated

Early on, when no line qualifies, duplicates and stale versions fall back
to new events.  No deletes, so the seed's naive per-event SQL and the
extension must reach the same end state.  Event ids are C<id_prefix>
(evt_b) and a sequence number; deterministic for a C<seed> (42).

=cut

sub bench_stream
{
	my ($print, %o) = @_;
	my $n = $o{events} // 200000;
	my $ncit = $o{citizens} // 20000;
	my $first = $o{first_citizen} // 1;
	my $p_dup = $o{dup} // 0.10;
	my $p_stale = $o{stale} // 0.10;
	my $window = $o{window} // 20000;
	my $prefix = $o{id_prefix} // 'evt_b';
	my $m = new_model(seed => $o{seed} // 42);
	my (%version, @multi, @recent);
	my %c = (new => 0, dup => 0, stale => 0);
	my $next_id = 1;
	my $line = sub {
		my ($cid, $v, $stale) = @_;
		my %e = (
			type => $v == 1 ? 'created' : 'updated',
			event_id => $prefix . $next_id++,
			citizen_id => $cid,
			version => $v,
			snapshot => snapshot($cid, $v));
		# a stale version's fields differ from those its version had
		$e{snapshot}{email} = "stale.$e{event_id}.$e{snapshot}{email}" if $stale;
		return "citizen_$cid\t" . event_json(%e) . "\n";
	};

	for (1 .. $n)
	{
		my $r = _rand($m);
		my $out;

		if ($r < $p_dup && @recent)
		{
			$out = $recent[ int(_rand($m) * @recent) ];
			$c{dup}++;
		}
		elsif ($r < $p_dup + $p_stale && @multi)
		{
			my $cid = $multi[ int(_rand($m) * @multi) ];
			$out = $line->($cid, 1 + int(_rand($m) * ($version{$cid} - 1)), 1);
			$c{stale}++;
		}
		else
		{
			my $cid = $first + int(_rand($m) * $ncit);
			my $v = ++$version{$cid};
			push @multi, $cid if $v == 2;
			$out = $line->($cid, $v);
			$c{new}++;
			if (@recent < $window) { push @recent, $out }
			else { $recent[ int(_rand($m) * $window) ] = $out }
		}
		$print->($out);
	}
	$c{citizens} = scalar keys %version;
	return \%c;
}

=pod

=back

=cut

1;
