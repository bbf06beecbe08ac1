"""gunicorn hooks: the master creates the host's segment and runs the fleet
listener in a thread of its own; workers attach the segment by name.

    # gunicorn.conf.py
    from apccache.fleet.gunicorn import fleet_hooks

    on_starting, on_exit = fleet_hooks("myapp", redis="redis://10.0.0.5:6379/0",
                                       namespace="myapp", size=64 << 20)

    # in the application (each worker)
    cache = apccache.Cache.attach("myapp")
    fc = FleetCache(cache, "redis://10.0.0.5:6379/0", namespace="myapp")

The master never serves requests, so a thread there costs the workers
nothing; it is forked into no worker (fork copies only the forking thread).
If the listener's loop ever fails unexpectedly it is logged and restarted
after a second, and readers fall back to Redis meanwhile (the heartbeat
ages).  A segment left by a master that was SIGKILLed is reused.
"""

import logging
import threading
import time

__all__ = ["fleet_hooks"]

log = logging.getLogger("apccache.fleet.gunicorn")


def fleet_hooks(segment, *, redis, namespace, size=64 << 20, keep=False, **listener_options):
    """``(on_starting, on_exit)`` for gunicorn.conf.py.  ``listener_options``
    are ``Listener``'s (``max_lag``, ``ping_interval``, ``dead_after``)."""
    state = {}

    def on_starting(server=None):
        import apccache

        from .listener import Listener

        try:
            cache = apccache.Cache.create(segment, size=size)
        except FileExistsError:
            cache = apccache.Cache.attach(segment)
        listener = Listener(cache, redis, namespace, **listener_options)
        thread = threading.Thread(target=_run, args=(listener,), name="apccache-fleet-listener", daemon=True)
        state.update(cache=cache, listener=listener, thread=thread)
        thread.start()

    def on_exit(server=None):
        listener, thread, cache = state.get("listener"), state.get("thread"), state.get("cache")
        if listener is None:
            return
        listener.stop()
        thread.join(5)
        if not keep:
            cache.unlink()
        cache.close()
        state.clear()

    return on_starting, on_exit


def _run(listener):
    while listener._running:
        try:
            listener.run()
        except Exception:
            log.exception("the fleet listener failed; restarting it in 1 s")
            time.sleep(1.0)
