#!/usr/bin/env python3
"""wait_latency.py — producer send -> wait_for() true, for bench_wait_notify.sh.

One long-lived psql session (argv: the psql command, as a JSON list).  For
each of --waits citizens: the session is sent
SELECT wait_for('cache.citizen_refs', '<id>', 1, '10 s'), clock_timestamp();
after --settle ms (so that it sleeps in wait_for) the citizen's first event is
produced by a new `kcat -P` (--kcat, a JSON list; one process per event: a
long-lived kcat reading a pipe holds single lines back) and the send time is
taken just before it starts, so the figure includes kcat's start and broker
connection (an upper bound).  The session's answer carries the time wait_for
returned (same clock) and the commit time of the batch that applied the row
(pg_xact_commit_timestamp: track_commit_timestamp = on), so the wake-up alone,
commit -> wait_for true, is printed too.  Prints p50/p95/p99/max of both and
how many returned false.
"""
import argparse, json, subprocess, time

ap = argparse.ArgumentParser()
ap.add_argument('--psql', required=True)
ap.add_argument('--kcat', required=True)
ap.add_argument('--waits', type=int, default=300)
ap.add_argument('--first', type=int, default=5_000_000)
ap.add_argument('--settle', type=float, default=20.0)
a = ap.parse_args()

psql = subprocess.Popen(json.loads(a.psql), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                        text=True, bufsize=1)
kcat_cmd = json.loads(a.kcat)
lat, wake, false = [], [], 0
for i in range(a.waits):
    cid = a.first + i
    psql.stdin.write("SELECT citizen_sync.wait_for('cache.citizen_refs', '%d', 1, '10 s'),"
                     " extract(epoch FROM clock_timestamp());\n"
                     # a statement of its own: a new snapshot, which sees the row
                     "SELECT (SELECT extract(epoch FROM pg_catalog.pg_xact_commit_timestamp(xmin))"
                     " FROM cache.citizen_refs WHERE citizen_id = %d);\n" % (cid, cid))
    psql.stdin.flush()
    time.sleep(a.settle / 1000.0)
    ev = ('{"event_type":"citizen.created","event_id":"wait_%d","event_version":1,'
          '"event_timestamp":"2026-11-25T10:00:00.000Z","data":{"citizen_id":%d,'
          '"snapshot":{"id":%d,"name":"Citizen %d","email":"c%d@example.gov"}}}') % (cid, cid, cid, cid, cid)
    sent = time.time()
    subprocess.run(kcat_cmd, input="citizen_%d\t%s\n" % (cid, ev), text=True, check=True)
    ok, ret = psql.stdout.readline().strip().split('|')
    commit = psql.stdout.readline().strip()
    if ok != 't':
        false += 1
        continue
    lat.append((float(ret) - sent) * 1000.0)
    wake.append((float(ret) - float(commit)) * 1000.0)
psql.stdin.close(); psql.wait()
def pct(xs, what):
    xs = sorted(xs)
    q = lambda p: xs[min(len(xs) - 1, int(p * len(xs)))] if xs else float('nan')
    print("%s: p50 %.1f ms, p95 %.1f ms, p99 %.1f ms, max %.1f ms"
          % (what, q(0.50), q(0.95), q(0.99), xs[-1] if xs else float('nan')))
print("wait_for: %d waits, %d false" % (a.waits, false))
pct(lat, "send -> wait_for true (includes kcat's start)")
pct(wake, "consumer commit -> wait_for true (the wake-up)")
