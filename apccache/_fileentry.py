"""File-cache entries: the bytes stored under a file key, and back.

An entry is a fixed header, the path the value was made from, and the
payload::

    magic "APF1" | kind | flags | reserved | mtime_ns | size | ctime_ns | path length
    path (bytes)
    payload: marshal data (CODE), the bytes (BYTES), UTF-8 (STR), or the
             cache serializer's output (SERIALIZED)

The header's three validators are those of the file when it was read: a
stat-mode lookup compares them with the file's as it is now, straight in the
segment (``decode`` is given a view of the entry that is valid only during
the call), and an entry whose validators differ is ``STALE``.  The path is
there for code: a code object served to a process that imports the file by
another path (a symlink) gets that path as ``co_filename``, so tracebacks
name the file that was imported.

Decoding never raises: an entry that cannot be read (a foreign magic, a
kind it does not know, code where a value was asked for or the other way
round, marshal data of another interpreter) is ``UNREADABLE``, and the
file cache then treats it as a miss and replaces it.  A serialized value is
not loaded here, inside the segment: it comes back as ``Serialized`` bytes
to be loaded once the entry is let go.  The serializer is the caller's, so
this module knows nothing of the cache.
"""
import marshal
import os
import struct

__all__ = ["BYTES", "CODE", "SERIALIZED", "STALE", "STR", "UNREADABLE", "Serialized", "decode", "encode",
           "fix_filename", "header_room", "validators"]

# magic, kind, flags, reserved, mtime_ns, size, ctime_ns, path length
_HDR = struct.Struct("<4sBBHqqqI")
_MAGIC = b"APF1"
_VAL = struct.Struct("<qqq")
_VAL_AT = slice(8, 8 + _VAL.size)

BYTES, STR, SERIALIZED, CODE = 1, 2, 3, 4

#: decode(): the entry was made from another version of the file.
STALE = object()
#: decode(): the entry cannot be read.
UNREADABLE = object()


class Serialized:
    """A serialized value copied out of an entry, to be loaded outside it."""

    __slots__ = ("data",)

    def __init__(self, data):
        self.data = data


def validators(st):
    """The validators of the file st describes, as the header holds them."""
    return _VAL.pack(st.st_mtime_ns, st.st_size, st.st_ctime_ns)


def header_room(path):
    """How many bytes the header and path take before the payload: the room
    a caller leaves at the start of a bytearray payload (see encode)."""
    return _HDR.size + len(os.fsencode(path))


def encode(kind, payload, path, st, dumps):
    """The entry for payload, made from the file at path as st describes it.

    kind SERIALIZED stores bytes as BYTES, str as STR and anything else as
    dumps(payload).  A bytearray payload is the whole entry already, with
    header_room(path) bytes left at its start: the header and path are
    written into it, and it is returned without a copy."""
    p = os.fsencode(path)
    if type(payload) is bytearray:
        _HDR.pack_into(payload, 0, _MAGIC, kind, 0, 0, st.st_mtime_ns, st.st_size, st.st_ctime_ns, len(p))
        payload[_HDR.size:_HDR.size + len(p)] = p
        return payload
    if kind == SERIALIZED:
        t = type(payload)
        if t is bytes:
            kind = BYTES
        elif t is str:
            kind, payload = STR, payload.encode("utf-8", "surrogatepass")
        else:
            payload = dumps(payload)
    return b"".join((_HDR.pack(_MAGIC, kind, 0, 0, st.st_mtime_ns, st.st_size, st.st_ctime_ns, len(p)),
                     p, payload))


def decode(buf, path, kind, val):
    """The value of the entry in buf (bytes, or a view valid only during
    the call) for a lookup of kind (CODE, or SERIALIZED for any value) at
    path: STALE if its validators are not val (None: not checked),
    UNREADABLE if it cannot be read, a Serialized for a serialized value."""
    try:
        if val is not None and buf[_VAL_AT] != val:
            return STALE
        _m, k, _f, _r, _mt, _sz, _ct, plen = _HDR.unpack_from(buf)
        if _m != _MAGIC:
            raise ValueError("not a file-cache entry")
        start = _HDR.size + plen
        if k == CODE:
            if kind != CODE:
                raise ValueError("code entry in a value namespace")
            with memoryview(buf) as mv:
                code = marshal.loads(mv[start:])
                if mv[_HDR.size:start] != os.fsencode(path):
                    code = fix_filename(code, path)
            return code
        if kind == CODE:
            raise ValueError("value entry in a code namespace")
        if k == BYTES:
            return bytes(buf[start:])
        if k == STR:
            return str(buf[start:], "utf-8", "surrogatepass")
        if k == SERIALIZED:
            return Serialized(bytes(buf[start:]))
        raise ValueError(f"unknown entry kind {k}")
    except Exception:
        return UNREADABLE


def fix_filename(code, path):
    """code with co_filename set to path in it and every nested code object
    (tracebacks then name the file that was imported, not the one the entry
    was compiled from)."""
    if code.co_filename == path:
        return code
    consts = code.co_consts
    if any(type(c) is type(code) for c in consts):
        consts = tuple(fix_filename(c, path) if type(c) is type(code) else c for c in consts)
        return code.replace(co_filename=path, co_consts=consts)
    return code.replace(co_filename=path)
