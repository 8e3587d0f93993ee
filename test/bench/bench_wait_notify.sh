#!/usr/bin/env bash
# bench_wait_notify.sh — read-your-writes latency and the cost of notifications.
#
#   sudo bash test/bench/bench_wait_notify.sh
#   EVENTS=500000 WAITS=500 sudo -E bash test/bench/bench_wait_notify.sh
#
# A benchmark, not a test: it prints figures, never asserts timings.
#
# 1. wait_for latency (wait_latency.py): one psql session in permits_db calls
#    citizen_sync.wait_for('cache.citizen_refs', id, 1, '10 s') for WAITS new
#    citizens, one after the other; once it sleeps, the citizen's event is
#    produced by a new kcat -P per event (upper bound: includes its start).  Latency =
#    the time wait_for returned true (clock_timestamp() in the session) minus
#    the send time: broker, consumer batch, commit, wake-up and re-read.
#    Also the wake-up alone: wait_for's return minus the commit time of the
#    batch that applied the row (track_commit_timestamp = on).
#    Prints p50/p95/p99/max of both.  Then permits_db is dropped (its consumer with it).
# 2. Notifications at full rate: EVENTS events (gen_events.py, CITIZENS
#    citizens) pre-loaded in topic gov.auth.citizen (after the WAITS events
#    of part 1); two service databases of
#    the same instance consume the same backlog one after the other: plain_db
#    (no notifications), then notify_db with set_notify('cache.citizen_refs',
#    'citizen_changes') and a psql session LISTENing (reading them every
#    0.2 s).  Elapsed = last_batch_at - min(processed_at), as bench_consumer.sh.
#    Prints both rates and the notifications received.
#
# Environment: EVENTS (200000), CITIZENS (50000), PARTITIONS (16),
# BATCH_SIZE (5000), WAITS (300), TIMEOUT (600 s), plus lib.sh's.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

EVENTS=${EVENTS:-200000}
CITIZENS=${CITIZENS:-50000}
PARTITIONS=${PARTITIONS:-16}
BATCH_SIZE=${BATCH_SIZE:-5000}
WAITS=${WAITS:-300}
TIMEOUT=${TIMEOUT:-600}
TOPIC=gov.auth.citizen

bench_require python3 kcat broker
bench_setup wait_notify
say "bench_wait_notify: $WAITS waits; $EVENTS events over $CITIZENS citizens, batch_size $BATCH_SIZE"
bench_machine

broker_start "$TOPIC:$PARTITIONS"

pg_init "track_commit_timestamp = on" \
        "citizen_sync.brokers = '$BOOTSTRAP'" \
        "citizen_sync.databases = 'permits_db:permits_sync_user, plain_db:plain_sync_user, notify_db:notify_sync_user'" \
        "citizen_sync.kafka_properties = 'session.timeout.ms=6000'" \
        "citizen_sync.batch_size = $BATCH_SIZE"
pg_start

# --- 1. wait_for latency -------------------------------------------------------
say "wait_for latency: producer send -> wait_for true"
sql postgres 'CREATE DATABASE permits_db' >/dev/null
psql_db permits_db -c 'CREATE EXTENSION citizen_sync' \
    -c "SELECT citizen_sync.create_service_roles('permits')" >/dev/null
PSQL_CMD=$(python3 -c 'import json,sys; print(json.dumps(sys.argv[1:]))' runuser -u "$PGUSER_OS" -- \
    "$PGBIN/psql" -h "$BENCH_TMP" -p "$BENCH_PORT" -U postgres -X -q -A -t -d permits_db)
KCAT_CMD=$(python3 -c 'import json,sys; print(json.dumps(sys.argv[1:]))' kcat -P -b "$BOOTSTRAP" \
    -t "$TOPIC" -K $'\t' -X linger.ms=0)
python3 "$BENCH_DIR/wait_latency.py" --psql "$PSQL_CMD" --kcat "$KCAT_CMD" --waits "$WAITS" | sed 's/^/    /'

# --- 2. notifications at full rate -----------------------------------------------
# permits_db stops consuming (its consumer is terminated with the database)
sql postgres 'DROP DATABASE permits_db WITH (FORCE)' >/dev/null
say "pre-loading the broker"
python3 "$BENCH_DIR/gen_events.py" --events "$EVENTS" --citizens "$CITIZENS" \
    --dup 0 --stale 0 --out "$BENCH_TMP/events.tsv" 2>&1 | sed 's/^/    /'
kcat -P -b "$BOOTSTRAP" -t "$TOPIC" -K $'\t' -X linger.ms=5 <"$BENCH_TMP/events.tsv"
TOTAL=$((EVENTS + WAITS))   # the topic also holds the latency run's events
drain() {
    local db=$1 start offs
    start=$(date +%s)
    while :; do
        offs=$(sql "$db" "SELECT coalesce(sum(next_offset), 0) FROM citizen_sync.consumer_offsets
                           WHERE topic = '$TOPIC'" 2>/dev/null || echo 0)
        [ "${offs:-0}" -ge "$TOTAL" ] && break
        [ $(($(date +%s) - start)) -lt "$TIMEOUT" ] || die "timeout in $db: offsets $offs of $TOTAL"
        sleep 0.5   # poll interval of a benchmark, bounded by TIMEOUT
    done
    sql "$db" "SELECT round(extract(epoch FROM s.last_batch_at - (SELECT min(processed_at) FROM cache.processed_events))::numeric, 2),
                      s.batches FROM citizen_sync.consumer_stats s
                WHERE s.database = pg_catalog.current_database()" | tr '|' ' '
}

say "notifications off: plain_db drains the backlog"
sql postgres 'CREATE DATABASE plain_db' >/dev/null
psql_db plain_db -c 'CREATE EXTENSION citizen_sync' -c "SELECT citizen_sync.create_service_roles('plain')" >/dev/null
read -r off_s off_batches < <(drain plain_db)
OFF_RATE=$(calc "round($TOTAL / $off_s)")
info "off: $TOTAL events in $off_s s = $OFF_RATE events/s ($off_batches batches)"

say "notifications on: notify_db drains the same backlog, one LISTENer"
sql postgres 'CREATE DATABASE notify_db' >/dev/null
# the extension and the opt-in in one transaction: the consumer starts with it
psql_db notify_db -1 -c 'CREATE EXTENSION citizen_sync' -c "SELECT citizen_sync.create_service_roles('notify')" \
    -c "SELECT citizen_sync.set_notify('cache.citizen_refs', 'citizen_changes', max_keys => 1000)" >/dev/null
{ echo 'LISTEN citizen_changes;'; while :; do echo 'SELECT 1;'; sleep 0.2; done; } |
    runuser -u "$PGUSER_OS" -- "$PGBIN/psql" -h "$BENCH_TMP" -p "$BENCH_PORT" -U postgres -X -q -A -t \
        -d notify_db >"$BENCH_TMP/listener.out" 2>&1 &
BENCH_PIDS+=($!)
read -r on_s on_batches < <(drain notify_db)
ON_RATE=$(calc "round($TOTAL / $on_s)")
sleep 1   # let the listener print what it has (figure only)
received=$(grep -c 'Asynchronous notification "citizen_changes"' "$BENCH_TMP/listener.out" || true)
reread=$(grep -c 'reread' "$BENCH_TMP/listener.out" || true)
info "on:  $TOTAL events in $on_s s = $ON_RATE events/s ($on_batches batches;" \
     "$received notifications received, $reread of them re-read markers)"
info "notifications cost: $(calc "round(100.0 * (1 - $ON_RATE / $OFF_RATE), 1)") % of the apply rate"
