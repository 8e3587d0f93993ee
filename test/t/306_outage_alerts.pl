# The outages the 0.1.0 alerts missed show through the exporter (issue 9,
# item 5): Kafka unreachable since startup (consumers never connected, not
# fresh; the publisher failing) and a typo in citizen_sync.databases at
# server start (no consumer runs: configured 0, a configuration problem).
# The alert rules' unit tests (monitoring/citizen_sync_alerts_test.yml, run
# by 302_prometheus.pl) show each alert firing on these series; this test
# shows the series as prometheus-postgres-exporter exposes them.
use strict;
use warnings;

use FindBin;
use lib "$FindBin::RealBin/../perl";
use CitizenSync::Broker qw(:all);
use CitizenSync::Node qw(:all);
use CitizenSync::Check qw(:all);
use File::Spec;
use HTTP::Tiny;
use IPC::Run ();
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $root = File::Spec->rel2abs("$FindBin::RealBin/../..");
my $queries = "$root/monitoring/postgres_exporter_queries.yaml";
my $exporter_bin = $ENV{POSTGRES_EXPORTER} // '/usr/bin/prometheus-postgres-exporter';
plan skip_all => "prometheus-postgres-exporter is not installed ($exporter_bin)"
  unless -x $exporter_bin;

my $exporter;
END
{
	local ($@, $?);
	eval { $exporter->kill_kill(grace => 5) if $exporter && $exporter->pumpable };
}

# Kafka that was never there: a port nothing listens on.
{

	package DeadKafka;
	sub new { return bless { port => $_[1] }, $_[0]; }
	sub bootstrap { return "127.0.0.1:$_[0]{port}"; }
}
my $kafka = DeadKafka->new(PostgreSQL::Test::Cluster::get_free_port());
my $node = start_pipeline('outage', $kafka, conf => qq{
citizen_sync.restart_delay = 1s
citizen_sync.kafka_properties = 'session.timeout.ms=6000;heartbeat.interval.ms=500;message.timeout.ms=2000'
});
$node->safe_psql('postgres', 'CREATE ROLE cs_exporter LOGIN IN ROLE pg_monitor');

# Start the exporter on the node and return a sub reading one metric.
sub start_exporter
{
	my $port = PostgreSQL::Test::Cluster::get_free_port();
	my $dsn = sprintf('host=%s port=%d user=cs_exporter dbname=permits_db sslmode=disable',
		$node->host, $node->port);
	my $log = "$PostgreSQL::Test::Utils::log_path/postgres_exporter_306.log";
	$exporter = IPC::Run::start(
		[ $exporter_bin, "--extend.query-path=$queries", "--web.listen-address=127.0.0.1:$port" ],
		'<', \undef, '>>', $log, '2>&1', init => sub { $ENV{DATA_SOURCE_NAME} = $dsn; });
	return $port;
}

# The value of the series $name{%labels} (exactly one), or a description of what was found.
sub metric
{
	my ($port, $name, %labels) = @_;
	my $res = HTTP::Tiny->new(timeout => 30)->get("http://127.0.0.1:$port/metrics");
	return 'no answer' unless $res->{success};
	my @found;
	for my $line (split /\n/, $res->{content})
	{
		my ($n, $l, $v) = $line =~ /^([a-zA-Z_:][\w:]*)(?:\{(.*)\})?\s+(\S+)/ or next;
		next unless $n eq $name;
		my %have;
		$have{$1} = $2 while ($l // '') =~ /(\w+)="((?:[^"\\]|\\.)*)"/g;
		push @found, $v unless grep { ($have{$_} // "\0") ne $labels{$_} } keys %labels;
	}
	return @found == 1 ? $found[0] : scalar(@found) . ' series';
}

# Poll until the metric has the value (the exporter and the workers need a moment).
sub metric_is
{
	my ($port, $want, $name, %labels) = @_;
	my $got;
	poll_until(90, sub { $got = metric($port, $name, %labels); return $got eq $want; }, 500);
	my $l = join(',', map { "$_=$labels{$_}" } sort keys %labels);
	is($got, $want, "$name\{$l\} = $want");
}

#---------------------------------------------------------------------------
# Kafka unreachable since startup
#---------------------------------------------------------------------------
my $port = start_exporter();
for my $db (@SERVICE_DBS)
{
	metric_is($port, '1', 'citizen_sync_health_running', kind => 'consumer', database => $db);
	metric_is($port, '1', 'citizen_sync_health_never_connected', kind => 'consumer', database => $db);
	metric_is($port, '1', 'citizen_sync_health_brokers_unreachable', kind => 'consumer', database => $db);
	metric_is($port, '1', 'citizen_sync_health_not_fresh', kind => 'consumer', database => $db);
}
# the publisher cannot deliver a change
$node->safe_psql('auth_db', q{INSERT INTO citizens (name, email) VALUES ('A', 'a@example.gov')});
metric_is($port, '1', 'citizen_sync_health_publisher_failing', kind => 'publisher', database => 'auth_db');
metric_is($port, '2', 'citizen_sync_workers_configured', kind => 'consumer');
metric_is($port, '2', 'citizen_sync_workers_running', kind => 'consumer');
metric_is($port, '0', 'citizen_sync_config_problems');

#---------------------------------------------------------------------------
# A typo in citizen_sync.databases at server start
#---------------------------------------------------------------------------
$node->append_conf('postgresql.conf',
	"citizen_sync.databases = 'permits_db:permits_sync_user; revenue_db:revenue_sync_user'\n");
$node->restart;
metric_is($port, '1', 'citizen_sync_config_holding_back');
metric_is($port, '1', 'citizen_sync_config_problems');
metric_is($port, '0', 'citizen_sync_workers_configured', kind => 'consumer');
metric_is($port, '0', 'citizen_sync_workers_running', kind => 'consumer');
is($node->safe_psql('permits_db', 'SELECT setting || ' . q{'|'} . ' || affects FROM citizen_sync.config_problems'),
	'citizen_sync.databases|consumers', 'config_problems names citizen_sync.databases');
is($node->safe_psql('postgres', q{SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'citizen_sync consumer'}),
	'0', 'no consumer runs');

$exporter->kill_kill(grace => 5);
undef $exporter;
$node->stop;
done_testing();
