""".pyc files, read and written as the stock import system does.

On a miss the file cache would rather not compile: when the source has a
``.pyc`` that the stock ``SourceFileLoader`` would accept, its marshal data
is what the cache stores, and compiling is left for the files that have
none.  After a compile, the import hook writes the ``.pyc`` the stock loader
would have written, so that a process without the hook finds it too.

Only timestamp ``.pyc`` files are read (PEP 552 flags 0): the header's
source mtime and size must match the source as the lookup saw it.  A hash
based one, a checked one, another interpreter's magic or a file that is
shorter or longer than it was when opened (being rewritten) is not used;
the source is compiled instead.  Nothing here raises for a ``.pyc``: a
problem with one only means it is not used, or not written.

The ``.pyc`` is read straight into the buffer the entry is stored from,
after room left for the entry's header (``_fileentry.encode``), so a module
found in a ``.pyc`` is copied once, into the segment.
"""
import importlib.util
import marshal
import os

from ._fileentry import fix_filename

__all__ = ["MAGIC", "load", "write"]

#: This interpreter's bytecode magic number.
MAGIC = importlib.util.MAGIC_NUMBER


def _read(source_path, st, room):
    """(buffer, start) for source_path's .pyc if it is a timestamp pyc that
    the stock import system would accept for the source as st describes
    it, else None.  buffer is a bytearray of room bytes (left for the
    entry's header) and the marshal data, which begins at start."""
    try:
        pyc = importlib.util.cache_from_source(source_path)
        with open(pyc, "rb", buffering=0) as f:
            head = f.read(16)
            if len(head) < 16 or head[:4] != MAGIC or head[4:8] != b"\0\0\0\0":
                return None
            if int.from_bytes(head[8:12], "little") != int(st.st_mtime) & 0xFFFFFFFF:
                return None
            if int.from_bytes(head[12:16], "little") != st.st_size & 0xFFFFFFFF:
                return None
            buf = bytearray(room + max(0, os.fstat(f.fileno()).st_size - 16))
            with memoryview(buf) as mv:
                pos = room
                while pos < len(buf):
                    n = f.readinto(mv[pos:])
                    if not n:
                        return None  # shorter than its size: being rewritten
                    pos += n
            if f.read(1):
                return None  # longer: being rewritten
    except (OSError, NotImplementedError, ValueError):
        return None
    return buf, room


def load(source_path, st, room):
    """(code, buffer) from source_path's valid .pyc (see _read), with
    co_filename set to source_path; None if there is none or it does not
    unmarshal.  buffer holds room bytes and then the marshal data."""
    rec = _read(source_path, st, room)
    if rec is None:
        return None
    buf, start = rec
    try:
        with memoryview(buf) as mv:
            code = fix_filename(marshal.loads(mv[start:]), source_path)
    except (ValueError, EOFError, TypeError):
        return None
    return code, buf


def write(loader, source_path, st, data):
    """Write the timestamp .pyc of source_path (as st describes it) with
    marshal data, as the stock SourceFileLoader would (through loader;
    errors are ignored, as there)."""
    try:
        pyc = importlib.util.cache_from_source(source_path)
    except (OSError, NotImplementedError, ValueError):
        return
    blob = b"".join((MAGIC, b"\0\0\0\0", (int(st.st_mtime) & 0xFFFFFFFF).to_bytes(4, "little"),
                     (st.st_size & 0xFFFFFFFF).to_bytes(4, "little"), data))
    try:
        cache_bytecode = getattr(loader, "_cache_bytecode", None)
        if cache_bytecode is not None:
            cache_bytecode(source_path, pyc, blob)
        else:
            loader.set_data(pyc, blob)
    except (OSError, NotImplementedError):
        pass
