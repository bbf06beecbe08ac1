"""Flask-Caching on apccache: @cache.cached, @cache.memoize and
delete_memoized act across two worker processes."""
import multiprocessing as mp
import os

import pytest

pytest.importorskip("flask_caching")

from helpers.segments import segment_name, unlink_name  # noqa: E402


def _worker(seg, conn):
    os.environ["APC_FLASK_SEGMENT"] = seg
    from tests.integrations.flask_app import app

    client = app.test_client()
    conn.send(os.getpid())
    while True:
        path = conn.recv()
        if path is None:
            return
        r = client.get(path)
        conn.send((r.status_code, r.get_data(as_text=True)))


class Worker:
    def __init__(self, ctx, seg):
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_worker, args=(seg, child))
        self.proc.start()
        assert self.conn.poll(60), "worker did not start"
        self.pid = self.conn.recv()

    def get(self, path):
        self.conn.send(path)
        assert self.conn.poll(30)
        status, text = self.conn.recv()
        assert status == 200, text
        return text

    def stop(self):
        self.conn.send(None)
        self.proc.join(10)


def test_cached_memoize_and_delete_memoized_across_two_workers():
    seg = segment_name("flask")
    ctx = mp.get_context("spawn")  # two fresh processes, as two workers
    workers = []
    try:
        a, b = Worker(ctx, seg), Worker(ctx, seg)
        workers = [a, b]
        # @cache.cached: the view renders once, in the first worker
        assert a.get("/cached") == f"rendered by {a.pid}"
        assert b.get("/cached") == f"rendered by {a.pid}"
        # @cache.memoize: computed once, in whichever worker asked first
        assert b.get("/square/4") == f"16 by {b.pid}"
        assert a.get("/square/4") == f"16 by {b.pid}"
        assert a.get("/square/5") == f"25 by {a.pid}"
        # delete_memoized in one worker: the other computes it again
        assert a.get("/forget/4") == "forgotten"
        assert b.get("/square/4") == f"16 by {b.pid}" and a.get("/square/4") == f"16 by {b.pid}"
        assert a.get("/forget/4") == "forgotten"
        assert a.get("/square/4") == f"16 by {a.pid}"
        assert b.get("/square/4") == f"16 by {a.pid}"
        assert b.get("/square/5") == f"25 by {a.pid}"  # the other argument was kept
    finally:
        for w in workers:
            w.stop()
        unlink_name(seg)


def test_factory_needs_a_name():
    import flask
    import flask_caching

    app = flask.Flask("x")
    app.config.update(CACHE_TYPE="apccache.integrations.flask.ApcCache")
    with pytest.raises(ValueError, match="CACHE_APCCACHE_NAME"):
        flask_caching.Cache(app)
