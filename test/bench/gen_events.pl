#!/usr/bin/perl
# Prints the citizen_sync benchmarks' event stream: one event per line as
#   citizen_<id> TAB <json>
# (the Kafka key and value, as `kcat -P -K '\t'` and COPY read them).
# The events come from test/perl/CitizenSync/Events.pm (bench_stream), the
# one generator shared with the TAP tests; see its documentation for what
# the stream holds.  Deterministic for a seed.
#
#   perl gen_events.pl [--events N] [--citizens N] [--first-citizen N]
#                      [--dup P] [--stale P] [--window N] [--seed N]
#                      [--id-prefix S] [--out FILE]
use strict;
use warnings;

use FindBin;
use lib "$FindBin::RealBin/../perl";
use Getopt::Long;
use CitizenSync::Events qw(bench_stream);

my %o = (events => 200000, citizens => 20000, first_citizen => 1,
	dup => 0.10, stale => 0.10, window => 20000, seed => 42,
	id_prefix => 'evt_b');
my $out = '-';

GetOptions(
	'events=i' => \$o{events},
	'citizens=i' => \$o{citizens},
	'first-citizen=i' => \$o{first_citizen},
	'dup=f' => \$o{dup},
	'stale=f' => \$o{stale},
	'window=i' => \$o{window},
	'seed=i' => \$o{seed},
	'id-prefix=s' => \$o{id_prefix},
	'out=s' => \$out) or die "usage: see the head of $0\n";

my $fh = \*STDOUT;
if ($out ne '-')
{
	open $fh, '>', $out or die "cannot write $out: $!\n";
}
binmode $fh;
my $c = bench_stream(sub { print {$fh} $_[0] }, %o);
close $fh or die "cannot write $out: $!\n";
printf STDERR "generated %d events over %d citizens: %d new, %d exact duplicates, %d stale versions\n",
  $o{events}, $c->{citizens}, $c->{new}, $c->{dup}, $c->{stale};
