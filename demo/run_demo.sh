#!/usr/bin/env bash
# citizen_sync demo: the seed's scenario on one machine, from nothing.
#
# Installs what it needs (Debian packages, the extension, the embedded Kafka
# broker), starts one PostgreSQL 15 instance holding auth_db, permits_db,
# revenue_db and parks_db, and the embedded broker on localhost; then:
#   1. a citizen is created in auth_db (captured into the outbox);
#   2. her phone changes;
#   3. a duplicate and a late, older event are injected straight into Kafka;
#   4. a citizen is deleted;
# printing after each step every service's cache with the measured lag
# (event_timestamp at capture -> applied in the cache), then the statistics.
#
# Usage, as root (a fresh Debian 12 root shell has no sudo; with sudo, prefix it):
#        bash demo/run_demo.sh               (stops everything at the end)
#        DEMO_KEEP=1 bash demo/run_demo.sh   (leaves it running to explore)
#        CS_INSTALLED=1 bash demo/run_demo.sh
#                     uses the extension already installed (the Debian package
#                     postgresql-15-citizen-sync, or `make install`) instead of
#                     installing packages and building it; builds only the
#                     embedded broker (needs librdkafka-dev, a C compiler, kcat)
# PG_CONFIG selects the PostgreSQL installation (default: Debian's 15).
#
# The order is the one README's quick start gives: the server starts with the
# library preloaded but no worker configured, the databases, the extension,
# the capture and the roles are created, and only then are the workers
# configured (reload), so that no worker starts before what it needs exists.
# Every command runs from / so that PostgreSQL's programs, run as postgres,
# never start in a directory postgres cannot enter (root's home).
#
# Its queries are safe to copy into any session whatever is planted in
# public (test/t/403_shipped_queries.pl checks): tables are schema-qualified,
# and every operator or function that takes a literal has an exact match in
# pg_catalog for the literal's written type ('x'::text, numeric 1000.0) or is
# called as pg_catalog.f(), because an exact match in public would otherwise
# win over a pg_catalog one that needs a cast.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
WORK=$(realpath -m "${DEMO_DIR:-/tmp/citizen_sync_demo}")
PORT=${DEMO_PORT:-5433}
SERVICES=(permits revenue parks)
export PG_CONFIG=${PG_CONFIG:-/usr/lib/postgresql/15/bin/pg_config}

if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null 2>&1 && exec sudo -E "$0" "$@"
    echo "run_demo.sh: run me as root (it installs packages and the extension)" >&2
    exit 1
fi
cd /

if [ "${CS_INSTALLED:-0}" = 1 ]; then
    bash "$ROOT/scripts/check-installed.sh"
    make -s -C "$ROOT/test/broker" >/dev/null
    command -v kcat >/dev/null || { echo "run_demo.sh: kcat is missing (apt-get install kcat)" >&2; exit 1; }
else
    bash "$ROOT/scripts/install-deps.sh"
fi
PGBIN=$("$PG_CONFIG" --bindir)

say()  { printf '\n\033[1m== %s\033[0m\n' "$*"; }
as_pg() { runuser -u postgres -- "$@"; }
psql_db() { as_pg "$PGBIN/psql" -X -q -v ON_ERROR_STOP=1 -h "$WORK" -p "$PORT" -d "$1" "${@:2}"; }

cleanup() {
    [ "${DEMO_KEEP:-0}" = 1 ] && return
    as_pg "$PGBIN/pg_ctl" -D "$WORK/data" -m fast stop >/dev/null 2>&1 || true
    [ -f "$WORK/broker.pid" ] && kill "$(cat "$WORK/broker.pid")" 2>/dev/null || true
}
trap cleanup EXIT

# poll "what" deadline_s db sql: until the query returns 't'
poll() {
    local what=$1 deadline=$(( $(date +%s) + $2 )) db=$3 sql=$4
    until [ "$(psql_db "$db" -tAc "$sql")" = t ]; do
        if [ "$(date +%s)" -ge "$deadline" ]; then
            echo "run_demo.sh: timed out waiting for $what" >&2
            echo "--- server log:" >&2; tail -20 "$WORK/server.log" >&2
            exit 1
        fi
    done
}

say "Starting the embedded Kafka broker and PostgreSQL 15 in $WORK"
if [ -f "$WORK/data/postmaster.pid" ]; then
    as_pg "$PGBIN/pg_ctl" -D "$WORK/data" -m fast stop >/dev/null 2>&1 || true
fi
[ -f "$WORK/broker.pid" ] && kill "$(cat "$WORK/broker.pid")" 2>/dev/null || true
rm -rf "$WORK" && mkdir -p "$WORK" && chown postgres "$WORK"
"$ROOT/test/broker/cs_kafka_broker" --brokers 1 --topic gov.auth.citizen:4 --no-stdin \
    > "$WORK/broker.out" 2> "$WORK/broker.log" &
echo $! > "$WORK/broker.pid"
deadline=$(( $(date +%s) + 20 ))
until grep -q READY "$WORK/broker.out"; do
    [ "$(date +%s)" -lt "$deadline" ] || { echo "broker did not start" >&2; exit 1; }
    kill -0 "$(cat "$WORK/broker.pid")" || { echo "broker died" >&2; cat "$WORK/broker.log" >&2; exit 1; }
done
BOOTSTRAP=$(awk '/^BOOTSTRAP/{print $2}' "$WORK/broker.out")
echo "Kafka (librdkafka mock cluster) at $BOOTSTRAP"

as_pg "$PGBIN/initdb" -D "$WORK/data" -E UTF8 --locale=C.UTF-8 -A trust >/dev/null
cat >> "$WORK/data/postgresql.conf" <<EOF
port = $PORT
listen_addresses = ''
unix_socket_directories = '$WORK'
shared_preload_libraries = 'citizen_sync'
max_worker_processes = 16
EOF
as_pg "$PGBIN/pg_ctl" -D "$WORK/data" -l "$WORK/server.log" -w start >/dev/null

say "auth_db owns citizens; every change is captured into citizen_sync.outbox"
psql_db postgres -c "CREATE DATABASE auth_db"
psql_db auth_db <<'SQL'
CREATE EXTENSION citizen_sync;
CREATE TABLE public.citizens (
    id bigserial PRIMARY KEY, name text NOT NULL, email text NOT NULL, phone text,
    address text, city text, postal_code text,
    email_verified boolean NOT NULL DEFAULT false,
    identity_verified boolean NOT NULL DEFAULT false,
    password_hash text);             -- never published
SQL
psql_db auth_db -c "SELECT citizen_sync.capture('public.citizens', 'citizen',
       ARRAY['name','email','phone','address','city','postal_code',
             'email_verified','identity_verified'])" >/dev/null
psql_db auth_db -P footer=off -c "SELECT source, aggregate_type, id_column, columns FROM citizen_sync.captures"
for s in "${SERVICES[@]}"; do
    psql_db postgres -c "CREATE DATABASE ${s}_db"
    psql_db "${s}_db" -c "CREATE EXTENSION citizen_sync" -c "SELECT citizen_sync.create_service_roles('$s')" >/dev/null
    echo "${s}_db: cache.citizen_refs, roles ${s}_service_user / ${s}_sync_user / ${s}_readonly_user"
done

say "Configuring the workers (postgresql.conf, then a reload): the publisher for auth_db, a consumer per service"
cat >> "$WORK/data/postgresql.conf" <<EOF
citizen_sync.brokers = '$BOOTSTRAP'
citizen_sync.outbox_database = 'auth_db'
citizen_sync.databases = 'permits_db:permits_sync_user, revenue_db:revenue_sync_user, parks_db:parks_sync_user'
citizen_sync.kafka_properties = 'session.timeout.ms=6000;heartbeat.interval.ms=500'
EOF
psql_db postgres -tAc "SELECT pg_catalog.pg_reload_conf()" >/dev/null

say "Waiting for the consumers to join their groups"
for s in "${SERVICES[@]}"; do
    poll "the ${s} consumer" 60 "${s}_db" \
        "SELECT coalesce(sum(partitions), 0) = 4 FROM citizen_sync.consumer_stats WHERE database = '${s}_db'"
done
echo "three consumers running, each assigned the 4 partitions of gov.auth.citizen"

# wait_caches SQL-CONDITION: poll every cache until it holds, then print citizen 1
wait_caches() {
    local cond=$1
    for s in "${SERVICES[@]}"; do
        poll "${s}_db cache" 30 "${s}_db" "SELECT EXISTS (SELECT 1 FROM cache.citizen_refs WHERE $cond)"
    done
    for s in "${SERVICES[@]}"; do
        psql_db "${s}_db" -P footer=off -c "
            SELECT '${s}_db' AS cache, citizen_id AS id, name, phone, event_version AS version,
                   is_active, (deleted_at IS NOT NULL) AS deleted
              FROM cache.citizen_refs WHERE citizen_id = 1"
    done
}

# version_of N: the event_version of citizen 1's Nth change (versions are
# strictly increasing and clock-based, not 1, 2, 3)
version_of() {
    local n=$(( $1 - 1 ))
    psql_db auth_db -tAc "SELECT payload ->> 'event_version'::text FROM citizen_sync.outbox WHERE aggregate_id = '1' ORDER BY id LIMIT 1 OFFSET $n"
}

# lag_of VERSION: event_timestamp (capture) -> applied, per cache, in ms
lag_of() {
    local v=$1 ts ms
    ts=$(psql_db auth_db -tAc "SELECT payload ->> 'event_timestamp'::text FROM citizen_sync.outbox
                               WHERE aggregate_id = '1' AND (payload ->> 'event_version'::text)::bigint = $v")
    for s in "${SERVICES[@]}"; do
        ms=$(psql_db "${s}_db" -tAc "SELECT round(extract(epoch FROM last_synced_at - timestamptz '$ts') * 1000.0, 1)
                                     FROM cache.citizen_refs WHERE citizen_id = 1")
        printf '  %-11s lag %s ms\n' "${s}_db" "$ms"
    done
}

say "1. Maria Garcia registers (auth_db INSERT, one transaction with its outbox row)"
psql_db auth_db -c "INSERT INTO public.citizens (name, email, phone, address, city, postal_code, email_verified, password_hash)
                    VALUES ('Maria Garcia', 'maria@example.gov', '+1-555-0100', '12 Elm St', 'Springfield', '12345', true, 'secret-hash')"
psql_db auth_db -P footer=off -c "SELECT id, event_type, payload -> 'event_version'::text AS version, published_at IS NOT NULL AS published FROM citizen_sync.outbox"
V1=$(version_of 1)
wait_caches "citizen_id = 1 AND event_version = $V1"
echo "measured lag (event captured -> applied in the cache):"; lag_of "$V1"

say "2. Her phone changes to +1-555-0199"
psql_db auth_db -c "UPDATE public.citizens SET phone = '+1-555-0199' WHERE id = 1"
V2=$(version_of 2)
wait_caches "citizen_id = 1 AND event_version = $V2"
echo "measured lag:"; lag_of "$V2"

say "3. Kafka redelivers the phone change (duplicate) and a late, older event arrives"
# the phone change (citizen 1's latest outbox row) as the publisher sent it
DUP=$(psql_db auth_db -tAc "SELECT (payload OPERATOR(pg_catalog.||) pg_catalog.jsonb_build_object('event_type', 'citizen.updated', 'event_id', pg_catalog.format('evt_%s_%s', id, (pg_catalog.extract('epoch', created_at) OPERATOR(pg_catalog.*) 1000000)::pg_catalog.int8)))::text FROM citizen_sync.outbox WHERE aggregate_id = '1' ORDER BY id DESC LIMIT 1")
OLD='{"event_type":"citizen.updated","event_id":"evt_late_1","event_version":1,"event_timestamp":"2026-01-01T00:00:00.000Z","data":{"citizen_id":1,"snapshot":{"id":1,"name":"Maria Garcia","email":"maria@example.gov","phone":"+1-555-0000"}}}'
printf 'citizen_1\t%s\ncitizen_1\t%s\n' "$DUP" "$OLD" | kcat -P -b "$BOOTSTRAP" -t gov.auth.citizen -K "$(printf '\t')"
for s in "${SERVICES[@]}"; do
    poll "${s} to see both" 30 "${s}_db" "SELECT duplicate >= 1 AND stale >= 1 FROM citizen_sync.consumer_stats WHERE database = '${s}_db'"
done
wait_caches "citizen_id = 1 AND event_version = $V2"   # still the 2nd version: the late, older one lost
echo "the duplicate was recognised by its event_id, the older version lost to the newer one:"
psql_db permits_db -P footer=off -c "SELECT database, applied, stale, duplicate FROM citizen_sync.consumer_stats"

say "4. Maria's account is deleted (soft delete in every cache)"
psql_db auth_db -c "DELETE FROM public.citizens WHERE id = 1"
wait_caches "citizen_id = 1 AND NOT is_active"
echo "measured lag:"; lag_of "$(version_of 3)"

say "Least privilege: the permits service may read the cache but not write it"
psql_db permits_db -c "SET ROLE permits_service_user" -c "SELECT count(*) AS readable FROM cache.citizen_refs" 
psql_db permits_db -c "SET ROLE permits_service_user" -c "UPDATE cache.citizen_refs SET phone = 'x'" 2>&1 | sed 's/^/  /' || true

say "Statistics"
psql_db permits_db -P footer=off -c "SELECT kind, database, role, state, partitions, applied, deleted, stale, duplicate, dead_lettered, published, lag FROM citizen_sync.worker_stats ORDER BY kind, database"

if [ "${DEMO_KEEP:-0}" = 1 ]; then
    say "Left running for you to explore"
    echo "  psql:   su - postgres -c 'psql -h $WORK -p $PORT -d auth_db'"
    echo "  stop:   su - postgres -c '$PGBIN/pg_ctl -D $WORK/data stop'; kill $(cat "$WORK/broker.pid")"
else
    say "Done; the instance and the broker are stopped (DEMO_KEEP=1 leaves them running)"
fi
