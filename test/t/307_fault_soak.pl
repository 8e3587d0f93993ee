# Fault-injection soak (issue 9, "Done when"): random worker kills,
# restarts, broker outages and rebalances under steady load, then every
# cache is compared with the source.
#
# Topology: an auth instance (auth_db, citizens captured, the publisher), a
# service instance consuming into permits_db and revenue_db, and a "clone"
# service instance whose permits_db consumer joins and leaves the group of
# the service instance's permits_db (rebalances, partial assignment); three
# embedded brokers leading two partitions each of a six-partition topic.
# A pgbench loop writes inserts, updates (several in one transaction too),
# deletes, inserts followed by deletes and re-inserts of deleted ids at a
# fixed rate.  Faults, drawn from a seeded PRNG: kill -9 of a consumer or
# of the publisher (the instance goes through crash recovery), SIGTERM of a
# worker, immediate restart of an instance, every broker down, one broker
# down, high round-trip time, errors in the brokers' answers (Produce,
# Fetch, OffsetCommit, Heartbeat), the clone joining or leaving, and
# revenue_db leaving and rejoining citizen_sync.databases.
#
# Then the load stops, the faults are healed and, with deadlines: the
# outbox drains; each full cache equals the source (live rows field by
# field, deleted rows soft-deleted, every version the source's last);
# deleted rows keep the last snapshot before the delete; an audit trigger
# on each cache shows no version applied twice and versions applied in
# increasing order per citizen; processed_events holds exactly the event
# ids of the topic; the stored offsets are at the end of every partition;
# the topic holds every outbox row; nothing dead-lettered, set aside or
# pending; every worker healthy; and the clone's cache holds only real
# source states.
#
#   SOAK_SEED=n      replay a fault schedule (printed at the start; the
#                    default is a new seed each run)
#   SOAK_SECONDS=n   length of the fault phase (default 90; the long mode
#                    in README.md, e.g. 1800)
#   SOAK_RATE=n      writer transactions per second (default 30)
#   SOAK_WEIGHTS=kill9_publisher=5,high_rtt=0,...
#                    other weights for the faults (names in the summary)
#   SOAK_PLANT=1     damage the permits_db cache before the comparison:
#                    the comparison must then fail (checks the checker)
use strict;
use warnings;

use FindBin;
use lib "$FindBin::RealBin/../perl";
use IPC::Run ();
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time usleep);
use CitizenSync::Broker qw(:all);
use CitizenSync::Node qw(:all);
use CitizenSync::Events qw(:all);
use CitizenSync::Check qw(:all);

my $seed = $ENV{SOAK_SEED} // int(time * 1000 + $$) % 1_000_000_007;
my $soak_seconds = $ENV{SOAK_SECONDS} // 90;
my $rate = $ENV{SOAK_RATE} // 30;
my $partitions = 6;
my $nbrokers = 3;
diag("soak: SOAK_SEED=$seed SOAK_SECONDS=$soak_seconds SOAK_RATE=$rate");
srand($seed);

# --- set-up ------------------------------------------------------------------

my $kafka = CitizenSync::Broker->new(brokers => $nbrokers,
	topics => ["$TOPIC:$partitions"]);
$kafka->spread_leaders($TOPIC, $partitions, $nbrokers);

my $common_conf = q{
shared_preload_libraries = 'citizen_sync'
restart_after_crash = on
citizen_sync.kafka_properties = 'session.timeout.ms=6000;heartbeat.interval.ms=500'
citizen_sync.restart_delay = 1s
max_worker_processes = 16
log_line_prefix = '%m [%p] %b '
};

# A started instance with the common settings and $conf.
sub new_instance
{
	my ($name, $conf) = @_;
	my $node = PostgreSQL::Test::Cluster->new($name);

	$node->init;
	$node->append_conf('postgresql.conf', $common_conf . $conf);
	$node->start;
	return $node;
}

# A service database: the extension, its roles, and an audit of every row
# the consumer writes into the cache (only committed applications stay).
sub setup_service_db
{
	my ($node, $db) = @_;
	(my $service = $db) =~ s/_db$//;

	$node->safe_psql('postgres', "CREATE DATABASE $db");
	$node->safe_psql($db, qq{
CREATE EXTENSION citizen_sync;
SELECT citizen_sync.create_service_roles('$service');
CREATE SCHEMA soak;
CREATE TABLE soak.applied (seq bigserial PRIMARY KEY, citizen_id bigint NOT NULL,
                           event_version bigint NOT NULL, is_active bool NOT NULL);
CREATE FUNCTION soak.record() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp AS \$\$
BEGIN
    INSERT INTO soak.applied (citizen_id, event_version, is_active)
    VALUES (NEW.citizen_id, NEW.event_version, NEW.is_active);
    RETURN NULL;
END \$\$;
CREATE TRIGGER soak_record AFTER INSERT OR UPDATE ON cache.citizen_refs
    FOR EACH ROW EXECUTE FUNCTION soak.record();
});
	return;
}

my $all_dbs = 'permits_db:permits_sync_user, revenue_db:revenue_sync_user';
my $auth = new_instance('soak_auth', "citizen_sync.outbox_database = 'auth_db'\n");
my $svc = new_instance('soak_svc', "citizen_sync.databases = '$all_dbs'\n");
my $clone = new_instance('soak_clone',
	"citizen_sync.databases = 'permits_db:permits_sync_user'\n");
setup_auth_db($auth);
setup_service_db($svc, $_) for qw(permits_db revenue_db);
setup_service_db($clone, 'permits_db');
for my $node ($auth, $svc, $clone)
{
	$node->append_conf('postgresql.conf',
		"citizen_sync.brokers = '" . $kafka->bootstrap . "'\n");
}
$clone->stop('fast');    # joins later, as a fault
$_->reload for ($auth, $svc);

# A first population, through the whole pipeline before any fault.
$auth->safe_psql('auth_db', q{
INSERT INTO citizens (name, email, phone, address, city, postal_code, email_verified)
SELECT 'Citizen ' || i, 'c' || i || '@example.gov', '+1-555-' || i, i || ' Elm St',
       'Springfield', lpad(i::text, 5, '0'), i % 2 = 0
  FROM generate_series(1, 300) AS i;
});
wait_outbox_drained($auth, 120, 'the first population is published');
wait_cache_equals_source($auth, $svc, $_, 90, "$_ has the first population")
  for qw(permits_db revenue_db);

# --- the writer ----------------------------------------------------------------
# pgbench at a fixed rate, in short runs restarted while the source is down.

my $script = "$PostgreSQL::Test::Utils::tmp_check/soak_writer.sql";
my $stop_file = "$PostgreSQL::Test::Utils::tmp_check/soak_writer.stop";
my $writer_log = "$PostgreSQL::Test::Utils::log_path/soak_writer.log";
my $pick = q{(SELECT id FROM citizens
   WHERE id >= (SELECT (random() * max(id))::bigint FROM citizens) ORDER BY id LIMIT 1)};
PostgreSQL::Test::Utils::append_to_file($script, qq{
\\set r random(1, 100)
\\if :r <= 25
INSERT INTO citizens (name, email, phone, city, postal_code)
VALUES ('New ' || md5(random()::text), md5(random()::text) || '\@example.gov',
        CASE WHEN random() < 0.3 THEN NULL ELSE '+1-555-' || (random() * 9999)::int END,
        (ARRAY['Springfield', 'Shelbyville', 'Zürich', NULL])[1 + (random() * 3)::int],
        lpad((random() * 99999)::int::text, 5, '0'));
\\elif :r <= 70
UPDATE citizens SET phone = '+1-555-' || (random() * 9999)::int,
       address = (random() * 999)::int || ' Oak Ave', email_verified = NOT email_verified
 WHERE id = $pick;
\\elif :r <= 80
BEGIN;
SELECT coalesce($pick, 0) AS cid \\gset
UPDATE citizens SET name = 'Renamed ' || md5(random()::text) WHERE id = :cid;
UPDATE citizens SET city = 'Ogdenville', identity_verified = NOT identity_verified WHERE id = :cid;
UPDATE citizens SET password_hash = md5(random()::text) WHERE id = :cid;
UPDATE citizens SET postal_code = lpad((random() * 99999)::int::text, 5, '0') WHERE id = $pick;
COMMIT;
\\elif :r <= 92
DELETE FROM citizens WHERE id = $pick;
\\elif :r <= 96
BEGIN;
INSERT INTO citizens (name, email) VALUES ('Brief ' || md5(random()::text), 'brief\@example.gov')
RETURNING id AS bid \\gset
UPDATE citizens SET phone = '+1-555-0000' WHERE id = :bid;
DELETE FROM citizens WHERE id = :bid;
COMMIT;
\\else
INSERT INTO citizens (id, name, email, city)
SELECT v.aggregate_id::bigint, 'Back ' || md5(random()::text), 'back\@example.gov', 'Springfield'
  FROM citizen_sync.aggregate_versions v
 WHERE v.aggregate_type = 'citizen'
   AND NOT EXISTS (SELECT 1 FROM citizens c WHERE c.id::text = v.aggregate_id)
 ORDER BY random() LIMIT 1
ON CONFLICT (id) DO NOTHING;
\\endif
});
my $writer_timer = IPC::Run::timeout(24 * 3600);
my $writer = IPC::Run::start(
	[
		'bash', '-c', q{
i=0
while [ ! -e "$STOP" ]; do
    pgbench -n -h "$HOST" -p "$PORT" -c 2 -j 2 -R "$RATE" -T 3 --max-tries=10 \
            --random-seed=$((SEED + i)) -f "$SCRIPT" auth_db >> "$LOG" 2>&1
    i=$((i + 1))
    [ -e "$STOP" ] || sleep 0.2
done
}
	],
	init => sub {
		@ENV{qw(STOP HOST PORT RATE SEED SCRIPT LOG)} = ($stop_file, $auth->host,
			$auth->port, $rate, $seed, $script, $writer_log);
	},
	'<', \undef, '>>', $writer_log, '2>&1', $writer_timer);

# --- faults ----------------------------------------------------------------------

my %injected;    # fault => times
my %skipped;     # fault => times it did not apply (e.g. no such worker then)
my @log;         # [seconds since start, fault, detail]
my $t0 = time;
my @heals;       # [due time, code, what]
my $broker_fault = 0;
my $clone_up = 0;
my $revenue_listed = 1;
my %nodes = (auth => $auth, svc => $svc, clone => $clone);

sub pick { return $_[ int(rand(@_)) ]; }

# pg_ctl stop in $mode, timed; a stop that fails (PGCTLTIMEOUT) or takes
# over 10 s (workers promise 3 s) is a test failure, not a bail-out.
my $slowest_stop = 0;

sub stop_node
{
	my ($node, $mode) = @_;
	local $ENV{PGCTLTIMEOUT} = 30;
	my $start = time;
	my $ok = $node->stop($mode, fail_ok => 1);
	my $took = time - $start;

	$slowest_stop = $took if $mode eq 'fast' && $took > $slowest_stop;
	if (!$ok || ($mode eq 'fast' && $took > 10))
	{
		fail(sprintf('pg_ctl stop -m %s of %s %s after %.1f s', $mode, $node->name,
				$ok ? 'completed only' : 'failed', $took));
		diag(join('', (split /^/m, slurp_file($node->logfile))[-40 .. -1]));
		$node->stop('immediate', fail_ok => 1) unless $ok;
	}
	return;
}

sub running_nodes { return grep { $_ ne 'clone' || $clone_up } sort keys %nodes; }

# Pids of the running workers of a kind ('consumer', 'publisher') on $node
# ([] while it is down or recovering).
sub worker_pids
{
	my ($node, $kind) = @_;
	my $out = query_or_undef($node, 'postgres', qq{
SELECT pid FROM pg_stat_activity WHERE backend_type = 'citizen_sync $kind' ORDER BY pid});
	return [ split /\n/, $out // '' ];
}

sub kill_worker
{
	my ($signal, @candidates) = @_;    # [node name, kind] pairs
	my @pids;
	for my $c (@candidates)
	{
		push @pids, map { [ @$c, $_ ] } @{ worker_pids($nodes{ $c->[0] }, $c->[1]) };
	}
	return undef unless @pids;
	my ($name, $kind, $pid) = @{ pick(@pids) };
	return undef unless kill $signal, $pid;
	return "$kind pid $pid on $name";
}

sub set_revenue
{
	my ($listed) = @_;
	$svc->append_conf('postgresql.conf', "citizen_sync.databases = '"
		  . ($listed ? $all_dbs : 'permits_db:permits_sync_user') . "'\n");
	$svc->reload;
	$revenue_listed = $listed;
	return;
}

sub broker_heal_later
{
	my ($seconds, $code, $what) = @_;
	$broker_fault = 1;
	push @heals, [ time + $seconds, sub { $code->(); $broker_fault = 0; }, $what ];
	return;
}

my @consumers = map { [ $_, 'consumer' ] } qw(svc clone);
my %faults = (
	kill9_consumer => [ 3, sub { kill_worker('KILL', grep { $_->[0] ne 'clone' || $clone_up } @consumers) } ],
	kill9_publisher => [ 2, sub { kill_worker('KILL', [ 'auth', 'publisher' ]) } ],
	sigterm_worker => [ 1, sub {
			kill_worker('TERM', [ 'auth', 'publisher' ],
				grep { $_->[0] ne 'clone' || $clone_up } @consumers) } ],
	immediate_restart => [ 2, sub {
			my $name = pick(running_nodes());
			stop_node($nodes{$name}, 'immediate');
			$nodes{$name}->start;
			return $name;
		} ],
	all_brokers_down => [ 1, sub {
			return undef if $broker_fault;
			my $s = 2 + int(rand(7));
			$kafka->down(-1);
			broker_heal_later($s, sub { $kafka->up(-1) }, 'all brokers up');
			return "for $s s";
		} ],
	one_broker_down => [ 2, sub {
			return undef if $broker_fault;
			my ($id, $s) = (1 + int(rand($nbrokers)), 3 + int(rand(10)));
			$kafka->down($id);
			broker_heal_later($s, sub { $kafka->up($id) }, "broker $id up");
			return "broker $id for $s s";
		} ],
	high_rtt => [ 1, sub {
			return undef if $broker_fault;
			my ($id, $ms, $s) = (pick(-1, 1 .. $nbrokers), 200 + int(rand(1300)), 4 + int(rand(9)));
			$kafka->rtt($id, $ms);
			broker_heal_later($s, sub { $kafka->rtt($id, 0) }, "broker $id rtt 0");
			return "broker $id +$ms ms for $s s";
		} ],
	request_errors => [ 1.5, sub {
			# [API key, error, what]: retriable or transient errors only (a
			# permanent Produce error sets the row aside, by design)
			my ($api, $err, $what) = @{ pick(
					[ 0, -1, 'Produce UNKNOWN_SERVER_ERROR' ],
					[ 0, 6, 'Produce NOT_LEADER_OR_FOLLOWER' ],
					[ 0, 45, 'Produce OUT_OF_ORDER_SEQUENCE_NUMBER' ],
					[ 0, -195, 'Produce disconnect' ],
					[ 1, -195, 'Fetch disconnect' ],
					[ 8, 27, 'OffsetCommit REBALANCE_IN_PROGRESS' ],
					[ 12, 27, 'Heartbeat REBALANCE_IN_PROGRESS' ]) };
			my $n = 1 + int(rand(3));
			$kafka->push_errors($api, $err, $n);
			return "$n x $what";
		} ],
	clone_joins_or_leaves => [ 1.5, sub {
			if ($clone_up)
			{
				return undef if time - $clone_up < 10;    # stay long enough for a rebalance
				stop_node($clone, 'fast');
				$clone_up = 0;
				return 'leaves';
			}
			$clone->start;
			$clone_up = time;
			return 'joins';
		} ],
	revenue_db_leaves_or_rejoins => [ 1, sub {
			set_revenue(!$revenue_listed);
			return $revenue_listed ? 'rejoins' : 'leaves';
		} ],
);
# SOAK_WEIGHTS=name=w,... changes the weights (0 = never): targeted runs.
for (split /,/, $ENV{SOAK_WEIGHTS} // '')
{
	my ($name, $w) = split /=/;
	die "SOAK_WEIGHTS: no fault '$name' (" . join(', ', sort keys %faults) . ")\n"
	  unless $faults{$name};
	$faults{$name}[0] = $w;
}
my @names = sort keys %faults;
my $total_weight = 0;
$total_weight += $faults{$_}[0] for @names;

sub draw_fault
{
	my $x = rand($total_weight);
	for my $n (@names)
	{
		return $n if ($x -= $faults{$n}[0]) < 0;
	}
	return $names[-1];
}

sub run_heals
{
	my ($all) = @_;
	my @due = grep { $all || $_->[0] <= time } @heals;
	@heals = grep { !$all && $_->[0] > time } @heals;
	for my $h (@due)
	{
		$h->[1]->();
		push @log, [ time - $t0, 'heal', $h->[2] ];
	}
	return;
}

my $outbox_before = $auth->safe_psql('auth_db', 'SELECT count(*) FROM citizen_sync.outbox');
my $end = time + $soak_seconds;
my $next = time + 1 + rand(4);
note("fault phase: $soak_seconds s");
while (time < $end)
{
	run_heals(0);
	if (time >= $next)
	{
		my $name = draw_fault();
		my $detail = $faults{$name}[1]->();
		if (defined $detail)
		{
			$injected{$name}++;
			push @log, [ time - $t0, $name, $detail ];
			note(sprintf('%6.1f s  %-28s %s', time - $t0, $name, $detail));
		}
		else
		{
			$skipped{$name}++;
		}
		$next = time + 1 + rand(4);    # the fault schedule's pace, not a wait for a condition
	}
	# the scheduler's tick: faults land on a timetable (the soak's design), no
	# condition is awaited here; every wait for a state uses poll_until
	usleep(100_000);
}

# --- heal, stop the load, wait for convergence --------------------------------------

run_heals(1);
$kafka->up(-1);
$kafka->rtt(-1, 0);
$kafka->clear_errors;
PostgreSQL::Test::Utils::append_to_file($stop_file, '');
$writer_timer->start(60);
ok(eval { $writer->finish; 1 }, 'the writer stopped') or diag($@);
set_revenue(1) unless $revenue_listed;
if ($clone_up)
{
	stop_node($clone, 'fast');
	$clone_up = 0;
	push @log, [ time - $t0, 'heal', 'clone leaves' ];
}
my $outbox_rows = $auth->safe_psql('auth_db', 'SELECT count(*) FROM citizen_sync.outbox');
cmp_ok($outbox_rows - $outbox_before, '>', $soak_seconds * $rate / 4,
	'the writer kept writing through the faults ('
	  . ($outbox_rows - $outbox_before) . ' changes)');

wait_outbox_drained($auth, 120, 'every outbox row is published after the faults');
my $deadline = time + 180;
for my $db (qw(permits_db revenue_db))
{
	wait_cache_equals_source($auth, $svc, $db, $deadline - time,
		"$db equals the source (live rows, versions, soft deletes)");
}
my $health = q{
SELECT count(*) FILTER (WHERE status <> 'ok') || '|' ||
       coalesce(string_agg(kind || ' ' || coalesce(database, '') || ': ' || status, ', ')
                FILTER (WHERE status <> 'ok'), '')
  FROM citizen_sync.worker_health};
for my $n ([ 'auth', $auth, 'auth_db' ], [ 'svc', $svc, 'permits_db' ])
{
	my ($name, $node, $db) = @$n;
	my $last;
	ok( poll_until(60, sub { $last = query_or_undef($node, $db, $health); defined $last && $last =~ /^0\|/ }),
		"every worker of the $name instance is running and healthy")
	  or diag("worker_health: " . ($last // 'query failed'));
}

if ($ENV{SOAK_PLANT})
{
	diag('SOAK_PLANT: damaging the permits_db cache before the comparison');
	$svc->safe_psql('permits_db', q{
DELETE FROM cache.citizen_refs WHERE citizen_id = (SELECT min(citizen_id) FROM cache.citizen_refs WHERE is_active);
UPDATE cache.citizen_refs SET event_version = event_version - 1
 WHERE citizen_id = (SELECT max(citizen_id) FROM cache.citizen_refs WHERE is_active);
INSERT INTO soak.applied (citizen_id, event_version, is_active)
SELECT citizen_id, event_version, is_active FROM soak.applied ORDER BY seq DESC LIMIT 1;
DELETE FROM cache.processed_events WHERE event_id = (SELECT max(event_id) FROM cache.processed_events);
});
}

# --- the comparison ----------------------------------------------------------------

my @events = topic_events($kafka);
my %topic_ids;
$topic_ids{ $_->{event}{event_id} }++ for grep { $_->{event} } @events;
check_topic_has_outbox($auth, \@events, 'every outbox row reached the topic');
check_topic_complete($auth, \@events);

is( $auth->safe_psql('auth_db', q{
SELECT count(*) FILTER (WHERE published_at IS NULL) || ' pending, '
       || count(*) FILTER (WHERE set_aside_at IS NOT NULL) || ' set aside'
  FROM citizen_sync.outbox}),
	'0 pending, 0 set aside', 'no row stuck in the outbox');

# The snapshot of every outbox event, by citizen and version ('deleted' for
# a delete), and the last snapshot before each citizen's current delete.
my $fields = join(', ',
	map { "coalesce(s ->> '$_', '<null>')" }
	  qw(name email phone address city postal_code email_verified identity_verified));
my %state_at;
for (split /\n/, $auth->safe_psql('auth_db', qq{
SELECT aggregate_id || '|' || (payload ->> 'event_version') || '|' ||
       CASE WHEN event_type = 'deleted' THEN 'deleted' ELSE concat_ws('|', $fields) END
  FROM citizen_sync.outbox, LATERAL (SELECT payload -> 'data' -> 'snapshot') AS x(s)
 WHERE aggregate_type = 'citizen'}))
{
	my ($id, $v, $rest) = split /\|/, $_, 3;
	$state_at{"$id|$v"} = $rest;
}
my $last_before_delete = $auth->safe_psql('auth_db', qq{
SELECT coalesce(string_agg(line, E'\\n' ORDER BY id), '') FROM (
  SELECT DISTINCT ON (aggregate_id) aggregate_id::bigint AS id,
         aggregate_id || '|' || concat_ws('|', $fields) AS line
    FROM citizen_sync.outbox, LATERAL (SELECT payload -> 'data' -> 'snapshot') AS x(s)
   WHERE aggregate_type = 'citizen' AND event_type <> 'deleted'
     AND NOT EXISTS (SELECT 1 FROM citizens c WHERE c.id::text = aggregate_id)
   ORDER BY aggregate_id, (payload ->> 'event_version')::bigint DESC) d});
my $cache_fields = join(', ',
	map { "coalesce(${_}::text, '<null>')" }
	  qw(name email phone address city postal_code email_verified identity_verified));

# Checks of one cache: full = it consumed the whole topic.
sub check_cache
{
	my ($node, $db, $label, $full) = @_;
	my %s;

	if ($full)
	{
		# Last state once more (nothing moved since the wait above).
		my %want = map { (split /\|/)[0] => $_ } split /\n/, source_state($auth);
		my %got = map { (split /\|/)[0] => $_ } split /\n/, cache_state($node, $db);
		my @diff = map { "citizen $_: source " . ($want{$_} // 'none') . ', cache ' . ($got{$_} // 'none') }
		  grep { ($want{$_} // '') ne ($got{$_} // '') } sort { $a <=> $b } keys %{ { %want, %got } };
		is(scalar(@diff), 0, "$label: the cache equals the source (" . scalar(keys %want) . ' citizens)')
		  or diag(join("\n", @diff[ 0 .. ($#diff < 9 ? $#diff : 9) ]));
		is( $node->safe_psql($db, qq{
SELECT coalesce(string_agg(citizen_id || '|' || concat_ws('|', $cache_fields), E'\\n'
                           ORDER BY citizen_id), '')
  FROM cache.citizen_refs WHERE NOT is_active}),
			$last_before_delete, "$label: deleted rows keep the last snapshot before the delete");

		my %processed = map { $_ => 1 } split /\n/,
		  $node->safe_psql($db, 'SELECT event_id FROM cache.processed_events');
		my @lost = grep { !$processed{$_} } sort keys %topic_ids;
		my @invented = grep { !$topic_ids{$_} } sort keys %processed;
		is(scalar(@lost) . ' lost, ' . scalar(@invented) . ' unknown', '0 lost, 0 unknown',
			"$label: processed_events holds exactly the " . scalar(keys %topic_ids)
			  . ' event ids of the topic')
		  or diag("lost: @lost[0 .. ($#lost < 9 ? $#lost : 9)]; unknown: @invented[0 .. ($#invented < 9 ? $#invented : 9)]");

		my $ends = $kafka->offsets($TOPIC)->{partitions};
		my $want = join(',', map { "$_:$ends->{$_}[1]" }
			  grep { $ends->{$_}[1] > 0 } sort { $a <=> $b } keys %$ends);
		my $got;
		ok( poll_until(30, sub {
				$got = $node->safe_psql($db, qq{
SELECT string_agg(partition || ':' || next_offset, ',' ORDER BY partition)
  FROM citizen_sync.consumer_offsets WHERE group_id = '$db-citizen-sync' AND topic = '$TOPIC'});
				return $got eq $want;
			}),
			"$label: the stored offsets are at the end of every partition")
		  or diag("stored $got, ends $want");
	}
	else
	{
		# Every row is a state the source had at that version.
		my @bad;
		for (split /\n/, $node->safe_psql($db, qq{
SELECT citizen_id || '|' || event_version || '|' ||
       CASE WHEN is_active AND deleted_at IS NULL THEN concat_ws('|', $cache_fields)
            WHEN NOT is_active AND deleted_at IS NOT NULL THEN 'deleted'
            ELSE 'is_active/deleted_at disagree' END
  FROM cache.citizen_refs}))
		{
			my ($id, $v, $rest) = split /\|/, $_, 3;
			push @bad, "citizen $id v$v: $rest, source " . ($state_at{"$id|$v"} // 'no such version')
			  if ($state_at{"$id|$v"} // '') ne $rest;
		}
		is(scalar(@bad), 0, "$label: every cached row is a state the source had at that version")
		  or diag(join("\n", @bad[ 0 .. ($#bad < 9 ? $#bad : 9) ]));
	}

	my ($twice, $backwards, $applications) = split /\|/, $node->safe_psql($db, q{
SELECT (SELECT count(*) FROM (SELECT FROM soak.applied GROUP BY citizen_id, event_version
                               HAVING count(*) > 1) d),
       (SELECT count(*) FROM (SELECT event_version <= lag(event_version)
                                     OVER (PARTITION BY citizen_id ORDER BY seq) AS back
                                FROM soak.applied) b WHERE back),
       (SELECT count(*) FROM soak.applied)});
	is($twice, 0, "$label: no version of a citizen was applied twice ($applications applications)");
	is($backwards, 0, "$label: each citizen's applied versions increase in the order applied");
	is($node->safe_psql($db, 'SELECT count(*) FROM citizen_sync.dead_letters'),
		0, "$label: nothing dead-lettered");
	$s{applications} = $applications;
	$s{processed} = $node->safe_psql($db, 'SELECT count(*) FROM cache.processed_events');
	$s{rows} = $node->safe_psql($db,
		q{SELECT count(*) FILTER (WHERE is_active) || ' live / ' || count(*) FILTER (WHERE NOT is_active) || ' deleted' FROM cache.citizen_refs});
	return \%s;
}

my %summary;
$summary{'svc permits_db'} = check_cache($svc, 'permits_db', 'permits_db', 1);
$summary{'svc revenue_db'} = check_cache($svc, 'revenue_db', 'revenue_db', 1);

# The clone joins once more: it must catch up on the partitions it is given,
# from the offsets it stored before (its other rows stay as they were, real
# but old states).
$clone->start;
my ($mine, $theirs);
ok( poll_until(90, sub {
			$mine = query_or_undef($clone, 'permits_db', q{
SELECT string_agg(partition::text, ',' ORDER BY partition) FROM citizen_sync.consumer_lag
 WHERE database = 'permits_db'});
			$theirs = query_or_undef($svc, 'permits_db', q{
SELECT string_agg(partition::text, ',' ORDER BY partition) FROM citizen_sync.consumer_lag
 WHERE database = 'permits_db'});
			return 0 unless $mine && $theirs;
			my @all = sort { $a <=> $b } split /,/, "$mine,$theirs";
			return "@all" eq join(' ', 0 .. $partitions - 1);
		}, 500),
	'the clone rejoined: it and the service instance share the partitions')
  or diag('clone: ' . ($mine // '?') . '; service instance: ' . ($theirs // '?'));
my %clone_partition = map { $_ => 1 } split /,/, $mine // '';
my %others;
for my $m (@events)
{
	$others{$1} = 1 if $m->{key} =~ /^citizen_(\d+)$/ && !$clone_partition{ $m->{partition} };
}
wait_cache_equals_source($auth, $clone, 'permits_db', 90,
	"clone permits_db catches up on its partitions ($mine)", [ keys %others ]);
$summary{'clone permits_db'} = check_cache($clone, 'permits_db', 'clone permits_db', 0);
stop_node($clone, 'fast');

# --- summary ---------------------------------------------------------------------

my $report = sprintf("soak summary (SOAK_SEED=%s, %d s of faults, %d s in all)\n",
	$seed, $soak_seconds, time - $t0);
$report .= sprintf("  %-30s %8s %8s\n", 'fault', 'injected', 'skipped');
$report .= sprintf("  %-30s %8d %8d\n", $_, $injected{$_} // 0, $skipped{$_} // 0) for @names;
my $n_faults = 0;
$n_faults += $_ for values %injected;
$report .= sprintf("  %-30s %8d\n", 'total', $n_faults);
$report .= sprintf("  slowest pg_ctl stop -m fast: %.1f s\n", $slowest_stop);
$report .= sprintf("  outbox rows (changes) %d (%d during the faults), topic messages %d (%d event ids)\n",
	$outbox_rows, $outbox_rows - $outbox_before, scalar(@events), scalar(keys %topic_ids));
$report .= sprintf("  %-18s %14s %14s %22s\n", 'cache', 'applications', 'processed ids', 'rows');
$report .= sprintf("  %-18s %14s %14s %22s\n", $_, @{ $summary{$_} }{qw(applications processed rows)})
  for sort keys %summary;
diag($report);
note(join("\n", map { sprintf('%6.1f s  %-28s %s', @$_) } @log));
cmp_ok($n_faults, '>=', int($soak_seconds / 10), "at least one fault every 10 s ($n_faults)");

stop_node($_, 'fast') for ($auth, $svc);
$kafka->stop;
done_testing();
