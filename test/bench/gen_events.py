#!/usr/bin/env python3
"""Generate a citizen event stream for the citizen_sync benchmarks.

Writes one event per line as  citizen_<id> TAB <json>  (the Kafka key and
value, as `kcat -P -K '\\t'` and COPY expect them).  Deterministic for a seed.

Each line is, with the given probabilities:
  * an exact duplicate  (--dup):   a line sent before (same event_id), picked
    from the last --window lines, resent unchanged;
  * a stale version     (--stale): a new event_id for a citizen that already
    has version v >= 2, carrying an older version in [1, v-1] (and different
    field values), i.e. an older version arriving after a newer one;
  * otherwise a new event: the next version of a random citizen
    (citizen.created for version 1, else citizen.updated).
Early on, when no line qualifies, duplicates/stale fall back to new events.
Only created/updated events are generated (no deletes), so the seed's naive
per-event SQL and the extension must reach the same end state.
"""
import argparse
import random
import sys
import time

CITIES = ["Springfield", "Shelbyville", "Capital City", "Ogdenville",
          "North Haverbrook", "Brockway"]
STREETS = ["Elm St", "Oak Ave", "Maple Rd", "Pine Ln", "Cedar Blvd", "Birch Way"]


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=200000)
    ap.add_argument("--citizens", type=int, default=20000)
    ap.add_argument("--first-citizen", type=int, default=1)
    ap.add_argument("--dup", type=float, default=0.10)
    ap.add_argument("--stale", type=float, default=0.10)
    ap.add_argument("--window", type=int, default=20000)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--id-prefix", default="evt_b")
    ap.add_argument("--out", default="-")
    a = ap.parse_args()

    rnd = random.Random(a.seed)
    versions = {}
    multi = []                  # citizens with version >= 2 (for stale)
    recent = []                 # ring of recent lines (for duplicates)
    base_ms = int(time.time() * 1000) - a.events
    out = sys.stdout if a.out == "-" else open(a.out, "w", buffering=1 << 20)
    counts = {"new": 0, "dup": 0, "stale": 0}
    next_id = 1

    def event(cid, ver, etype, ms, tag):
        nonlocal next_id
        eid = f"{a.id_prefix}{next_id}"
        next_id += 1
        h = (cid * 7919 + ver * 104729 + tag) % 1000003
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ms // 1000)) + f".{ms % 1000:03d}Z"
        value = (
            f'{{"event_type": "citizen.{etype}", "event_id": "{eid}", '
            f'"event_version": {ver}, "event_timestamp": "{ts}", '
            f'"data": {{"citizen_id": {cid}, "snapshot": {{"id": {cid}, '
            f'"name": "Citizen {cid} Version {ver}", '
            f'"email": "citizen{cid}.v{ver}.{h % 97}@example.gov", '
            f'"phone": "+1-555-{h % 10000:04d}", '
            f'"address": "{h % 900 + 100} {STREETS[h % len(STREETS)]}, apartment {h % 50}", '
            f'"city": "{CITIES[(cid + ver) % len(CITIES)]}", '
            f'"postal_code": "{10000 + h % 89999}", '
            f'"email_verified": {"true" if (ver + h) % 2 == 0 else "false"}, '
            f'"identity_verified": {"true" if (cid + h) % 3 == 0 else "false"}}}}}}}'
        )
        return f"citizen_{cid}\t{value}\n"

    for i in range(a.events):
        r = rnd.random()
        ms = base_ms + i
        if r < a.dup and recent:
            line = recent[rnd.randrange(len(recent))]
            counts["dup"] += 1
        elif r < a.dup + a.stale and multi:
            cid = multi[rnd.randrange(len(multi))]
            ver = rnd.randint(1, versions[cid] - 1)
            line = event(cid, ver, "updated" if ver > 1 else "created", ms, 1 + rnd.randrange(1000))
            counts["stale"] += 1
        else:
            cid = a.first_citizen + rnd.randrange(a.citizens)
            ver = versions.get(cid, 0) + 1
            versions[cid] = ver
            if ver == 2:
                multi.append(cid)
            line = event(cid, ver, "created" if ver == 1 else "updated", ms, 0)
            counts["new"] += 1
            if len(recent) < a.window:
                recent.append(line)
            else:
                recent[rnd.randrange(a.window)] = line
        out.write(line)
    if out is not sys.stdout:
        out.close()
    print(f"generated {a.events} events over {len(versions)} citizens: "
          f"{counts['new']} new, {counts['dup']} exact duplicates, "
          f"{counts['stale']} stale versions", file=sys.stderr)


if __name__ == "__main__":
    main()
