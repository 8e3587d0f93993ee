#!/usr/bin/env bash
# bench_consumer.sh — the consumer worker: Kafka backlog to cache, and latency.
#
#   sudo bash test/bench/bench_consumer.sh
#   EVENTS=200000 CITIZENS=20000 sudo -E bash test/bench/bench_consumer.sh
#
# A benchmark, not a test: it prints figures, never asserts timings.
#
# 1. Throughput.  gen_events.pl writes EVENTS events over CITIZENS citizens
#    (DUP exact duplicates, STALE stale versions); kcat -P -K'\t' pre-loads
#    them into the embedded broker, topic gov.auth.citizen with PARTITIONS
#    partitions (the mock broker keeps only 5 MiB per partition: 128 for 1M
#    events).  Then a private instance starts with citizen_sync.brokers and
#    citizen_sync.databases = 'permits_db:permits_sync_user',
#    kafka_properties = 'session.timeout.ms=6000', batch_size = BATCH_SIZE,
#    and permits_db gets the extension and the roles: the launcher starts the
#    consumer, which drains the backlog.  The script polls
#    citizen_sync.consumer_stats and the stored offsets
#    (citizen_sync.consumer_offsets, the database's truth) every POLL s until
#    the next offsets add up to EVENTS (everything applied and committed), and
#    samples the worker's VmRSS and RssAnon (/proc/<pid>/status; pid from
#    consumer_stats) at each poll once it has applied its first batch, and
#    every second during the latency run.
#    Elapsed time = last_batch_at of the worker at the end minus the start of
#    the first batch's transaction (min(processed_at) of cache.processed_events,
#    which is now() of that transaction): from the first applied batch until
#    all are applied, excluding the group join.  Rate = EVENTS / elapsed.
#    RssAnon is the process's private memory (heap); VmRSS also counts the
#    shared buffers it has touched, so it grows towards shared_buffers while
#    the cache grows — that is not a leak.
# 2. Baselines, same machine, same instance, consumer idle:
#      - kcat -C reading the whole topic from the beginning to its end
#        (-e, output to /dev/null): the raw consume rate of the broker;
#      - citizen_sync.apply_events() over the same EVENTS from a staging table
#        in another database, BATCH_SIZE per call and transaction (the apply
#        core alone, without Kafka).
# 3. Latency.  paced_producer.py produces LAT_RATE events/s for LAT_SECONDS s
#    through one kcat -P (linger.ms=0), each a new citizen's first version,
#    recording each event's send time (just before it is written to kcat).
#    The instance runs with track_commit_timestamp = on, so the commit time
#    of the transaction that applied an event is
#    pg_xact_commit_timestamp(xmin) of its cache.processed_events row (written
#    in the same transaction as the cache row and the stored offsets, and
#    never updated).  Produce-to-visible latency = that commit time minus the
#    send time: the moment the row is visible to readers, measured exactly,
#    with one clock (same machine).  Prints p50/p95/p99/max.
#
# 4. 0.1.0's consumer on the same backlog (unless SKIP_BASELINE=1 or
#    BASELINE_REF is empty): the library of BASELINE_REF (lib.sh) is installed,
#    the instance restarted with only base_db consumed (a group of its own),
#    the backlog drained and timed as in 1; then this tree's library again.
#    Prints the generic path's rate against it (issue 10: at least as fast).
#
# Environment: EVENTS (1000000), CITIZENS (100000), DUP (0.10), STALE (0.10),
# PARTITIONS (128), BATCH_SIZE (5000), BATCH_WAIT (citizen_sync.batch_wait,
# default the GUC's), POLL (0.5), TIMEOUT (900 s), LAT_RATE (1000),
# LAT_SECONDS (15), SKIP_BASELINE=1, SKIP_LATENCY=1, plus lib.sh's.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

EVENTS=${EVENTS:-1000000}
CITIZENS=${CITIZENS:-100000}
DUP=${DUP:-0.10}
STALE=${STALE:-0.10}
PARTITIONS=${PARTITIONS:-128}
BATCH_SIZE=${BATCH_SIZE:-5000}
POLL=${POLL:-0.5}
TIMEOUT=${TIMEOUT:-900}
LAT_RATE=${LAT_RATE:-1000}
LAT_SECONDS=${LAT_SECONDS:-15}
TOPIC=gov.auth.citizen

bench_require python3 kcat broker
bench_setup consumer
say "bench_consumer: $EVENTS events over $CITIZENS citizens, $PARTITIONS partitions, batch_size $BATCH_SIZE"
bench_machine

say "generating the stream"
perl "$BENCH_DIR/gen_events.pl" --events "$EVENTS" --citizens "$CITIZENS" \
    --dup "$DUP" --stale "$STALE" --out "$BENCH_TMP/events.tsv" 2>&1 | sed 's/^/    /'
chown "$PGUSER_OS": "$BENCH_TMP/events.tsv"

say "pre-loading the broker"
broker_start "$TOPIC:$PARTITIONS"
info "broker at $BOOTSTRAP"
t0=$(now_s)
kcat -P -b "$BOOTSTRAP" -t "$TOPIC" -K $'\t' -X linger.ms=5 -X message.timeout.ms=300000 \
    <"$BENCH_TMP/events.tsv"
t1=$(now_s)
read -r retained end < <(broker_retained "$TOPIC")
info "kcat -P: $end messages in $(calc "round($t1 - $t0, 2)") s" \
     "($(calc "round($end / ($t1 - $t0))") msg/s); retained $retained"
[ "$retained" = "$EVENTS" ] && [ "$end" = "$EVENTS" ] ||
    die "the broker holds $retained of $EVENTS messages (end $end): use more PARTITIONS"

pg_init "track_commit_timestamp = on" \
        "citizen_sync.brokers = '$BOOTSTRAP'" \
        "citizen_sync.databases = 'permits_db:permits_sync_user'" \
        "citizen_sync.kafka_properties = 'session.timeout.ms=6000'" \
        "citizen_sync.batch_size = $BATCH_SIZE" \
        ${BATCH_WAIT:+"citizen_sync.batch_wait = $BATCH_WAIT"}
pg_start

# stats: pid processed batches stored_offsets partitions state
POLL_DB=permits_db
consumer_poll() {
    sql "$POLL_DB" "SELECT s.pid, s.applied + s.deleted + s.stale + s.duplicate + s.ignored + s.dead_lettered,
                           s.batches, (SELECT coalesce(sum(next_offset), 0) FROM citizen_sync.consumer_offsets),
                           s.partitions, s.state
                      FROM citizen_sync.consumer_stats s" 2>/dev/null | head -1 | tr '|' ' '
}

RSS_MIN=; RSS_MAX=; ANON_MIN=; ANON_MAX=; RSS_N=0
rss_sample() {
    local v a
    v=$(rss_kb "$1" VmRSS); a=$(rss_kb "$1" RssAnon)
    [ -n "$v" ] || return 0
    RSS_N=$((RSS_N + 1))
    [ -n "${ANON_FIRST:-}" ] || ANON_FIRST=$a
    ANON_LAST=$a
    [ -z "$RSS_MIN" ] || [ "$v" -lt "$RSS_MIN" ] && RSS_MIN=$v
    [ -z "$RSS_MAX" ] || [ "$v" -gt "$RSS_MAX" ] && RSS_MAX=$v
    [ -z "$ANON_MIN" ] || [ "$a" -lt "$ANON_MIN" ] && ANON_MIN=$a
    [ -z "$ANON_MAX" ] || [ "$a" -gt "$ANON_MAX" ] && ANON_MAX=$a
    return 0
}
rss_report() {
    info "consumer RSS over $RSS_N samples: VmRSS min $((RSS_MIN / 1024)) MiB, max $((RSS_MAX / 1024)) MiB;" \
         "RssAnon (private) min $((ANON_MIN / 1024)) MiB, max $((ANON_MAX / 1024)) MiB," \
         "first $((ANON_FIRST / 1024)) MiB, last $((ANON_LAST / 1024)) MiB"
}

# wait_offsets TARGET: poll until the stored next offsets add up to TARGET.
wait_offsets() {
    local target=$1 start pid processed batches offs parts state
    start=$(date +%s)
    while :; do
        read -r pid processed batches offs parts state < <(consumer_poll) || true
        # memory once the worker holds batches (its start-up is not of interest)
        [ -n "${pid:-}" ] && [ "${batches:-0}" -gt 0 ] && CONSUMER_PID=$pid && rss_sample "$pid"
        [ "${offs:-0}" -ge "$target" ] && break
        [ $(($(date +%s) - start)) -lt "$TIMEOUT" ] ||
            die "timeout: stored offsets ${offs:-?} of $target (state ${state:-?}); see $BENCH_TMP/data/log"
        sleep "$POLL"
    done
}

say "starting the consumer: CREATE EXTENSION and roles in permits_db"
sql postgres 'CREATE DATABASE permits_db' >/dev/null
psql_db permits_db -c 'CREATE EXTENSION citizen_sync' \
    -c "SELECT citizen_sync.create_service_roles('permits')" >/dev/null
CONSUMER_PID=
wait_offsets "$EVENTS"
read -r elapsed applied stale dup other batches < <(sql permits_db "
    SELECT extract(epoch FROM s.last_batch_at - (SELECT min(processed_at) FROM cache.processed_events)),
           s.applied + s.deleted, s.stale, s.duplicate, s.ignored + s.dead_lettered, s.batches
      FROM citizen_sync.consumer_stats s" | tr '|' ' ')
CONSUMER_RATE=$(calc "round($EVENTS / $elapsed)")
info "consumer pid $CONSUMER_PID: $EVENTS events in $(calc "round($elapsed, 2)") s" \
     "= $CONSUMER_RATE events/s ($batches batches; applied $applied, stale $stale, duplicate $dup, other $other)"
rss_report
read -r vparts vlag sparts < <(sql permits_db "
    SELECT (SELECT count(*) FROM citizen_sync.consumer_lag), (SELECT lag FROM citizen_sync.consumer_stats),
           (SELECT count(*) FROM citizen_sync.consumer_offsets)" | tr '|' ' ')
info "views: consumer_lag lists $vparts partitions (consumer_offsets: $sparts), consumer_stats.lag = $vlag"

if [ "${SKIP_BASELINE:-0}" != 1 ]; then
    say "baseline: kcat -C of the whole topic (no group, to /dev/null)"
    t0=$(now_s)
    kcat -C -b "$BOOTSTRAP" -t "$TOPIC" -o beginning -e -q >/dev/null
    t1=$(now_s)
    KCAT_RATE=$(calc "round($EVENTS / ($t1 - $t0))")
    info "kcat -C: $EVENTS messages in $(calc "round($t1 - $t0, 2)") s = $KCAT_RATE msg/s"

    say "baseline: apply_events() over the same $EVENTS events from a staging table, $BATCH_SIZE per call"
    sql postgres 'CREATE DATABASE bench' >/dev/null
    psql_db bench <<SQL
CREATE EXTENSION citizen_sync;
CREATE TABLE stream (seq bigserial PRIMARY KEY, key text NOT NULL, payload text NOT NULL);
COPY stream (key, payload) FROM '$BENCH_TMP/events.tsv';
CREATE TABLE batches AS
    SELECT (seq - 1) / $BATCH_SIZE AS b, array_agg(payload ORDER BY seq) AS payloads
      FROM stream GROUP BY 1;
ALTER TABLE batches ADD PRIMARY KEY (b);
VACUUM ANALYZE;
CHECKPOINT;
SQL
    secs=$(psql_db bench <<'SQL'
CREATE TABLE bench_result (seconds float8);
DO $$
DECLARE
    nb  int := (SELECT count(*) FROM batches);
    arr text[];
    t0  timestamptz := clock_timestamp();
BEGIN
    FOR i IN 0 .. nb - 1 LOOP
        SELECT payloads INTO arr FROM batches WHERE b = i;
        PERFORM count(*) FROM citizen_sync.apply_events(arr);
        COMMIT;
    END LOOP;
    INSERT INTO bench_result VALUES (extract(epoch FROM clock_timestamp() - t0));
END
$$;
SELECT seconds FROM bench_result;
SQL
)
    APPLY_RATE=$(calc "round($EVENTS / $secs)")
    info "apply_events: $EVENTS events in $(calc "round($secs, 2)") s = $APPLY_RATE events/s"
    sql postgres 'DROP DATABASE bench' >/dev/null
fi

if [ "${SKIP_LATENCY:-0}" != 1 ]; then
    say "latency: $LAT_RATE events/s for $LAT_SECONDS s, send time to commit of the applying transaction"
    python3 "$BENCH_DIR/paced_producer.py" --brokers "$BOOTSTRAP" --topic "$TOPIC" \
        --rate "$LAT_RATE" --duration "$LAT_SECONDS" --sendlog "$BENCH_TMP/sendlog.tsv" &
    PROD_PID=$!
    BENCH_PIDS+=("$PROD_PID")
    # sample memory while the producer runs
    while kill -0 "$PROD_PID" 2>/dev/null; do
        [ -z "$CONSUMER_PID" ] || rss_sample "$CONSUMER_PID"
        sleep 1   # sampling period while the producer runs (poll, not synchronisation)
    done
    wait "$PROD_PID" || die "the producer failed"
    BENCH_PIDS=()
    NLAT=$(wc -l <"$BENCH_TMP/sendlog.tsv")
    wait_offsets $((EVENTS + NLAT))
    chown "$PGUSER_OS": "$BENCH_TMP/sendlog.tsv"
    lat=$(psql_db permits_db <<SQL
CREATE TEMP TABLE lat_send (event_id text PRIMARY KEY, sent float8 NOT NULL);
COPY lat_send FROM '$BENCH_TMP/sendlog.tsv';
SELECT count(*),
       round(percentile_cont(0.50) WITHIN GROUP (ORDER BY ms)::numeric, 1),
       round(percentile_cont(0.95) WITHIN GROUP (ORDER BY ms)::numeric, 1),
       round(percentile_cont(0.99) WITHIN GROUP (ORDER BY ms)::numeric, 1),
       round(max(ms)::numeric, 1), round(min(ms)::numeric, 1)
  FROM (SELECT (extract(epoch FROM pg_xact_commit_timestamp(p.xmin)) - s.sent) * 1000 AS ms
          FROM lat_send s JOIN cache.processed_events p USING (event_id)) x;
SQL
)
    IFS='|' read -r n p50 p95 p99 mx mn <<<"$lat"
    LAT_LINE="p50 $p50 ms, p95 $p95 ms, p99 $p99 ms, max $mx ms (min $mn ms; $n of $NLAT events)"
    info "produce-to-visible: $LAT_LINE"
    rss_report
fi

# --- 0.1.0's consumer on the same backlog -------------------------------------
if [ -n "$BASELINE_REF" ] && [ "${SKIP_BASELINE:-0}" != 1 ]; then
    say "0.1.0's consumer ($(git -C "$REPO" log -1 --format='%h' "$BASELINE_REF")) on the same backlog: base_db, a group of its own"
    # only base_db is consumed while the 0.1.0 library runs (permits_db has the 0.2.0 schema)
    sql postgres "ALTER SYSTEM SET citizen_sync.databases = 'base_db:base_sync_user'" >/dev/null
    install_baseline
    sql postgres 'CREATE DATABASE base_db' >/dev/null
    psql_db base_db -c 'CREATE EXTENSION citizen_sync' \
        -c "SELECT citizen_sync.create_service_roles('base')" >/dev/null
    POLL_DB=base_db
    wait_offsets "$EVENTS"
    read -r belapsed < <(sql base_db "
        SELECT extract(epoch FROM s.last_batch_at - (SELECT min(processed_at) FROM cache.processed_events))
          FROM citizen_sync.consumer_stats s WHERE s.database = 'base_db'")
    BASE_RATE=$(calc "round($EVENTS / $belapsed)")
    info "0.1.0 consumer: $EVENTS events in $(calc "round($belapsed, 2)") s = $BASE_RATE events/s"
    sql postgres "ALTER SYSTEM RESET citizen_sync.databases" >/dev/null
    install_current
fi

say "summary"
bench_result "consumer worker: backlog, events/s ($EVENTS events, batch_size $BATCH_SIZE)" "$CONSUMER_RATE" \
    "apply_events() on the same events, events/s" "${APPLY_RATE:-}" "(issue 11: >= 1.25x the set-based SQL limit)"
[ -z "${KCAT_RATE:-}" ] || bench_result "consumer worker: backlog, events/s" "$CONSUMER_RATE" "kcat -C raw consume, msg/s" "$KCAT_RATE"
[ -z "${BASE_RATE:-}" ] || bench_result "consumer worker (generic path): backlog, events/s" "$CONSUMER_RATE" \
    "0.1.0's consumer on the same backlog, events/s" "$BASE_RATE" "(issue 10: >= 1)"
info "consumer worker:  ${CONSUMER_RATE} events/s ($EVENTS events, batch_size $BATCH_SIZE)"
[ -z "${KCAT_RATE:-}" ] || info "kcat -C raw:      ${KCAT_RATE} msg/s"
[ -z "${BASE_RATE:-}" ] || info "0.1.0 consumer:   ${BASE_RATE} events/s on the same backlog"
[ -z "${APPLY_RATE:-}" ] || info "apply_events():   ${APPLY_RATE} events/s (same events, batches of $BATCH_SIZE)"
[ -z "${LAT_LINE:-}" ] || info "latency at $LAT_RATE/s: $LAT_LINE"
rss_report
