#!/usr/bin/env bash
# Check that the citizen_sync of this tree is installed in the PostgreSQL
# that PG_CONFIG names (default: Debian's 15), from the Debian package
# postgresql-15-citizen-sync or from `make install`; say what to do if not.
# Used by test/run_all.sh and demo/run_demo.sh with CS_INSTALLED=1.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PG_CONFIG=${PG_CONFIG:-/usr/lib/postgresql/15/bin/pg_config}
[ -x "$PG_CONFIG" ] || { echo "check-installed: pg_config not found at $PG_CONFIG (set PG_CONFIG)" >&2; exit 1; }
version=$(sed -n "s/^default_version = '\(.*\)'$/\1/p" "$ROOT/citizen_sync.control")
lib=$("$PG_CONFIG" --pkglibdir)/citizen_sync.so
share=$("$PG_CONFIG" --sharedir)/extension
missing=()
for f in "$lib" "$share/citizen_sync.control" "$share/citizen_sync--$version.sql"; do
    [ -f "$f" ] || missing+=("$f")
done
if [ "${#missing[@]}" -gt 0 ]; then
    echo "check-installed: citizen_sync $version is not installed for $("$PG_CONFIG" --version): missing ${missing[*]}" >&2
    echo "Install the package (apt-get install ./postgresql-15-citizen-sync_*.deb) or run 'make install' as root," >&2
    echo "or unset CS_INSTALLED to build and install from this tree." >&2
    exit 1
fi
if ! cmp -s "$ROOT/citizen_sync.control" "$share/citizen_sync.control"; then
    echo "check-installed: the installed $share/citizen_sync.control differs from this tree's" >&2
    exit 1
fi
echo "citizen_sync $version is installed in $(dirname "$lib") (using it)"
