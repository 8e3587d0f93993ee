#!/usr/bin/env bash
# bench_capture.sh — the capture trigger's cost on the source's write path.
#
#   sudo bash test/bench/bench_capture.sh
#   SECONDS_PER_RUN=30 ROUNDS=3 sudo -E bash test/bench/bench_capture.sh
#   PROFILE=1 sudo -E bash test/bench/bench_capture.sh     # perf of the capture run
#
# A benchmark, not a test: it prints figures and never asserts timings.
#
# On a private instance (see lib.sh), three copies of the seed's citizens
# table (CITIZENS rows each, the seed's columns plus password_hash), and
# pgbench (-M prepared) with CLIENTS (2 and 8) clients, each transaction one
# change of one random citizen's phone:
#   bare     UPDATE citizens_bare SET phone = ... WHERE id = :id
#            (no outbox at all: the ceiling);
#   seed     BEGIN; UPDATE citizens_seed ...; INSERT INTO seed_outbox
#            (aggregate_type, aggregate_id, event_type, payload) VALUES (...,
#            the snapshot built from the same values by jsonb_build_object);
#            COMMIT — the seed's hand-written transactional outbox (its outbox
#            table: bigserial id, the same columns, an index on pending rows);
#   capture  UPDATE citizens_cap ... on a table captured by
#            citizen_sync.capture() (published columns: the seed's, not
#            password_hash), no publisher running (so the outbox only grows,
#            as the seed's does).
# Each round runs the three, interleaved, for SECONDS_PER_RUN each, after a
# CHECKPOINT; the table printed at the end has the median TPS of the rounds
# and the ratios capture/bare and capture/seed.
#
# Both with synchronous_commit off (the CPU cost of the write path: what the
# trigger adds is all there is to see) and on (the default: every variant
# also waits for its WAL flush at commit), one table each (SYNC_COMMIT).
#
# Environment: CITIZENS (10000), SECONDS_PER_RUN (15), ROUNDS (3), CLIENTS
# ("2 8"), SYNC_COMMIT ("off on"), PROFILE=1 (perf record -g of every backend during one extra
# capture run at the first client count, then perf report's top entries),
# plus lib.sh's.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

CITIZENS=${CITIZENS:-10000}
SECONDS_PER_RUN=${SECONDS_PER_RUN:-15}
ROUNDS=${ROUNDS:-3}
CLIENTS=${CLIENTS:-"2 8"}
SYNC_COMMIT=${SYNC_COMMIT:-"off on"}
VARIANTS=(bare seed capture)

bench_require python3
[ -x "$PGBIN/pgbench" ] || die "no pgbench in $PGBIN"
bench_setup capture
say "bench_capture: $CITIZENS citizens, clients $CLIENTS, $ROUNDS rounds of $SECONDS_PER_RUN s per variant"
bench_machine
info "synchronous_commit: $SYNC_COMMIT (one table each), pgbench -M prepared"

pg_init "max_connections = 50"
pg_start
sql postgres 'CREATE DATABASE auth_db' >/dev/null
psql_db auth_db >/dev/null <<SQL
CREATE EXTENSION citizen_sync;
CREATE TABLE citizens_bare (
    id                bigint PRIMARY KEY,
    name              varchar(255) NOT NULL,
    email             varchar(255) NOT NULL,
    phone             varchar(50),
    address           text,
    city              varchar(100),
    postal_code       varchar(20),
    email_verified    boolean NOT NULL DEFAULT false,
    identity_verified boolean NOT NULL DEFAULT false,
    password_hash     text);
CREATE TABLE citizens_seed (LIKE citizens_bare INCLUDING ALL);
CREATE TABLE citizens_cap (LIKE citizens_bare INCLUDING ALL);
CREATE TABLE seed_outbox (
    id             bigserial PRIMARY KEY,
    aggregate_type varchar(100) NOT NULL,
    aggregate_id   bigint NOT NULL,
    event_type     varchar(100) NOT NULL,
    payload        jsonb NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now(),
    published_at   timestamptz,
    retry_count    int NOT NULL DEFAULT 0);
CREATE INDEX seed_outbox_pending ON seed_outbox (id) WHERE published_at IS NULL;
INSERT INTO citizens_bare
SELECT i, 'Citizen ' || i, 'citizen' || i || '@example.gov', '+1-555-' || lpad((i % 10000)::text, 4, '0'),
       (i % 900 + 100) || ' Elm St', 'Springfield', (10000 + i % 89999)::text, i % 2 = 0, i % 3 = 0,
       md5(i::text)
  FROM generate_series(1, $CITIZENS) i;
INSERT INTO citizens_seed SELECT * FROM citizens_bare;
INSERT INTO citizens_cap SELECT * FROM citizens_bare;
SELECT citizen_sync.capture('citizens_cap', 'citizen',
       ARRAY['name', 'email', 'phone', 'address', 'city', 'postal_code',
             'email_verified', 'identity_verified']);
VACUUM ANALYZE;
SQL

# The pgbench scripts.
cat >"$BENCH_TMP/bare.sql" <<SQL
\set id random(1, $CITIZENS)
\set p random(1000000, 9999999)
UPDATE citizens_bare SET phone = '+1-' || :p WHERE id = :id;
SQL
cat >"$BENCH_TMP/capture.sql" <<SQL
\set id random(1, $CITIZENS)
\set p random(1000000, 9999999)
UPDATE citizens_cap SET phone = '+1-' || :p WHERE id = :id;
SQL
cat >"$BENCH_TMP/seed.sql" <<SQL
\set id random(1, $CITIZENS)
\set p random(1000000, 9999999)
BEGIN;
UPDATE citizens_seed SET phone = '+1-' || :p WHERE id = :id;
INSERT INTO seed_outbox (aggregate_type, aggregate_id, event_type, payload)
VALUES ('citizen', :id, 'updated',
        jsonb_build_object('event_timestamp', now(),
            'data', jsonb_build_object('citizen_id', :id::bigint,
                'snapshot', jsonb_build_object('id', :id::bigint, 'name', 'Citizen ' || :id::text,
                    'email', 'citizen' || :id::text || '@example.gov', 'phone', '+1-' || :p::text,
                    'address', '100 Elm St', 'city', 'Springfield', 'postal_code', '10001',
                    'email_verified', false, 'identity_verified', false))));
COMMIT;
SQL
chmod 644 "$BENCH_TMP"/*.sql

# run VARIANT CLIENTS: prints the TPS (excluding connection time).
run() {
    local variant=$1 clients=$2 out
    psql_db auth_db -c 'CHECKPOINT' >/dev/null
    out=$(runuser -u "$PGUSER_OS" -- "$PGBIN/pgbench" -n -M prepared -h "$BENCH_TMP" -p "$BENCH_PORT" \
        -U postgres -c "$clients" -j "$clients" -T "$SECONDS_PER_RUN" -f "$BENCH_TMP/$variant.sql" auth_db 2>&1) ||
        { printf '%s\n' "$out" >&2; die "pgbench $variant failed"; }
    grep -q '^number of failed transactions: 0' <<<"$out" ||
        ! grep -q '^number of failed transactions' <<<"$out" ||
        { printf '%s\n' "$out" >&2; die "pgbench $variant: failed transactions"; }
    sed -n 's/^tps = \([0-9.]*\) (without initial connection time)/\1/p' <<<"$out"
}

median() { tr ' ' '\n' | grep . | sort -g | awk '{a[NR] = $1} END {print (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2}'; }

declare -A TPS
for m in $SYNC_COMMIT; do
    sql auth_db "ALTER SYSTEM SET synchronous_commit = $m" >/dev/null
    pg_reload
    for r in $(seq 1 "$ROUNDS"); do
        for c in $CLIENTS; do
            say "synchronous_commit = $m, round $r, $c clients"
            for v in "${VARIANTS[@]}"; do
                t=$(run "$v" "$c")
                TPS[$m,$v,$c]="${TPS[$m,$v,$c]:-} $t"
                info "$(printf '%-8s %10.0f tps' "$v" "$t")"
            done
        done
    done
done

# Events written: every capture and seed transaction wrote one outbox row.
info "outbox rows: capture $(sql auth_db 'SELECT count(*) FROM citizen_sync.outbox')," \
     "seed $(sql auth_db 'SELECT count(*) FROM seed_outbox')"

for m in $SYNC_COMMIT; do
    say "capture on the write path, synchronous_commit = $m: median TPS of $ROUNDS rounds ($SECONDS_PER_RUN s each)"
    printf '    | clients | bare table | seed outbox (UPDATE + INSERT) | capture() | capture / bare | capture / seed |\n'
    printf '    | ---: | ---: | ---: | ---: | ---: | ---: |\n'
    for c in $CLIENTS; do
        b=$(median <<<"${TPS[$m,bare,$c]}")
        s=$(median <<<"${TPS[$m,seed,$c]}")
        k=$(median <<<"${TPS[$m,capture,$c]}")
        printf '    | %s | %.0f | %.0f | %.0f | %.2f | %.2f |\n' "$c" "$b" "$s" "$k" \
            "$(calc "$k / $b")" "$(calc "$k / $s")"
    done
done
info "targets (issue 11): capture / bare >= 0.90, capture / seed >= 1.00"

if [ "${PROFILE:-0}" = 1 ]; then
    command -v perf >/dev/null 2>&1 || die "PROFILE=1 needs perf"
    c=${CLIENTS%% *}
    sql auth_db "ALTER SYSTEM SET synchronous_commit = off" >/dev/null
    pg_reload
    say "profile: perf record -g of every backend during a capture run, $c clients, synchronous_commit = off"
    ( sleep 2; pids=$(pgrep -d, -P "$(head -1 "$BENCH_TMP/data/postmaster.pid")" postgres)
      perf record -q -g -p "$pids" -o "$BENCH_TMP/perf.data" -- sleep $((SECONDS_PER_RUN - 4)) \
          >/dev/null 2>&1 ) &
    prof=$!
    run capture "$c" >/dev/null
    wait "$prof" || true
    info "inclusive (children) share of the backends' samples, named user-space functions:"
    perf report -i "$BENCH_TMP/perf.data" --children --percent-limit 4 --stdio \
        --sort symbol -g none 2>/dev/null | grep -v '^#' | grep '\[\.\] [A-Za-z_]' | head -30 | sed 's/^/    /'
    info "self time, top entries:"
    perf report -i "$BENCH_TMP/perf.data" --no-children --percent-limit 1 --stdio \
        --sort dso,symbol -g none 2>/dev/null | grep -v '^#' | grep . | head -25 | sed 's/^/    /'
fi
