"""The coherence checker: workers on several simulated hosts write versioned
values and read, recording when each write was acknowledged and when each
read began; afterwards no read that began more than the bound after a
write's acknowledgement may have returned an older version.

Run as a script it is one host's worker (``python checker.py CONFIG.json``);
imported, ``Run`` drives a whole run and ``analyse`` judges it.

Each key has exactly one writer (a host's worker, or the bypass writer that
uses plain redis-py SET), so its versions are totally ordered by the writer.
A write that raised may or may not have landed: it keeps its place in that
order but no read is obliged to see it.  A Redis restart that loses data is
a state of its own (every key absent) at the time of the kill.
"""

import json
import math
import os
import random
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))


# ------------------------------------------------------------------ worker

def worker(cfg):
    import apccache
    from apccache.fleet import FleetCache, FleetUnavailableError

    cache = apccache.Cache.attach(cfg["segment"])
    fc = FleetCache(cache, cfg["url"], cfg["namespace"], socket_timeout=0.5, cluster=cfg.get("cluster", False))
    remote = [0]
    real_remote = fc._remote

    def counted_remote(*args, **kwargs):  # reads that went to Redis
        remote[0] += 1
        return real_remote(*args, **kwargs)

    fc._remote = counted_remote
    own = cfg["own_keys"]
    keys = cfg["keys"]
    version = {k: 0 for k in own}
    writes, reads = [], []
    errors = 0
    rnd = random.Random(cfg["seed"])
    with open(cfg["ready"], "w"):
        pass
    while not os.path.exists(cfg["go"]):
        time.sleep(0.005)
    end = time.monotonic() + cfg["duration"]
    mono = time.monotonic
    pause = cfg.get("pause", 0.001)
    stop = cfg["stop"]
    n = 0
    while mono() < end:
        n += 1
        if n % 64 == 0 and os.path.exists(stop):
            break
        if own and rnd.random() < cfg["write_ratio"]:
            k = rnd.choice(own)
            v = version[k] = version[k] + 1
            t0 = mono()
            try:
                fc.store(k, v)
                writes.append((k, v, t0, mono()))
            except FleetUnavailableError:
                writes.append((k, v, t0, None))
        else:
            k = rnd.choice(keys)
            t0 = mono()
            try:
                v = fc.fetch(k)
            except FleetUnavailableError:
                errors += 1
                continue
            reads.append((k, v, t0, mono()))
        time.sleep(pause)
    with open(cfg["out"], "w") as f:
        json.dump({"host": cfg["host"], "writes": writes, "reads": reads, "errors": errors,
                   "remote": remote[0]}, f)


# -------------------------------------------------------------- the run

class BypassWriter(threading.Thread):
    """Writes versions with plain redis-py SET (decimal text, which FleetCache
    reads back as an int), as a client that knows nothing of apccache."""

    def __init__(self, url, namespace, keys, every=0.005, cluster=False):
        super().__init__(daemon=True)
        import redis

        cls = redis.RedisCluster if cluster else redis.Redis
        self.r = cls.from_url(url, socket_timeout=0.5, socket_connect_timeout=0.5)
        self.ns = namespace
        self.keys = keys
        self.every = every
        self.writes = []
        self.stop_flag = threading.Event()
        self.version = {k: 0 for k in keys}

    def run(self):
        rnd = random.Random(7)
        while not self.stop_flag.is_set():
            k = rnd.choice(self.keys)
            v = self.version[k] = self.version[k] + 1
            t0 = time.monotonic()
            try:
                self.r.set(f"{self.ns}:{k}", str(v))
                self.writes.append((k, v, t0, time.monotonic()))
            except Exception:
                self.writes.append((k, v, t0, None))
            self.stop_flag.wait(self.every)


class Run:
    """One checker run over ``hosts`` (each with ``.name``, a segment with a
    listener), workers reaching Redis at ``url``."""

    def __init__(self, hosts, url, namespace, workdir, duration, keys_per_host=4, bypass_keys=3,
                 write_ratio=0.1, cluster=False):
        self.cluster = cluster
        self.hosts = hosts
        self.url = url
        self.namespace = namespace
        self.workdir = str(workdir)
        self.duration = duration
        self.write_ratio = write_ratio
        self.own = [[f"h{i}:{j}" for j in range(keys_per_host)] for i in range(len(hosts))]
        self.bypass_keys = [f"bypass:{j}" for j in range(bypass_keys)]
        self.keys = [k for ks in self.own for k in ks] + self.bypass_keys
        self.losses = []  # monotonic times at which Redis lost all its data
        self.procs = []

    def start(self):
        go = os.path.join(self.workdir, "go")
        self.stop_file = os.path.join(self.workdir, "stop")
        readies = []
        for i, h in enumerate(self.hosts):
            cfg = {"segment": h.name, "url": self.url, "namespace": self.namespace, "host": i,
                   "own_keys": self.own[i], "keys": self.keys, "duration": self.duration,
                   "write_ratio": self.write_ratio, "seed": i, "cluster": self.cluster,
                   "ready": os.path.join(self.workdir, f"ready{i}"), "go": go, "stop": self.stop_file,
                   "out": os.path.join(self.workdir, f"out{i}.json")}
            path = os.path.join(self.workdir, f"cfg{i}.json")
            with open(path, "w") as f:
                json.dump(cfg, f)
            readies.append(cfg["ready"])
            self.procs.append(subprocess.Popen([sys.executable, os.path.join(HERE, "checker.py"), path]))
        deadline = time.monotonic() + 30
        while not all(os.path.exists(r) for r in readies):
            if time.monotonic() > deadline or any(p.poll() is not None for p in self.procs):
                raise RuntimeError("checker workers did not start")
            time.sleep(0.01)
        self.bypass = BypassWriter(self.url, self.namespace, self.bypass_keys, cluster=self.cluster)
        self.bypass.start()
        with open(go, "w"):
            pass
        self.started = time.monotonic()
        return self

    def sleep_until(self, offset):
        """Sleep until offset seconds after the start."""
        time.sleep(max(0.0, self.started + offset - time.monotonic()))

    def stop(self):
        """End the run now (before its duration)."""
        with open(self.stop_file, "w"):
            pass

    def finish(self, timeout=None):
        results = []
        deadline = time.monotonic() + (self.duration + 60 if timeout is None else timeout)
        try:
            for p in self.procs:
                p.wait(timeout=max(0.1, deadline - time.monotonic()))
        finally:
            for p in self.procs:
                if p.poll() is None:
                    p.kill()
                    p.wait()
            self.bypass.stop_flag.set()
            self.bypass.join(5)
        for i, p in enumerate(self.procs):
            assert p.returncode == 0, f"checker worker {i} exited with {p.returncode}"
            with open(os.path.join(self.workdir, f"out{i}.json")) as f:
                results.append(json.load(f))
        return results

    def analyse(self, results, bound):
        return analyse(results, self.bypass.writes, self.losses, bound)


# ------------------------------------------------------------ judgement

def analyse(results, bypass_writes, losses, bound):
    """Judge a run.  Returns a dict: reads, writes, stale (reads that began
    after a newer version's acknowledgement), violations (stale by more than
    bound, each described), lag_p50/p99/max (s; the observed invalidation
    lag per (write, reading host): the last start of a read on that host that
    still returned an older version, minus the acknowledgement; 0 when none
    did), errors (reads refused with FleetUnavailableError)."""
    INF = math.inf
    # per key: the states in order: (kind, version, t0, t_ack or INF)
    writes = {}
    for r in results:
        for k, v, t0, t1 in r["writes"]:
            writes.setdefault(k, []).append((v, t0, INF if t1 is None else t1))
    for k, v, t0, t1 in bypass_writes:
        writes.setdefault(k, []).append((v, t0, INF if t1 is None else t1))
    states = {}
    for k, ws in writes.items():
        ws.sort()
        seq = [("none", 0, -INF, -INF)]
        for loss in sorted(losses):
            # writes that began before the loss come before it
            while ws and ws[0][1] < loss:
                v, t0, t1 = ws.pop(0)
                seq.append(("v", v, t0, t1))
            seq.append(("none", 0, loss, loss))
        seq += [("v", v, t0, t1) for v, t0, t1 in ws]
        states[k] = seq
    index = {k: {s[1]: i for i, s in enumerate(seq) if s[0] == "v"} for k, seq in states.items()}
    # suffix minimum of acknowledgement times: the earliest ack of any later state
    later_ack = {}
    for k, seq in states.items():
        m = [INF] * (len(seq) + 1)
        for i in range(len(seq) - 1, -1, -1):
            m[i] = min(m[i + 1], seq[i][3])
        later_ack[k] = m
    nreads = stale = 0
    violations = []
    pair_lag = {}  # (key, state index, host) -> observed lag
    stale_lags = []
    for r in results:
        host = r["host"]
        for k, v, t0, t1 in r["reads"]:
            nreads += 1
            seq = states.get(k)
            if seq is None:
                if v is not None:
                    violations.append(f"host {host} read {k}={v!r}, a value never written")
                continue
            if v is None:
                # the latest absent state that began before the read ended
                i = max(j for j, s in enumerate(seq) if s[0] == "none" and s[2] <= t1)
            else:
                i = index[k].get(v)
                if i is None:
                    violations.append(f"host {host} read {k}={v!r}, a version never written")
                    continue
            newer = later_ack[k][i + 1]
            if newer < t0:
                stale += 1
                lag = t0 - newer
                stale_lags.append(lag)
                # which later state was acknowledged first
                j = next(j for j in range(i + 1, len(seq)) if seq[j][3] == newer)
                key = (k, j, host)
                pair_lag[key] = max(pair_lag.get(key, 0.0), lag)
                if lag > bound:
                    violations.append(f"host {host} read {k}={v!r} {lag * 1000:.1f} ms after version "
                                      f"{seq[j][1]} was acknowledged (bound {bound * 1000:.0f} ms)")
    # every (write, host) pair with a later read on that host counts, lag 0 if never stale
    nhosts = len(results)
    lags = []
    for k, seq in states.items():
        for j, s in enumerate(seq):
            if s[3] in (INF, -INF):
                continue
            for h in range(nhosts):
                lags.append(pair_lag.get((k, j, h), 0.0))
    lags.sort()

    def pct(p):
        if not lags:
            return 0.0
        return lags[min(len(lags) - 1, int(p * len(lags)))]

    stale_lags.sort()
    return {"stale_p50": stale_lags[len(stale_lags) // 2] if stale_lags else 0.0,
            "reads": nreads, "writes": sum(len(w) for w in writes.values()), "stale": stale,
            "violations": violations, "lag_p50": pct(0.50), "lag_p99": pct(0.99),
            "lag_max": lags[-1] if lags else 0.0, "pairs": len(lags),
            "errors": sum(r["errors"] for r in results),
            "near": 1 - sum(r.get("remote", 0) for r in results) / max(1, nreads)}


def describe(name, a):
    return (f"{name}: {a['reads']} reads, {a['writes']} writes, {a['stale']} stale within the bound "
            f"(median {a['stale_p50'] * 1000:.1f} ms after the newer write), "
            f"{len(a['violations'])} violations; invalidation lag p50 {a['lag_p50'] * 1000:.1f} ms, "
            f"p99 {a['lag_p99'] * 1000:.1f} ms, max {a['lag_max'] * 1000:.1f} ms "
            f"over {a['pairs']} (write, host) pairs; {a['near'] * 100:.0f}% of reads were near hits; "
            f"{a['errors']} reads refused")


if __name__ == "__main__":
    with open(sys.argv[1]) as f:
        worker(json.load(f))
