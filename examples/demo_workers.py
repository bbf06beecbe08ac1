"""Example workers for ``apccache supervise examples/supervisor.toml``.

Each worker invents its own jobs (the supervisor does not own jobs), and all
of them share the one cache segment the supervisor created: a result computed
by one worker is served to the others from shared memory.
"""

import math
import random
import time

from apccache.supervisor import scoreboard


def _count_primes(limit):
    """Primes below *limit* by a plain sieve: a deliberately CPU-bound job."""
    sieve = bytearray([1]) * limit
    sieve[0:2] = b"\0\0"
    for i in range(2, int(math.isqrt(limit - 1)) + 1):
        if sieve[i]:
            sieve[i * i::i] = bytes(len(range(i * i, limit, i)))
    return sum(sieve)


def compute(ctx):
    """Count primes below random bounds; each bound is computed once across the pool."""
    rng = random.Random()
    while ctx.running:
        limit = rng.choice(range(50_000, 2_000_001, 50_000))
        with ctx.job("count-primes"):
            count = ctx.cache.entry(f"primes:{limit}", lambda *_: _count_primes(limit), ttl=600)
            ctx.cache.inc("example:compute-jobs")
            if rng.random() < 0.01:
                ctx.log.info("worker %d: %d primes below %d", ctx.worker_id, count, limit)
        time.sleep(rng.uniform(0.005, 0.03))


def _tile(cx, cy, size, max_iter):
    """One Mandelbrot tile as rows of characters."""
    chars = " .:-=+*#%@"
    rows = []
    for y in range(size):
        row = []
        for x in range(size):
            c = complex(cx + (x - size / 2) * 3.0 / size / 8, cy + (y - size / 2) * 3.0 / size / 8)
            z = 0j
            n = 0
            while abs(z) <= 2 and n < max_iter:
                z = z * z + c
                n += 1
            row.append(chars[min(len(chars) - 1, n * len(chars) // (max_iter + 1))])
        rows.append("".join(row))
    return "\n".join(rows)


def render(ctx):
    """Render Mandelbrot tiles cached by coordinates; now and then one runs into the time limit."""
    rng = random.Random()
    settings = ctx.cache.fetch("example:settings") or {"tile_size": 24, "max_iter": 200}
    while ctx.running:
        cx = round(rng.uniform(-2.0, 0.5), 1)
        cy = round(rng.uniform(-1.2, 1.2), 1)
        with ctx.job("render-tile"):
            if rng.random() < 0.002:
                ctx.log.info("worker %d: rendering a huge tile that will meet the %s time limit",
                             ctx.worker_id, "job")
                _tile(cx, cy, 2000, 2000)   # stopped by JobTimeLimitExceeded
            ctx.cache.entry(f"tile:{cx}:{cy}", lambda *_: _tile(cx, cy, settings["tile_size"],
                                                                 settings["max_iter"]), ttl=300)
            ctx.cache.inc("example:render-jobs")
        time.sleep(rng.uniform(0.005, 0.02))


def report(ctx):
    """Every 5 s, log the pools' numbers from the scoreboard and the cache's size."""
    last = 0.0
    while ctx.running:
        time.sleep(0.2)
        if time.monotonic() - last < 5:
            continue
        last = time.monotonic()
        with ctx.job("report"):
            board = scoreboard.read(ctx.cache.unwrapped)
            pools = ", ".join(
                f"{p['name']}: {p['jobs']} jobs, {p['job_errors']} errors, {p['rotations']} rotations"
                for p in board["pools"].values())
            keys = len(ctx.cache)
            ctx.log.info("report: %d keys cached; %s", keys, pools)
