=pod

=head1 NAME

CitizenSync::Broker - citizen_sync's embedded Kafka broker in TAP tests:
the broker process, its fault commands, producing and consuming raw
messages

=head1 SYNOPSIS

  use lib "$FindBin::RealBin/../perl";   # or wherever test/perl is
  use CitizenSync::Broker qw(start_broker topic_events positions);

  my $kafka = start_broker();   # 1 broker, gov.auth.citizen:4

  my $kafka = CitizenSync::Broker->new(brokers => 1,
                                     topics  => ['gov.auth.citizen:4']);
  my $bootstrap = $kafka->bootstrap;     # "127.0.0.1:41234"

  $kafka->produce('gov.auth.citizen', [ [ 'k1', '{"id":1}' ], '{"id":2}' ]);
  $kafka->produce('gov.auth.citizen', $events);  # { key, value } hashes
  $kafka->produce_file('gov.auth.citizen', '/tmp/preload.tsv');
  my $o = $kafka->offsets('gov.auth.citizen');    # $o->{end}, $o->{retained}
  $kafka->down(1); $kafka->up(1);
  $kafka->push_errors(8, 27, 3);  # 3 x OffsetCommit -> REBALANCE_IN_PROGRESS
  my @msgs = $kafka->consume('gov.auth.citizen');
  $kafka->stop;

=head1 DESCRIPTION

Starts test/broker/cs_kafka_broker (librdkafka's mock cluster: real Kafka
protocol on 127.0.0.1, messages in memory) under IPC::Run, reads its
C<BOOTSTRAP> and C<READY> lines, sends it commands on its stdin and reads one
answer line per command.  Messages are produced and consumed with kcat.

Every method croaks on failure (timeout, broker gone, C<ERR> answer, kcat
failure), so a test needs no extra checks to fail loudly.

The broker binary is, in order: the C<binary> argument, C<$ENV{CS_KAFKA_BROKER}>,
or F<../../broker/cs_kafka_broker> relative to this file (test/broker).  Build it with
C<make -C test/broker>.

=cut

package CitizenSync::Broker;

use strict;
use warnings;

use Carp;
use File::Basename qw(dirname);
use File::Spec;
use File::Temp ();
use Exporter 'import';
use IPC::Run ();
use JSON::PP ();

our $VERSION = '0.1';
our @EXPORT_OK = qw(start_broker topic_events positions $TOPIC);
our %EXPORT_TAGS = (all => \@EXPORT_OK);

# The citizen topic.
our $TOPIC = 'gov.auth.citizen';

# Seconds to wait for the broker or kcat before croaking.
my $DEFAULT_TIMEOUT = $ENV{PG_TEST_TIMEOUT_DEFAULT} || 180;

=pod

=head1 FUNCTIONS

=over

=item start_broker(%args)

CitizenSync::Broker->new(%args), by default with one broker and
gov.auth.citizen in 4 partitions.

=cut

sub start_broker
{
	my (%args) = @_;
	return __PACKAGE__->new(brokers => 1, topics => ["$TOPIC:4"], %args);
}

=pod

=item topic_events($kafka, [$topic])

Every message of $topic (default gov.auth.citizen), in (partition, offset)
order, as hashrefs { partition, offset, key, value, event } where event is
the decoded JSON value (undef if it does not parse).

=cut

sub topic_events
{
	my ($kafka, $topic) = @_;
	my $json = JSON::PP->new->utf8;
	my @msgs = $kafka->consume($topic // $TOPIC);

	for my $m (@msgs)
	{
		$m->{event} = eval { $json->decode($m->{value}) } if defined $m->{value};
	}
	return sort { $a->{partition} <=> $b->{partition} || $a->{offset} <=> $b->{offset} } @msgs;
}

=pod

=item positions($kafka, $topic)

Everything in the topic (from the beginning) as a hashref
partition => [ { offset, key, value, event_id }, ... ] in offset order.

=cut

sub positions
{
	my ($kafka, $topic) = @_;
	my %p;

	for my $msg ($kafka->consume($topic))
	{
		($msg->{event_id}) = ($msg->{value} // '') =~ /"event_id":"([^"]*)"/;
		push @{ $p{ $msg->{partition} } }, $msg;
	}
	@$_ = sort { $a->{offset} <=> $b->{offset} } @$_ for values %p;
	return \%p;
}

=pod

=back

=head1 CLASS METHODS

=over

=item CitizenSync::Broker->binary_path([$path])

Returns the path of the broker executable (see DESCRIPTION); croaks if it is
not executable.

=cut

sub binary_path
{
	my ($class, $path) = @_;

	$path //= $ENV{CS_KAFKA_BROKER};
	$path //= File::Spec->catfile(dirname(File::Spec->rel2abs(__FILE__)),
		'..', '..', 'broker', 'cs_kafka_broker');
	croak "cs_kafka_broker not found or not executable at $path "
	  . "(run: make -C test/broker)"
	  unless -x $path;
	return $path;
}

=pod

=item CitizenSync::Broker->new(%args)

Starts a broker and waits until it is ready.  Arguments, all optional:

  brokers  => N                  brokers in the cluster, ids 1..N (default 1)
  topics   => ['NAME:P', ...]    topics to create (default the broker's
                                 default, gov.auth.citizen:4)
  control  => $fifo_path         also accept commands on this FIFO
  binary   => $path              broker executable
  kcat     => $path              kcat executable (default 'kcat')
  log      => $path              broker stderr (appended); default a file in
                                 $PostgreSQL::Test::Utils::log_path if set,
                                 else a temporary file
  timeout  => $seconds           for every wait (default
                                 $PG_TEST_TIMEOUT_DEFAULT or 180)

Returns the object; croaks if the broker does not print READY in time.

=cut

sub new
{
	my ($class, %args) = @_;
	my $self = bless {
		timeout => $args{timeout} // $DEFAULT_TIMEOUT,
		kcat => $args{kcat} // 'kcat',
		in => '',
		out => '',
	}, $class;
	my @cmd = ($class->binary_path($args{binary}));

	push @cmd, '--brokers', $args{brokers} if defined $args{brokers};
	push @cmd, map { ('--topic', $_) } @{ $args{topics} // [] };
	push @cmd, '--control', $args{control} if defined $args{control};
	$self->{log} = $args{log} // _default_log();
	$self->{timer} = IPC::Run::timer($self->{timeout});
	$self->{harness} = IPC::Run::start(\@cmd, '<', \$self->{in},
		'>', \$self->{out}, '2>>', $self->{log}, $self->{timer});

	my $line = $self->_read_line;
	croak "broker said '$line' instead of BOOTSTRAP"
	  unless $line =~ /^BOOTSTRAP (\S+)$/;
	$self->{bootstrap} = $1;
	$line = $self->_read_line;
	croak "broker said '$line' instead of READY" unless $line eq 'READY';
	return $self;
}

# A fresh log file name for the broker's stderr.
sub _default_log
{
	no warnings 'once';
	my $dir = $PostgreSQL::Test::Utils::log_path;
	return File::Spec->catfile($dir, "cs_kafka_broker_$$.log")
	  if defined $dir && -d $dir;
	my $tmp = File::Temp->new(
		TEMPLATE => 'cs_kafka_broker_XXXXXX',
		SUFFIX => '.log',
		TMPDIR => 1,
		UNLINK => 0);
	return $tmp->filename;
}

# Waits for one line on the broker's stdout and returns it without "\n".
# Croaks on timeout or if the broker has exited.
sub _read_line
{
	my ($self) = @_;
	my $h = $self->{harness};

	$self->{timer}->start($self->{timeout});
	while ($self->{out} !~ /\n/)
	{
		croak "cs_kafka_broker: no answer within $self->{timeout} s"
		  . " (log: $self->{log})"
		  if $self->{timer}->is_expired;
		croak "cs_kafka_broker exited (log: $self->{log})"
		  unless $h->pumpable;
		$h->pump;
	}
	$self->{out} =~ s/^([^\n]*)\n//;
	return $1;
}

=pod

=back

=head1 OBJECT METHODS

=over

=item $kafka->bootstrap

Returns the bootstrap.servers string, e.g. C<127.0.0.1:41234,127.0.0.1:41235>
(broker 1 first).

=item $kafka->broker_address($id)

Returns C<host:port> of broker $id (1..N).

=item $kafka->pid

Returns the broker's process id.

=item $kafka->log_file

Returns the path of the broker's stderr log.

=cut

sub bootstrap { return $_[0]->{bootstrap}; }

sub broker_address
{
	my ($self, $id) = @_;
	my @addr = split /,/, $self->{bootstrap};
	croak "no broker $id" unless $id >= 1 && $id <= @addr;
	return $addr[ $id - 1 ];
}

sub pid { return $_[0]->{harness}->{KIDS}->[0]->{PID}; }

sub log_file { return $_[0]->{log}; }

=pod

=item $kafka->command($line)

Sends one command line and returns the broker's answer line (C<OK ...> or
C<ERR ...>), without the newline.  Croaks only on timeout or broker exit.

=item $kafka->ok_command($line)

Like command() but croaks on an C<ERR> answer; returns the text after C<OK >.

=cut

sub command
{
	my ($self, $line) = @_;
	croak 'broker is stopped' unless $self->{harness};
	croak 'one command per call' if $line =~ /\n/;
	$self->{in} .= "$line\n";
	return $self->_read_line;
}

sub ok_command
{
	my ($self, $line) = @_;
	my $answer = $self->command($line);
	croak "cs_kafka_broker: '$line' failed: $answer"
	  unless $answer =~ s/^OK //;
	return $answer;
}

=pod

=item Shortcuts for the broker's commands

Each returns the text after C<OK > and croaks on C<ERR>.  $id is a broker id
1..N, or -1 for all brokers.

  $kafka->ping                               'pong'
  $kafka->down($id)                          refuse/close connections
  $kafka->up($id)                            accept connections again
  $kafka->rtt($id, $ms)                      delay every response by $ms
  $kafka->push_errors($apikey, $errcode, $count)
                                             fail the next $count requests
                                             of Kafka API $apikey with
                                             $errcode (negative = librdkafka
                                             local codes, e.g. -195
                                             _TRANSPORT = disconnect)
  $kafka->clear_errors([$apikey])            forget pushed errors
  $kafka->create_topic($name, $partitions)
  $kafka->set_leader($topic, $partition, $id)
  $kafka->set_coordinator('group', $group_id, $id)

Useful API keys: 0 Produce, 1 Fetch, 2 ListOffsets, 3 Metadata,
8 OffsetCommit, 9 OffsetFetch, 10 FindCoordinator, 11 JoinGroup,
12 Heartbeat, 13 LeaveGroup, 14 SyncGroup.

=cut

sub ping { return $_[0]->ok_command('ping'); }
sub down { return $_[0]->ok_command("down $_[1]"); }
sub up { return $_[0]->ok_command("up $_[1]"); }
sub rtt { return $_[0]->ok_command("rtt $_[1] $_[2]"); }

sub push_errors
{
	my ($self, $apikey, $errcode, $count) = @_;
	return $self->ok_command("error $apikey $errcode " . ($count // 1));
}

sub clear_errors
{
	my ($self, $apikey) = @_;
	return $self->ok_command(defined $apikey ? "clear $apikey" : 'clear');
}

sub create_topic { return $_[0]->ok_command("topic $_[1] $_[2]"); }
sub set_leader { return $_[0]->ok_command("leader $_[1] $_[2] $_[3]"); }
sub set_coordinator { return $_[0]->ok_command("coordinator $_[1] $_[2] $_[3]"); }

=pod

=item $kafka->spread_leaders($topic, $partitions, $brokers)

Moves the leader of partition p of $topic (0 .. $partitions - 1) to broker
(p % $brokers) + 1, so that every broker leads some partitions.  Returns a
hashref partition => leader id.

=cut

sub spread_leaders
{
	my ($self, $topic, $partitions, $brokers) = @_;
	my %leader;

	for my $p (0 .. $partitions - 1)
	{
		$leader{$p} = ($p % $brokers) + 1;
		$self->set_leader($topic, $p, $leader{$p});
	}
	return \%leader;
}

=pod

=item $kafka->offsets($topic)

Returns a hashref:

  { end        => sum of high watermarks (messages ever produced),
    retained   => sum of (high - low) (messages still fetchable),
    partitions => { 0 => [low, high], 1 => [low, high], ... } }

retained < end means the mock cluster dropped old batches: each partition
keeps only 5 MiB (see produce_file()).  Croaks if the topic does not exist or
a broker does not answer.

=cut

sub offsets
{
	my ($self, $topic) = @_;
	my $answer = $self->ok_command("offsets $topic");
	my %r = (partitions => {});

	croak "bad offsets answer '$answer'"
	  unless $answer =~ /^offsets \S+ retained=(\d+) end=(\d+)(.*)$/;
	my $parts = $3;
	@r{qw(retained end)} = ($1, $2);
	$r{partitions}->{$1} = [ $2, $3 ]
	  while $parts =~ /\bp(\d+)=(\d+)-(\d+)/g;
	return \%r;
}

=pod

=item $kafka->produce($topic, \@messages, %opts)

Produces the messages with kcat, in order, and waits until every one is
acknowledged.  Each message is either a string (the value; the key is null),
[$key, $value] or a hashref with key and value (as CitizenSync::Events makes
them; a key of undef is a null key).  Keys may not contain tabs or newlines, values may not contain
newlines.  Options: C<partition> (default: by key hash, or random for null
keys), C<compression> (none, gzip, snappy, lz4, zstd; default none), C<kcat_args>
(arrayref of extra kcat arguments).  Returns the number of messages; croaks
if kcat fails, and, unless C<< check_retention => 0 >>, if the topic lost
messages to the mock cluster's retention (see produce_file()).

=cut

sub produce
{
	my ($self, $topic, $messages, %opts) = @_;
	my $input = '';

	for my $m (@$messages)
	{
		my ($key, $value) =
		    ref $m eq 'HASH' ? @$m{qw(key value)}
		  : ref $m ? @$m
		  : (undef, $m);
		croak 'message value may not contain a newline' if $value =~ /\n/;
		if (defined $key)
		{
			croak 'message key may not contain a tab or newline'
			  if $key =~ /[\t\n]/;
			$input .= "$key\t$value\n";
		}
		else
		{
			croak 'a null-key message may not contain a tab'
			  if $value =~ /\t/;
			$input .= "$value\n";
		}
	}
	$self->_kcat_produce($topic, \$input, %opts);
	$self->_check_retention($topic) if $opts{check_retention} // 1;
	return scalar @$messages;
}

=pod

=item $kafka->produce_file($topic, $path, %opts)

Produces every line of file $path: C<KEY\tVALUE> (split at the first tab) or,
for lines without a tab, a value with a null key.  Same options as produce().
This is the fast path for big preloads: 1,000,000 messages of ~420 bytes take
about 2 s.  Returns the number of lines; croaks if kcat fails.

Unless C<< check_retention => 0 >>, it then croaks if the topic lost messages
to the mock cluster's retention (each partition keeps at most 5 MiB of
batches as sent): give such a topic enough partitions (about
total bytes / 4 MiB; e.g. 128 for 1M x 420 B) or use compression => 'zstd'.

=cut

sub produce_file
{
	my ($self, $topic, $path, %opts) = @_;
	my $lines = 0;

	open my $fh, '<', $path or croak "cannot open $path: $!";
	$lines++ while <$fh>;
	close $fh;
	$self->_kcat_produce($topic, $path, %opts);
	$self->_check_retention($topic) if $opts{check_retention} // 1;
	return $lines;
}

# Croaks if $topic lost messages to the mock cluster's retention.
sub _check_retention
{
	my ($self, $topic) = @_;
	my $o = $self->offsets($topic);

	croak "topic $topic lost "
	  . ($o->{end} - $o->{retained})
	  . " messages to the mock broker's 5 MiB/partition retention:"
	  . " use more partitions or compression"
	  if $o->{retained} < $o->{end};
	return;
}

# Runs kcat -P on $input (a scalar ref holding the lines, or a file path).
sub _kcat_produce
{
	my ($self, $topic, $input, %opts) = @_;
	my $ms = $self->{timeout} * 1000;
	my @cmd = (
		$self->{kcat}, '-P', '-b', $self->{bootstrap}, '-t', $topic,
		'-K', "\t", '-z', $opts{compression} // 'none',
		'-X', "message.timeout.ms=$ms",
		'-X', 'linger.ms=5',
		@{ $opts{kcat_args} // [] });
	my ($out, $err) = ('', '');

	push @cmd, '-p', $opts{partition} if defined $opts{partition};
	my $ok = eval {
		IPC::Run::run(\@cmd, '<', $input, '>', \$out, '2>', \$err,
			IPC::Run::timeout($self->{timeout} + 10));
	};
	croak "kcat produce to $topic failed: " . ($@ || $err) unless $ok;
	return;
}

=pod

=item $kafka->consume($topic, %opts)

Reads the topic from the beginning to its current end with kcat (no consumer
group) and returns a list of hashrefs in arrival order:

  { partition => P, offset => O, key => K or undef, value => V or undef }

Options: C<partition> (only that one), C<count> (stop after that many),
C<kcat_args>.  Croaks if kcat fails.

=cut

sub consume
{
	my ($self, $topic, %opts) = @_;
	my @cmd = (
		$self->{kcat}, '-C', '-b', $self->{bootstrap}, '-t', $topic,
		'-o', 'beginning', '-e', '-q',
		'-f', '%p %o %K %S\n%k%s\n',
		@{ $opts{kcat_args} // [] });
	my ($out, $err) = ('', '');
	my @msgs;

	push @cmd, '-p', $opts{partition} if defined $opts{partition};
	push @cmd, '-c', $opts{count} if defined $opts{count};
	my $ok = eval {
		IPC::Run::run(\@cmd, '<', \undef, '>', \$out, '2>', \$err,
			IPC::Run::timeout($self->{timeout}));
	};
	croak "kcat consume from $topic failed: " . ($@ || $err) unless $ok;

	# Length-prefixed records, so values may hold any byte.
	my $pos = 0;
	while ($pos < length $out)
	{
		my $nl = index($out, "\n", $pos);
		my ($p, $o, $klen, $vlen) = split / /, substr($out, $pos, $nl - $pos);
		my %m = (partition => $p, offset => $o);

		$pos = $nl + 1;
		$m{key} = $klen < 0 ? undef : substr($out, $pos, $klen);
		$pos += $klen if $klen > 0;
		$m{value} = $vlen < 0 ? undef : substr($out, $pos, $vlen);
		$pos += $vlen if $vlen > 0;
		$pos++;    # the record's closing "\n"
		push @msgs, \%m;
	}
	return @msgs;
}

=pod

=item $kafka->stop

Sends C<quit>, waits for the broker to exit (killing it after the timeout),
and returns its exit code (0 when all went well).  Safe to call twice; also
called when the object is destroyed.

=back

=cut

sub stop
{
	my ($self) = @_;
	my $h = delete $self->{harness} or return 0;

	if ($h->pumpable)
	{
		$self->{in} .= "quit\n";
		$self->{timer}->start($self->{timeout});
		$h->pump while $h->pumpable && !$self->{timer}->is_expired;
		if ($h->pumpable)
		{
			carp 'cs_kafka_broker did not quit in time: killing it';
			$h->kill_kill(grace => 5);
			return -1;
		}
	}
	$h->finish;
	return $h->result(0);
}

sub DESTROY
{
	my ($self) = @_;
	local ($@, $?, $!);
	eval { $self->stop };
	return;
}

1;

=pod

=head1 LIMITS OF THE MOCK CLUSTER (librdkafka 2.0.2)

=over

=item * Each partition keeps at most 5 MiB of record batches (100000 batches);
older ones are dropped silently (low watermark moves).

=item * A consumer group's rebalance waits C<session.timeout.ms> - 1 s for
members (3 s for the first join), whatever the number of members: use
C<session.timeout.ms=6000> or so in tests.

=item * OffsetCommit is refused with REBALANCE_IN_PROGRESS while the group is
joining, so the commit made on revoke fails and the next owner of the
partition re-reads from the last commit made before the rebalance began
(real brokers accept that commit): tests of rebalances must allow
re-delivery.

=item * C<down> closes the broker's connections and refuses new ones; it does
not move partition leaders (use set_leader for that).

=back

=cut
