"""close() is safe while other threads use the handle.

Each run is a child process that attaches the segment, starts three
threads hammering the handle (fetch, store, inc, delete, entry, info,
keys, check, the _many forms) and closes it from the main thread after a
random delay.  The calls in flight finish or fail with CacheClosedError;
every later call raises CacheClosedError; nothing touches freed memory (no
signal) and no thread is left stuck (each joins within 5 s).
"""
import os
import subprocess
import sys
import textwrap
import time

import pytest

RUNS = 100
JOBS = 2

CHILD = textwrap.dedent(
    """
    import random, sys, threading, time
    import apccache
    from apccache.errors import CacheClosedError

    name, seed = sys.argv[1], int(sys.argv[2])
    rng = random.Random(seed)
    c = apccache.Cache.attach(name)
    stop = False
    bad = []
    started = threading.Barrier(4)

    def hammer(i):
        r = random.Random(seed * 10 + i)
        started.wait()
        n = 0
        while not stop or n < 3:
            n += 1
            k = f"k{r.randrange(50)}"
            op = r.randrange(12)
            try:
                if op < 4:
                    c.fetch(k)
                elif op < 6:
                    c.store(k, r.randbytes(r.choice([10, 3000, 40000])))
                elif op == 6:
                    c.inc("n")
                elif op == 7:
                    c.delete(k)
                elif op == 8:
                    c.entry(k, lambda key: b"made")
                elif op == 9:
                    c.info()
                    list(c.keys())
                elif op == 10:
                    c.fetch_many([k, "k1", "k2"])
                    c.store_many({k: 1, "k3": b"x"})
                else:
                    c.check()
                    c.sma_info()
            except CacheClosedError:
                if stop:
                    return
            except Exception as e:
                bad.append(f"{type(e).__name__}: {e}")
                return

    threads = [threading.Thread(target=hammer, args=(i,), daemon=True) for i in range(3)]
    for t in threads:
        t.start()
    started.wait()
    time.sleep(rng.uniform(0, 0.02))
    c.close()
    stop = True
    for t in threads:
        t.join(5)
    if any(t.is_alive() for t in threads):
        print("stuck thread", flush=True)
        import os
        os._exit(2)
    if bad:
        print("unexpected:", bad[:3], flush=True)
        sys.exit(3)
    """
)


@pytest.mark.timeout(300)
def test_close_while_three_threads_use_the_handle(segments):
    c = segments(size=4 << 20)
    for i in range(50):
        c.store(f"k{i}", b"v" * (i * 100))
    failures = []
    todo = list(range(RUNS))
    running = []
    while todo or running:
        if len(failures) >= 10:
            todo = []  # enough to say what is wrong; keep the suite's time bounded
        while todo and len(running) < JOBS:
            seed = todo.pop()
            p = subprocess.Popen([sys.executable, "-c", CHILD, c.name, str(seed)],
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            running.append((seed, p, time.monotonic()))
        time.sleep(0.01)
        for item in list(running):
            seed, p, t0 = item
            if p.poll() is None:
                if time.monotonic() - t0 < 20:
                    continue
                p.kill()
                p.wait()
                failures.append((seed, "hung: killed after 20 s", ""))
            elif p.returncode != 0:
                out = p.stdout.read()
                what = (f"killed by signal {-p.returncode}" if p.returncode < 0
                        else f"exit {p.returncode}")
                failures.append((seed, what, out[-1500:]))
            running.remove(item)
            p.stdout.close()
    assert not failures, f"{len(failures)} runs failed (stopping at 10); first: " + "\n".join(
        f"seed {s}: {w}\n{o}" for s, w, o in failures[:3])
    assert c.check() == []
