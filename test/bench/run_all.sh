#!/usr/bin/env bash
# run_all.sh — every benchmark in one command, and the table of figures.
#
#   sudo bash test/bench/run_all.sh            # full sizes (~15 min idle machine)
#   sudo bash test/bench/run_all.sh --quick    # smaller sizes (~5 min)
#   RESULTS=/tmp/r.md sudo -E bash test/bench/run_all.sh
#
# Runs bench_apply.sh, bench_consumer.sh, bench_publisher.sh and, when the
# file exists, bench_capture.sh, one after the other (never in parallel: they
# would measure each other).  Each script appends its figures through
# bench_result (lib.sh) to one file; this script writes them as a Markdown
# table -- figure, value, baseline of the same run, ratio, aim -- with the
# machine and the date, to test/bench/results.md (or $RESULTS), and keeps
# each script's full output next to it (results.d/<script>.log).
#
# Absolute numbers move by 2x between machines and runs on a loaded machine;
# the ratios to a baseline taken in the same run are what to compare.  A
# script that fails is reported in the table (its log says why) and the
# others still run; the exit status is then 1.
#
# Sizes: the full mode uses each script's defaults, plus ONBOARD=1000000 for
# the publisher's onboarding figure; --quick shrinks them (see QUICK below).
# Any of the scripts' environment variables may still be set by the caller.
set -uo pipefail
BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
QUICK=0
[ "${1:-}" = --quick ] && QUICK=1
RESULTS=${RESULTS:-$BENCH_DIR/results.md}
LOGDIR=${RESULTS%.md}.d
mkdir -p "$LOGDIR"
export BENCH_RESULTS="$LOGDIR/figures.tsv"
# SCRIPTS="bench_publisher.sh ..." runs only those and keeps the figures the
# previous run wrote (a rerun of one script after a failure: its figures are
# appended to those of the others).
[ -n "${SCRIPTS:-}" ] || : >"$BENCH_RESULTS"

if [ "$QUICK" = 1 ]; then
    export EVENTS=${EVENTS:-100000} CITIZENS=${CITIZENS:-20000} ROWS=${ROWS:-50000} \
           ONBOARD=${ONBOARD:-100000} LAT_SECONDS=${LAT_SECONDS:-10} IDLE_SECONDS=${IDLE_SECONDS:-20}
else
    export ONBOARD=${ONBOARD:-1000000}
fi

scripts=(bench_apply.sh bench_consumer.sh bench_publisher.sh)
[ -f "$BENCH_DIR/bench_capture.sh" ] && scripts+=(bench_capture.sh)
[ -z "${SCRIPTS:-}" ] || read -r -a scripts <<<"$SCRIPTS"
status=0
failed=()
started=$(date -u '+%Y-%m-%d %H:%M UTC')
for s in "${scripts[@]}"; do
    printf '==> %s (log: %s)\n' "$s" "$LOGDIR/${s%.sh}.log"
    t0=$(date +%s)
    if bash "$BENCH_DIR/$s" >"$LOGDIR/${s%.sh}.log" 2>&1; then
        printf '    done in %d s\n' $(($(date +%s) - t0))
    else
        printf '    FAILED after %d s (see the log)\n' $(($(date +%s) - t0))
        failed+=("$s")
        status=1
    fi
    grep -h '^    figure: ' "$LOGDIR/${s%.sh}.log" | sed 's/^    figure: /    /'
done

{
    printf '# citizen_sync benchmark figures\n\n'
    printf 'Written by `bash test/bench/run_all.sh%s`, started %s.\n\n' \
        "$([ "$QUICK" = 1 ] && printf ' --quick')" "$started"
    printf 'Machine: %s cores, %s, %s; load average at the end: %s.\n\n' "$(nproc)" \
        "$(awk '/MemTotal/ {printf "%.1f GiB", $2/1048576}' /proc/meminfo)" \
        "$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1)" \
        "$(cut -d' ' -f1-3 /proc/loadavg)"
    printf 'Absolute numbers vary by 2x between machines and runs (and more on a loaded\n'
    printf 'machine); compare the ratios, each to a baseline measured in the same run.\n\n'
    printf '| figure | value | baseline (same run) | baseline value | ratio | aim |\n'
    printf '| --- | ---: | --- | ---: | ---: | --- |\n'
    while IFS=$'\t' read -r figure value bname bvalue ratio aim; do
        printf '| %s | %s | %s | %s | %s | %s |\n' "$figure" "$value" "${bname:--}" "${bvalue:--}" \
            "${ratio:--}" "${aim:--}"
    done <"$BENCH_RESULTS"
    for s in "${failed[@]}"; do
        printf '| **%s failed** (see %s) | | | | | |\n' "$s" "${s%.sh}.log"
    done
    printf '\nFull output of each script: `%s/`.\n' "$(basename "$LOGDIR")"
} >"$RESULTS"
printf '==> %s\n' "$RESULTS"
cat "$RESULTS"
exit $status
