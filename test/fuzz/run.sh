#!/usr/bin/env bash
# Fuzz the event parser for a bounded time, starting from the committed corpus.
#
#   bash test/fuzz/run.sh [SECONDS] [libFuzzer options...]     (default 60 s)
#
# Builds test/fuzz/cs_event_fuzz (PG_CONFIG selects the PostgreSQL headers
# and libpgcommon), copies nothing back into the tree (new inputs go to a
# temporary corpus directory), and exits non-zero on a crash, a sanitizer
# report, a leak, a slow input (-timeout) or a violated property, after
# printing the failing input in hex.  Extra options go to libFuzzer, e.g.
# -fork=2 for a long run on two cores, and a corpus directory of your own
# (it comes first, so new inputs are written there) to keep what it finds
# (see README, Tests).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
TOTAL=${1:-60}
[ "$#" -gt 0 ] && shift
[[ "$TOTAL" =~ ^[0-9]+$ ]] || { echo "run.sh: SECONDS must be a number, not '$TOTAL'" >&2; exit 2; }

make -C "$HERE" -s PG_CONFIG="${PG_CONFIG:-pg_config}" cs_event_fuzz

WORK=$(mktemp -d "${TMPDIR:-/tmp}/cs_event_fuzz.XXXXXX")
mkdir "$WORK/corpus" "$WORK/artifacts"
LOG=$WORK/fuzz.log
set +e
"$HERE/cs_event_fuzz" -dict="$HERE/event.dict" -max_len=8192 -timeout=10 \
    -rss_limit_mb=2048 -max_total_time="$TOTAL" -print_final_stats=1 \
    -artifact_prefix="$WORK/artifacts/" "$@" "$WORK/corpus" "$HERE/corpus" >"$LOG" 2>&1
rc=$?
set -e

# the last progress line (executions, coverage, corpus) and the final stats
grep -E '^#[0-9]+' "$LOG" | tail -n 1 | sed 's/^/    /' || true
grep -E '^(stat::|Done )' "$LOG" | sed 's/^/    /' || true
shopt -s nullglob
artifacts=("$WORK"/artifacts/*)
if [ "$rc" -ne 0 ] || [ "${#artifacts[@]}" -gt 0 ]; then
    echo "---------------- fuzzer output (last 60 lines) ----------------"
    grep -v '^#[0-9]' "$LOG" | tail -n 60
    for a in "${artifacts[@]}"; do
        echo "---------------- failing input $(basename "$a") ----------------"
        od -A d -c "$a" | head -n 40
    done
    echo "fuzz: FAILED (exit $rc); reproduce with: $HERE/cs_event_fuzz <input>; kept $WORK" >&2
    exit 1
fi
rm -rf "$WORK"
