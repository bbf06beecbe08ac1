"""Shared pieces of the benchmark suite: the machine and commit stamp, the
peers' set-up, the baselines, and the performance targets.

Everything here is plain set-up code; no timing happens in this module. The
micro benchmarks (``test_micro.py``), the multi-process mixes (``multiproc.py``)
and the side-by-side peer run (``peers.py``) all import it so that they agree
on key names, value sizes, peer settings and what each target means.

Resources a benchmark creates (shared-memory segments, LMDB environments,
diskcache directories) are named ``apcbench-<random>`` and live on /dev/shm;
every helper that creates one is a context manager that removes it on exit,
including on an exception or SIGTERM (see ``exit_on_sigterm``).
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import pickle
import platform
import secrets
import shutil
import signal
import subprocess
import statistics
import sys
import tempfile
import time
from itertools import repeat
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
RESULTS_DIR = BENCH_DIR / "results"

PREFIX = "apcbench-"
SHM_DIR = "/dev/shm" if os.path.isdir("/dev/shm") else None

KiB = 1024
MiB = 1024 * 1024

# --- the workload -----------------------------------------------------------
# Keys are bytes for every peer: that is the one key type all of them accept
# without conversion (lmdb, Redis and memcached take bytes natively), so no
# peer pays for an encode the others skip.

KEY_10B = b"bench:hit:10b"
KEY_DICT = b"bench:hit:dict"
KEY_10K = b"bench:hit:10kib"
KEY_1M = b"bench:hit:1mib"
KEY_MISS = b"bench:miss:never-stored"
KEY_STORE_10B = b"bench:store:10b"
KEY_STORE_10K = b"bench:store:10kib"
KEY_INC = b"bench:counter"

VALUE_10B = b"0123456789"
VALUE_10K = bytes(range(256)) * (10 * KiB // 256)
VALUE_1M = os.urandom(MiB)
SMALL_DICT = {"id": 1234, "name": "alice", "roles": ["admin", "dev"], "active": True, "score": 9.5}

assert len(VALUE_10B) == 10 and len(VALUE_10K) == 10 * KiB and len(VALUE_1M) == MiB

# Size of every apccache segment and LMDB map the benchmarks create.
SEGMENT_SIZE = 64 * MiB


def random_name() -> str:
    """A fresh resource name: ``apcbench-`` plus 8 random hex digits."""
    return PREFIX + secrets.token_hex(4)


# --- termination --------------------------------------------------------------


def exit_on_sigterm() -> None:
    """Turn SIGTERM into SystemExit so ``finally`` blocks (unlinks) still run."""

    def _handler(signum, frame):
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, _handler)


# --- machine and commit stamp -----------------------------------------------


def cpu_model() -> str:
    """The CPU's model name, with its family/model numbers (VMs often say little more)."""
    fields = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if not line.strip():
                    break  # first processor only
                key, _, value = line.partition(":")
                fields[key.strip()] = value.strip()
    except OSError:
        pass
    name = fields.get("model name") or platform.processor() or platform.machine()
    if "cpu family" in fields and "model" in fields:
        name += f" (family {fields['cpu family']}, model {fields['model']})"
    return name


def git_commit() -> str:
    """The checkout's commit (read-only git calls), with ``-dirty`` if modified."""
    try:
        head = subprocess.run(
            ["git", "-C", str(REPO_DIR), "rev-parse", "--short=12", "HEAD"],
            capture_output=True, text=True, timeout=10,
        )
        if head.returncode != 0:
            return "no commit yet"
        commit = head.stdout.strip()
        status = subprocess.run(
            ["git", "-C", str(REPO_DIR), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True, text=True, timeout=10,
        )
        if status.returncode == 0 and status.stdout.strip():
            commit += "-dirty"
        return commit
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _version(module_name: str) -> str:
    try:
        from importlib.metadata import version

        return version(module_name)
    except Exception:
        return "not installed"


def machine_info() -> dict:
    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "platform": platform.platform(),
        "commit": git_commit(),
        # Other work on the machine skews every figure; a 1-minute load
        # average well above 0 when a run starts says its figures are suspect.
        "loadavg": [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None,
        "versions": {
            name: _version(name)
            for name in ("apccache", "cffi", "lmdb", "diskcache", "redis", "pymemcache", "pytest-benchmark")
        },
    }


def machine_line(info: dict | None = None) -> str:
    info = info or machine_info()
    return (
        f"machine: {info['cpu']}, {info['cores']} cores, {info['python']}, "
        f"{info['platform']}; commit {info['commit']}"
        + (f"; load average {info['loadavg'][0]:.2f}" if info.get("loadavg") else "")
    )


# --- apccache -----------------------------------------------------------------


def import_apccache():
    """Return ``(module, None)`` or ``(None, reason)`` when it cannot be used."""
    try:
        import apccache
    except Exception as exc:  # an unbuilt extension raises ImportError or worse
        return None, f"apccache is not importable ({type(exc).__name__}: {exc})"
    if not hasattr(apccache, "Cache"):
        return None, "apccache has no Cache class yet"
    return apccache, None


@contextlib.contextmanager
def apccache_segment(apccache, size: int = SEGMENT_SIZE):
    """Create a fresh ``apcbench-*`` segment; close and unlink it on exit."""
    cache = apccache.Cache.create(random_name(), size=size)
    try:
        yield cache
    finally:
        try:
            cache.unlink()
        finally:
            cache.close()


# --- peers ---------------------------------------------------------------------


@contextlib.contextmanager
def shm_tempdir():
    """A temporary ``apcbench-*`` directory on /dev/shm, removed on exit."""
    path = tempfile.mkdtemp(prefix=PREFIX, dir=SHM_DIR)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def open_lmdb(path: str, map_size: int = 4 * SEGMENT_SIZE):
    """LMDB as the issue specifies it: writemap, no sync, no metasync."""
    import lmdb

    return lmdb.open(
        path,
        map_size=map_size,
        writemap=True,
        sync=False,
        metasync=False,
        max_readers=126,
        readahead=False,
    )


class LmdbOps:
    """One LMDB transaction per operation, the way an application would use it."""

    def __init__(self, env):
        self.env = env
        begin = env.begin

        def get(key):
            with begin() as txn:
                return txn.get(key)

        def put(key, value):
            with begin(write=True) as txn:
                txn.put(key, value)

        def get_obj(key):
            with begin() as txn:
                raw = txn.get(key)
            return None if raw is None else pickle.loads(raw)

        def put_obj(key, obj):
            raw = pickle.dumps(obj, pickle.HIGHEST_PROTOCOL)
            with begin(write=True) as txn:
                txn.put(key, raw)

        def inc(key, step=1):
            with begin(write=True) as txn:
                value = int(txn.get(key, b"0")) + step
                txn.put(key, b"%d" % value)
            return value

        self.get, self.put, self.get_obj, self.put_obj, self.inc = get, put, get_obj, put_obj, inc


class DictOps:
    """A per-process dict: the floor. It returns a reference, never a copy."""

    def __init__(self):
        self.data: dict = {}
        self.get = self.data.get
        self.put = self.data.__setitem__
        data = self.data

        def inc(key, step=1):
            value = data[key] = data.get(key, 0) + step
            return value

        self.inc = inc


@contextlib.contextmanager
def diskcache_on_shm():
    """A ``diskcache.Cache`` in a temporary directory on /dev/shm."""
    import diskcache

    with shm_tempdir() as path:
        cache = diskcache.Cache(path)
        try:
            yield cache
        finally:
            cache.close()


# --- baselines -------------------------------------------------------------------

_BASELINE_CDEF = """
int apcbench_bare(void);
size_t apcbench_copy10(const char *key, size_t klen, char *out, size_t cap);
"""

_BASELINE_SOURCE = r"""
#include <string.h>
static const char apcbench_ten[10] = {'0','1','2','3','4','5','6','7','8','9'};
int apcbench_bare(void) { return 0; }
size_t apcbench_copy10(const char *key, size_t klen, char *out, size_t cap)
{
    (void)key; (void)klen;
    if (cap < sizeof apcbench_ten) return 0;
    memcpy(out, apcbench_ten, sizeof apcbench_ten);
    return sizeof apcbench_ten;
}
"""


class CffiBaseline:
    """The cost of crossing into C and back, measured the way apccache crosses.

    Preferred form (``mode == "api"``): a two-function cffi API-mode module
    compiled at bench time into a temporary directory, exactly as apccache's
    own extension is built:

    * ``bare()``  -> ``lib.apcbench_bare()``: no arguments, returns an int.
    * ``ret10(key)`` -> ``lib.apcbench_copy10(key, len(key), buf, cap)`` copies
      10 bytes into a preallocated buffer, then ``ffi.unpack(buf, n)`` makes the
      ``bytes``: one C call with a key in and 10 bytes out, the shape of a
      cache fetch with no lookup.

    Fallback (``mode == "abi"``, when no C compiler is available): libc through
    ``ffi.dlopen(None)``: ``getpid()`` for the bare call and ``memcpy`` into a
    buffer plus ``ffi.unpack`` for the 10-byte return. ABI-mode calls cost
    more than API-mode ones, so the fallback overstates the floor.
    """

    def __init__(self):
        self.mode, self.reason = "api", ""
        self._tmp = tempfile.mkdtemp(prefix=PREFIX + "cffi-")
        try:
            self.ffi, self.lib = self._build_api()
        except Exception as exc:
            self.mode, self.reason = "abi", f"api-mode build failed: {type(exc).__name__}: {exc}"
            self.ffi, self.lib = self._open_abi()
        finally:
            shutil.rmtree(self._tmp, ignore_errors=True)

        ffi, lib = self.ffi, self.lib
        buf = self._buf = ffi.new("char[64]")
        unpack = ffi.unpack
        if self.mode == "api":
            self.bare = lib.apcbench_bare
            copy10 = lib.apcbench_copy10

            def ret10(key):
                return unpack(buf, copy10(key, len(key), buf, 64))
        else:
            self.bare = lib.getpid
            memcpy = lib.memcpy
            src = self._src = ffi.new("char[]", VALUE_10B)

            def ret10(key):
                memcpy(buf, src, 10)
                return unpack(buf, 10)

        self.ret10 = ret10
        assert self.ret10(KEY_10B) == VALUE_10B

    def describe(self) -> str:
        if self.mode == "api":
            return "cffi API-mode module compiled at bench time (bare(); copy10()+ffi.unpack)"
        return f"cffi ABI mode on libc (getpid(); memcpy+ffi.unpack) -- {self.reason}"

    def _build_api(self):
        import cffi

        # A unique module name per build: two builds in one process never clash.
        modname = "_apcbench_baseline_" + secrets.token_hex(4)
        ffi = cffi.FFI()
        ffi.cdef(_BASELINE_CDEF)
        ffi.set_source(modname, _BASELINE_SOURCE)
        so_path = ffi.compile(tmpdir=self._tmp, verbose=False)
        spec = importlib.util.spec_from_file_location(modname, so_path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module.ffi, module.lib

    @staticmethod
    def _open_abi():
        import cffi

        ffi = cffi.FFI()
        ffi.cdef("int getpid(void); void *memcpy(void *dest, const void *src, size_t n);")
        return ffi, ffi.dlopen(None)


@contextlib.contextmanager
def shm_copy_source(size: int = MiB):
    """A ``multiprocessing.shared_memory`` segment of ``size`` random bytes.

    Yields a memoryview of exactly ``size`` bytes; ``bytes(view)`` is the
    copy-out-of-shared-memory floor that the 1 MiB fetch target is set against.
    The segment is unlinked on exit.
    """
    from multiprocessing import shared_memory

    shm = shared_memory.SharedMemory(name=random_name(), create=True, size=size)
    try:
        view = shm.buf[:size]
        try:
            view[:] = VALUE_1M[:size] if size <= len(VALUE_1M) else os.urandom(size)
            yield view
        finally:
            view.release()
    finally:
        shm.close()
        shm.unlink()


# --- interleaved timing -------------------------------------------------------------


def timed_batch(fn, args, n: int) -> float:
    """Seconds per call over ``n`` back-to-back calls of ``fn(*args)``."""
    t0 = time.perf_counter()
    for _ in repeat(None, n):
        fn(*args)
    return (time.perf_counter() - t0) / n


def calibrate(fn, args, batch_s: float) -> int:
    """How many calls of ``fn(*args)`` take about ``batch_s`` seconds."""
    n = 1
    while True:
        t = timed_batch(fn, args, n) * n
        if t >= batch_s / 4 or n >= 1 << 20:
            break
        n *= 4
    per = t / n
    return max(3, min(1 << 20, int(batch_s / per))) if per > 0 else 1 << 20


def interleave(contestants, rounds: int, batch_s: float, log=None) -> tuple[dict, dict]:
    """Time every contestant once per round, in an order rotating every round.

    ``contestants`` is a list of ``(id, fn, args)``. Each is warmed up and
    calibrated once to a batch of about ``batch_s`` seconds; then each round
    times one batch of every contestant. A slow spell of the machine thus
    falls on all contestants alike, and the ratio of two contestants within
    one round is a fair pair. Returns ``(samples, sizes)``: per id, the list
    of seconds per call (one per round) and the batch length.
    """
    sizes = {}
    for cid, fn, args in contestants:
        fn(*args)
        sizes[cid] = calibrate(fn, args, batch_s)
    samples = {cid: [] for cid, _, _ in contestants}
    k = len(contestants)
    for r in range(rounds):
        shift = (r * 7) % k if k else 0
        for cid, fn, args in contestants[shift:] + contestants[:shift]:
            samples[cid].append(timed_batch(fn, args, sizes[cid]))
        if log:
            log(f"  round {r + 1}/{rounds} done")
    return samples, sizes


def paired_ratio(a: list[float], b: list[float]) -> float:
    """Median over rounds of a[i] / b[i]."""
    return statistics.median(x / y for x, y in zip(a, b))


def paired_spread(a: list[float], b: list[float]) -> tuple[float, float]:
    """First and third quartiles over rounds of a[i] / b[i]: how steady the pair was."""
    r = sorted(x / y for x, y in zip(a, b))
    if len(r) < 2:
        return (r[0], r[0]) if r else (float("nan"), float("nan"))
    q = statistics.quantiles(r, n=4)
    return q[0], q[2]


def paired_target_ratios(samples: dict, kind: str = "single") -> dict:
    """Paired ratios for every target of ``kind`` whose both sides are in ``samples``.

    Maps ``(num, den)`` to ``(median, q1, q3)`` of the per-round ratios.
    """
    out = {}
    for t in TARGETS:
        a, b = samples.get(t["num"]), samples.get(t["den"])
        if t["kind"] == kind and a and b:
            out[(t["num"], t["den"])] = (paired_ratio(a, b),) + paired_spread(a, b)
    return out


# --- targets -----------------------------------------------------------------------
# Each target compares two medians measured in the same run. ``num`` and
# ``den`` name scenarios as "impl:scenario" (the micro suite's extra_info) or
# "multiproc:<mix>:<engine>:<procs>" (ops/s) or "multiproc:<mix>:<engine>:scaling"
# (``"unit": "x"``) for the multi-process mixes.

TARGETS = [
    {
        "name": "fetch hit 10 B <= 0.67x lmdb get 10 B",
        "kind": "single", "num": "apccache:fetch_hit_10b", "den": "lmdb:fetch_hit_10b", "op": "<=", "limit": 0.67,
    },
    {
        "name": "fetch miss <= 0.5x lmdb get (miss)",
        "kind": "single", "num": "apccache:fetch_miss", "den": "lmdb:fetch_miss", "op": "<=", "limit": 0.5,
    },
    {
        "name": "store 10 B <= 0.33x lmdb put 10 B",
        "kind": "single", "num": "apccache:store_10b", "den": "lmdb:store_10b", "op": "<=", "limit": 0.33,
    },
    {
        "name": "fetch 1 MiB <= 1.5x bytes(memoryview) copy of 1 MiB",
        "kind": "single", "num": "apccache:fetch_1mib", "den": "baseline:fetch_1mib", "op": "<=", "limit": 1.5,
    },
    # The multi-process mixes (``multiproc.py``): each names its mix, whose
    # per-process dict must scale too for the verdict to count.
    {
        "name": "2-process 90/10 mix >= 1.8x 1-process throughput", "mix": "mix90",
        "kind": "multi", "num": "multiproc:mix90:apccache:2", "den": "multiproc:mix90:apccache:1", "op": ">=",
        "limit": 1.8,
    },
    {
        "name": "2-process 90/10 mix scaling >= 0.9x a per-process dict's scaling", "mix": "mix90", "unit": "x",
        "kind": "multi", "num": "multiproc:mix90:apccache:scaling", "den": "multiproc:mix90:dict:scaling",
        "op": ">=", "limit": 0.9,
    },
    {
        "name": "2-process 100% fetch >= 1.9x 1-process throughput", "mix": "read100",
        "kind": "multi", "num": "multiproc:read100:apccache:2", "den": "multiproc:read100:apccache:1", "op": ">=",
        "limit": 1.9,
    },
    {
        "name": "2-process 50/50 mix >= 1.5x 1-process throughput", "mix": "mix50",
        "kind": "multi", "num": "multiproc:mix50:apccache:2", "den": "multiproc:mix50:apccache:1", "op": ">=",
        "limit": 1.5,
    },
    {
        "name": "2-process 90/10 mix on 10 shared hot keys >= 1.0x 1-process throughput", "mix": "hot10",
        "kind": "multi", "num": "multiproc:hot10:apccache:2", "den": "multiproc:hot10:apccache:1", "op": ">=",
        "limit": 1.0,
    },
    {
        "name": "8-process 90/10 mix on 2 cores >= 0.9x 2-process throughput", "mix": "oversub",
        "kind": "multi", "num": "multiproc:oversub:apccache:8", "den": "multiproc:oversub:apccache:2", "op": ">=",
        "limit": 0.9,
    },
]


def evaluate_targets(values: dict, kind: str, ratios: dict | None = None) -> list[dict]:
    """Judge the targets of one ``kind`` against the figures of one run.

    ``kind`` picks the targets: "single" (one-process latency targets) or
    "multi" (the multi-process scaling targets). ``values`` maps scenario ids to medians (seconds per op for the micro
    scenarios, ops/s for the multi-process ones). ``ratios`` may give a
    target's ratio directly, keyed by ``(num, den)``: a script that measured
    both sides in the same round passes the median of those paired ratios,
    which is steadier on a noisy machine than a ratio of two medians.
    Returns one dict per target with the ratio, the verdict ("PASS", "FAIL"
    or "SKIP": an input was not measured; ``multiproc.py`` may turn a FAIL
    into "INCONCLUSIVE") and how far it is from the limit.
    """
    ratios = ratios or {}
    results = []
    for t in TARGETS:
        if t["kind"] != kind:
            continue
        num, den = values.get(t["num"]), values.get(t["den"])
        t = {**t, "num_value": num, "den_value": den,
             "median_ratio": (num / den) if num is not None and den else None}
        paired = ratios.get((t["num"], t["den"]))
        if isinstance(paired, tuple):
            paired, t["ratio_q1"], t["ratio_q3"] = paired
        t["paired"] = paired is not None
        ratio = paired if paired is not None else t["median_ratio"]
        if ratio is None:
            missing = [k for k in (t["num"], t["den"]) if values.get(k) is None]
            results.append({**t, "ratio": None, "verdict": "SKIP", "note": "not measured: " + ", ".join(missing)})
            continue
        ok = ratio <= t["limit"] if t["op"] == "<=" else ratio >= t["limit"]
        den = t["den_value"]
        if ok:
            note = ""
        elif t["op"] == "<=":
            note = f"misses by {ratio / t['limit']:.2f}x: apccache must get {ratio / t['limit']:.2f}x faster"
            if den:
                note += f" (<= {fmt_time(t['limit'] * den)} against this run's {fmt_time(den)})"
        else:
            note = f"reaches {ratio / t['limit']:.0%} of the required ratio"
            if den and t.get("unit") == "x":
                note += f" (needs {t['limit'] * den:.2f}x against this run's {den:.2f}x)"
            elif den:
                hi, lo = t["num"].rsplit(":", 1)[1], t["den"].rsplit(":", 1)[1]
                note += (f" (needs {t['limit'] * den / 1e3:,.0f}k ops/s with {hi} processes against "
                         f"{den / 1e3:,.0f}k with {lo})")
        results.append({**t, "ratio": ratio, "verdict": "PASS" if ok else "FAIL", "note": note})
    return results


def target_lines(results: list[dict]) -> list[str]:
    lines = []
    for r in results:
        if r["ratio"] is None:
            lines.append(f"TARGET SKIP  {r['name']}: {r['note']}")
        else:
            tail = f" -- {r['note']}" if r["note"] else ""
            spread = ""
            if r.get("ratio_q1") is not None:
                spread = f" (middle half of rounds {r['ratio_q1']:.2f}-{r['ratio_q3']:.2f}x)"
            lines.append(f"TARGET {r['verdict']}  {r['name']}: measured {r['ratio']:.2f}x{spread}{tail}")
    return lines


# --- formatting ----------------------------------------------------------------------


def fmt_time(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 1e-6:
        return f"{seconds * 1e9:.0f} ns"
    if seconds < 1e-3:
        return f"{seconds * 1e6:.2f} us"
    if seconds < 1:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds:.2f} s"


def md_table(header: list[str], rows: list[list[str]]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(out)


def leftover_segments() -> list[str]:
    """Names of ``apcbench-*`` entries still in /dev/shm (there should be none)."""
    if not SHM_DIR:
        return []
    return sorted(n for n in os.listdir(SHM_DIR) if n.startswith(PREFIX))


if __name__ == "__main__":  # pragma: no cover - a quick self-description
    print(machine_line())
    print(CffiBaseline().describe())
    sys.exit(0)
