#!/usr/bin/env python3
"""Produce citizen events at a steady rate, recording each one's send time.

Pipes  citizen_<id> TAB <json>  lines into one `kcat -P` process (linger.ms=0),
one line every 1/rate s against a fixed schedule (no drift: event i is due at
start + i/rate; if the loop falls behind it catches up without sleeping).
Every event is the first version (citizen.created, version 1) of a citizen
never seen before (ids from --first-citizen on), so each one is applied, and
its event_timestamp is the send time (ms precision).

--sendlog gets one line per event:  event_id TAB send time (epoch seconds,
microsecond precision, taken just before the line is written to kcat).
Prints the achieved rate on stderr.
"""
import argparse
import subprocess
import sys
import time


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--brokers", required=True)
    ap.add_argument("--topic", default="gov.auth.citizen")
    ap.add_argument("--rate", type=float, default=1000)
    ap.add_argument("--duration", type=float, default=15)
    ap.add_argument("--first-citizen", type=int, default=50_000_001)
    ap.add_argument("--id-prefix", default="evt_lat")
    ap.add_argument("--sendlog", required=True)
    ap.add_argument("--kcat", default="kcat")
    a = ap.parse_args()

    kcat = subprocess.Popen(
        [a.kcat, "-P", "-b", a.brokers, "-t", a.topic, "-K", "\t",
         "-X", "linger.ms=0", "-X", "message.timeout.ms=60000"],
        stdin=subprocess.PIPE, bufsize=0)
    total = int(a.rate * a.duration)
    log = []
    start = time.time()
    for i in range(total):
        due = start + i / a.rate
        delay = due - time.time()
        if delay > 0:
            time.sleep(delay)
        cid = a.first_citizen + i
        eid = f"{a.id_prefix}{i + 1}"
        sent = time.time()
        ms = int(sent * 1000)
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ms // 1000)) + f".{ms % 1000:03d}Z"
        line = (
            f'citizen_{cid}\t{{"event_type": "citizen.created", "event_id": "{eid}", '
            f'"event_version": 1, "event_timestamp": "{ts}", '
            f'"data": {{"citizen_id": {cid}, "snapshot": {{"id": {cid}, '
            f'"name": "Latency Probe {cid}", "email": "probe{cid}@example.gov", '
            f'"phone": "+1-555-0100", "address": "1 Probe St", "city": "Springfield", '
            f'"postal_code": "12345", "email_verified": true, "identity_verified": false}}}}}}\n'
        )
        kcat.stdin.write(line.encode())
        log.append(f"{eid}\t{sent:.6f}\n")
    elapsed = time.time() - start
    kcat.stdin.close()
    rc = kcat.wait()
    with open(a.sendlog, "w") as f:
        f.writelines(log)
    print(f"sent {total} events in {elapsed:.2f} s ({total / elapsed:.0f}/s); kcat exit {rc}",
          file=sys.stderr)
    sys.exit(rc)


if __name__ == "__main__":
    main()
