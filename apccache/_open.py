"""Create-or-attach (``Cache.open``), and the error for a missing segment.

Many workers start at once and each calls ``Cache.open(name)``: exactly one
creates the segment (``shm_open`` with ``O_EXCL`` decides which), the others
attach it.  An attacher can find the segment between its creation and the
end of its formatting: empty (not yet sized), or sized but not yet marked
ready.  The engine refuses such a segment (``APC_E_NOTREADY``) and
``attach`` waits for it; here an empty one is waited for too, and a name
unlinked between the failed create and the attach is created again.
"""
import os
import time

from .errors import CorruptSegmentError, IncompatibleSegmentError

SHM_DIR = "/dev/shm"
_ATTACH_ONLY = ("serializer", "clock", "lock_timeout")


def open_cache(cls, name, size, create, timeout, options):
    attach_opts = {k: v for k, v in options.items() if k in _ATTACH_ONLY}
    if not create:
        return cls.attach(name, **attach_opts)
    deadline = time.monotonic() + timeout
    while True:
        try:
            return cls.create(name, size, **options)
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
