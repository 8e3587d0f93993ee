=pod

=head1 NAME

CitizenSync::Node - PostgreSQL nodes set up for citizen_sync's TAP tests:
a consumer node (service database, extension, roles, worker
configuration), the whole pipeline on one node (auth_db -> publisher ->
broker -> consumers of permits_db and revenue_db), plain nodes, stops

=head1 SYNOPSIS

  use FindBin;
  use lib "$FindBin::RealBin/../perl";
  use CitizenSync::Broker qw(start_broker);
  use CitizenSync::Node qw(:all);

  my $broker = start_broker();
  my $node = new_node('consume', $broker);        # consumer of permits_db
  my $e2e = start_pipeline('e2e', $broker);       # the whole pipeline

=head1 DESCRIPTION

One concern: creating, configuring, starting and stopping nodes.  Event
streams are in CitizenSync::Events, waits and checks in CitizenSync::Check,
the broker in CitizenSync::Broker.

=cut

package CitizenSync::Node;

use strict;
use warnings;

use Carp;
use Exporter 'import';
use Time::HiRes ();
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

use CitizenSync::Broker qw($TOPIC);

our @EXPORT_OK = qw(new_node setup_db install_extension new_plain_node
  new_old_db_node
  start_pipeline setup_auth_db citizens_sql source_conninfo run_sql consumer_pid
  stop_under_fault $DB $SERVICE $SYNC_ROLE @SERVICE_DBS @PUBLISHED_COLUMNS);
our %EXPORT_TAGS = (all => \@EXPORT_OK);

# The consumer node's service database, its service and sync role.
our $DB = 'permits_db';
our $SERVICE = 'permits';
our $SYNC_ROLE = 'permits_sync_user';

# The pipeline node's service databases and the citizen columns auth_db
# publishes.
our @SERVICE_DBS = ('permits_db', 'revenue_db');
our @PUBLISHED_COLUMNS = qw(id name email phone address city postal_code
  email_verified identity_verified);

=pod

=head1 FUNCTIONS

=cut

# The postgresql.conf lines of a consumer node.  Options: databases
# (default 'permits_db:permits_sync_user'), extra (more lines).
sub _base_conf
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

=over

=item new_node($name, $broker, %opts)

Creates, configures and starts a consumer node (brokers, the worker of
C<databases>, default 'permits_db:permits_sync_user', short Kafka session
timeout for the mock cluster's rebalances, 10 ms batch wait, plus the
lines of C<extra>); unless
C<< setup => 0 >>, also creates permits_db with the extension and roles
(setup_db).  Returns the node.

=cut

sub new_node
{
	my ($name, $broker, %opts) = @_;
	my $node = PostgreSQL::Test::Cluster->new($name);

	$node->init;
	$node->append_conf('postgresql.conf', _base_conf($broker, %opts));
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

=item install_extension($node, [$db], [$service])

CREATE EXTENSION citizen_sync and the roles of $service (default permits)
in $db (default permits_db).

=cut

sub install_extension
{
	my ($node, $db, $service) = @_;
	$db //= $DB;
	$service //= $SERVICE;
	$node->safe_psql($db, qq{
CREATE EXTENSION citizen_sync;
SELECT citizen_sync.create_service_roles('$service');
});
	return;
}

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
		install_extension($node, $db, $service);
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

=item citizens_sql($n, %opts)

An INSERT of citizens 1..$n into auth_db's citizens table (name
"Citizen i", email ci@example.gov, city Springfield; with
C<< phone => 1 >> also phone +1-555-i), to run with safe_psql, alone or
followed by more statements.

=cut

sub citizens_sql
{
	my ($n, %opts) = @_;
	my ($col, $val) = $opts{phone} ? (', phone', q{, '+1-555-' || i}) : ('', '');

	return qq{
INSERT INTO citizens (name, email$col, city)
SELECT 'Citizen ' || i, 'c' || i || '\@example.gov'$val, 'Springfield'
  FROM generate_series(1, $n) AS i;
};
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

# Stops the node with pg_ctl stop -m fast, giving up after $limit seconds
# (then the node is stopped in immediate mode).  Returns the seconds the
# fast stop took, or undef when it did not finish within $limit.
sub _timed_stop
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
	my $took = _timed_stop($node, $limit // 10);

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

=item new_plain_node($name, %opts)

Creates and starts a UTF8 node with the library preloaded and no worker
configured (no broker), plus the postgresql.conf lines of C<conf>: for
tests of the SQL side only.

=cut

sub new_plain_node
{
	my ($name, %opts) = @_;
	my $node = PostgreSQL::Test::Cluster->new($name);

	$node->init(extra => [ '--encoding=UTF8', '--locale=C' ]);
	$node->append_conf('postgresql.conf',
		"shared_preload_libraries = 'citizen_sync'\n" . ($opts{conf} // ''));
	$node->start;
	return $node;
}

=pod

=item new_old_db_node($name)

new_plain_node with a consumer and a publisher for database old_db (not
created) and a broker address nothing listens on (127.0.0.1:9), workers
restarted after 1 s: for tests where the workers must stop at the version
check, before they ever talk to Kafka.

=cut

sub new_old_db_node
{
	my ($name) = @_;
	return new_plain_node($name, conf => q{
citizen_sync.brokers = '127.0.0.1:9'
citizen_sync.databases = 'old_db'
citizen_sync.outbox_database = 'old_db'
citizen_sync.restart_delay = '1s'
});
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

=pod

=back

=cut

1;
