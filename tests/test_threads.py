"""Threads: one handle is shared by threads of a process."""
import threading


def test_threads_share_a_handle(cache):
    errors = []

    def work(t):
        try:
            for i in range(2000):
                cache.store(f"t{t}-{i % 50}", bytes([t]) * (i % 300))
                v = cache.fetch(f"t{t}-{(i * 7) % 50}")
                assert v is None or v == bytes([t]) * len(v)
                cache.inc("counter")
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    ts = [threading.Thread(target=work, args=(t,)) for t in range(4)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert errors == []
    assert cache.fetch("counter") == 8000
    assert cache.check() == []
