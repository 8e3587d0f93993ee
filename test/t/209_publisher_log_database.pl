# Log lines of every worker name its database (issue 9, item 6): the
# publisher's as the consumers' do.  Before, the publisher wrote
# "citizen_sync: publisher: outbox row N set aside: ..." and the like, which
# on an instance with several outbox databases over time (or a restored
# one) does not say which.
#
# A citizen too large for Kafka is set aside (a WARNING of the publisher's
# own); then every line of the log that speaks for the publisher
# ("citizen_sync: publisher ...") must name auth_db, including its start
# and stop.
use strict;
use warnings;

use FindBin;
use lib "$FindBin::RealBin/../perl";
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use CitizenSync::Broker qw(:all);
use CitizenSync::Node qw(:all);
use CitizenSync::Events qw(:all);
use CitizenSync::Check qw(:all);

my $kafka = start_broker(topics => ["$TOPIC:1"]);
my $node = start_pipeline('publisher_log', $kafka);

$node->safe_psql('auth_db', q{
INSERT INTO citizens (name, email, city) VALUES ('Small', 'small@example.gov', 'Springfield');
INSERT INTO citizens (name, email, address) VALUES ('Big', 'big@example.gov', repeat('x', 1100000));
});
ok( $node->wait_for_log(
		qr/WARNING:  citizen_sync: publisher for database "auth_db": outbox row \d+ set aside: /),
	'the set-aside WARNING names the database');

$node->stop;
my @lines = grep { /citizen_sync: publisher/ } split /\n/, slurp_file($node->logfile);
my @unnamed = grep { !/citizen_sync: publisher for database "auth_db"/ } @lines;
cmp_ok(scalar @lines, '>=', 3, 'the publisher logged its start, the set-aside and its stop');
is(scalar @unnamed, 0, 'every publisher line names its database')
  or diag(join("\n", @unnamed));

$kafka->stop;
done_testing();
