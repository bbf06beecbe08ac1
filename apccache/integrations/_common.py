"""What the framework backends share: parsing a size, importing a
serializer, and one handle per segment per process."""
import importlib
import os
import re
import threading

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:i?B)?\s*$", re.I)
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_size(size) -> int:
    """An int, or a string such as "256M", "64MiB", "1G" (powers of 1024)."""
    if isinstance(size, int) and not isinstance(size, bool):
        return size
    m = _SIZE.match(str(size))
    if not m:
        raise ValueError(f"cannot read the size {size!r}: use bytes or a string such as '256M'")
    return int(float(m.group(1)) * _UNITS[m.group(2).upper()])


def load_object(spec):
    """spec itself, or the object a dotted path "pkg.mod.Name" names
    (instantiated if it is a class)."""
    if not isinstance(spec, str):
        return spec
    mod, _, name = spec.rpartition(".")
    obj = getattr(importlib.import_module(mod), name)
    return obj() if isinstance(obj, type) else obj


_handles = {}
_guard = threading.Lock()


def shared_handle(name, size, create, serializer=None, **options):
    """One Cache handle per (segment, serializer) in this process, opened
    with Cache.open (create-or-attach).  Handles are thread-safe, and one
    inherited through fork keeps working, so every backend instance (Django
    makes one per thread) shares it."""
    from ..cache import Cache

    ident = (name, id(serializer) if serializer is not None else None, os.getpid())
    with _guard:
        c = _handles.get(ident)
        if c is None or c.closed:
            c = Cache.open(name, size, create=create, serializer=serializer, **options)
            _handles[ident] = c
        return c
