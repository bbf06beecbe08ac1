"""gunicorn: the master owns the segment, every worker shares it.

In the gunicorn config file (``gunicorn -c gunicorn.conf.py app:app``):

.. code-block:: python

    from apccache.integrations import gunicorn as apc

    apc.install(globals(), name="myapp", size="256M")

and in the application, in any worker:

.. code-block:: python

    from apccache.integrations.gunicorn import cache

    cache().inc("hits")

``install`` adds three server hooks to the config (wrapping any the file
defined before the call):

- ``on_starting``: the master opens the segment before it forks a worker
  (created, or attached if it exists) and takes the host-wide lock
  ``gunicorn:master`` in it.  A segment whose master is still alive is
  refused: the second master stops with an error naming the first.  A
  segment left by a master that died (SIGKILL, OOM) is reclaimed: its lock
  goes to the new master at once, and the entries are kept.
- ``child_exit``: ``recover(pid)`` for every worker that exits, so what a
  killed worker held (an ``entry()`` generation, a pin) is released at once.
  It never raises: an exception in this hook would kill the master.
- ``on_exit``: the segment is unlinked, unless ``keep=True`` (then only the
  lock is released, and the next master attaches the segment as it is).

Workers inherit the master's handle through fork; ``cache()`` returns it
(opening the segment itself when there is no master: a preloaded app that
calls it at import, or a script).  The state lives in this module, not in
the config file: gunicorn re-executes the config file on ``kill -HUP``,
which resets its globals, while imported modules stay.  HUP, TTIN and TTOU
therefore keep the segment and its entries; TERM and INT remove it.

Not handled: ``kill -USR2`` (binary upgrade).  The new master runs beside
the old one, which still holds the lock, so the new master refuses to
start.  Stop and start instead.
"""
import logging
import os
from typing import Any, Union

from ..cache import Cache
from ._common import parse_size

__all__ = ["cache", "install", "on_starting", "child_exit", "on_exit"]

log = logging.getLogger("apccache.gunicorn")

LOCK = "gunicorn:master"

# What survives the config file's re-execution on HUP.
_state = {"name": None, "size": None, "keep": False, "options": {}, "cache": None, "lock": None,
          "pid": None}


def install(config: dict, name: str, size: Union[int, str] = 64 << 20, *, keep: bool = False,
            **options: Any) -> dict:
    """Install the hooks into a gunicorn config namespace (``globals()`` of
    the config file).  options go to ``Cache.create`` (serializer, ttl,
    slots, ...).  Calling it again (HUP re-runs the config file) changes
    nothing that is open."""
    if _state["name"] not in (None, name) and _state["cache"] is not None:
        log.warning("apccache: the segment stays %r until the master restarts (config now says %r)",
                    _state["name"], name)
    else:
        _state.update(name=name, size=parse_size(size), options=dict(options))
    _state["keep"] = keep
    for hook, ours in (("on_starting", on_starting), ("child_exit", child_exit), ("on_exit", on_exit)):
        config[hook] = _chain(config.get(hook), ours, first=hook != "on_exit")
    return config


def _chain(theirs, ours, first):
    """ours and theirs as one hook.  gunicorn checks a hook's arity (the
    number of its positional parameters), so the chain has exactly ours:
    on_starting(server) and on_exit(server) take one, child_exit(server,
    worker) two."""
    if theirs is None or getattr(theirs, "_apccache", False):
        return ours

    def run(args):
        if first:
            ours(*args)
            return theirs(*args)
        theirs(*args)
        return ours(*args)

    if ours.__code__.co_argcount == 1:
        def hook(server):
            return run((server,))
    else:
        def hook(server, worker):
            return run((server, worker))

    hook._apccache = True
    return hook


def cache() -> Cache:
    """The shared handle (inherited from the master by every worker)."""
    c = _state["cache"]
    if c is None or c.closed:
        if _state["name"] is None:
            raise RuntimeError("apccache.integrations.gunicorn: call install() in the gunicorn config first")
        c = _state["cache"] = Cache.open(_state["name"], _state["size"], **_state["options"])
    return c


def on_starting(server):
    c = _state["cache"]
    if c is None or c.closed:
        c = _state["cache"] = Cache.open(_state["name"], _state["size"], **_state["options"])
    lock = c.lock(LOCK)
    if not lock.acquire(blocking=False):
        holder = c.fetch("apccache:lock:" + LOCK, 0) >> 41
        raise RuntimeError(
            f"apccache segment {_state['name']!r} belongs to the gunicorn master pid {holder}, which is "
            "still running: stop it first, or give this server another segment name"
        )
    _state["lock"] = lock
    _state["pid"] = os.getpid()
    server.log.info("apccache: segment %r (%d MiB) shared by the workers", _state["name"],
                    c.sma_info(limited=True)["seg_size"] >> 20)


def child_exit(server, worker):
    try:
        c = _state["cache"]
        if c is not None and not c.closed:
            n = c.recover(worker.pid)
            if n:
                server.log.info("apccache: released %d holds of worker %s", n, worker.pid)
    except Exception:  # an exception here would bring the master down
        log.exception("apccache: recover(%s) failed", getattr(worker, "pid", "?"))


def on_exit(server):
    c = _state["cache"]
    if c is None or os.getpid() != _state["pid"]:
        return
    try:
        lock = _state["lock"]
        if lock is not None:
            try:
                lock.release()
            except Exception:
                pass
        if not _state["keep"]:
            c.unlink()
    finally:
        _state.update(cache=None, lock=None, pid=None)
        c.close()
