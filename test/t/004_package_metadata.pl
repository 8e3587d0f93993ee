# Package metadata agrees with itself and with the build: META.json is valid
# JSON with the keys the PGXN meta spec 1.0.0 requires, names the version of
# citizen_sync.control, the Makefile and debian/changelog, and a file that the
# build produces; LICENSE is the PostgreSQL License the metadata names;
# CHANGELOG.md has a section for 0.1.0 and for the current version; the
# Debian package ships every install and upgrade script the build makes.
use strict;
use warnings;

use File::Basename qw(dirname);
use File::Spec;
use JSON::PP;
use Test::More;

my $root = File::Spec->rel2abs(dirname(__FILE__) . '/../..');

sub slurp
{
	my ($f) = @_;
	open my $fh, '<:raw', "$root/$f" or die "cannot open $f: $!";
	local $/;
	return scalar <$fh>;
}

my ($control_version) = slurp('citizen_sync.control') =~ /^default_version = '([^']+)'$/m;
ok($control_version, "citizen_sync.control: default_version $control_version");
my ($make_version) = slurp('Makefile') =~ /^EXTVERSION\s*=\s*(\S+)$/m;
is($make_version, $control_version, 'Makefile: EXTVERSION is the control version');

my $meta = eval { JSON::PP->new->relaxed(0)->decode(slurp('META.json')) };
ok($meta, 'META.json is valid JSON') or diag($@);
$meta //= {};

# PGXN meta spec 1.0.0: the required keys, and the shape of each.
for my $k (qw(name abstract version maintainer license provides meta-spec))
{
	ok(exists $meta->{$k}, "META.json has $k");
}
is($meta->{name}, 'citizen_sync', 'name');
is($meta->{'meta-spec'}{version}, '1.0.0', 'meta-spec 1.0.0');
like($meta->{version} // '', qr/^\d+\.\d+\.\d+$/, 'version is a semantic version');
is($meta->{version}, $control_version, 'META.json version is the control version');
is($meta->{license}, 'postgresql', 'license: postgresql');
ok(ref $meta->{maintainer} eq 'ARRAY' ? @{ $meta->{maintainer} } : length($meta->{maintainer} // ''),
	'a maintainer');
my $p = $meta->{provides}{citizen_sync} // {};
is($p->{version}, $control_version, 'provides citizen_sync at the control version');
ok($p->{abstract}, 'provides: an abstract');
is($p->{file}, "sql/citizen_sync--$control_version.sql", 'provides: the install script the build makes');
ok(-f "$root/$p->{docfile}", "provides: docfile $p->{docfile} exists") if $p->{docfile};
like($meta->{prereqs}{runtime}{requires}{PostgreSQL} // '', qr/\b15\.0\.0\b/,
	'prereqs: PostgreSQL 15');
ok(ref $meta->{tags} eq 'ARRAY' && @{ $meta->{tags} }, 'tags');
like($meta->{release_status} // 'stable', qr/^(stable|testing|unstable)$/, 'release_status');

# LICENSE is what META.json says.
my $license = slurp('LICENSE');
like($license, qr/\APostgreSQL License\b/, 'LICENSE is the PostgreSQL License');
like($license, qr/Permission to use, copy, modify, and distribute this software/, 'LICENSE: its grant');

# CHANGELOG.md: the released version and the current one.
my $changelog = slurp('CHANGELOG.md');
like($changelog, qr/^## 0\.1\.0\b/m, 'CHANGELOG.md has 0.1.0');
like($changelog, qr/^## \Q$control_version\E\b/m, "CHANGELOG.md has $control_version");

# debian/: the package version, the supported PostgreSQL versions, and what
# it installs (the Makefile's DATA and DATA_built).
my ($deb_version) = slurp('debian/changelog') =~ /^citizen-sync \(([^)-]+)-[^)]+\)/;
is($deb_version, $control_version, 'debian/changelog: upstream version is the control version');
is(slurp('debian/pgversions'), "15\n", 'debian/pgversions: 15');
like(slurp('debian/control'), qr/^Package: postgresql-15-citizen-sync$/m,
	'debian/control: postgresql-15-citizen-sync (pg_buildext updatecontrol)');
opendir my $dh, "$root/sql/upgrade" or die $!;
my @upgrades = grep { /--/ } readdir $dh;
ok(scalar(grep { $_ eq "0.1.0--$control_version" } @upgrades), "an upgrade script 0.1.0--$control_version")
  or diag("sql/upgrade: @upgrades");
ok(-f "$root/sql/citizen_sync--0.1.0.sql", 'the released 0.1.0 install script is kept');

done_testing();
