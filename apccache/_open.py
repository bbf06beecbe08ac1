"""Create-or-attach (``Cache.open``), and the error for a missing segment.

Many workers start at once and each calls ``Cache.open(name)``: exactly one
creates the segment (``shm_open`` with ``O_EXCL`` decides which), the others
attach it.  An attacher can find the segment between its creation and the
end of its formatting: empty (not yet sized), or sized but not yet marked
ready.  The engine refuses such a segment (``APC_E_NOTREADY``) and
``attach`` waits for it; here an empty one is waited for too, and a name
unlinked between the failed create and the attach is created again.
"""
import inspect
import os
import time

from .errors import CorruptSegmentError, IncompatibleSegmentError

SHM_DIR = "/dev/shm"


def _params(fn):
    return {n for n, p in inspect.signature(fn).parameters.items()
            if p.kind is not p.VAR_KEYWORD and not n.startswith("_")} - {"cls", "name"}


def open_cache(cls, name, size, create, timeout, options):
    create_params, attach_params = _params(cls.create), _params(cls.attach)
    unknown = set(options) - create_params - attach_params
    if unknown:
        raise TypeError(f"Cache.open() got unexpected options: {', '.join(sorted(unknown))}")
    create_opts = {k: v for k, v in options.items() if k in create_params}
    attach_opts = {k: v for k, v in options.items() if k in attach_params and k != "timeout"}
    mode = options.get("mode")
    if "trust_group" in attach_params and "trust_group" not in options and mode is not None:
        attach_opts["trust_group"] = bool(mode & 0o070)  # a group segment is attached as one
    if not create:
        return cls.attach(name, **attach_opts)
    deadline = time.monotonic() + timeout
    while True:
        try:
            return cls.create(name, size, **create_opts)
        except FileExistsError:
            pass
        try:
            return cls.attach(name, **attach_opts)
        except FileNotFoundError:
            continue  # unlinked meanwhile: try to create it again
        except (CorruptSegmentError, IncompatibleSegmentError):
            # Empty: its creator has not sized it yet; wait for it, up to
            # timeout.  (One sized but not yet formatted, attach itself
            # waits for.)
            if not _empty(name) or time.monotonic() > deadline:
                raise
            time.sleep(0.002)


def _empty(name):
    try:
        return os.stat(os.path.join(SHM_DIR, name)).st_size == 0
    except FileNotFoundError:
        return True  # gone meanwhile: the next round creates it


def missing_message(name):
    """FileNotFoundError's text for a name with no segment: which exist."""
    try:
        from .stat.collect import list_segments

        segs, _ = list_segments()
        names = [s["name"] for s in segs]
    except Exception:  # the listing is a courtesy: never let it hide the error
        names = []
    if names:
        shown = ", ".join(names[:20]) + (f" and {len(names) - 20} more" if len(names) > 20 else "")
        return f"no apccache segment named {name!r}; the segments that exist: {shown}"
    return f"no apccache segment named {name!r}, and none exists in /dev/shm"
