"""Real gunicorn (sync and gthread workers) on 127.0.0.1, a small WSGI app
and real HTTP requests, with apccache.integrations.gunicorn installed in
the config file."""
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

pytest.importorskip("gunicorn")

import apccache  # noqa: E402
from helpers.children import alive, children_of, free_port, wait_until  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent.parent
CONF = Path(__file__).resolve().parent / "gunicorn_conf.py"


def _wait(cond, timeout=20, what="condition"):
    return wait_until(cond, timeout, what, interval=0.05)


class Gunicorn:
    def __init__(self, seg, log, worker_class="sync", workers=4):
        self.seg, self.port = seg, free_port()
        self.log = log
        env = dict(os.environ, APC_GUNICORN_SEGMENT=seg, APC_GUNICORN_BIND=f"127.0.0.1:{self.port}",
                   APC_GUNICORN_WORKERS=str(workers), APC_GUNICORN_CLASS=worker_class,
                   PYTHONPATH=str(ROOT))
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "-c", str(CONF), "tests.integrations.gunicorn_app:app"],
            cwd=ROOT, env=env, stdout=open(log, "ab"), stderr=subprocess.STDOUT,
        )
        self.pid = self.proc.pid

    def wait_ready(self, workers):
        _wait(lambda: len(self.workers()) == workers and self._up(), what=f"{workers} workers serving")

    def _up(self):
        try:
            self.get("/pid", timeout=2)
            return True
        except OSError:
            if self.proc.poll() is not None:
                raise AssertionError(f"gunicorn exited {self.proc.returncode}: {Path(self.log).read_text()[-3000:]}")
            return False

    def get(self, path, timeout=10):
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=timeout) as r:
            return r.read().decode()

    def workers(self):
        return children_of(self.pid)

    def signal(self, sig):
        os.kill(self.pid, sig)

    def stop(self):
        """TERM, and make sure nothing of it is left."""
        pids = self.workers()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        for p in pids:
            try:
                os.kill(p, signal.SIGKILL)
            except ProcessLookupError:
                pass


@pytest.fixture
def seg(shm_names):
    return shm_names("gunicorn")


def _sum_check(g, n=200):
    with ThreadPoolExecutor(8) as ex:
        replies = list(ex.map(lambda _: g.get("/inc"), range(n)))
    values = sorted(int(r.split()[0]) for r in replies)
    pids = {r.split()[1] for r in replies}
    return values, pids


def test_sync_workers_share_one_cache_through_everything(seg, tmp_path):
    g = Gunicorn(seg, tmp_path / "gunicorn.log")
    try:
        g.wait_ready(4)
        shm = f"/dev/shm/{seg}"
        inode = os.stat(shm).st_ino

        # a counter sums exactly over 4 workers
        values, pids = _sum_check(g)
        assert values == list(range(1, 201)) and len(pids) >= 2

        # entry() builds once, whichever worker asks
        with ThreadPoolExecutor(8) as ex:
            built = set(ex.map(lambda _: g.get("/entry"), range(8)))
        assert len(built) == 1 and g.get("/fetch?key=builds") == "1"

        # a worker SIGKILLed inside entry() is recovered: another builds the key
        c = apccache.Cache.attach(seg)
        hang = threading.Thread(target=lambda: _ignore(g.get, "/hang?key=k1", 60), daemon=True)
        hang.start()
        victim = _wait(lambda: c.fetch("hanging-pid"), what="a worker inside entry()")
        os.kill(victim, signal.SIGKILL)
        t0 = time.monotonic()
        assert g.get("/entry?key=k1", timeout=10).startswith("built by ")
        assert time.monotonic() - t0 < 5
        g.wait_ready(4)  # the master replaced the killed worker
        assert victim not in g.workers()
        assert c.info()["entries_in_progress"] == 0  # child_exit's recover() released it

        # HUP: new workers, same segment, same entries
        old = set(g.workers())
        g.signal(signal.SIGHUP)
        _wait(lambda: not old & set(g.workers()) and len(g.workers()) == 4, what="workers replaced after HUP")
        assert os.stat(shm).st_ino == inode
        assert int(g.get("/inc").split()[0]) == 201

        # TTIN / TTOU: one more worker, one fewer; the cache stays
        g.signal(signal.SIGTTIN)
        _wait(lambda: len(g.workers()) == 5, what="TTIN")
        g.signal(signal.SIGTTOU)
        _wait(lambda: len(g.workers()) == 4, what="TTOU")
        assert int(g.get("/inc").split()[0]) == 202 and os.stat(shm).st_ino == inode

        # a second master on the same segment is refused while this one lives
        second = Gunicorn(seg, tmp_path / "second.log")
        assert second.proc.wait(30) != 0
        assert "still running" in (tmp_path / "second.log").read_text()
        assert int(g.get("/inc").split()[0]) == 203

        # TERM leaves no segment
        c.close()
        g.signal(signal.SIGTERM)
        assert g.proc.wait(20) == 0
        assert not os.path.exists(shm)
    finally:
        g.stop()


def _ignore(fn, *args):
    try:
        fn(*args)
    except OSError:
        pass


def test_gthread_workers_and_a_master_killed_then_restarted(seg, tmp_path):
    g = Gunicorn(seg, tmp_path / "gunicorn.log", worker_class="gthread")
    try:
        g.wait_ready(4)
        values, pids = _sum_check(g)
        assert values == list(range(1, 201)) and len(pids) >= 2

        # the master is SIGKILLed: its workers notice and go; the segment stays
        workers = g.workers()
        g.signal(signal.SIGKILL)
        g.proc.wait(10)
        for w in workers:
            _wait(lambda: not alive(w), what=f"worker {w} to exit")
        assert os.path.exists(f"/dev/shm/{seg}")
    finally:
        g.stop()

    h = Gunicorn(seg, tmp_path / "restart.log", worker_class="gthread")
    try:
        h.wait_ready(4)  # reclaimed: the dead master's lock went to the new one
        assert int(h.get("/inc").split()[0]) == 201  # and the entries were kept
        h.signal(signal.SIGTERM)
        assert h.proc.wait(20) == 0
        assert not os.path.exists(f"/dev/shm/{seg}")
    finally:
        h.stop()


