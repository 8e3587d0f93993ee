#!/usr/bin/env bash
# Install what citizen_sync needs to build, test and demo on Debian 12, then
# build and install the extension and the embedded Kafka broker.
# Run as root (or through sudo).  Idempotent: quick when all is in place.
set -euo pipefail

mapfile -t PACKAGES < "$(dirname "$0")/packages.txt"

if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then
        exec sudo -E "$0" "$@"
    fi
    echo "install-deps.sh: run me as root (apt-get and 'make install' need it)" >&2
    exit 1
fi

cd "$(dirname "$0")/.."

missing=()
for p in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "== installing Debian packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
id postgres >/dev/null 2>&1 || { echo "install-deps.sh: no 'postgres' user after installing postgresql-15" >&2; exit 1; }

echo "== building citizen_sync"
PG_CONFIG=${PG_CONFIG:-/usr/lib/postgresql/15/bin/pg_config}
make -s PG_CONFIG=$PG_CONFIG >/dev/null
make -s PG_CONFIG=$PG_CONFIG install >/dev/null
make -s -C test/broker >/dev/null
echo "== citizen_sync built and installed into $($PG_CONFIG --pkglibdir)"
