# Logs without floods.
#
# librdkafka reports most conditions twice, as a log line and as an error
# event; 0.1.0 logged both, and every repeat (thousands of COMMITFAIL lines
# in seconds).  Now each condition is logged once, repeats at most once per
# 30 s with the number held back, every line names the worker's database,
# and the errors are still kept in citizen_sync.worker_errors.
use strict;
use warnings;

use FindBin;
use lib "$FindBin::RealBin/../perl";
use CitizenSync::Broker;
use CitizenSync::Node;
use CitizenSync::Events;
use CitizenSync::Check qw(poll_until);

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time);


my $db = $CitizenSync::Node::DB;
my $topic = 'gov.auth.citizen';

my $broker = CitizenSync::Broker::start_broker(brokers => 2, topics => ["$topic:4"]);
my $node = CitizenSync::Node::new_node('log_flood', $broker);
my $m = CitizenSync::Events::new_model(seed => 113);

$broker->produce($topic, CitizenSync::Events::add_events($m, citizens => [ 1 .. 20 ], tag => 'a'));
CitizenSync::Check::load_expected($node, $db, $m);
CitizenSync::Check::wait_converged($node, $db, 'the cache converges');

# The Kafka lines of the log since $offset: [ [what, text], ... ].
sub kafka_lines
{
	my ($offset) = @_;
	my $log = slurp_file($node->logfile, $offset);
	my @lines;
	for my $l (split /\n/, $log)
	{
		next unless $l =~ /citizen_sync: .*[Kk]afka/ && $l !~ /statement:/;
		push @lines, $l;
	}
	return @lines;
}

# Same condition: the text without librdkafka's thread prefix, cut at " (".
sub condition
{
	my ($l) = @_;
	my ($text) = $l =~ /[Kk]afka(?: \w+)?: (.*)$/;
	$text //= $l;
	$text =~ s/^\[thrd:[^\]]*\]: //;
	$text =~ s/ \(.*$//;
	$text =~ s/\d+//g;
	return $text;
}

sub check_window
{
	my ($label, @lines) = @_;
	my %per;
	$per{ condition($_) }++ for @lines;
	note("$label: " . scalar(@lines) . " Kafka line(s), " . scalar(keys %per) . " condition(s)");
	note("  $_ x $per{$_}") for sort keys %per;
	ok(scalar(@lines) > 0, "$label: the condition is logged");
	my @twice = grep { $per{$_} > 2 } keys %per;
	is_deeply(\@twice, [], "$label: no condition logged more than twice in the window (once, then once per 30 s)");
	my @anon = grep { !/for database "$db"/ } @lines;
	is_deeply(\@anon, [], "$label: every Kafka line names the database");
}

# --- all brokers down for 12 s ---------------------------------------------
my $offset = -s $node->logfile;
$broker->down(-1);
my $deadline = time + 12;
ok( poll_until($node, $db, q{
SELECT count(*) > 0 FROM citizen_sync.worker_errors WHERE source = 'kafka'}),
	'worker_errors keeps the Kafka errors');
select(undef, undef, undef, 0.2) while time < $deadline;    # a window of 12 s of outage
check_window('brokers down', kafka_lines($offset));
$broker->up(-1);

# --- offset commits refused over and over ------------------------------------
$offset = -s $node->logfile;
$broker->push_errors(8, 27, 500);    # OffsetCommit -> REBALANCE_IN_PROGRESS
for my $i (1 .. 8)
{
	$broker->produce($topic,
		CitizenSync::Events::add_events($m, citizens => [ 20 * $i + 1 .. 20 * $i + 20 ], tag => "c$i"));
}
CitizenSync::Check::load_expected($node, $db, $m);
CitizenSync::Check::wait_converged($node, $db, 'the cache converges while commits fail');
check_window('commits refused', kafka_lines($offset));
$broker->clear_errors;

$node->stop;
$broker->stop;
done_testing();
