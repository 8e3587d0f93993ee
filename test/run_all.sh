#!/usr/bin/env bash
# Run every citizen_sync test: the one command of the README (and of .ci/run).
#
#   sudo bash test/run_all.sh        (or as root: bash test/run_all.sh)
#   bash test/run_all.sh regress test/t/002_upgrade.pl ...
#                                    only the named parts: `regress` for the
#                                    pg_regress suites, `smoke` for the broker
#                                    smoke test, `fuzz` for the parser fuzzing,
#                                    and TAP test files
#
# On a fresh Debian 12 machine it
#   1. installs the build and test dependencies with apt-get (when missing),
#   2. builds the extension and installs it into PostgreSQL 15,
#   3. copies the tree to a temporary directory owned by the user that runs
#      the tests (PostgreSQL refuses to run as root: `postgres` when started
#      as root, else the calling user), and there runs
#        - the pg_regress suites (sql/, expected/) on a temporary instance,
#        - the TAP tests (test/t/*.pl) with prove,
#        - the embedded-broker smoke test (test/broker/smoke.sh), if present,
#        - the event parser's libFuzzer harness for a bounded time on its
#          committed corpus (test/fuzz/run.sh),
#   4. prints the diffs / logs of whatever failed and exits non-zero.
#
# Environment:
#   PG_CONFIG      pg_config of the target server (default: PostgreSQL 15's)
#   SKIP_APT=1     do not touch packages (they must already be installed)
#   CS_INSTALLED=1 test the extension as installed already (the Debian package
#                  postgresql-15-citizen-sync, as .ci/run does, or an earlier
#                  `make install`): step 2 builds only the test broker
#   KEEP_TMP=1     keep the temporary test directory for inspection
#   FUZZ_SECONDS   how long the fuzz step fuzzes (default 60)
set -euo pipefail

PG_MAJOR=15
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd /   # the test user may not be able to enter the caller's directory
mapfile -t PACKAGES < "$REPO/scripts/packages.txt"   # one list for tests, demo and CI
export LC_ALL=C.UTF-8 LANG=C.UTF-8
export DEBIAN_FRONTEND=noninteractive

START=$(date +%s)
say()  { printf '\n==> %s\n' "$*"; }
warn() { printf 'run_all: %s\n' "$*" >&2; }
die()  { warn "$*"; exit 1; }

# --- privileges -------------------------------------------------------------
if [ "$(id -u)" -eq 0 ]; then
    SUDO=()
elif command -v sudo >/dev/null 2>&1; then
    SUDO=(sudo)
else
    SUDO=(__none__)
fi
need_root() {   # run "$@" as root, or explain what to do
    if [ "${SUDO[0]:-}" = "__none__" ]; then
        die "'$*' needs root, and sudo is not available.
Run this script as root (e.g. 'su -c \"bash test/run_all.sh\"'), or run
'$*' as root first and then rerun this script with SKIP_APT=1."
    fi
    "${SUDO[@]}" "$@"
}

# --- 1. packages ------------------------------------------------------------
missing=()
for p in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
    if [ "${SKIP_APT:-0}" = 1 ]; then
        die "missing packages: ${missing[*]} (SKIP_APT=1 is set)"
    fi
    say "Installing packages: ${missing[*]}"
    need_root apt-get update -qq
    need_root apt-get install -y -qq --no-install-recommends "${PACKAGES[@]}" >/dev/null
else
    say "Packages present: ${PACKAGES[*]}"
fi

PG_CONFIG=${PG_CONFIG:-/usr/lib/postgresql/$PG_MAJOR/bin/pg_config}
[ -x "$PG_CONFIG" ] || die "pg_config not found at $PG_CONFIG (set PG_CONFIG)"
PG_BINDIR=$("$PG_CONFIG" --bindir)
PGXS_DIR=$(dirname "$("$PG_CONFIG" --pgxs)")/..   # .../lib/pgxs/src
PG_REGRESS_BIN=$PGXS_DIR/test/regress/pg_regress
[ -x "$PG_REGRESS_BIN" ] || die "pg_regress not found at $PG_REGRESS_BIN"

# --- 2. build and install ---------------------------------------------------
if [ "${CS_INSTALLED:-0}" = 1 ]; then
    say "Testing the installed citizen_sync ($("$PG_CONFIG" --version)), CS_INSTALLED=1"
    PG_CONFIG="$PG_CONFIG" bash "$REPO/scripts/check-installed.sh"
else
    say "Building citizen_sync ($("$PG_CONFIG" --version))"
    make -C "$REPO" -s PG_CONFIG="$PG_CONFIG" -j"$(nproc)"
    installed_is_current() {   # the build equals what is installed already
        local lib share f
        lib=$("$PG_CONFIG" --pkglibdir)
        share=$("$PG_CONFIG" --sharedir)/extension
        cmp -s "$REPO/citizen_sync.so" "$lib/citizen_sync.so" || return 1
        for f in "$REPO"/citizen_sync.control "$REPO"/sql/citizen_sync--*.sql; do
            cmp -s "$f" "$share/$(basename "$f")" || return 1
        done
    }
    if [ "${SUDO[0]:-}" = "__none__" ] && installed_is_current; then
        echo "    not root and no sudo, but the installed extension is this build: not reinstalling"
    else
        need_root make -C "$REPO" -s PG_CONFIG="$PG_CONFIG" install
    fi
fi
if [ -f "$REPO/test/broker/Makefile" ]; then
    make -C "$REPO/test/broker" -s
fi

# --- 3. a copy of the tree owned by the test user ---------------------------
if [ "$(id -u)" -eq 0 ]; then
    TEST_USER=postgres
    id "$TEST_USER" >/dev/null 2>&1 || die "user '$TEST_USER' does not exist (is postgresql-$PG_MAJOR installed?)"
    as_test_user() { runuser -u "$TEST_USER" -- env PATH="$PG_BINDIR:$PATH" "$@"; }
else
    TEST_USER=$(id -un)
    as_test_user() { env PATH="$PG_BINDIR:$PATH" "$@"; }
fi

WORK=$(mktemp -d "${TMPDIR:-/tmp}/citizen_sync_test.XXXXXX")
cleanup() {
    if [ "${KEEP_TMP:-0}" = 1 ]; then
        warn "test directory kept: $WORK"
    else
        rm -rf "$WORK"
    fi
}
trap cleanup EXIT
# Everything but git metadata and earlier test output.
tar -C "$REPO" --exclude=.git --exclude=./results --exclude=./tmp_check \
    --exclude=./tmp_check_regress --exclude=./regression.diffs --exclude=./regression.out \
    --exclude=./log -cf - . | tar -C "$WORK" -xf -
chmod 755 "$WORK"
if [ "$(id -u)" -eq 0 ]; then
    chown -R "$TEST_USER" "$WORK"
fi

# What to run: everything, or only the parts named on the command line.
SELECTED_TAP=()
RUN_REGRESS=1
RUN_SMOKE=1
RUN_TAP=1
RUN_FUZZ=1
if [ "$#" -gt 0 ]; then
    RUN_REGRESS=0 RUN_SMOKE=0 RUN_FUZZ=0
    for a in "$@"; do
        case "$a" in
            regress) RUN_REGRESS=1 ;;
            smoke) RUN_SMOKE=1 ;;
            fuzz) RUN_FUZZ=1 ;;
            *.pl) [ -f "$WORK/$a" ] || die "no such TAP test: $a"; SELECTED_TAP+=("$WORK/$a") ;;
            *) die "unknown argument '$a' (regress, smoke, fuzz, or test/t/NNN_name.pl)" ;;
        esac
    done
    [ "${#SELECTED_TAP[@]}" -gt 0 ] || RUN_TAP=0
fi

# One port lock directory for every test run on this machine, so that runs
# in parallel (several work trees) never pick the same port.
export PG_TEST_PORT_DIR=${PG_TEST_PORT_DIR:-${TMPDIR:-/tmp}/citizen_sync_portlock}
mkdir -p "$PG_TEST_PORT_DIR" && chmod 1777 "$PG_TEST_PORT_DIR" 2>/dev/null || true

FAILED=()
run_step() {   # run_step NAME COMMAND...: run, time, remember failures
    local name=$1 t0 rc
    shift
    say "$name"
    t0=$(date +%s)
    set +e
    "$@"
    rc=$?
    set -e
    if [ "$rc" -ne 0 ]; then
        FAILED+=("$name")
        warn "$name FAILED (exit $rc, $(( $(date +%s) - t0 ))s)"
    else
        printf '    %s passed (%ss)\n' "$name" "$(( $(date +%s) - t0 ))"
    fi
    return 0
}

# --- 4a. pg_regress ---------------------------------------------------------
regress() {
    # TAP_TESTS= keeps `make installcheck` to the pg_regress suites; the TAP
    # tests live in test/t and are run below.
    if ! as_test_user make -C "$WORK" -s installcheck PG_CONFIG="$PG_CONFIG" \
            ENCODING=UTF8 NO_LOCALE=1 TAP_TESTS=; then
        if [ -f "$WORK/regression.diffs" ]; then
            echo "---------------- regression.diffs ----------------"
            cat "$WORK/regression.diffs"
            echo "--------------------------------------------------"
        fi
        return 1
    fi
}
[ "$RUN_REGRESS" = 1 ] && run_step "pg_regress suites (sql/)" regress

# --- 4b. TAP ----------------------------------------------------------------
tap() {
    shopt -s nullglob
    local tests=("$WORK"/test/t/*.pl)
    shopt -u nullglob
    [ "${#SELECTED_TAP[@]}" -gt 0 ] && tests=("${SELECTED_TAP[@]}")
    if [ "${#tests[@]}" -eq 0 ]; then
        echo "    no TAP tests in test/t"
        return 0
    fi
    rm -rf "$WORK/tmp_check"
    if ! (cd "$WORK" && as_test_user env TESTDIR="$WORK" PG_REGRESS="$PG_REGRESS_BIN" \
            PG_CONFIG="$PG_CONFIG" \
            prove --timer -I "$PGXS_DIR/test/perl/" -I "$WORK" -I "$WORK/test" \
            "${tests[@]#"$WORK"/}"); then
        local f
        for f in "$WORK"/tmp_check/log/regress_log_*; do
            [ -f "$f" ] || continue
            echo "---------------- $(basename "$f") (last 80 lines) ----------------"
            tail -n 80 "$f"
        done
        return 1
    fi
}
[ "$RUN_TAP" = 1 ] && run_step "TAP tests (test/t/*.pl)" tap

# --- 4c. broker smoke test --------------------------------------------------
smoke() { (cd "$WORK" && as_test_user bash test/broker/smoke.sh); }
if [ "$RUN_SMOKE" = 0 ]; then
    :
elif [ -f "$WORK/test/broker/smoke.sh" ]; then
    run_step "broker smoke test (test/broker/smoke.sh)" smoke
else
    say "broker smoke test: test/broker/smoke.sh not present, skipped"
fi

# --- 4d. parser fuzzing -----------------------------------------------------
# The libFuzzer harness (ASan, UBSan, property checks) on the committed
# corpus for a bounded time; a crash or a violated property fails the step.
FUZZ_SECONDS=${FUZZ_SECONDS:-60}
fuzz() {
    (cd "$WORK" && as_test_user env PG_CONFIG="$PG_CONFIG" bash test/fuzz/run.sh "$FUZZ_SECONDS")
}
[ "$RUN_FUZZ" = 1 ] && run_step "parser fuzzing (test/fuzz, ${FUZZ_SECONDS} s)" fuzz

# --- summary ----------------------------------------------------------------
ELAPSED=$(( $(date +%s) - START ))
if [ "${#FAILED[@]}" -gt 0 ]; then
    say "FAILED after ${ELAPSED}s: ${FAILED[*]}"
    [ "${KEEP_TMP:-0}" = 1 ] || warn "rerun with KEEP_TMP=1 to keep $WORK for inspection"
    exit 1
fi
say "All tests passed (${ELAPSED}s)"
