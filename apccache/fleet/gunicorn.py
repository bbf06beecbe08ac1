"""gunicorn: the master runs the fleet listener in a thread of its own, on
the segment that ``apccache.integrations.gunicorn`` opened for the workers.

    # gunicorn.conf.py
    from apccache.integrations import gunicorn as apc
    from apccache.fleet import gunicorn as fleet

    apc.install(globals(), name="myapp", size="256M")
    fleet.install(globals(), redis="redis://10.0.0.5:6379/0", namespace="myapp")

    # in the application (any worker)
    from apccache.fleet import FleetCache
    from apccache.integrations.gunicorn import cache
    fc = FleetCache(cache(), "redis://10.0.0.5:6379/0", namespace="myapp")

The master never serves requests, so the thread costs the workers nothing,
and fork copies only the forking thread, so no worker runs it (what the
thread would import lazily is imported before it starts: see _preload).  If the
listener's loop ever fails unexpectedly it is logged and restarted after a
second; readers fall back to Redis meanwhile (the heartbeat ages).  The
state lives in this module, as the integration's does: gunicorn re-executes
the config file on HUP, and a second install() then changes nothing.
"""

import logging
import os
import threading
import time

__all__ = ["install"]

log = logging.getLogger("apccache.fleet.gunicorn")

_state = {"options": None, "listener": None, "thread": None, "pid": None}


def install(config, *, redis, namespace, **listener_options):
    """Add the listener to a gunicorn config namespace (``globals()`` of the
    config file), after ``apccache.integrations.gunicorn.install``.
    ``listener_options`` are ``Listener``'s (``max_lag``, ``ping_interval``,
    ``dead_after``); they are checked here."""
    from ..integrations import gunicorn as apc
    from .listener import Listener, parse_url

    parse_url(redis)
    Listener._check_options(**listener_options)
    if apc._state["name"] is None:
        raise RuntimeError("apccache.fleet.gunicorn: call apccache.integrations.gunicorn.install() first")
    options = dict(redis=redis, namespace=namespace, **listener_options)
    if _state["listener"] is None:
        _state["options"] = options
    elif options != _state["options"]:
        log.warning("apccache fleet: the listener keeps its settings until the master restarts")
    config["on_starting"] = _chain(config.get("on_starting"), on_starting, first=False)
    config["on_exit"] = _chain(config.get("on_exit"), on_exit, first=True)
    return config


def _chain(theirs, ours, first):
    if theirs is None or getattr(theirs, "_apccache_fleet", False):
        return ours

    def hook(server):  # gunicorn checks a hook's arity: exactly one argument
        if first:
            ours(server)
            return theirs(server)
        theirs(server)
        return ours(server)

    hook._apccache_fleet = True
    hook._apccache = getattr(theirs, "_apccache", False)
    return hook


def on_starting(server=None):
    """Start the listener thread on the integration's segment (its hook ran first)."""
    from ..integrations import gunicorn as apc
    from .listener import Listener

    o = _state["options"]
    _preload(o["redis"])
    listener = Listener(apc.cache(), o["redis"], o["namespace"],
                        **{k: v for k, v in o.items() if k not in ("redis", "namespace")})
    thread = threading.Thread(target=_run, args=(listener,), name="apccache-fleet-listener", daemon=True)
    _state.update(listener=listener, thread=thread, pid=os.getpid())
    thread.start()
    (server.log if server is not None else log).info(
        "apccache fleet: listener for namespace %r on %s started in the master", o["namespace"], o["redis"])


def on_exit(server=None):
    """Stop the listener (readers stop trusting at once) before the segment goes."""
    listener, thread = _state["listener"], _state["thread"]
    if listener is None or os.getpid() != _state["pid"]:
        return
    listener.stop()
    thread.join(5)
    _state.update(listener=None, thread=None, pid=None)


def _preload(url):
    """Import, in the master's main thread and before any fork, what the
    listener thread would otherwise import lazily.  A worker forked while
    another thread holds a module's import lock inherits the lock held, and
    hangs on its first import of that module (socket's host encoding, idna,
    is the one that bites: it loads on the first connection)."""
    import encodings.idna  # noqa: F401
    import re  # noqa: F401  (Cache.keys)
    import socket

    from .listener import parse_url

    host, port, _, _ = parse_url(url)
    try:
        socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError:
        pass  # resolved again, in the thread, when it connects


def _run(listener):
    while listener._running:
        try:
            listener.run()
        except Exception:
            log.exception("the fleet listener failed; restarting it in 1 s")
            time.sleep(1.0)
