"""Kill soak: thousands of SIGKILLs of writers and readers, and the cache
never lies, never stalls and never loses a byte.

Not part of the pytest run (no test_ prefix); run it by hand:

    python tests/soak/kill_soak.py                   # 5,000 kills, writes bench/results/kill_soak.md
    python tests/soak/kill_soak.py --kills 500 --out -
    python tests/soak/kill_soak.py --checksums       # both segments with checksums=True

The parent forks worker processes (with the debug engine, so that fault
points exist) on two segments:

- "data", small (2 MiB), so stores evict and compact: writers store, add,
  delete, store_many, rewrite a value at its own length (which the engine
  does in place) and now and then clear; readers fetch, fetch_many and
  exists.  Every value is self-verifying: it starts with its own key and
  ends with a CRC-32 of the rest, so any read that is not a miss can be
  checked on its own.
- "counters": each worker slot incs its own counter by 1, telling the
  parent through a pipe before (intent) and after (ack) each call.  The
  counter must end between the acknowledged incs and that plus the incs in
  flight when a process died.

Each worker dies by SIGKILL: half of them arm a fault point of the debug
engine (APCCACHE_FAULT names, read from csrc/) and kill themselves there,
holding whatever they hold; the rest, and any armed worker that has not hit
its point by its deadline, are killed by the parent at a random moment
(2-80 ms into their life).  The parent then calls recover(pid) on both
segments, as the supervisor does.

Checked: no wrong read; no operation (in a worker, or the parent's
recover) over 1 s; check() == [] on both segments at the end; the counters
exact up to the calls in flight; and after clear() and gc_ttl, every byte
of both arenas free again.
"""
import argparse
import os
import random
import re
import signal
import sys
import time
import zlib

os.environ["APCCACHE_DEBUG"] = "1"  # the fault points
os.environ.pop("APCCACHE_FAULT", None)

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(ROOT, "bench"))

import apccache  # noqa: E402
from apccache import _bindings as B  # noqa: E402
from apccache.errors import CacheError  # noqa: E402

SLOW = 1.0
GC_TTL = 2
NKEYS = 400
NHOT = 8  # readers read these (d0..d7) a third of the time: read without a pin
# where a reader may die: holding a pin, or in its hit log
READER_POINTS = {"fetch.pinned", "hits.note", "hits.fold", "hits.fold_added"}


def fault_points():
    names = set()
    for f in os.listdir(os.path.join(ROOT, "csrc")):
        if f.endswith(".c"):
            with open(os.path.join(ROOT, "csrc", f)) as fh:
                names.update(re.findall(r'APC_FAULT\("([a-z_.]+)"\)', fh.read()))
    return sorted(names)


# ------------------------------------------------------------------ values

def make_value(key, rng, big=False, like=None):
    """A self-verifying value; with ``like``, one of the same length (a
    store that the engine rewrites in place)."""
    k = key.encode()
    if like is not None:
        n = len(like) - len(k) - 5
    else:
        n = rng.randrange(20_000, 250_000) if big else rng.choice([rng.randrange(0, 200), rng.randrange(200, 4000)])
    body = k + b"\0" + rng.randbytes(n)
    return body + zlib.crc32(body).to_bytes(4, "little")


def value_ok(key, v):
    if type(v) is not bytes or len(v) < 5:
        return False
    body, crc = v[:-4], v[-4:]
    return body.split(b"\0", 1)[0] == key.encode() and zlib.crc32(body).to_bytes(4, "little") == crc


# ----------------------------------------------------------------- workers

def worker(slot, role, point, seed, names, wfd):
    """Runs until killed."""
    def send(line):
        os.write(wfd, (line + "\n").encode())

    try:
        if point:
            B.lib.apc_fault_arm(point.encode())
        rng = random.Random(seed)
        data = apccache.Cache.attach(names[0])
        ctr = apccache.Cache.attach(names[1])
        ckey = f"ctr{slot}"
        while True:
            r = rng.random()
            hot = role == "reader" and rng.random() < 0.33
            k = f"d{rng.randrange(NHOT if hot else NKEYS)}"
            t = time.monotonic()
            op = "?"
            try:
                if role == "reader":
                    if r < 0.8:
                        op = "fetch"
                        v = data.fetch(k)
                        if v is not None and not value_ok(k, v):
                            send(f"W fetch {k} {v[:40]!r}")
                    elif r < 0.9:
                        op = "fetch_many"
                        ks = [f"d{rng.randrange(NKEYS)}" for _ in range(4)]
                        for kk, v in data.fetch_many(ks).items():
                            if not value_ok(kk, v):
                                send(f"W fetch_many {kk} {v[:40]!r}")
                    else:
                        op = "exists"
                        data.exists(k)
                else:
                    if r < 0.18:
                        op = "store"
                        data.store(k, make_value(k, rng))
                    elif r < 0.28:
                        op = "rewrite"
                        v = data.fetch(k)
                        if v is not None and value_ok(k, v):
                            data.store(k, make_value(k, rng, like=v))
                    elif r < 0.50:
                        op = "fetch"
                        v = data.fetch(k)
                        if v is not None and not value_ok(k, v):
                            send(f"W fetch {k} {v[:40]!r}")
                    elif r < 0.58:
                        op = "delete"
                        data.delete(k)
                    elif r < 0.62:
                        op = "store_many"
                        data.store_many({kk: make_value(kk, rng) for kk in
                                         (f"d{rng.randrange(NKEYS)}" for _ in range(4))})
                    elif r < 0.65:
                        op = "add"
                        data.add(k, make_value(k, rng))
                    elif r < 0.68:
                        op = "big store"
                        data.store(k, make_value(k, rng, big=True))
                    elif r < 0.683:
                        op = "clear"
                        data.clear()
                    else:
                        op = "inc"
                        send("I")
                        ctr.inc(ckey)
                        send("A")
            except CacheError as e:
                send(f"C {op} {type(e).__name__}: {e}")
            dt = time.monotonic() - t
            if dt > SLOW:
                send(f"S {op} {dt:.3f}")
    except BaseException as e:  # noqa: BLE001 - reported, then the process ends
        import traceback

        send("E " + " | ".join(traceback.format_exception(type(e), e, e.__traceback__)[-3:]).replace("\n", " "))
        os._exit(3)


# ------------------------------------------------------------------ parent

class Soak:
    def __init__(self, args):
        self.args = args
        self.rng = random.Random(args.seed)
        self.points = fault_points()
        tag = f"{os.getpid()}"
        self.names = [f"apcsoak-data-{tag}", f"apcsoak-ctr-{tag}"]
        kw = {"gc_ttl": GC_TTL}
        if args.checksums:
            kw["checksums"] = True
        self.data = apccache.Cache.create(self.names[0], size=2 << 20, **kw)
        self.ctr = apccache.Cache.create(self.names[1], size=1 << 20, **kw)
        self.workers = {}  # pid -> dict
        self.kills = 0
        self.kills_by = {"fault point": 0, "parent, random time": 0}
        self.kills_at = {}
        self.kills_role = {"writer": 0, "reader": 0}
        self.acked = [0] * args.workers
        self.inflight = [0] * args.workers
        self.wrong = []
        self.slow = []
        self.errors = []
        self.cache_errors = {}
        self.other_exits = []
        self.max_recover = 0.0

    def spawn(self, slot):
        role = "reader" if slot % 3 == 2 else "writer"
        point = None
        if self.rng.random() < 0.5:
            mine = [p for p in self.points if (p in READER_POINTS) == (role == "reader")]
            point = self.rng.choice(mine)
        seed = self.rng.getrandbits(32)
        rfd, wfd = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(rfd)
            worker(slot, role, point, seed, self.names, wfd)
            os._exit(0)
        os.close(wfd)
        os.set_blocking(rfd, False)
        life = self.rng.uniform(0.002, 0.08) if not point else self.rng.uniform(0.05, 0.5)
        self.workers[pid] = {"slot": slot, "role": role, "point": point, "rfd": rfd, "buf": b"",
                             "pending": 0, "deadline": time.monotonic() + life}

    def drain(self, w):
        try:
            while True:
                b = os.read(w["rfd"], 65536)
                if not b:
                    break
                w["buf"] += b
        except BlockingIOError:
            pass
        *lines, w["buf"] = w["buf"].split(b"\n")
        for line in lines:
            s = line.decode(errors="replace")
            if s == "I":
                w["pending"] += 1
            elif s == "A":
                w["pending"] -= 1
                self.acked[w["slot"]] += 1
            elif s.startswith("W "):
                self.wrong.append(s[2:])
            elif s.startswith("S "):
                self.slow.append(s[2:])
            elif s.startswith("E "):
                self.errors.append(s[2:])
            elif s.startswith("C "):
                name = s[2:].split(":")[0]
                self.cache_errors[name] = self.cache_errors.get(name, 0) + 1

    def reap(self, pid, status):
        w = self.workers.pop(pid)
        self.drain(w)
        os.close(w["rfd"])
        self.inflight[w["slot"]] += w["pending"]
        if os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL:
            self.kills += 1
            self.kills_role[w["role"]] += 1
            if w.get("killed_by_parent"):
                self.kills_by["parent, random time"] += 1
            else:
                self.kills_by["fault point"] += 1
                self.kills_at[w["point"]] = self.kills_at.get(w["point"], 0) + 1
        else:
            self.other_exits.append(f"pid {pid} ({w['role']}, point {w['point']}): status {status}")
        for c in (self.data, self.ctr):
            t = time.monotonic()
            c.recover(pid)
            dt = time.monotonic() - t
            self.max_recover = max(self.max_recover, dt)
            if dt > SLOW:
                self.slow.append(f"parent recover {dt:.3f}")

    def run(self):
        t0 = time.monotonic()
        last = t0
        while self.kills < self.args.kills:
            busy = {w["slot"] for w in self.workers.values()}
            for slot in range(self.args.workers):
                if slot not in busy:
                    self.spawn(slot)
            time.sleep(0.001)
            now = time.monotonic()
            for pid, w in list(self.workers.items()):
                self.drain(w)
                wpid, status = os.waitpid(pid, os.WNOHANG)
                if wpid:
                    self.reap(pid, status)
                elif now > w["deadline"] and not w.get("killed_by_parent"):
                    w["killed_by_parent"] = True
                    os.kill(pid, signal.SIGKILL)
            if now - last > 10:
                last = now
                print(f"{self.kills} kills, {now - t0:.0f} s", flush=True)
        for pid, w in list(self.workers.items()):
            w["killed_by_parent"] = True
            os.kill(pid, signal.SIGKILL)
        for pid in list(self.workers):
            _, status = os.waitpid(pid, 0)
            self.reap(pid, status)
        self.seconds = time.monotonic() - t0

    def verify(self):
        res = {}
        t = time.monotonic()
        res["check_data"] = self.data.check()
        res["check_ctr"] = self.ctr.check()
        res["check_seconds"] = time.monotonic() - t
        counters = []
        for slot in range(self.args.workers):
            total = self.ctr.fetch(f"ctr{slot}", 0)
            ok = self.acked[slot] <= total <= self.acked[slot] + self.inflight[slot]
            counters.append((slot, total, self.acked[slot], self.inflight[slot], ok))
        res["counters"] = counters
        # Every byte back: clear both, let the GC list's pins of dead
        # readers age past gc_ttl, and sweep with one more write.
        for c in (self.data, self.ctr):
            c.clear()
        time.sleep(GC_TTL + 1.1)
        for c in (self.data, self.ctr):
            c.store("sweep", b"x")
            c.delete("sweep")
        res["reclaimed"] = []
        for name, c in (("data", self.data), ("counters", self.ctr)):
            s = c.sma_info(limited=True)
            res["reclaimed"].append((name, s["avail_mem"], s["seg_size"], s["avail_mem"] == s["seg_size"]))
        res["check_after_clear"] = self.data.check() + self.ctr.check()
        res["repairs"] = self.data.info(limited=True)["repairs"] + self.ctr.info(limited=True)["repairs"]
        return res

    def cleanup(self):
        for c in (self.data, self.ctr):
            try:
                c.unlink()
            except Exception:
                pass
            c.close()


def report(soak, res, args):
    import benchlib

    ok_counters = all(c[4] for c in res["counters"])
    reclaimed = all(r[3] for r in res["reclaimed"])
    verdicts = [
        ("SIGKILLs", soak.kills >= args.kills, f"{soak.kills} (target {args.kills})"),
        ("wrong reads", not soak.wrong, str(len(soak.wrong))),
        ("operations over 1 s", not soak.slow, f"{len(soak.slow)} (parent's slowest recover(): "
                                                f"{soak.max_recover * 1000:.1f} ms)"),
        ("check() at the end", not res["check_data"] and not res["check_ctr"],
         "[]" if not res["check_data"] and not res["check_ctr"] else
         repr((res["check_data"] + res["check_ctr"])[:5])),
        ("counters exact up to the calls in flight", ok_counters, "; ".join(
            f"ctr{s}: {t} (acked {a}, in flight at kills {i})" for s, t, a, i, _ in res["counters"])),
        ("every byte reclaimed after clear()", reclaimed, "; ".join(
            f"{n}: {a:,} of {z:,} bytes free" for n, a, z, _ in res["reclaimed"])),
        ("workers that died otherwise", not soak.errors and not soak.other_exits,
         str(len(soak.errors) + len(soak.other_exits))),
    ]
    lines = ["## Kill soak (`tests/soak/kill_soak.py`)", "", benchlib.machine_line(), ""]
    lines.append(
        f"{args.workers} worker slots ({sum(1 for s in range(args.workers) if s % 3 == 2)} readers), "
        f"debug engine, seed {args.seed}; {soak.seconds:.0f} s. Segments: data 2 MiB (stores evict "
        f"and compact), counters 1 MiB; gc_ttl {GC_TTL} s; "
        f"{'with' if args.checksums else 'without'} checksums.")
    lines.append("")
    lines.append("| check | result | measured |")
    lines.append("|---|---|---|")
    for name, ok, what in verdicts:
        lines.append(f"| {name} | {'PASS' if ok else 'FAIL'} | {what} |")
    lines.append("")
    in_lock = sum(v for k, v in soak.kills_at.items() if k != "fetch.pinned")
    lines.append(f"- kills: {soak.kills_by['fault point']} at fault points ({in_lock} of them "
                 f"holding a lock), "
                 f"{soak.kills_by['parent, random time']} by the parent at a random moment; "
                 f"{soak.kills_role['writer']} writers, {soak.kills_role['reader']} readers")
    lines.append("- kills by fault point: " + ", ".join(
        f"{k} {v}" for k, v in sorted(soak.kills_at.items(), key=lambda kv: -kv[1])))
    lines.append(f"- repairs run by the engine: {res['repairs']}")
    if soak.cache_errors:
        lines.append("- CacheErrors raised to workers: " + ", ".join(
            f"{k} {v}" for k, v in soak.cache_errors.items()))
    for title, items in (("wrong reads", soak.wrong), ("slow operations", soak.slow),
                         ("worker errors", soak.errors), ("other exits", soak.other_exits)):
        if items:
            lines.append(f"- {title} (first 10): " + "; ".join(items[:10]))
    all_ok = all(ok for _, ok, _ in verdicts)
    return "\n".join(lines) + "\n", all_ok


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kills", type=int, default=5000)
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--checksums", action="store_true", help="make both segments with checksums=True")
    ap.add_argument("--out", default=os.path.join(ROOT, "bench", "results", "kill_soak.md"))
    args = ap.parse_args()
    soak = Soak(args)
    try:
        soak.run()
        res = soak.verify()
    finally:
        soak.cleanup()
    text, ok = report(soak, res, args)
    if args.out != "-":
        with open(args.out, "w") as f:
            f.write(text)
    print(text)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
