# test/bench/lib.sh — helpers shared by the citizen_sync benchmark scripts.
#
# Sourced (not run) by bench_*.sh.  Each script gets its own private
# PostgreSQL 15 instance (initdb in a temporary directory, a non-default port,
# unix socket in that directory, shared_preload_libraries = 'citizen_sync')
# and, when it needs one, its own embedded Kafka broker (test/broker).
# Everything started here is stopped by the EXIT trap, by process id.
#
# Runs as root: the server and psql run as the `postgres` user (runuser).
# Environment shared by all scripts:
#   PG_CONFIG   pg_config of the server (default: PostgreSQL 15's)
#   BENCH_PORT  port of the private instance (default: 20000 + PID % 20000)
#   KEEP_TMP=1  keep the temporary directory (data dir, logs, generated files)
#   BENCH_PG_CONF  extra postgresql.conf lines (newline-separated)

set -euo pipefail
export LC_ALL=C.UTF-8 LANG=C.UTF-8

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$BENCH_DIR/../.." && pwd)
PG_CONFIG=${PG_CONFIG:-/usr/lib/postgresql/15/bin/pg_config}
PGBIN=$("$PG_CONFIG" --bindir)
BROKER_BIN=${CS_KAFKA_BROKER:-$REPO/test/broker/cs_kafka_broker}
PGUSER_OS=postgres

BENCH_TMP=
BROKER_PID=
PG_STARTED=
BENCH_PIDS=()

say()  { printf '\n==> %s\n' "$*"; }
info() { printf '    %s\n' "$*"; }
die()  { printf 'bench: %s\n' "$*" >&2; exit 1; }

bench_require() {
    [ "$(id -u)" -eq 0 ] || die "run as root (the server runs as '$PGUSER_OS' via runuser)"
    id "$PGUSER_OS" >/dev/null 2>&1 || die "no '$PGUSER_OS' user (install postgresql-15)"
    [ -x "$PGBIN/postgres" ] || die "no PostgreSQL server at $PGBIN"
    [ -f "$("$PG_CONFIG" --pkglibdir)/citizen_sync.so" ] ||
        die "citizen_sync is not installed: cd $REPO && make && make install"
    local c
    for c in "$@"; do
        case $c in
            broker) [ -x "$BROKER_BIN" ] || die "no broker at $BROKER_BIN: make -C test/broker" ;;
            *) command -v "$c" >/dev/null 2>&1 || die "missing command: $c" ;;
        esac
    done
}

bench_cleanup() {
    local rc=$?
    set +e
    trap '' PIPE INT TERM
    local p
    for p in "${BENCH_PIDS[@]}"; do
        kill "$p" 2>/dev/null && wait "$p" 2>/dev/null
    done
    if [ -n "$PG_STARTED" ]; then
        runuser -u "$PGUSER_OS" -- "$PGBIN/pg_ctl" -D "$BENCH_TMP/data" -m fast -w stop >/dev/null 2>&1 ||
            runuser -u "$PGUSER_OS" -- "$PGBIN/pg_ctl" -D "$BENCH_TMP/data" -m immediate -w stop >/dev/null 2>&1
    fi
    if [ -n "$BROKER_PID" ]; then
        kill "$BROKER_PID" 2>/dev/null
        wait "$BROKER_PID" 2>/dev/null
    fi
    if [ -n "$BENCH_TMP" ] && [ -d "$BENCH_TMP" ]; then
        if [ "${KEEP_TMP:-0}" = 1 ] || [ $rc -ne 0 ]; then
            printf 'bench: kept %s (logs: data/log, broker.err)\n' "$BENCH_TMP" >&2
        else
            rm -rf "$BENCH_TMP"
        fi
    fi
    exit $rc
}

# bench_setup NAME: temporary directory, EXIT trap.
bench_setup() {
    BENCH_TMP=$(mktemp -d "/tmp/csbench_$1.XXXXXX")
    chown "$PGUSER_OS": "$BENCH_TMP"
    chmod 755 "$BENCH_TMP"
    BENCH_PORT=${BENCH_PORT:-$((20000 + $$ % 20000))}
    trap bench_cleanup EXIT
    trap 'exit 130' INT TERM
}

# pg_init [extra conf lines...]: initdb and write postgresql.conf additions.
pg_init() {
    runuser -u "$PGUSER_OS" -- "$PGBIN/initdb" -D "$BENCH_TMP/data" -A trust -E UTF8 \
        --locale=C.UTF-8 -U postgres >"$BENCH_TMP/initdb.log" 2>&1 ||
        { cat "$BENCH_TMP/initdb.log" >&2; die "initdb failed"; }
    {
        echo "port = $BENCH_PORT"
        echo "listen_addresses = ''"
        echo "unix_socket_directories = '$BENCH_TMP'"
        echo "shared_preload_libraries = 'citizen_sync'"
        echo "max_worker_processes = 16"
        echo "shared_buffers = ${BENCH_SHARED_BUFFERS:-512MB}"
        echo "max_wal_size = 8GB"
        echo "checkpoint_timeout = 30min"
        echo "logging_collector = on"
        echo "log_directory = 'log'"
        echo "log_min_messages = info"
        printf '%s\n' "$@"
        [ -z "${BENCH_PG_CONF:-}" ] || printf '%s\n' "$BENCH_PG_CONF"
    } >>"$BENCH_TMP/data/postgresql.conf"
}

pg_start() {
    runuser -u "$PGUSER_OS" -- "$PGBIN/pg_ctl" -D "$BENCH_TMP/data" -l "$BENCH_TMP/pg_ctl.log" \
        -w -t 60 start >/dev/null || { cat "$BENCH_TMP/pg_ctl.log" >&2; die "server did not start"; }
    PG_STARTED=1
}

pg_stop() {
    runuser -u "$PGUSER_OS" -- "$PGBIN/pg_ctl" -D "$BENCH_TMP/data" -m fast -w stop >/dev/null
    PG_STARTED=
}

# install_tree DIR: build and install the library and scripts of DIR.
install_tree() {
    make -s -C "$1" PG_CONFIG="$PG_CONFIG" >/dev/null 2>"$BENCH_TMP/make.err" &&
        make -s -C "$1" PG_CONFIG="$PG_CONFIG" install >/dev/null 2>>"$BENCH_TMP/make.err" ||
        { cat "$BENCH_TMP/make.err" >&2; die "building $1 failed"; }
}

# The release the benchmarks compare with: the last commit of 0.1.0 (empty
# BASELINE_REF skips those comparisons).
BASELINE_REF=${BASELINE_REF-$(git -C "$REPO" log --format=%H --grep='^0.2.0 begins' 2>/dev/null | tail -1)}
[ -z "$BASELINE_REF" ] || BASELINE_REF="$BASELINE_REF^"

# install_baseline: the library and scripts of BASELINE_REF, instance restarted.
install_baseline() {
    mkdir -p "$BENCH_TMP/base"
    [ -f "$BENCH_TMP/base/Makefile" ] || git -C "$REPO" archive "$BASELINE_REF" | tar -x -C "$BENCH_TMP/base"
    pg_stop
    install_tree "$BENCH_TMP/base"
    pg_start
}

# install_current: back to this tree's library, instance restarted.
install_current() {
    pg_stop
    install_tree "$REPO"
    pg_start
}

# psql_db DB [psql args...]: unaligned, tuples only, stop on error.
psql_db() {
    local db=$1; shift
    runuser -u "$PGUSER_OS" -- "$PGBIN/psql" -h "$BENCH_TMP" -p "$BENCH_PORT" -U postgres \
        -X -q -A -t -v ON_ERROR_STOP=1 -d "$db" "$@"
}

# sql DB 'statement': one-shot query, prints the result.
sql() { psql_db "$1" -c "$2"; }

pg_reload() { sql postgres 'SELECT pg_reload_conf()' >/dev/null; }

# broker_start TOPIC:P...: starts the embedded broker, sets BOOTSTRAP.
broker_start() {
    local args=() t
    for t in "$@"; do args+=(--topic "$t"); done
    "$BROKER_BIN" --brokers 1 --no-stdin --control "$BENCH_TMP/broker.ctl" "${args[@]}" \
        >"$BENCH_TMP/broker.out" 2>"$BENCH_TMP/broker.err" &
    BROKER_PID=$!
    local i
    for i in $(seq 1 200); do
        grep -q '^READY' "$BENCH_TMP/broker.out" 2>/dev/null && break
        kill -0 "$BROKER_PID" 2>/dev/null || { cat "$BENCH_TMP/broker.err" >&2; die "broker exited"; }
        sleep 0.05   # poll interval, bounded by the loop count
    done
    grep -q '^READY' "$BENCH_TMP/broker.out" || die "broker not ready"
    BOOTSTRAP=$(sed -n 's/^BOOTSTRAP //p' "$BENCH_TMP/broker.out")
}

# broker_cmd LINE: one command on the broker's control FIFO; prints the answer.
broker_cmd() {
    local before i
    before=$(wc -l <"$BENCH_TMP/broker.out")
    echo "$1" >"$BENCH_TMP/broker.ctl"
    for i in $(seq 1 200); do
        [ "$(wc -l <"$BENCH_TMP/broker.out")" -gt "$before" ] && break
        sleep 0.05   # poll interval, bounded by the loop count
    done
    sed -n "$((before + 1))p" "$BENCH_TMP/broker.out"
}

# broker_retained TOPIC: "retained end" message counts of a topic.
broker_retained() {
    broker_cmd "offsets $1" | sed -n 's/.*retained=\([0-9]*\) end=\([0-9]*\).*/\1 \2/p'
}

# Wall clock in seconds with ms precision.
now_s() { date +%s.%N | cut -c1-14; }

# calc EXPR: floating point arithmetic.
calc() { python3 -c "print($1)"; }

# rss_kb PID FIELD: e.g. VmRSS, RssAnon (kB), empty if gone.
rss_kb() { awk -v f="$2:" '$1 == f { print $2 }' "/proc/$1/status" 2>/dev/null || true; }

# Machine summary for the report.
bench_machine() {
    info "machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.1f GiB", $2/1048576}' /proc/meminfo)," \
         "$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1)"
    info "server:  $("$PGBIN/postgres" --version), shared_buffers=${BENCH_SHARED_BUFFERS:-512MB}," \
         "fsync/synchronous_commit at defaults (on)"
}

# bench_result FIGURE VALUE [BASELINE_NAME BASELINE_VALUE [AIM]]: one row of
# the figures table that run_all.sh writes (test/bench/results.md), appended
# as tab-separated fields to $BENCH_RESULTS when it is set (a script run on
# its own only prints).  VALUE and BASELINE_VALUE are plain numbers (rates,
# milliseconds, percent); the ratio VALUE / BASELINE_VALUE is computed here.
bench_result() {
    local figure=$1 value=$2 bname=${3:-} bvalue=${4:-} aim=${5:-} ratio=
    [ -n "$value" ] || value=n/a
    if [ "$value" != n/a ] && [ -n "$bvalue" ] && [ "$bvalue" != 0 ]; then
        ratio=$(calc "round($value / $bvalue, 2)")
    fi
    info "figure: $figure = $value${bname:+ (baseline $bname = $bvalue, ratio $ratio)}"
    [ -z "${BENCH_RESULTS:-}" ] ||
        printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$figure" "$value" "$bname" "$bvalue" "$ratio" "$aim" >>"$BENCH_RESULTS"
}
