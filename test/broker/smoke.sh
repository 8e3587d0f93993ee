#!/usr/bin/env bash
# smoke.sh — self-check of cs_kafka_broker, the embedded Kafka broker of
# citizen_sync's tests: build it, start a 2-broker cluster, produce 1000
# messages with kcat, consume them back, take broker 1 down and up again,
# produce and consume once more, quit.  Exits non-zero on any failure.
# Needs: cc, pkg-config, librdkafka-dev, kcat.  Runs in a few seconds.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d)
broker_pid=
cleanup() {
    if [ -n "$broker_pid" ] && kill -0 "$broker_pid" 2>/dev/null; then
        kill "$broker_pid" 2>/dev/null || true
    fi
    rm -rf "$work"
}
trap cleanup EXIT

fail() { echo "smoke: FAIL: $*" >&2; [ -f "$work/broker.log" ] && tail -5 "$work/broker.log" >&2; exit 1; }
say() { echo "smoke: $*"; }

make -s -C "$here" >/dev/null || fail "build"

# Start the broker as a coprocess: its stdin/stdout are our command channel.
coproc BROKER { exec "$here/cs_kafka_broker" --brokers 2 --topic smoke:4 2>"$work/broker.log"; }
broker_pid=$BROKER_PID
exec {to_broker}>&"${BROKER[1]}" {from_broker}<&"${BROKER[0]}"

# read_line VAR: one line from the broker within 10 s.
read_line() { IFS= read -r -t 10 -u "$from_broker" "$1" || fail "no line from broker"; }

# cmd LINE EXPECTED_REGEX: send a command, check the answer.
cmd() {
    local answer
    echo "$1" >&"$to_broker"
    read_line answer
    [[ $answer =~ $2 ]] || fail "'$1' answered '$answer'"
}

read_line line
[[ $line =~ ^BOOTSTRAP\ (127\.0\.0\.1:[0-9]+),(127\.0\.0\.1:[0-9]+)$ ]] || fail "bad bootstrap line '$line'"
bootstrap=${line#BOOTSTRAP }
b1=${BASH_REMATCH[1]}
read_line line
[ "$line" = READY ] || fail "expected READY, got '$line'"
say "broker up at $bootstrap"

cmd ping '^OK pong$'
cmd 'down 9' '^ERR '
cmd 'frobnicate' '^ERR unknown command'

# produce N FIRST: N keyed messages numbered from FIRST.
produce() {
    seq "$2" $(($2 + $1 - 1)) | awk '{printf "key%d\t{\"n\":%d}\n", $1, $1}' |
        kcat -P -b "$bootstrap" -t smoke -K '\t' -X message.timeout.ms=10000 ||
        fail "kcat produce"
}
# consumed: number of messages in topic smoke, read with kcat.
consumed() {
    timeout 20 kcat -C -b "$bootstrap" -t smoke -o beginning -e -q -f '%s\n' | wc -l
}

produce 1000 1
n=$(consumed)
[ "$n" -eq 1000 ] || fail "consumed $n messages, expected 1000"
cmd 'offsets smoke' '^OK offsets smoke retained=1000 end=1000 '
say "1000 messages produced and consumed"

# Broker 1 down: its port refuses connections; up: accepts again.
port_open() { (exec 3<>"/dev/tcp/${1%:*}/${1#*:}") 2>/dev/null; }
cmd 'down 1' '^OK down 1$'
port_open "$b1" && fail "broker 1 still accepts connections while down"
cmd 'up 1' '^OK up 1$'
port_open "$b1" || fail "broker 1 refuses connections after up"
say "broker 1 down/up"

produce 500 1001
n=$(consumed)
[ "$n" -eq 1500 ] || fail "consumed $n messages after up, expected 1500"

cmd 'quit' '^OK bye$'
wait "$broker_pid" || fail "broker exited with status $?"
broker_pid=
say "PASS"
