#!/usr/bin/env bash
# bench_apply.sh — throughput of citizen_sync's apply core, one backend (one core).
#
#   sudo bash test/bench/bench_apply.sh
#   EVENTS=1000000 CITIZENS=100000 sudo -E bash test/bench/bench_apply.sh
#
# A benchmark, not a test: it prints figures and never asserts timings (it
# exits non-zero only if something breaks, or if the two end states differ).
#
# What it does, on a private instance (see lib.sh):
#   1. gen_events.pl writes EVENTS events over CITIZENS citizens, with DUP
#      exact duplicates (same event_id resent) and STALE stale versions (an
#      older version arriving after a newer one); COPY loads them into a
#      staging table, grouped into arrays of BATCH events (not timed).
#   2. citizen_sync.apply_events(text[]) over the batches, one transaction
#      (COMMIT) per batch, in a DO loop; wall time from clock_timestamp()
#      inside the server, so generation, loading and psql are excluded.
#   3. Baseline on a fresh (truncated, checkpointed) cache, same instance, same
#      staging arrays: the seed document's per-event approach as plain SQL in a
#      PL/pgSQL loop — per event: payload::jsonb, SELECT 1 FROM
#      cache.processed_events, INSERT ... ON CONFLICT (citizen_id) DO UPDATE
#      ... WHERE citizen_refs.event_version < EXCLUDED.event_version, INSERT
#      INTO cache.processed_events — with the same COMMIT per BATCH events.
#      (Generous to the seed: PL/pgSQL caches the plans and there is no client
#      round trip per statement; the seed's Python consumer also commits every
#      statement separately.)
#   4. Compares the two end states (every cache.citizen_refs row: id, fields,
#      version, is_active; and the set of processed event ids) and prints the
#      check's result.
#   5. 0.1.0's citizen path on the same stream, same instance: the library
#      of BASELINE_REF (default: the last commit of 0.1.0) is built and
#      installed, the instance restarted, apply_events() timed the same way
#      in a database of its own; then the current library is reinstalled and
#      the instance restarted again.  Its end state must equal step 1's.
#   6. Three subscriptions at once: cache.citizen_refs and two copies of it
#      subscribed to topics bench.copy2 and bench.copy3 (generic path), the
#      same stream with distinct event ids for each, one transaction per
#      batch applying the three; events/s per subscription.
#
# Environment: EVENTS (200000), CITIZENS (20000), DUP (0.10), STALE (0.10),
# BATCH (1000), SEED (42), SKIP_NAIVE=1 (only the extension), BASELINE_REF
# (a git revision; empty: skip step 5), plus lib.sh's.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

EVENTS=${EVENTS:-200000}
CITIZENS=${CITIZENS:-20000}
DUP=${DUP:-0.10}
STALE=${STALE:-0.10}
BATCH=${BATCH:-1000}
SEED=${SEED:-42}

bench_require python3
bench_setup apply
say "bench_apply: $EVENTS events over $CITIZENS citizens, batches of $BATCH"
bench_machine

say "generating the stream"
perl "$BENCH_DIR/gen_events.pl" --events "$EVENTS" --citizens "$CITIZENS" \
    --dup "$DUP" --stale "$STALE" --seed "$SEED" --out "$BENCH_TMP/events.tsv" 2>&1 | sed 's/^/    /'
chown "$PGUSER_OS": "$BENCH_TMP/events.tsv"

pg_init
pg_start
# stage DB: the extension, the stream in batches of $BATCH, bench_result.
stage() {
    sql postgres "CREATE DATABASE $1" >/dev/null
    psql_db "$1" <<SQL
CREATE EXTENSION citizen_sync;
CREATE TABLE stream (seq bigserial PRIMARY KEY, key text NOT NULL, payload text NOT NULL);
COPY stream (key, payload) FROM '$BENCH_TMP/events.tsv';
CREATE TABLE batches AS
    SELECT (seq - 1) / $BATCH AS b, array_agg(payload ORDER BY seq) AS payloads
      FROM stream GROUP BY 1;
ALTER TABLE batches ADD PRIMARY KEY (b);
CREATE TABLE bench_result (method text PRIMARY KEY, events bigint, seconds float8,
                           applied bigint, stale bigint, duplicate bigint, other bigint);
VACUUM ANALYZE;
CHECKPOINT;
SQL
}

# apply_all DB METHOD: apply_events() over every batch, one COMMIT each,
# timed inside the server; the outcome goes into bench_result as METHOD.
apply_all() {
    psql_db "$1" <<SQL
DO \$\$
DECLARE
    nb   int := (SELECT count(*) FROM batches);
    arr  text[];
    t0   timestamptz;
    x    record;
    a bigint := 0; s bigint := 0; d bigint := 0; o bigint := 0;
BEGIN
    t0 := clock_timestamp();
    FOR i IN 0 .. nb - 1 LOOP
        SELECT payloads INTO arr FROM batches WHERE b = i;
        SELECT count(*) FILTER (WHERE result IN ('applied', 'deleted')) AS a,
               count(*) FILTER (WHERE result = 'stale') AS s,
               count(*) FILTER (WHERE result = 'duplicate') AS d,
               count(*) FILTER (WHERE result NOT IN ('applied', 'deleted', 'stale', 'duplicate')) AS o
          INTO x FROM citizen_sync.apply_events(arr);
        a := a + x.a; s := s + x.s; d := d + x.d; o := o + x.o;
        COMMIT;
    END LOOP;
    INSERT INTO bench_result
        VALUES ('$2', a + s + d + o,
                extract(epoch FROM clock_timestamp() - t0), a, s, d, o);
END
\$\$;
SQL
}

# end_state DB: the cache as rows, for comparing two runs.
END_STATE_SQL="SELECT citizen_id, name, email, phone, address, city, postal_code, email_verified,
                      identity_verified, event_version, is_active, deleted_at IS NULL AS not_deleted
                 FROM cache.citizen_refs"

stage bench

# --- 1. the extension's set-based apply -------------------------------------
say "citizen_sync.apply_events(), $BATCH events per call and transaction"
apply_all bench apply_events
psql_db bench <<'SQL'
CREATE TABLE end_set AS
    SELECT citizen_id, name, email, phone, address, city, postal_code, email_verified,
           identity_verified, event_version, is_active, deleted_at IS NULL AS not_deleted
      FROM cache.citizen_refs;
CREATE TABLE ids_set AS SELECT event_id FROM cache.processed_events;
SQL

if [ "${SKIP_NAIVE:-0}" != 1 ]; then
    # --- 2. baseline: the seed's per-event SQL ------------------------------
    say "baseline: the seed's per-event SQL (jsonb parse, SELECT, upsert, INSERT), COMMIT every $BATCH"
    psql_db bench <<'SQL'
TRUNCATE cache.citizen_refs, cache.processed_events;
CHECKPOINT;
-- Every statement of the seed is a primary-key lookup.  PL/pgSQL keeps the
-- plans it makes while the tables are still empty, and a sequential scan of
-- an "empty" table then stays for the whole run (quadratic): keep the index.
SET enable_seqscan = off;
DO $$
DECLARE
    nb   int := (SELECT count(*) FROM batches);
    arr  text[];
    p    text;
    j    jsonb;
    eid  text;
    snap jsonb;
    rc   bigint;
    t0   timestamptz;
    a bigint := 0; s bigint := 0; d bigint := 0;
BEGIN
    t0 := clock_timestamp();
    FOR i IN 0 .. nb - 1 LOOP
        SELECT payloads INTO arr FROM batches WHERE b = i;
        FOREACH p IN ARRAY arr LOOP
            j := p::jsonb;
            eid := j->>'event_id';
            PERFORM 1 FROM cache.processed_events WHERE event_id = eid;
            IF FOUND THEN
                d := d + 1;
                CONTINUE;
            END IF;
            snap := j->'data'->'snapshot';
            INSERT INTO cache.citizen_refs
                (citizen_id, name, email, phone, address, city, postal_code,
                 email_verified, identity_verified, event_version, last_synced_at, created_at)
            VALUES
                ((snap->>'id')::bigint, snap->>'name', snap->>'email', snap->>'phone',
                 snap->>'address', snap->>'city', snap->>'postal_code',
                 COALESCE((snap->>'email_verified')::boolean, false),
                 COALESCE((snap->>'identity_verified')::boolean, false),
                 COALESCE((j->>'event_version')::bigint, 1), now(), now())
            ON CONFLICT (citizen_id) DO UPDATE SET
                name = EXCLUDED.name,
                email = EXCLUDED.email,
                phone = EXCLUDED.phone,
                address = EXCLUDED.address,
                city = EXCLUDED.city,
                postal_code = EXCLUDED.postal_code,
                email_verified = EXCLUDED.email_verified,
                identity_verified = EXCLUDED.identity_verified,
                event_version = EXCLUDED.event_version,
                last_synced_at = now()
            WHERE citizen_refs.event_version < EXCLUDED.event_version;
            GET DIAGNOSTICS rc = ROW_COUNT;
            IF rc > 0 THEN a := a + 1; ELSE s := s + 1; END IF;
            INSERT INTO cache.processed_events (event_id, processed_at)
            VALUES (eid, now())
            ON CONFLICT (event_id) DO NOTHING;
        END LOOP;
        COMMIT;
    END LOOP;
    INSERT INTO bench_result
        VALUES ('naive_per_event', a + s + d,
                extract(epoch FROM clock_timestamp() - t0), a, s, d, 0);
END
$$;
SQL

    say "comparing the end states"
    check=$(psql_db bench <<'SQL'
WITH cur AS (
    SELECT citizen_id, name, email, phone, address, city, postal_code, email_verified,
           identity_verified, event_version, is_active, deleted_at IS NULL AS not_deleted
      FROM cache.citizen_refs),
only_set   AS (SELECT * FROM end_set EXCEPT SELECT * FROM cur),
only_naive AS (SELECT * FROM cur EXCEPT SELECT * FROM end_set),
ids_only_set   AS (SELECT event_id FROM ids_set EXCEPT SELECT event_id FROM cache.processed_events),
ids_only_naive AS (SELECT event_id FROM cache.processed_events EXCEPT SELECT event_id FROM ids_set)
SELECT format('%s|%s|%s|%s|%s|%s',
              (SELECT count(*) FROM end_set), (SELECT count(*) FROM cur),
              (SELECT count(*) FROM only_set), (SELECT count(*) FROM only_naive),
              (SELECT count(*) FROM ids_only_set) + (SELECT count(*) FROM ids_only_naive),
              (SELECT count(*) FROM ids_set));
SQL
)
    IFS='|' read -r rows_set rows_naive diff_set diff_naive diff_ids nids <<<"$check"
    info "citizen_refs rows: apply_events $rows_set, naive $rows_naive;" \
         "rows differing: $diff_set only in apply_events' state, $diff_naive only in naive's"
    info "processed_events: $nids ids, $diff_ids differing"
    if [ "$rows_set" = "$rows_naive" ] && [ "$diff_set" = 0 ] && [ "$diff_naive" = 0 ] && [ "$diff_ids" = 0 ]; then
        END_STATE="IDENTICAL"
    else
        END_STATE="DIFFERENT"
    fi
    info "end-state check: $END_STATE"
fi


# --- 5. 0.1.0's citizen path on the same stream --------------------------------
BASE_STATE=skipped
BASE_RESULT=
if [ -n "$BASELINE_REF" ]; then
    say "0.1.0's citizen path ($(git -C "$REPO" log -1 --format='%h %s' "$BASELINE_REF" | cut -c1-60)), same stream"
    install_baseline
    stage bench_base
    apply_all bench_base apply_events_0.1.0
    psql_db bench_base -c "$END_STATE_SQL ORDER BY citizen_id" >"$BENCH_TMP/state_0.1.0.txt"
    psql_db bench -c "SELECT * FROM end_set ORDER BY citizen_id" >"$BENCH_TMP/state_generic.txt"
    diff_base=$(diff "$BENCH_TMP/state_0.1.0.txt" "$BENCH_TMP/state_generic.txt" | grep -c '^[<>]' || true)
    BASE_RESULT=$(sql bench_base "SELECT format('%s: %s events/s (applied %s, stale %s, duplicate %s)',
                                  method, round(events / seconds), applied, stale, duplicate)
                                  FROM bench_result")
    BASE_STATE="rows differing from the generic path's end state: $diff_base"
    install_current
fi

# --- 6. three subscriptions at once -------------------------------------------
say "three subscriptions at once (the built-in one and two generic copies), one transaction per batch"
psql_db bench <<SQL
TRUNCATE cache.citizen_refs, cache.processed_events;
CREATE TABLE cache.copy2 (LIKE cache.citizen_refs INCLUDING DEFAULTS INCLUDING CONSTRAINTS INCLUDING INDEXES);
CREATE TABLE cache.copy3 (LIKE cache.citizen_refs INCLUDING DEFAULTS INCLUDING CONSTRAINTS INCLUDING INDEXES);
SELECT citizen_sync.subscribe('cache.copy2', 'citizen', topic => 'bench.copy2',
    columns => '{"name": {"required": true}, "email": {"required": true}, "created_at": null, "updated_at": null}');
SELECT citizen_sync.subscribe('cache.copy3', 'citizen', topic => 'bench.copy3',
    columns => '{"name": {"required": true}, "email": {"required": true}, "created_at": null, "updated_at": null}');
-- the same events under other ids for each copy
CREATE TABLE batches2 AS SELECT b, array_agg(replace(p, '"event_id": "', '"event_id": "c2_') ORDER BY o) AS payloads
  FROM batches, unnest(payloads) WITH ORDINALITY AS u(p, o) GROUP BY b;
CREATE TABLE batches3 AS SELECT b, array_agg(replace(p, '"event_id": "', '"event_id": "c3_') ORDER BY o) AS payloads
  FROM batches, unnest(payloads) WITH ORDINALITY AS u(p, o) GROUP BY b;
ALTER TABLE batches2 ADD PRIMARY KEY (b);
ALTER TABLE batches3 ADD PRIMARY KEY (b);
CREATE TABLE three_result (sub text PRIMARY KEY, events bigint, seconds float8);
VACUUM ANALYZE;
CHECKPOINT;
DO \$\$
DECLARE
    nb  int := (SELECT count(*) FROM batches);
    arr text[];
    t   timestamptz;
    s1 float8 := 0; s2 float8 := 0; s3 float8 := 0; n bigint := 0;
    t0  timestamptz := clock_timestamp();
BEGIN
    FOR i IN 0 .. nb - 1 LOOP
        SELECT payloads INTO arr FROM batches WHERE b = i;
        n := n + cardinality(arr);
        t := clock_timestamp();
        PERFORM count(*) FROM citizen_sync.apply_events(arr);
        s1 := s1 + extract(epoch FROM clock_timestamp() - t);
        SELECT payloads INTO arr FROM batches2 WHERE b = i;
        t := clock_timestamp();
        PERFORM count(*) FROM citizen_sync.apply_events(arr, 'bench.copy2');
        s2 := s2 + extract(epoch FROM clock_timestamp() - t);
        SELECT payloads INTO arr FROM batches3 WHERE b = i;
        t := clock_timestamp();
        PERFORM count(*) FROM citizen_sync.apply_events(arr, 'bench.copy3');
        s3 := s3 + extract(epoch FROM clock_timestamp() - t);
        COMMIT;
    END LOOP;
    INSERT INTO three_result VALUES ('cache.citizen_refs', n, s1), ('cache.copy2', n, s2),
        ('cache.copy3', n, s3), ('all three (wall)', 3 * n, extract(epoch FROM clock_timestamp() - t0));
END
\$\$;
SQL
THREE_CHECK=$(sql bench "SELECT (SELECT count(*) FROM ($(echo "$END_STATE_SQL" | sed 's/FROM cache.citizen_refs/FROM cache.copy2/') EXCEPT $END_STATE_SQL) a)
                       + (SELECT count(*) FROM ($(echo "$END_STATE_SQL" | sed 's/FROM cache.citizen_refs/FROM cache.copy3/') EXCEPT $END_STATE_SQL) b)")

say "results"
psql_db bench -F ' ' <<'SQL' | while read -r m n secs rate a s d o; do
SELECT method, events, round(seconds::numeric, 3), round(events / seconds),
       applied, stale, duplicate, other
  FROM bench_result ORDER BY method;
SQL
    printf '    %-16s %8s events in %8ss = %7s events/s  (applied %s, stale %s, duplicate %s, other %s)\n' \
        "$m" "$n" "$secs" "$rate" "$a" "$s" "$d" "$o"
done
if [ "${SKIP_NAIVE:-0}" != 1 ]; then
    ratio=$(sql bench "SELECT round(((SELECT seconds FROM bench_result WHERE method = 'naive_per_event')
                                   / (SELECT seconds FROM bench_result WHERE method = 'apply_events'))::numeric, 2)")
    info "speed-up of apply_events over the per-event baseline: ${ratio}x"
    read -r r_set r_naive < <(sql bench "SELECT round(sum(events / seconds) FILTER (WHERE method = 'apply_events')),
                                                round(sum(events / seconds) FILTER (WHERE method = 'naive_per_event'))
                                           FROM bench_result" | tr '|' ' ')
    bench_result "apply core: apply_events(), events/s ($EVENTS events, end states $END_STATE)" "$r_set" \
        "seed's per-event SQL (PL/pgSQL), events/s" "$r_naive"
    info "end states identical: $END_STATE"
    [ "$END_STATE" = IDENTICAL ] || exit 1
fi
say "0.1.0's citizen path against the generic path (the built-in subscription), same stream"
sql bench "SELECT format('%s (generic): %s events/s', method, round(events / seconds))
             FROM bench_result WHERE method = 'apply_events'" | sed 's/^/    /'
info "${BASE_RESULT:-0.1.0: skipped (BASELINE_REF empty)}"
info "0.1.0's end state: $BASE_STATE"
say "three subscriptions at once"
sql bench "SELECT format('%-20s %8s events in %7ss = %7s events/s', sub, events, round(seconds::numeric, 3),
                         round(events / seconds)) FROM three_result ORDER BY sub" | sed 's/^/    /'
info "rows of the copies differing from cache.citizen_refs: $THREE_CHECK"
[ "$THREE_CHECK" = 0 ] || exit 1
