"""The API the integrations add, beside what a program would use instead,
in one run.

    python bench/integrations_core.py [--rounds 15 --batch-ms 15] [--md FILE] [--json FILE]

- memoize hit: ``@cache.memoize`` (shared by every process, hit counted in
  the segment) beside ``functools.lru_cache`` (per process);
- lock: ``with cache.lock(name)`` beside ``fcntl.flock`` on a file in
  /dev/shm (the usual host-wide lock), and a ``threading.Lock``;
- coroutines: ``cache.fetch`` called straight from a coroutine beside the
  same call through ``asyncio.to_thread`` (what a thread hop costs), each
  run as one coroutine on the loop, beside an empty coroutine;
- touch beside store (both rewrite the entry's expiry; store also copies
  the value).

Ratio = median over rounds of the other / apccache's row in the same round.
"""
import argparse
import asyncio
import contextlib
import fcntl
import functools
import os
import sys
import threading
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import benchlib as bl  # noqa: E402
from integrations_django import VALUE, _report  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--batch-ms", type=float, default=15)
    ap.add_argument("--md")
    ap.add_argument("--json")
    args = ap.parse_args()
    bl.exit_on_sigterm()
    import apccache

    with contextlib.ExitStack() as stack:
        c = stack.enter_context(bl.apccache_segment(apccache))
        d = stack.enter_context(bl.shm_tempdir())

        @c.memoize()
        def shared(n):
            return VALUE

        @functools.lru_cache(maxsize=None)
        def local(n):
            return VALUE

        shared(1), local(1)

        def apc_lock():
            with c.lock("bench"):
                pass

        fd = os.open(os.path.join(d, "lock"), os.O_CREAT | os.O_RDWR, 0o600)
        stack.callback(os.close, fd)

        def flock():
            fcntl.flock(fd, fcntl.LOCK_EX)
            fcntl.flock(fd, fcntl.LOCK_UN)

        tl = threading.Lock()

        def thread_lock():
            with tl:
                pass

        loop = asyncio.new_event_loop()
        stack.callback(loop.close)
        c.store("hit", VALUE)

        async def direct():
            return c.fetch("hit")

        async def hop():
            return await asyncio.to_thread(c.fetch, "hit")

        async def nothing():
            return None

        c.store("t", b"x" * 100)
        contestants = [
            (("apccache", "memoize hit"), shared, (1,)),
            (("other", "memoize hit"), local, (1,)),
            (("apccache", "lock + unlock"), apc_lock, ()),
            (("other", "lock + unlock"), flock, ()),
            (("other2", "lock + unlock"), thread_lock, ()),
            (("apccache", "fetch in a coroutine"), lambda: loop.run_until_complete(direct()), ()),
            (("other", "fetch in a coroutine"), lambda: loop.run_until_complete(hop()), ()),
            (("other2", "fetch in a coroutine"), lambda: loop.run_until_complete(nothing()), ()),
            (("apccache", "touch vs store 100 B"), c.touch, ("t", 300)),
            (("other", "touch vs store 100 B"), c.store, ("t", b"x" * 100, 300)),
        ]
        samples, _ = bl.interleave(contestants, args.rounds, args.batch_ms / 1000)
    notes = [
        "memoize hit, other: functools.lru_cache (per process, no sharing); other2: -",
        "lock + unlock, other: fcntl.flock LOCK_EX/LOCK_UN on a file in /dev/shm; other2: threading.Lock",
        "fetch in a coroutine, other: the same fetch through asyncio.to_thread; other2: an empty coroutine"
        " (the floor: running any coroutine to completion on the loop)",
        "touch vs store, other: store of the same 100 B value with the same ttl",
    ]
    _report("The core API the integrations add", ["apccache", "other", "other2"], samples, notes, args)


if __name__ == "__main__":
    main()
