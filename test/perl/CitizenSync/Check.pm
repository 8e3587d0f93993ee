=pod

=head1 NAME

CitizenSync::Check - waits and checks of citizen_sync's TAP tests: the one
poll helper, cache against the expected state or the source, consumer
counts and offsets, the outbox and the topic

=head1 SYNOPSIS

  use CitizenSync::Check qw(:all);

  poll_until($node, $db, 'SELECT count(*) > 0 FROM cache.citizen_refs')
    or die 'nothing applied';
  poll_until(30, sub { publisher_stats($node)->{state} eq 'running' });

  load_expected($node, 'permits_db', $model);     # CitizenSync::Events model
  wait_converged($node, 'permits_db', 'cache converges');
  check_counts($node, 'permits_db', $model->{counts});

  wait_outbox_drained($node, 60);                 # the pipeline node
  wait_caches_converged($node, 90);               # every cache = auth_db

=head1 DESCRIPTION

Every wait polls with a deadline (never a fixed sleep) through
poll_until() and tolerates a server that is restarting (crash recovery):
a failed query is "not yet".

=cut

package CitizenSync::Check;

use strict;
use warnings;

use Carp;
use Exporter 'import';
use Time::HiRes qw(usleep time);
use Test::More;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;

use CitizenSync::Node qw(@SERVICE_DBS);

our @EXPORT_OK = qw(poll_until query_or_undef
  load_expected mismatch_sql wait_converged check_no_dead_letters
  consumer_stats counted_sql
  check_counts check_offsets_at_end stored_offsets wait_assigned
  drift pending_count wait_outbox_drained source_state cache_state wait_caches_converged
  wait_cache_equals_source publisher_stats check_outbox_complete
  check_topic_has_outbox check_topic_order check_topic_complete);
our %EXPORT_TAGS = (all => \@EXPORT_OK);

=pod

=head1 FUNCTIONS

=over

=item poll_until($node, $db, $sql, [$expected], [$timeout_s])

=item poll_until($timeout_s, $code, [$interval_ms])

The one poll helper.  First form: runs $sql in $db every 100 ms until its
output is $expected (default 't') or $timeout_s seconds (default
$PostgreSQL::Test::Utils::timeout_default) have passed; a query that fails
(server restarting) counts as "not yet"; on timeout it shows the query and
its last output.  Second form: calls $code every $interval_ms (default 200)
until it returns true or $timeout_s have passed.  Returns the last result
(false on timeout).

=cut

sub poll_until
{
	if (ref $_[0])
	{
		my ($node, $db, $sql, $expected, $timeout) = @_;
		my $last;

		$expected //= 't';
		my $ok = _poll($timeout // $PostgreSQL::Test::Utils::timeout_default,
			sub {
				$last = query_or_undef($node, $db, $sql);
				return defined $last && $last eq $expected;
			},
			100);
		diag("poll_until timed out executing this query:\n$sql\n"
			  . "expecting this output:\n$expected\nlast actual query output:\n"
			  . ($last // '(the query failed)'))
		  unless $ok;
		return $ok;
	}
	return _poll(@_);
}

# Calls $code until it returns true or $timeout seconds have passed;
# returns the last result.
sub _poll
{
	my ($timeout, $code, $interval_ms) = @_;
	my $deadline = time + $timeout;
	my $r;

	$interval_ms //= 200;
	for (;;)
	{
		$r = $code->();
		return $r if $r;
		return $r if time >= $deadline;
		usleep($interval_ms * 1000);    # poll interval; the deadline is checked above
	}
}

=pod

=item query_or_undef($node, $db, $sql)

The query's stdout, or undef when it failed (e.g. during crash recovery).

=cut

sub query_or_undef
{
	my ($node, $db, $sql) = @_;
	my ($stdout, $stderr);
	my $rc = $node->psql($db, $sql, stdout => \$stdout, stderr => \$stderr,
		on_error_die => 0);
	return undef if $rc != 0;
	return $stdout;
}

# ---------------------------------------------------------------------------
# A consumer node: the cache against the expected state of a model
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

Polls (poll_until, default deadline) until the cache equals
the expected state (mismatch_sql(%opts) returns no row); passes or fails
$test_name, showing the first differences on failure.  Returns true when
converged.

=cut

sub wait_converged
{
	my ($node, $db, $name, %o) = @_;
	my $sql = mismatch_sql(%o);
	my $ok = poll_until($node, $db, "SELECT count(*) FROM ($sql) m", '0');

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

=item check_no_dead_letters($node, $db, [$name])

Test: citizen_sync.dead_letters of $db is empty.

=cut

sub check_no_dead_letters
{
	my ($node, $db, $name) = @_;
	local $Test::Builder::Level = $Test::Builder::Level + 1;

	return is($node->safe_psql($db, 'SELECT count(*) FROM citizen_sync.dead_letters'),
		'0', $name // "no dead letter in $db");
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
	my $ok = poll_until($node, $db, "SELECT (" . counted_sql($db) . ") >= $total");
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

=item wait_assigned($node, $db, $n)

Polls until the consumer of $db has $n partitions assigned (consumer_lag).

=cut

sub wait_assigned
{
	my ($node, $db, $n, $name) = @_;
	my $ok = poll_until($node, $db, qq{
SELECT count(*) FROM citizen_sync.consumer_lag WHERE database = '$db'}, $n);
	ok($ok, $name // "consumer of $db has $n partitions assigned");
	return $ok;
}

# ---------------------------------------------------------------------------
# The pipeline node: outbox, topic and caches against the source
# ---------------------------------------------------------------------------

=pod

=item drift($node, $db, $conninfo)

consistency_check() of $db against $conninfo (stale_after 0) as
"id|problem,..." ('' when the cache equals the source).

=cut

sub drift
{
	my ($node, $db, $conninfo) = @_;
	return $node->safe_psql($db, qq{
SELECT coalesce(string_agg(citizen_id || '|' || problem, ',' ORDER BY citizen_id), '')
  FROM citizen_sync.consistency_check($conninfo, interval '0 seconds')});
}

=pod

=item pending_count($node)

Outbox rows not yet published (undef if the query failed).

=cut

sub pending_count
{
	my ($node) = @_;
	return query_or_undef($node, 'auth_db',
		'SELECT count(*) FROM citizen_sync.outbox WHERE published_at IS NULL');
}

=pod

=item wait_outbox_drained($node, $timeout_s, [$name])

Test: every outbox row is published within the deadline.

=cut

sub wait_outbox_drained
{
	my ($node, $timeout, $name) = @_;
	local $Test::Builder::Level = $Test::Builder::Level + 1;
	my $last;
	my $ok = poll_until($timeout, sub {
			$last = pending_count($node);
			return defined $last && $last eq '0';
		});
	ok($ok, $name // 'the outbox has no pending row')
	  or diag('pending rows: ' . ($last // 'query failed') . '; publisher: '
		  . join('', explain(publisher_stats($node))));
	return $ok;
}

=pod

=item source_state($node)

The state every cache must reach, one line per citizen that ever had an
event, ordered by id: C<id|last_version|t|name|...> for live citizens, and
C<id|last_version|f> for deleted ones.  undef if the query failed.

=cut

my $FIELDS = join(', ',
	map { "coalesce(${_}::text, '<null>')" }
	  qw(name email phone address city postal_code email_verified identity_verified));

sub source_state
{
	my ($node) = @_;
	return query_or_undef($node, 'auth_db', qq{
SELECT v.aggregate_id || '|' || v.last_version || '|' ||
       CASE WHEN c.id IS NULL THEN 'f'
            ELSE 't|' || concat_ws('|', $FIELDS) END
  FROM citizen_sync.aggregate_versions v
  LEFT JOIN citizens c ON c.id::text = v.aggregate_id
 WHERE v.aggregate_type = 'citizen'
 ORDER BY v.aggregate_id::bigint});
}

=pod

=item cache_state($node, $db)

cache.citizen_refs of $db in the format of source_state (deleted rows must
also have deleted_at set, else they show as C<f!deleted_at>).

=cut

sub cache_state
{
	my ($node, $db) = @_;
	return query_or_undef($node, $db, qq{
SELECT citizen_id || '|' || event_version || '|' ||
       CASE WHEN NOT is_active AND deleted_at IS NOT NULL THEN 'f'
            WHEN NOT is_active THEN 'f!deleted_at'
            WHEN deleted_at IS NOT NULL THEN 't!deleted_at'
            ELSE 't|' || concat_ws('|', $FIELDS) END
  FROM cache.citizen_refs
 ORDER BY citizen_id});
}

# The first differing lines of two states, for diagnostics.
sub _state_diff
{
	my ($want, $got) = @_;
	my %w = map { (split /\|/)[0] => $_ } split /\n/, $want // '';
	my %g = map { (split /\|/)[0] => $_ } split /\n/, $got // '';
	my @d;

	for my $id (sort { $a <=> $b } keys %{ { %w, %g } })
	{
		my ($a, $b) = ($w{$id} // '<absent>', $g{$id} // '<absent>');
		push @d, "citizen $id: source $a, cache $b" if $a ne $b;
		last if @d >= 8;
	}
	return (scalar(keys %w) . ' source rows, ' . scalar(keys %g) . ' cache rows; '
		  . (@d ? join("\n", @d) : 'no difference'));
}

=pod

=item wait_caches_converged($node, $timeout_s, [$name])

Tests, for each service database, that within the deadline its cache equals
the source: every live citizen active with identical published fields and
event_version = aggregate_versions.last_version, every deleted citizen
inactive (with deleted_at) at its last version, and no other row.  Returns
true when every cache converged.

=cut

sub wait_caches_converged
{
	my ($node, $timeout, $name) = @_;
	local $Test::Builder::Level = $Test::Builder::Level + 1;
	my $deadline = time + $timeout;
	my $all = 1;

	for my $db (@SERVICE_DBS)
	{
		$all &&= wait_cache_equals_source($node, $node, $db, $deadline - time,
			($name // 'cache equals the source') . " in $db");
	}
	return $all;
}

=pod

=item wait_cache_equals_source($source_node, $cache_node, $db, $timeout_s, $name, [$except])

Test: within the deadline the cache of $db on $cache_node equals the source
(auth_db on $source_node) as in wait_caches_converged, leaving out the
citizen ids of the arrayref $except (which must differ).  Returns true when
it does.

=cut

sub wait_cache_equals_source
{
	my ($source, $cache, $db, $timeout, $name, $except) = @_;
	local $Test::Builder::Level = $Test::Builder::Level + 1;
	my %skip = map { $_ => 1 } @{ $except // [] };
	my $keep = sub {
		defined $_[0]
		  ? join("\n", grep { !$skip{ (split /\|/)[0] } } split /\n/, $_[0])
		  : undef;
	};
	my ($want, $got);
	my $ok = poll_until(
		$timeout,
		sub {
			$want = $keep->(source_state($source));
			$got = $keep->(cache_state($cache, $db));
			return defined $want && defined $got && $want ne '' && $want eq $got;
		},
		500);
	ok($ok, $name) or diag(_state_diff($want, $got));
	return $ok;
}

=pod

=item publisher_stats($node)

The publisher's row of citizen_sync.worker_stats as a hashref (pid, state,
published, batches, last_error), or undef.

=cut

sub publisher_stats
{
	my ($node) = @_;
	my $out = query_or_undef($node, 'auth_db', q{
SELECT coalesce(pid, 0), state, published, batches,
       coalesce(started_at::text, ''),
       coalesce(replace(last_error, E'\n', ' '), '')
  FROM citizen_sync.worker_stats WHERE kind = 'publisher'});
	return undef unless defined $out && $out ne '';
	my %s;
	@s{qw(pid state published batches started_at last_error)} = split /\|/, $out, 6;
	return \%s;
}

=pod

=item check_outbox_complete($node)

Tests that the outbox agrees with the version counters: per citizen, the
versions strictly increase in outbox id order (no repeat), and the newest
row carries aggregate_versions.last_version.  Only valid while no row was
purged.

=cut

sub check_outbox_complete
{
	my ($node) = @_;
	local $Test::Builder::Level = $Test::Builder::Level + 1;
	my $r = $node->safe_psql('auth_db', q{
SELECT (SELECT count(*) FROM citizen_sync.outbox),
       (SELECT count(*) FROM citizen_sync.aggregate_versions WHERE aggregate_type = 'citizen'),
       (SELECT count(*) FROM (
          SELECT aggregate_id FROM citizen_sync.outbox
           GROUP BY aggregate_id
          HAVING array_agg((payload ->> 'event_version')::bigint ORDER BY id)
                 <> ARRAY(SELECT DISTINCT v
                            FROM unnest(array_agg((payload ->> 'event_version')::bigint)) AS v
                           ORDER BY v)) AS bad),
       (SELECT count(*) FROM citizen_sync.aggregate_versions v
         WHERE v.aggregate_type = 'citizen'
           AND v.last_version = (SELECT (o.payload ->> 'event_version')::bigint
                                   FROM citizen_sync.outbox o
                                  WHERE o.aggregate_type = v.aggregate_type
                                    AND o.aggregate_id = v.aggregate_id
                                  ORDER BY o.id DESC LIMIT 1))});
	my ($rows, $citizens, $bad, $last) = split /\|/, $r;
	is($bad, '0', "every citizen's versions strictly increase in outbox id order ($rows rows)");
	is($last, $citizens, "the newest row of each of the $citizens citizens carries its last version");
	return;
}

=item check_topic_has_outbox($node, \@events, [$name])

Test: every outbox row's event_id (evt_<id>_<created_at in microseconds>)
is on the topic at least once.  Returns the number of event ids seen more
than once.

=cut

sub check_topic_has_outbox
{
	my ($node, $events, $name) = @_;
	local $Test::Builder::Level = $Test::Builder::Level + 1;
	my %seen;

	for my $m (@$events)
	{
		my $id = $m->{event} && $m->{event}->{event_id};
		$seen{$id}++ if defined $id;
	}
	my @ids = split /\n/, $node->safe_psql('auth_db', q{
SELECT format('evt_%s_%s', id, (extract(epoch FROM created_at) * 1000000)::bigint)
  FROM citizen_sync.outbox ORDER BY id});
	my @missing = grep { !$seen{$_} } @ids;
	is(scalar(@missing), 0,
		($name // 'every outbox row reached the topic') . ' (' . scalar(@ids) . ' rows)')
	  or diag('missing: ' . join(', ', @missing[ 0 .. ($#missing < 9 ? $#missing : 9) ]));
	return scalar grep { $_ > 1 } values %seen;
}

=item check_topic_order(\@events, [$name])

Test: for every key, all messages are in one partition and event_version
strictly increases with the offset (no message of a key repeated or out of
order).

=cut

sub check_topic_order
{
	my ($events, $name) = @_;
	local $Test::Builder::Level = $Test::Builder::Level + 1;
	my (%part, %last, @bad);

	for my $m (@$events)
	{
		my $k = $m->{key} // '<null>';
		my $v = $m->{event} && $m->{event}->{event_version};
		push @bad, "key $k in partitions $part{$k} and $m->{partition}"
		  if defined $part{$k} && $part{$k} != $m->{partition};
		$part{$k} = $m->{partition};
		if (!defined $v)
		{
			push @bad, "p$m->{partition}\@$m->{offset}: no event_version";
			next;
		}
		push @bad, sprintf('key %s: version %s at p%d@%d after version %s at p%d@%d',
			$k, $v, $m->{partition}, $m->{offset}, @{ $last{$k} })
		  if defined $last{$k} && $v <= $last{$k}->[0];
		$last{$k} = [ $v, $m->{partition}, $m->{offset} ];
	}
	is(scalar(@bad), 0, ($name // 'per key: one partition, versions strictly increase with the offset')
		  . ' (' . scalar(@$events) . ' messages, ' . scalar(keys %last) . ' keys)')
	  or diag(join("\n", @bad[ 0 .. ($#bad < 9 ? $#bad : 9) ]));
	return !@bad;
}

=pod

=item check_topic_complete($node, \@events)

Test: for every citizen of aggregate_versions, the topic holds exactly the
versions of its outbox rows (each committed change, none invented) and ends
at last_version.  Valid after a purge too: versions below the oldest row
still in the outbox (or, when none is left, up to last_version) are then
taken as those of purged rows.

=cut

sub check_topic_complete
{
	my ($node, $events) = @_;
	local $Test::Builder::Level = $Test::Builder::Level + 1;
	my (%got, @bad);

	for my $m (@$events)
	{
		next unless defined $m->{key} && $m->{key} =~ /^citizen_(\d+)$/;
		my $v = $m->{event} && $m->{event}->{event_version};
		$got{$1}{$v} = 1 if defined $v;
	}
	my (%last, %rows);
	for (split /\n/, $node->safe_psql('auth_db', q{
SELECT v.aggregate_id || '|' || v.last_version || '|'
       || coalesce((SELECT string_agg(o.payload ->> 'event_version', ',' ORDER BY o.id)
                      FROM citizen_sync.outbox o
                     WHERE o.aggregate_type = v.aggregate_type AND o.aggregate_id = v.aggregate_id), '')
  FROM citizen_sync.aggregate_versions v WHERE v.aggregate_type = 'citizen'}))
	{
		my ($id, $last, $rows) = split /\|/, $_, 3;
		$last{$id} = $last;
		$rows{$id} = [ split /,/, $rows ];
	}
	for my $id (sort { $a <=> $b } keys %{ { %last, %got } })
	{
		my @have = sort { $a <=> $b } keys %{ $got{$id} // {} };
		my @rows = @{ $rows{$id} // [] };
		my $floor = @rows ? $rows[0] : ($last{$id} // 0) + 1;
		my %have = map { $_ => 1 } @have;
		my @missing = grep { !$have{$_} } @rows;
		my %row = map { $_ => 1 } @rows;
		my @invented = grep { !$row{$_} && $_ >= $floor } @have;
		push @bad, "citizen $id: versions on the topic [@have], outbox [@rows], last "
		  . ($last{$id} // 'none')
		  if @missing || @invented || !defined $last{$id} || !@have || $have[-1] != $last{$id};
	}
	is(scalar(@bad), 0, 'the topic holds the versions of every citizen\'s changes, up to last_version')
	  or diag(join("\n", @bad[ 0 .. ($#bad < 9 ? $#bad : 9) ]));
	return !@bad;
}

=pod

=back

=cut


1;
