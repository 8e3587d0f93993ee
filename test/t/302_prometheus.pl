# Monitoring as shipped: the Prometheus alert rules pass promtool (syntax,
# the example configuration, the rules' unit tests) and link to existing
# runbook sections; prometheus-postgres-exporter with
# monitoring/postgres_exporter_queries.yaml, run as the role
# docs/operations.md creates (a member of citizen_sync_monitor only) against
# a live pipeline (publisher, two consumers, broker), exposes every
# citizen_sync_* metric the rules use, with the values the SQL views give.
#
# Needs Debian's `prometheus` (promtool) and `prometheus-postgres-exporter`
# packages; test/run_all.sh installs them.  Without them the corresponding
# part is skipped with a message.
use strict;
use warnings;

use FindBin;
use lib "$FindBin::RealBin/../perl";
use CitizenSync::Broker qw(:all);
use CitizenSync::Node qw(:all);
use CitizenSync::Check qw(:all);
use CitizenSync::Events;
use File::Spec;
use HTTP::Tiny;
use IPC::Run ();
use JSON::PP;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use CitizenSync::Shipped;

my $root = File::Spec->rel2abs("$FindBin::RealBin/../..");
my $mon = "$root/monitoring";
my $rules = "$mon/citizen_sync_alerts.yml";
my $queries = "$mon/postgres_exporter_queries.yaml";
my $runbook = "$root/docs/runbook.md";
my $exporter_bin = $ENV{POSTGRES_EXPORTER} // '/usr/bin/prometheus-postgres-exporter';
my $exporter;    # IPC::Run harness of the exporter, stopped at exit whatever happens

END
{
	local ($@, $?);
	eval { $exporter->kill_kill(grace => 5) if $exporter && $exporter->pumpable };
}

sub which
{
	my ($prog) = @_;
	for my $dir (split /:/, $ENV{PATH} // '')
	{
		return "$dir/$prog" if -x "$dir/$prog";
	}
	return undef;
}

sub slurp_file_text
{
	my ($path) = @_;
	open my $fh, '<', $path or die "cannot open $path: $!";
	local $/;
	return scalar <$fh>;
}

# The metric names a PromQL expression reads: identifiers that are not
# functions (followed by "("), keywords, label names (in {...}, by (...),
# without (...), on (...), ignoring (...)), strings, durations or numbers.
sub promql_metrics
{
	my ($expr) = @_;
	$expr =~ s/"(?:[^"\\]|\\.)*"//g;    # strings
	$expr =~ s/\{[^}]*\}//g;                # label matchers
	$expr =~ s/\[[^\]]*\]//g;              # ranges
	$expr =~ s/\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)//g;
	my %kw = map { $_ => 1 } qw(and or unless bool offset by without on ignoring group_left group_right inf nan);
	my %m;
	while ($expr =~ /(?<![\w.])([a-zA-Z_:][\w:]*+)(?!\s*\()/g)
	{
		$m{$1} = 1 unless $kw{ lc $1 };
	}
	return sort keys %m;
}

# Every metric named by the queries of a Grafana dashboard (panel targets
# and query variables).
sub dashboard_metrics
{
	my ($path) = @_;
	my $dash = JSON::PP->new->decode(slurp_file_text($path));
	my @exprs;
	my $walk;
	$walk = sub {
		my ($n) = @_;
		if (ref $n eq 'HASH')
		{
			push @exprs, $n->{expr} if defined $n->{expr} && !ref $n->{expr};
			push @exprs, $n->{query}{query} =~ /^label_values\((\w+)/ if ref $n->{query} eq 'HASH';
			$walk->($_) for values %$n;
		}
		elsif (ref $n eq 'ARRAY') { $walk->($_) for @$n; }
	};
	$walk->($dash);
	my %m = map { $_ => 1 } map { promql_metrics($_) } @exprs;
	return sort keys %m;
}

#---------------------------------------------------------------------------
# Static checks of the rules
#---------------------------------------------------------------------------
my $rules_text = slurp_file_text($rules);
my @alerts = $rules_text =~ /^\s*-\s*alert:\s*(\S+)/mg;
cmp_ok(scalar(@alerts), '>=', 6, 'the rules file defines the alerts (' . join(', ', @alerts) . ')');

# Each alert: a for: duration, a severity, summary, description and a runbook
# link to an existing section of docs/runbook.md (GitHub heading anchors).
my %anchors;
for my $line (split /\n/, slurp_file_text($runbook))
{
	next unless $line =~ /^#+\s+(.*?)\s*$/;
	(my $a = lc $1) =~ s/[^\w\- ]//g;
	$a =~ s/ /-/g;
	$anchors{$a} = 1;
}
my @blocks = split /^\s*-\s*alert:\s*/m, $rules_text;
shift @blocks;
for my $b (@blocks)
{
	my ($name) = $b =~ /^(\S+)/;
	like($b, qr/^\s+for:\s+\d+[smh]\s*$/m, "$name has a for: duration");
	like($b, qr/^\s+severity:\s+(warning|critical)\s*$/m, "$name has a severity");
	like($b, qr/^\s+summary:\s+\S/m, "$name has a summary");
	like($b, qr/^\s+description:\s+\S/m, "$name has a description");
	my ($anchor) = $b =~ /runbook_url:\s+"docs\/runbook\.md#([^"]+)"/;
	ok(defined $anchor && $anchors{$anchor},
		"$name links to an existing runbook section (#" . ($anchor // '?') . ')');
}

# The unit tests cover every alert.
my $unit = slurp_file_text("$mon/citizen_sync_alerts_test.yml");
my %tested = map { $_ => 1 } $unit =~ /alertname:\s+(\S+)/g;
is_deeply([ grep { !$tested{$_} } @alerts ], [], 'every alert has unit tests');

#---------------------------------------------------------------------------
# promtool
#---------------------------------------------------------------------------
SKIP:
{
	my $promtool = which('promtool');
	skip 'promtool is not installed (Debian package "prometheus"): rules not checked', 3
	  unless $promtool;
	command_ok([ $promtool, 'check', 'rules', $rules ], 'promtool check rules');
	command_ok([ $promtool, 'check', 'config', "$mon/prometheus.example.yml" ],
		'promtool check config (the example configuration loads the rules)');
	command_ok([ $promtool, 'test', 'rules', "$mon/citizen_sync_alerts_test.yml" ],
		'promtool test rules: every alert fires and stays quiet as expected');
}

#---------------------------------------------------------------------------
# The exporter against a live pipeline
#---------------------------------------------------------------------------
SKIP:
{
	skip "prometheus-postgres-exporter is not installed ($exporter_bin): metrics not checked", 1
	  unless -x $exporter_bin;

	my $kafka = start_broker();
	my $node = start_pipeline('prom', $kafka, conf => "citizen_sync.restart_delay = 1s\n");

	# The exporter's role, as docs/operations.md creates it.
	my @setup = grep { /\bcitizen_sync_exporter\b/ } map { @{ $_->{statements} } }
	  grep { $_->{file} eq 'docs/operations.md' } CitizenSync::Shipped::doc_blocks($root);
	ok(scalar(@setup), 'docs/operations.md sets up the exporter role');
	$node->safe_psql('postgres', s/\bcitizen_sync_exporter\b/cs_exporter/gr) for @setup;
	$node->safe_psql('permits_db', 'CREATE EXTENSION dblink');

	# 30 citizens, 10 updated, 3 deleted.
	$node->safe_psql('auth_db', citizens_sql(30) . q{
UPDATE citizens SET city = 'Shelbyville' WHERE id <= 10;
DELETE FROM citizens WHERE id IN (28, 29, 30);
});
	wait_outbox_drained($node, 60);
	wait_caches_converged($node, 90);

	# A poison message: dead-lettered by both consumers (22P02).
	$kafka->produce($TOPIC, [ [ 'citizen_1', '{not json' ] ]);
	for my $db (@SERVICE_DBS)
	{
		ok( poll_until($node, $db,
				"SELECT dead_lettered FROM citizen_sync.consumer_stats WHERE database = '$db'", '1'),
			"the poison message was dead-lettered in $db");
	}
	# A consistency report in permits_db.
	my $auth = $node->connstr('auth_db');
	$auth =~ s/'//g;
	is( $node->safe_psql('permits_db',
			"SELECT count(*) FROM citizen_sync.consistency_check(\$c\$$auth\$c\$, '0 seconds')"),
		'0', 'consistency check of permits_db: no drift');
	# 10 new citizens whose events are a day old when applied: their
	# latency falls in the +Inf bucket, beyond 5 % of the samples, so p95
	# and p99 lie there (exported as the last finite bound, never +Inf).
	my $old = join('', map { CitizenSync::Events::event_json(
				type => 'created', event_id => "evt_late_$_", citizen_id => $_,
				version => 1, snapshot => CitizenSync::Events::snapshot($_, 1))
			  =~ s/"event_timestamp":"[^"]*"/"event_timestamp":"LATE"/r . "\n" } 1001 .. 1010);
	my $late = $node->safe_psql('postgres',
		q{SELECT to_char((now() - interval '1 day') AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"')});
	$old =~ s/LATE/$late/g;
	$kafka->produce($TOPIC, [ map { [ 'citizen_' . (1000 + $_), (split /\n/, $old)[ $_ - 1 ] ] } 1 .. 10 ]);
	for my $db (@SERVICE_DBS)
	{
		ok(poll_until($node, $db, 'SELECT count(*) FROM cache.citizen_refs WHERE citizen_id > 1000', '10'),
			"$db: the 10 late events were applied");
	}
	# Lag is measured against the watermark: wait until it is known and 0.
	for my $db (@SERVICE_DBS)
	{
		ok( poll_until($node, $db, qq{
SELECT count(*) = 4 AND bool_and(lag = 0) AND citizen_sync.fresh_as_of('$db') IS NOT NULL
  FROM citizen_sync.consumer_lag WHERE database = '$db'}),
			"$db: 4 partitions, lag 0, fresh");
	}

	# One exporter for the instance: DSN at permits_db, the other databases
	# with the extension discovered (per-database queries run in each).
	my $port = PostgreSQL::Test::Cluster::get_free_port();
	my $dsn = sprintf('host=%s port=%d user=cs_exporter dbname=permits_db sslmode=disable',
		$node->host, $node->port);
	my $log = "$PostgreSQL::Test::Utils::log_path/postgres_exporter.log";
	my @cmd = (
		$exporter_bin,
		"--extend.query-path=$queries",
		"--web.listen-address=127.0.0.1:$port",
		'--auto-discover-databases',
		'--include-databases=auth_db,permits_db,revenue_db',
		'--log.level=info');
	note("starting: DATA_SOURCE_NAME='$dsn' @cmd");
	$exporter = IPC::Run::start(\@cmd, '<', \undef, '>', $log, '2>&1',
		init => sub { $ENV{DATA_SOURCE_NAME} = $dsn; });

	my $http = HTTP::Tiny->new(timeout => 30);
	my ($res, $text);
	my $ok = poll_until(60, sub {
			$res = $http->get("http://127.0.0.1:$port/metrics");
			$text = $res->{content} // '';
			return $res->{success} && $text =~ /^citizen_sync_outbox_pending\{[^}]*database="auth_db"/m
			  && $text =~ /^citizen_sync_worker_up/m;
		}, 500);
	ok($ok, "the exporter serves /metrics on 127.0.0.1:$port")
	  or diag("HTTP $res->{status}: " . substr($text, 0, 2000) . "\nexporter log:\n"
		  . slurp_file_text($log));

	# Parse the exposition format: name{labels} value.
	my @samples;
	my %type;
	for my $line (split /\n/, $text)
	{
		if ($line =~ /^# TYPE (\S+) (\S+)/) { $type{$1} = $2; next; }
		next if $line =~ /^#/ || $line !~ /\S/;
		my ($name, $labels, $value) = $line =~ /^([a-zA-Z_:][\w:]*)(?:\{(.*)\})?\s+(\S+)/
		  or next;
		my %l;
		$l{$1} = $2 while ($labels // '') =~ /(\w+)="((?:[^"\\]|\\.)*)"/g;
		push @samples, { name => $name, labels => \%l, value => $value };
	}
	# The samples named $name whose labels include %want.
	my $find = sub {
		my ($name, %want) = @_;
		return grep {
			my $s = $_;
			$s->{name} eq $name
			  && !grep { ($s->{labels}{$_} // "\0") ne $want{$_} } keys %want
		} @samples;
	};
	my $value = sub {
		my @s = $find->(@_);
		return @s == 1 ? $s[0]{value} : (@s ? 'several series' : 'no series');
	};

	is($value->('pg_up'), '1', 'pg_up is 1');
	is($value->('pg_exporter_user_queries_load_error'), '0', 'the queries file loads');
	is($value->('pg_exporter_last_scrape_error'), '0', 'the last scrape had no error')
	  or diag(slurp_file_text($log));

	# Every citizen_sync metric the alert rules use is exposed.
	my %exposed = map { $_->{name} => 1 } @samples;
	my %used = map { $_ => 1 } map { /\b(citizen_sync_[a-z0-9_]+)/g } $rules_text =~ /^\s*expr:(.*)$/mg;
	is_deeply([ grep { !$exposed{$_} } sort keys %used ], [],
		'every metric the rules use is exposed (' . join(', ', sort keys %used) . ')');

	# Workers: exposed once each (instance-wide queries run in one database).
	is(scalar($find->('citizen_sync_worker_up')), 3, 'three worker_up series: 2 consumers, 1 publisher');
	is($value->('citizen_sync_worker_up', kind => 'consumer', database => $_), '1',
		"consumer of $_ is up") for @SERVICE_DBS;
	is($value->('citizen_sync_worker_up', kind => 'publisher', database => 'auth_db'), '1',
		'publisher is up');
	is($value->('citizen_sync_worker_failing', kind => 'consumer', database => 'permits_db'), '0',
		'consumer of permits_db is not failing');
	is($type{citizen_sync_consumer_applied_total}, 'counter', 'applied_total is a counter');

	# Consumer counters equal consumer_stats.
	for my $db (@SERVICE_DBS)
	{
		my $row = $node->safe_psql($db, qq{
SELECT applied, deleted, stale, duplicate, ignored, dead_lettered, batches, partitions
  FROM citizen_sync.consumer_stats WHERE database = '$db'});
		my @v = split /\|/, $row;
		my @m = qw(applied_total deleted_total stale_total duplicate_total ignored_total
		  dead_lettered_total batches_total partitions);
		for my $i (0 .. $#m)
		{
			is($value->("citizen_sync_consumer_$m[$i]", database => $db), $v[$i],
				"$db: citizen_sync_consumer_$m[$i] = $v[$i]");
		}
		# (27 live citizens; an event superseded in its batch counts as stale)
		cmp_ok($value->('citizen_sync_consumer_applied_total', database => $db), '>=', 27,
			"$db: at least one applied event per live citizen");
		is($value->('citizen_sync_consumer_deleted_total', database => $db), '3',
			"$db: 3 deletes applied");
		my $fresh = $value->('citizen_sync_consumer_fresh_as_of_age_seconds', database => $db);
		ok($fresh =~ /^[\d.e+-]+$/ && $fresh >= 0 && $fresh < 60,
			"$db: the cache is known fresh (fresh_as_of age $fresh s)");

		# Lag per partition: 4 partitions, all 0.
		my @lag = $find->('citizen_sync_consumer_lag_messages', database => $db, topic => $TOPIC);
		is(scalar(@lag), 4, "$db: lag of 4 partitions");
		is(join(',', map { $_->{value} } @lag), '0,0,0,0', "$db: lag 0 after convergence");
		is(join(',', sort map { $_->{labels}{group_id} } @lag), join(',', ("$db-citizen-sync") x 4),
			"$db: lag labelled with the consumer group");

		# Latency histogram: cumulative buckets, +Inf = count = applied + deleted.
		my @buckets = sort { $a->{labels}{le} eq '+Inf' ? 1 : $b->{labels}{le} eq '+Inf' ? -1
			  : $a->{labels}{le} <=> $b->{labels}{le} }
		  $find->('citizen_sync_latency_seconds_bucket', database => $db);
		my $count = $value->('citizen_sync_latency_seconds_count', database => $db);
		is($type{citizen_sync_latency_seconds}, 'histogram', 'latency is a histogram');
		is($count, $v[0] + $v[1], "$db: latency samples = applied + deleted ($count)");
		cmp_ok(scalar(@buckets), '>=', 10, "$db: latency buckets");
		is($buckets[-1]{labels}{le}, '+Inf', "$db: last bucket is +Inf");
		is($buckets[-1]{value}, $count, "$db: +Inf bucket = count");
		ok(!grep({ $buckets[$_]{value} < $buckets[ $_ - 1 ]{value} } 1 .. $#buckets),
			"$db: buckets are cumulative");
		cmp_ok($value->('citizen_sync_latency_seconds_sum', database => $db), '>=', 0,
			"$db: latency sum");
		my @q = map { $value->("citizen_sync_latency_${_}_seconds", database => $db) } qw(p50 p95 p99);
		ok(@q == 3 && $q[0] > 0 && $q[0] <= $q[1] && $q[1] <= $q[2],
			"$db: p50 <= p95 <= p99 (@q)");
		# The late events put p95 and p99 in the +Inf bucket: exported as
		# the last finite bound, not +Inf.
		my $last_finite = $buckets[-2]{labels}{le};
		is("$q[1] $q[2]", "$last_finite $last_finite",
			"$db: p95 and p99 beyond the last bucket are its finite bound ($last_finite), not +Inf");

		# Dead letters by SQLSTATE, the consistency report.
		is($value->('citizen_sync_dead_letters_unresolved', database => $db, sqlstate => '22P02'), '1',
			"$db: one unresolved dead letter, 22P02");
	}
	is($value->("citizen_sync_consistency_$_", database => 'permits_db', source => 'auth'), '0',
		"permits_db: consistency $_ = 0") for qw(missing stale mismatched extra);
	is($value->('citizen_sync_consistency_checked', database => 'permits_db', source => 'auth'), '30',
		'permits_db: 30 citizens checked');
	my $age = $value->('citizen_sync_consistency_last_check_age_seconds', database => 'permits_db');
	ok($age =~ /^[\d.e+-]+$/ && $age >= 0 && $age < 300, "age of the last consistency check ($age s)");
	is(scalar($find->('citizen_sync_consistency_checked', database => 'revenue_db')), 0,
		'revenue_db never ran a check: no series');

	# Outbox and publisher: outbox series from the outbox database only.
	is($value->('citizen_sync_outbox_pending', database => 'auth_db'), '0', 'auth_db: outbox pending 0');
	for my $db (@SERVICE_DBS)
	{
		is(scalar(grep { $_->{name} =~ /^citizen_sync_outbox_/ && $_->{labels}{database} eq $db } @samples),
			0, "$db (a service database, no outbox): no citizen_sync_outbox_* series");
	}
	is($value->('citizen_sync_outbox_retrying', database => 'auth_db'), '0', 'auth_db: retrying 0');
is($value->('citizen_sync_outbox_rows_set_aside', database => 'auth_db'), '0', 'auth_db: no row set aside');
	is($value->('citizen_sync_outbox_oldest_pending_age_seconds', database => 'auth_db'), '0',
		'auth_db: no pending row, age 0');
	my $rows = $node->safe_psql('auth_db', 'SELECT count(*) FROM citizen_sync.outbox');
	cmp_ok($value->('citizen_sync_publisher_published_total', database => 'auth_db'), '>=', $rows,
		"published_total >= $rows outbox rows");

	# Every metric the Grafana dashboard's queries name is exposed.
	my @names = dashboard_metrics("$mon/grafana_citizen_sync.json");
	cmp_ok(scalar(@names), '>=', 20, 'the dashboard queries ' . scalar(@names) . ' metrics');
	is_deeply([ grep { !$exposed{$_} } @names ], [],
		'every metric the dashboard uses is exposed (' . join(', ', @names) . ')');
	is_deeply([ grep { !$exposed{$_} } promql_metrics(
				'sum by (le) (rate(citizen_sync_no_such_seconds_bucket{server=~"$server"}[5m]))') ],
		['citizen_sync_no_such_seconds_bucket'], 'a metric the exporter lacks would be reported');

	# promtool's linter accepts the citizen_sync metrics.
	SKIP:
	{
		my $promtool = which('promtool');
		skip 'promtool is not installed', 1 unless $promtool;
		my $ours = join("\n", grep { /^(?:# (?:HELP|TYPE) )?citizen_sync_/ } split /\n/, $text) . "\n";
		my ($out, $err) = ('', '');
		IPC::Run::run([ $promtool, 'check', 'metrics' ], '<', \$ours, '>', \$out, '2>', \$err);
		is("$out$err", '', 'promtool check metrics: no lint problem in the citizen_sync metrics');
	}

	# citizen_sync.stats_reset(): counters and histograms to 0, stats_reset
	# says since when; not for the exporter's role (EXECUTE revoked from PUBLIC).
	my $before = $node->safe_psql('permits_db',
		q{SELECT string_agg(stats_reset::text, ',') FROM citizen_sync.worker_stats});
	unlike($before, qr/^,|,,|,$/, "every worker has a stats_reset time ($before)");
	my $reset_at = $node->safe_psql('permits_db', 'SELECT citizen_sync.stats_reset()');
	is( $node->safe_psql('permits_db', qq{
SELECT count(*) FILTER (WHERE applied + deleted + stale + duplicate + batches + published + dead_lettered > 0)
       || '|' || bool_and(stats_reset = '$reset_at')
  FROM citizen_sync.worker_stats}),
		'0|true', 'stats_reset(): every worker\'s counters are 0, stats_reset is the reset time');
	is( $node->safe_psql('permits_db', 'SELECT max(total_count) FROM citizen_sync.sync_latency'),
		'0', 'stats_reset(): latency histograms emptied');
	my ($rc, $out, $err) = $node->psql('permits_db', 'SELECT citizen_sync.stats_reset()',
		connstr => $node->connstr('permits_db') . ' user=cs_exporter');
	like($err, qr/permission denied for function stats_reset/,
		'the exporter\'s role may not call stats_reset()');

	$exporter->kill_kill(grace => 5);
	undef $exporter;
	$node->stop;
	$kafka->stop;
}

done_testing();
