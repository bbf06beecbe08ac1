"""A worker process for the entry() tests:
``fleet_child.py MODE SEGMENT URL NAMESPACE GO_FILE [LEASE]``.

entry: waits for GO_FILE, calls entry("report") with a generator that counts
its calls in Redis (outside the namespace) and takes 0.5 s; prints the value.
entry-die: the same, but the generator SIGKILLs its own process."""

import json
import os
import signal
import sys
import time

import apccache
import redis
from apccache.fleet import FleetCache


def main():
    mode, segment, url, namespace, go = sys.argv[1:6]
    lease = float(sys.argv[6]) if len(sys.argv) > 6 else 30.0
    cache = apccache.Cache.attach(segment)
    fc = FleetCache(cache, url, namespace, lock_lease=lease)
    r = redis.Redis.from_url(url)
    while not os.path.exists(go):
        time.sleep(0.002)

    def generate(key):
        r.incr(f"{namespace}-calls")
        if mode == "entry-die":
            print("generating", flush=True)
            os.kill(os.getpid(), signal.SIGKILL)
        time.sleep(0.5)
        return {"built_by": os.getpid(), "key": key}

    waits = []  # (start, end) of this process's waits on Redis for the key
    real = fc._fleet_entry

    def timed(*args):
        t0 = time.monotonic()
        try:
            return real(*args)
        finally:
            waits.append((t0, time.monotonic()))

    fc._fleet_entry = timed
    value = fc.entry("report", generate, ttl=60)
    print(json.dumps({"value": value, "waits": waits}), flush=True)


if __name__ == "__main__":
    main()
