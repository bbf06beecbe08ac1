"""Flask-Caching on apccache beside SimpleCache and Redis, in one run.

    python bench/integrations_flask.py [--rounds 15 --batch-ms 15] [--md FILE] [--json FILE]

Backends (``CACHE_TYPE``): apccache (``apccache.integrations.flask.ApcCache``),
SimpleCache (per-process) and RedisCache (redis-server on 127.0.0.1, started
here).  Each operation goes through ``flask_caching.Cache`` inside an app
context, as a view calls it; "memoize hit" is a call of a
``@cache.memoize``-decorated function whose result is cached.  Rounds are
interleaved; ratio = median over rounds of backend / apccache.
"""
import argparse
import contextlib
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import benchlib as bl  # noqa: E402
from integrations_django import VALUE, _report, _unlink  # noqa: E402
from peers import free_loopback_port, server  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--batch-ms", type=float, default=15)
    ap.add_argument("--md")
    ap.add_argument("--json")
    args = ap.parse_args()
    bl.exit_on_sigterm()

    import flask
    import flask_caching

    with contextlib.ExitStack() as stack:
        seg = bl.random_name()
        stack.callback(lambda: _unlink(seg))
        configs = {
            "apccache": {"CACHE_TYPE": "apccache.integrations.flask.ApcCache", "CACHE_APCCACHE_NAME": seg,
                         "CACHE_APCCACHE_SIZE": "64M"},
            "simple": {"CACHE_TYPE": "SimpleCache", "CACHE_THRESHOLD": 100000},
        }
        notes = ["simple: flask_caching SimpleCache (per-process dict)"]
        binary = shutil.which("redis-server")
        if binary:
            port = free_loopback_port()
            workdir = stack.enter_context(tempfile.TemporaryDirectory(prefix=bl.PREFIX + "redis-"))
            stack.enter_context(server([binary, "--bind", "127.0.0.1", "--port", str(port), "--save", "",
                                        "--appendonly", "no", "--daemonize", "no", "--dir", workdir,
                                        "--logfile", ""], port))
            configs["redis"] = {"CACHE_TYPE": "RedisCache", "CACHE_REDIS_HOST": "127.0.0.1",
                                "CACHE_REDIS_PORT": port}
            notes.append(f"redis: redis-server on 127.0.0.1:{port}, TCP, redis-py client")
        else:
            notes.append("redis skipped: redis-server not installed")

        # one app, one Cache object per backend (init_app with its own config)
        app = flask.Flask("bench")
        stack.enter_context(app.app_context())
        contestants = []
        for n, cfg in configs.items():
            cache = flask_caching.Cache()
            cache.init_app(app, config=dict(cfg, CACHE_DEFAULT_TIMEOUT=300))

            @cache.memoize(timeout=300)
            def lookup(user_id, _n=n):
                return VALUE

            cache.set("hit", VALUE)
            lookup(42)
            ops = {
                "get hit (small dict)": (cache.get, ("hit",)),
                "get miss": (cache.get, ("never-set",)),
                "set (small dict)": (cache.set, ("k", VALUE)),
                "inc": (cache.cache.inc, ("counter",)),
                "memoize hit": (lookup, (42,)),
            }
            for op, (fn, a) in ops.items():
                contestants.append(((n, op), fn, a))
        samples, _ = bl.interleave(contestants, args.rounds, args.batch_ms / 1000)
    _report("Flask-Caching backends", list(configs), samples, notes, args)


if __name__ == "__main__":
    main()
