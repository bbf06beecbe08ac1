"""The worker's ctx in-process: job accounting, the time limit and its shield, rotation tokens."""

import os
import signal
import threading
import time

import pytest

import apccache
from apccache.supervisor import JobTimeLimitExceeded, scoreboard as sb
from apccache.supervisor.worker import WorkerContext
from helpers.segments import segment_name


@pytest.fixture
def alarm():
    """Let a ctx own SIGALRM for the test, then put things back."""
    contexts = []

    def install(ctx):
        contexts.append(ctx)
        signal.signal(signal.SIGALRM, ctx._on_alarm)
        return ctx

    old = signal.getsignal(signal.SIGALRM)
    try:
        yield install
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


class SlowCache:
    """A stand-in engine call that takes a while, to see where the time limit lands."""

    def __init__(self):
        self.finished = []

    def slow_store(self, key, seconds):
        end = time.monotonic() + seconds
        while time.monotonic() < end:  # busy, like C code holding on
            pass
        self.finished.append(key)
        return True


def make_ctx(cache=None, limit=0.0, rotate_at=0, rotate_cap=0, token_fd=None, memory_limit=0):
    buf = bytearray(65536)
    board = sb.Board(buf)
    board.initialise(os.getpid(), time.time())
    board.claim_record(0, 0, 0, 1, 0, rotate_at, rotate_cap, "")
    rec = sb.WorkerRecord(buf, 0)
    ctx = WorkerContext(cache=cache, pool="p", worker_id=0, generation=1, record=rec, token_fd=token_fd,
                        master_pid=0, rotate_at=rotate_at, rotate_cap=rotate_cap, memory_limit=memory_limit,
                        job_time_limit=limit)
    return ctx, buf


def test_a_raising_job_is_counted_and_swallowed():
    """A job error is logged and counted; the with block ends normally."""
    ctx, buf = make_ctx()
    with ctx.job("bad"):
        raise ValueError("boom")
    with ctx.job("good"):
        pass
    w = sb.read(buf)["workers"][0]
    assert (w["jobs"], w["job_errors"], w["state"]) == (2, 1, "idle")
    assert ctx.jobs_done == 2


def test_jobs_cannot_nest_and_set_time_limit_checks_its_argument():
    ctx, _ = make_ctx()
    with ctx.job("outer"):
        with pytest.raises(RuntimeError, match=r"ctx.job\('inner'\) inside job 'outer': jobs cannot be nested"):
            with ctx.job("inner"):
                pass
    for bad in (-1, "3", None, float("nan"), True):
        with pytest.raises(ValueError, match=r"set_time_limit\(\) needs a number of seconds >= 0"):
            ctx.set_time_limit(bad)
    with pytest.raises(TypeError):
        ctx.job(3)


def test_the_time_limit_raises_in_the_job_and_is_published(alarm):
    """A 0.3 s limit interrupts a sleep at ~0.3 s; the scoreboard showed the deadline meanwhile."""
    ctx, buf = make_ctx(limit=0.3)
    alarm(ctx)
    seen = {}
    t0 = time.monotonic()
    with ctx.job("sleepy"):
        w = sb.read(buf)["workers"][0]
        seen.update(job=w["job"], deadline=w["job_deadline"], limit=w["time_limit"])
        try:
            time.sleep(5)
        except JobTimeLimitExceeded as e:
            seen["elapsed"] = time.monotonic() - t0
            seen["message"] = str(e)
            raise
    assert 0.25 <= seen["elapsed"] <= 0.8
    assert seen["job"] == "sleepy" and seen["limit"] == 0.3 and seen["deadline"] > t0
    assert "job 'sleepy' exceeded its 0.3 s time limit" in seen["message"]
    w = sb.read(buf)["workers"][0]
    assert (w["jobs"], w["job_errors"], w["time_limits"]) == (1, 1, 1)


def test_set_time_limit_restarts_the_count_from_now(alarm):
    """set_time_limit(0.5) at 0.2 s into a 0.3 s limit moves the exception to ~0.7 s; 0 disarms it."""
    ctx, _ = make_ctx(limit=0.3)
    alarm(ctx)
    t0 = time.monotonic()
    caught = []
    with ctx.job("extended"):
        try:
            time.sleep(0.2)
            ctx.set_time_limit(0.5)
            time.sleep(5)
        except JobTimeLimitExceeded as e:
            caught.append((time.monotonic() - t0, e.limit))
            raise
    assert len(caught) == 1
    elapsed, limit = caught[0]
    assert 0.65 <= elapsed <= 1.2 and limit == 0.5, caught
    with ctx.job("unlimited"):
        ctx.set_time_limit(0)
        time.sleep(0.5)
    # Outside a job it sets the limit the next jobs start with.
    ctx.set_time_limit(0.2)
    t0 = time.monotonic()
    with ctx.job("next"):
        time.sleep(2)
    assert time.monotonic() - t0 < 1.0


def test_the_time_limit_never_fires_inside_an_engine_call(alarm):
    """A limit expiring during a cache call is raised right after the call returns, never inside it."""
    slow = SlowCache()
    ctx, buf = make_ctx(cache=slow, limit=0.2)
    alarm(ctx)
    after_call = []
    t0 = time.monotonic()
    with ctx.job("shielded"):
        ctx.cache.slow_store("k", 0.5)
        after_call.append("reached")  # pragma: no cover - the exception comes first
    assert slow.finished == ["k"]
    assert after_call == []
    assert time.monotonic() - t0 >= 0.5
    assert sb.read(buf)["workers"][0]["time_limits"] == 1


def test_entry_generators_run_with_the_limit_live_and_leave_the_key_free(alarm):
    """The generator passed to entry() is job code: the limit interrupts it, nothing is stored, and the
    key can be generated again at once."""
    name = segment_name("sup")
    cache = apccache.Cache.create(name, size=4 << 20)
    try:
        ctx, _ = make_ctx(cache=cache, limit=0.2)
        alarm(ctx)
        calls = []

        def slow_gen(key):
            calls.append(key)
            time.sleep(5)

        t0 = time.monotonic()
        with ctx.job("gen"):
            ctx.cache.entry("k", slow_gen)
        assert time.monotonic() - t0 < 1.5
        assert calls == ["k"]
        assert cache.fetch("k") is None
        with ctx.job("again"):
            assert ctx.cache.entry("k", lambda key: "made") == "made"
        assert cache.fetch("k") == "made"
        assert cache.check() == []
        assert isinstance(ctx.cache.unwrapped, apccache.Cache)
        ctx.cache["m"] = 1
        assert ctx.cache["m"] == 1 and "m" in ctx.cache and len(ctx.cache) == 2
        del ctx.cache["m"]
        assert sorted(ctx.cache) == ["k"]
    finally:
        cache.unlink()
        cache.close()


def test_rotation_waits_for_the_pool_token_but_not_past_the_cap():
    """Due at rotate_at: leaves at once with the token; without it keeps serving until rotate_cap, then waits."""
    r, w = os.pipe()
    os.set_blocking(r, False)
    try:
        ctx, buf = make_ctx(rotate_at=2, rotate_cap=4, token_fd=r)
        for _ in range(2):
            assert ctx.running
            with ctx.job("j"):
                pass
        assert ctx.running          # due, but the token is taken elsewhere
        with ctx.job("j"):
            pass
        assert ctx.running
        with ctx.job("j"):
            pass
        threading.Timer(0.3, os.write, (w, b"r")).start()
        t0 = time.monotonic()
        assert not ctx.running     # at the cap: waits for the token
        assert time.monotonic() - t0 >= 0.25
        rec = sb.read(buf)["workers"][0]
        assert (rec["state"], rec["intent"], rec["rotating"], rec["jobs"]) == ("stopping", "rotate (max_jobs)", True, 4)
        assert not ctx.running
    finally:
        os.close(r)
        os.close(w)


def test_a_stop_request_ends_the_loop_without_a_token():
    r, w = os.pipe()
    os.set_blocking(r, False)
    try:
        ctx, buf = make_ctx(rotate_at=1, rotate_cap=1, token_fd=r)
        with ctx.job("j"):
            pass
        ctx._on_stop_signal(signal.SIGTERM, None)
        assert not ctx.running
        assert sb.read(buf)["workers"][0]["intent"] == "stop requested"
    finally:
        os.close(r)
        os.close(w)
