"""A process's private memory, as the supervisor's ``memory_limit`` counts it.

RSS is the wrong measure for a worker: it counts every page of the shared
cache the worker has touched, so a worker that merely reads a large cached
value would look as big as the value.  The supervisor uses the proportional
set size without shared-memory pages instead, ``Pss - Pss_Shmem`` from
``/proc/<pid>/smaps_rollup``: the worker's anonymous memory (heap, stacks),
counted in full where only it maps a page and in proportion where it still
shares copy-on-write pages with the master, plus its share of file mappings.
The cache segment (a tmpfs / ``/dev/shm`` mapping) never counts.

Kernels without ``Pss_Shmem`` in ``smaps_rollup`` fall back to summing
``/proc/<pid>/smaps`` over every mapping that is not under ``/dev/shm`` and not
a SysV segment, which is slower but equivalent.  Linux only; elsewhere
``read()`` returns None and memory limits are not enforced.
"""

__all__ = ["read", "Usage"]

import collections

Usage = collections.namedtuple("Usage", "private rss")


def read(pid="self"):
    """Return Usage(private, rss) in bytes for *pid*, or None if it cannot be read."""
    fields = _parse(f"/proc/{pid}/smaps_rollup")
    if fields is None:
        return _from_smaps(pid)
    if "Pss_Shmem" not in fields:
        return _from_smaps(pid)
    return Usage(
        private=max(0, fields.get("Pss", 0) - fields["Pss_Shmem"]),
        rss=fields.get("Rss", 0),
    )


def _parse(path):
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError:
        return None
    fields = {}
    for line in data.split(b"\n"):
        name, sep, rest = line.partition(b":")
        if not sep or b" " in name:
            continue
        parts = rest.split()
        if len(parts) == 2 and parts[1] == b"kB":
            fields[name.decode()] = int(parts[0]) * 1024
    return fields


def _from_smaps(pid):
    try:
        with open(f"/proc/{pid}/smaps", "rb") as f:
            data = f.read()
    except OSError:
        return None
    private = rss = 0
    skip = False
    for line in data.split(b"\n"):
        if not line:
            continue
        first = line.split(None, 1)[0]
        if not first.endswith(b":"):
            # A mapping header: "start-end perms offset dev inode [path]".
            parts = line.split(None, 5)
            path = parts[5] if len(parts) > 5 else b""
            skip = path.startswith(b"/dev/shm/") or path.startswith(b"/SYSV")
            continue
        parts = line.split()
        if len(parts) != 3 or parts[2] != b"kB":
            continue
        if first == b"Rss:":
            rss += int(parts[1]) * 1024
        elif first == b"Pss:" and not skip:
            private += int(parts[1]) * 1024
    return Usage(private=private, rss=rss)
