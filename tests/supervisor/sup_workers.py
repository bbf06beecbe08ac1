"""Worker targets for the supervisor's process tests.

Each target appends one JSON line per event to the file named by $EVENTS
(O_APPEND writes of a single line are atomic), so a test can reconstruct what
every process did and when.  Behaviour is tuned per pool through [pools.X.env].
"""

import json
import os
import signal
import time

from apccache.supervisor import JobTimeLimitExceeded


def event(kind, ctx=None, **fields):
    path = os.environ.get("EVENTS")
    if not path:
        return
    rec = {"kind": kind, "t": time.time(), "pid": os.getpid()}
    if ctx is not None:
        rec.update(pool=ctx.pool, wid=ctx.worker_id, gen=ctx.generation, jobs=ctx.jobs_done)
    rec.update(fields)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, (json.dumps(rec) + "\n").encode())
    finally:
        os.close(fd)


def _f(name, default):
    return float(os.environ.get(name, default))


def steady(ctx):
    """Jobs of JOB_SECONDS with IDLE_SECONDS between them; a long job when the cache says so."""
    event("ready", ctx)
    job_s = _f("JOB_SECONDS", 0.02)
    idle_s = _f("IDLE_SECONDS", 0.01)
    long_key = os.environ.get("LONG_JOB_KEY")
    while ctx.running:
        name = "steady"
        seconds = job_s
        if long_key and ctx.cache.delete(f"{long_key}:{ctx.pool}:{ctx.worker_id}"):
            name = "long"
            seconds = _f("LONG_JOB_SECONDS", 3)
        with ctx.job(name):
            if name == "long":
                event("job_start", ctx, job=name)
            time.sleep(seconds)
        if name == "long":
            event("job_end", ctx, job=name)
        time.sleep(idle_s)
    event("exit", ctx)


def sharer(ctx):
    """Store one value per worker; read the values other workers stored."""
    event("ready", ctx)
    me = f"{ctx.pool}:{ctx.worker_id}"
    ctx.cache.store(f"share:{me}", {"pid": os.getpid(), "pool": ctx.pool})
    seen = set()
    while ctx.running:
        with ctx.job("share"):
            for key in ctx.cache.keys():
                if isinstance(key, bytes):
                    key = key.decode()
                if key.startswith("share:") and key != f"share:{me}" and key not in seen:
                    value = ctx.cache.fetch(key)
                    if value is not None and value["pid"] != os.getpid():
                        seen.add(key)
                        event("read", ctx, key=key, writer=value["pid"], writer_pool=value["pool"])
        time.sleep(0.02)
    event("exit", ctx)


def raiser(ctx):
    """Every job raises ValueError; the worker must carry on in the same process."""
    event("ready", ctx)
    while ctx.running:
        with ctx.job("raiser"):
            event("job", ctx)
            raise ValueError("a job error on purpose")
        time.sleep(0.05)


def exiter(ctx):
    """The first job of the pool calls os._exit(1); later jobs are normal."""
    event("ready", ctx)
    while ctx.running:
        with ctx.job("doomed"):
            if ctx.cache.add("exiter:done", 1):
                event("exiting", ctx)
                os._exit(1)
            time.sleep(0.02)
        time.sleep(0.02)


def time_limited(ctx):
    """One long job per pool (MODE sleep / extend / blocked); afterwards short jobs."""
    event("ready", ctx)
    mode = os.environ["MODE"]
    while ctx.running:
        special = ctx.cache.add(f"time_limited:{ctx.pool}", 1)
        with ctx.job(mode if special else "short"):
            if not special:
                time.sleep(0.02)
                continue
            start = time.monotonic()
            event("job_start", ctx, job=mode)
            try:
                if mode == "sleep":
                    time.sleep(10)
                elif mode == "extend":
                    time.sleep(0.8)
                    ctx.set_time_limit(3)
                    time.sleep(10)
                elif mode == "blocked":
                    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM})
                    time.sleep(30)
            except JobTimeLimitExceeded as e:
                event("time_limit", ctx, job=mode, elapsed=time.monotonic() - start, message=str(e))
                raise
            event("job_end", ctx, job=mode, elapsed=time.monotonic() - start)
        time.sleep(0.02)


def memory_hog(ctx):
    """Each job keeps CHUNK_MIB more MiB of private memory."""
    from apccache.supervisor import memory

    event("ready", ctx)
    chunk = int(_f("CHUNK_MIB", 8)) << 20
    hoard = []
    while ctx.running:
        with ctx.job("hog"):
            block = bytearray(chunk)
            for i in range(0, chunk, 4096):
                block[i] = 1
            hoard.append(block)
        event("job_done", ctx, private=memory.read().private)
        time.sleep(0.02)
    event("exit", ctx)


def big_reader(ctx):
    """Each job fetches the large value under BIG_KEY and drops it again."""
    from apccache.supervisor import memory

    event("ready", ctx)
    key = os.environ.get("BIG_KEY", "big")
    while ctx.running:
        with ctx.job("read-big"):
            value = ctx.cache.fetch(key)
            size = len(value) if value is not None else 0
            checksum = value[:16] if value is not None else b""
            del value
        usage = memory.read()
        event("job_done", ctx, size=size, private=usage.private, rss=usage.rss, ok=bool(checksum))
        time.sleep(0.02)
    event("exit", ctx)


def cache_user(ctx):
    """Tight loop of cache operations, timing each one (for the fault-injection test)."""
    event("ready", ctx)
    n = 0
    slowest = 0.0
    while ctx.running:
        with ctx.job("cache-ops"):
            for _ in range(20):
                t0 = time.monotonic()
                ctx.cache.store(f"cu:{ctx.worker_id}:{n % 50}", b"x" * 200)
                ctx.cache.fetch(f"cu:{(ctx.worker_id + 1) % 2}:{n % 50}")
                ctx.cache.delete(f"cu:{ctx.worker_id}:{(n + 25) % 50}")
                slowest = max(slowest, time.monotonic() - t0)
                n += 1
        event("ops", ctx, n=n, slowest=slowest, last=time.monotonic() - t0)
        slowest = 0.0
        time.sleep(0.01)
    event("exit", ctx)


def faulty(ctx):
    """Arm the engine's fault point FAULT_POINT, then operate on the cache: the engine SIGKILLs us."""
    import apccache

    event("ready", ctx)
    point = os.environ["FAULT_POINT"]
    first = ctx.cache.add(f"faulty:armed:{point}", 1)
    while ctx.running:
        with ctx.job("faulty"):
            if first:
                first = False
                event("arming", ctx, point=point)
                _arm_fault(apccache, ctx, point)
                for i in range(100):
                    ctx.cache.store(f"faulty:{i}", b"y" * 300)
                    ctx.cache.delete(f"faulty:{i}")
                event("survived", ctx, point=point)
            time.sleep(0.02)
        time.sleep(0.02)


def _arm_fault(apccache, ctx, point):
    from apccache import _bindings

    if not _bindings.lib.apc_debug_build():
        raise RuntimeError("the fault-injection test needs the debug engine (APCCACHE_DEBUG=1)")
    if _bindings.lib.apc_fault_arm(point.encode()) != 0:
        raise RuntimeError(f"cannot arm fault point {point!r}")


def returner(ctx):
    """Return from the target right away without being asked to stop."""
    event("ready", ctx)
