=pod

=head1 NAME

CitizenSyncE2E - one PostgreSQL instance running the whole citizen_sync
pipeline (auth_db outbox -> publisher -> embedded Kafka -> consumers in
permits_db and revenue_db), for the 2xx end-to-end TAP tests

=head1 SYNOPSIS

  use FindBin;
  use lib "$FindBin::RealBin/../perl";
  use CitizenSyncE2E qw(:all);

  my $kafka = start_broker();
  my $node  = start_pipeline('e2e', $kafka, conf => "citizen_sync.restart_delay = 1s\n");
  ... source changes in auth_db ...
  wait_outbox_drained($node, 60);
  wait_caches_converged($node, 90);

=head1 DESCRIPTION

The node is configured as the brief of the publisher tests says
(shared_preload_libraries, brokers, outbox_database = auth_db, databases =
permits_db:permits_sync_user, revenue_db:revenue_sync_user, short Kafka
session timeouts).  auth_db gets the citizens table with capture of the
published columns (password_hash is not published); each service database
gets the extension and its roles.

Every wait polls with a deadline (never a fixed sleep) and tolerates a
server that is restarting (crash recovery): a failed query is "not yet".

=cut

package CitizenSyncE2E;

use strict;
use warnings;

use Carp;
use Exporter 'import';
use Time::HiRes qw(usleep time);
use Test::More;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use CitizenSyncBroker;
use JSON::PP ();

our @EXPORT_OK = qw(start_broker start_pipeline setup_auth_db source_conninfo drift poll_until query_or_undef
  pending_count wait_outbox_drained source_state cache_state
  wait_caches_converged wait_cache_equals_source publisher_stats check_outbox_complete
  topic_events check_topic_order check_topic_has_outbox check_topic_complete
  @SERVICE_DBS $TOPIC @PUBLISHED_COLUMNS);
our %EXPORT_TAGS = (all => \@EXPORT_OK);

our @SERVICE_DBS = ('permits_db', 'revenue_db');
our $TOPIC = 'gov.auth.citizen';
our @PUBLISHED_COLUMNS = qw(id name email phone address city postal_code
  email_verified identity_verified);

=pod

=head1 FUNCTIONS

=over

=item start_broker(%args)

A CitizenSyncBroker with one broker and gov.auth.citizen in 4 partitions
(override with the broker's own arguments).

=cut

sub start_broker
{
	my (%args) = @_;
	return CitizenSyncBroker->new(brokers => 1,
		topics => ["$TOPIC:4"], %args);
}

=pod

=item start_pipeline($name, $kafka, conf => $extra_postgresql_conf)

Creates, configures and starts the node, creates auth_db, permits_db and
revenue_db and installs everything.  Returns the node.

=cut

sub start_pipeline
{
	my ($name, $kafka, %args) = @_;
	my $node = PostgreSQL::Test::Cluster->new($name);
	my $bootstrap = $kafka->bootstrap;

	$node->init;
	# Brokers are set once the databases exist (below): no worker starts
	# before there is something to run in.
	$node->append_conf('postgresql.conf', qq{
shared_preload_libraries = 'citizen_sync'
citizen_sync.outbox_database = 'auth_db'
citizen_sync.databases = 'permits_db:permits_sync_user, revenue_db:revenue_sync_user'
citizen_sync.kafka_properties = 'session.timeout.ms=6000;heartbeat.interval.ms=500'
max_worker_processes = 16
max_connections = 60
log_line_prefix = '%m [%p] %b '
} . ($args{conf} // ''));
	$node->start;

	$node->safe_psql('postgres', "CREATE DATABASE $_") for (@SERVICE_DBS);
	setup_auth_db($node);
	for my $db (@SERVICE_DBS)
	{
		(my $service = $db) =~ s/_db$//;
		$node->safe_psql($db, qq{
CREATE EXTENSION citizen_sync;
SELECT citizen_sync.create_service_roles('$service');
});
	}
	$node->append_conf('postgresql.conf', "citizen_sync.brokers = '$bootstrap'\n");
	$node->reload;
	return $node;
}

=pod

=item setup_auth_db($node)

Creates auth_db with the extension and the citizens table, its published
columns captured (password_hash is not published).

=cut

sub setup_auth_db
{
	my ($node) = @_;
	$node->safe_psql('postgres', 'CREATE DATABASE auth_db');
	$node->safe_psql('auth_db', q{
CREATE EXTENSION citizen_sync;
CREATE TABLE citizens (
    id bigserial PRIMARY KEY, name text NOT NULL, email text NOT NULL,
    phone text, address text, city text, postal_code text,
    email_verified bool NOT NULL DEFAULT false,
    identity_verified bool NOT NULL DEFAULT false, password_hash text);
SELECT citizen_sync.capture('citizens', 'citizen',
       ARRAY['name', 'email', 'phone', 'address', 'city', 'postal_code',
             'email_verified', 'identity_verified']);
});
	return;
}

=pod

=item source_conninfo($node)

The connection string of auth_db on $node as a dollar-quoted SQL literal,
for consistency_check() and heal().

=cut

sub source_conninfo
{
	my ($node) = @_;
	my $c = $node->connstr('auth_db');
	$c =~ s/'//g;    # dbname='auth_db' -> dbname=auth_db (no quote in the literal)
	return "\$conn\$$c\$conn\$";
}

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

=item poll_until($timeout_s, $code, [$interval_ms])

Calls $code until it returns true or $timeout_s seconds have passed.
Returns the last result (false on timeout).

=cut

sub poll_until
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
		my ($a, $b) = ($w{$id} // '<missing>', $g{$id} // '<extra: not in source>');
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

=pod

=item topic_events($kafka)

Every message of gov.auth.citizen, in (partition, offset) order, as
hashrefs { partition, offset, key, value, event } where event is the
decoded JSON value (undef if it does not parse).

=cut

sub topic_events
{
	my ($kafka) = @_;
	my $json = JSON::PP->new->utf8;
	my @msgs = $kafka->consume($TOPIC);

	for my $m (@msgs)
	{
		$m->{event} = eval { $json->decode($m->{value}) } if defined $m->{value};
	}
	return sort { $a->{partition} <=> $b->{partition} || $a->{offset} <=> $b->{offset} } @msgs;
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
