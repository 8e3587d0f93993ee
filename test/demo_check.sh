#!/usr/bin/env bash
# The newcomer's path as a test: run demo/run_demo.sh as root from a directory
# the postgres user cannot enter (as a root shell's home is), and fail on any
# line of its output saying `could not change directory`, FATAL, PANIC or
# ERROR, and on any FATAL, PANIC, ERROR or WARNING in the server log — except
# the one refusal the demo shows on purpose (the service user may not write
# the cache).  The demo must also end with its closing line.
#
#   bash test/demo_check.sh                    (as root; CI runs it with
#   CS_INSTALLED=1 bash test/demo_check.sh      CS_INSTALLED=1 after installing
#                                               the Debian package)
# Environment: everything run_demo.sh reads (PG_CONFIG, CS_INSTALLED,
# DEMO_PORT); DEMO names another demo script to check.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DEMO=${DEMO:-$ROOT/demo/run_demo.sh}
[ "$(id -u)" -eq 0 ] || { echo "demo_check.sh: run me as root (the demo runs as root)" >&2; exit 1; }

CWD=$(mktemp -d "${TMPDIR:-/tmp}/cs_demo_cwd.XXXXXX")     # mode 700, owned by root
DIR=$(mktemp -d "${TMPDIR:-/tmp}/cs_demo_check.XXXXXX")
chmod 755 "$DIR"
cleanup() { rm -rf "$CWD" "$DIR"; }
trap cleanup EXIT
if runuser -u postgres -- test -x "$CWD"; then
    echo "demo_check.sh: postgres can enter $CWD; the check would prove nothing" >&2
    exit 1
fi

OUT=$DIR/demo.out
set +e
(cd "$CWD" && DEMO_DIR="$DIR/demo" bash "$DEMO") >"$OUT" 2>&1 </dev/null
rc=$?
set -e

EXPECTED_REFUSAL='ERROR:  permission denied for table citizen_refs'
fail=0
bad_out=$(grep -nE 'could not change directory|FATAL|PANIC|ERROR' "$OUT" \
          | grep -vE "^[0-9]+:  $EXPECTED_REFUSAL\$" || true)
bad_log=$(grep -nE '(FATAL|PANIC|ERROR|WARNING):' "$DIR/demo/server.log" 2>/dev/null \
          | grep -vE "$EXPECTED_REFUSAL\$" || true)
if [ "$rc" -ne 0 ]; then
    echo "not ok: the demo exited with $rc"; fail=1
fi
if ! grep -q '== Done' "$OUT"; then
    echo "not ok: the demo did not reach its end"; fail=1
fi
if [ -n "$bad_out" ]; then
    echo "not ok: the demo's output has $(wc -l <<<"$bad_out") unexpected line(s):"
    head -n 20 <<<"$bad_out" | sed 's/^/    /'
    fail=1
fi
if [ -n "$bad_log" ]; then
    echo "not ok: the server log has $(wc -l <<<"$bad_log") unexpected line(s):"
    head -n 20 <<<"$bad_log" | sed 's/^/    /'
    fail=1
fi
if [ "$fail" -ne 0 ]; then
    echo "---------------- demo output (last 40 lines) ----------------"
    tail -n 40 "$OUT"
    echo "demo check: 0 passed, 1 failed"
    exit 1
fi
echo "ok: the demo ran from a directory postgres cannot enter, its output and server log are clean ($(wc -l <"$OUT") lines)"
