"""A minimal RESP3 reader and command writer for the invalidation listener.

The listener needs exactly one connection doing three things in order --
HELLO 3, CLIENT TRACKING ON BCAST, then PING while reading invalidation
pushes -- and it needs to know, for each PONG, that every push before it in
the stream has been handled.  A twenty-line parser over a plain socket makes
that ordering obvious and keeps timeouts under the listener's control, where a
general client would hide both.

Replies are parsed into Python values: simple and bulk strings as bytes,
integers as int, nulls as None, arrays/sets/pushes as lists, maps as dicts,
errors as ``RespError`` instances (returned, not raised).  A push is a
``Push`` (a list subclass) so that the reader can tell it from a reply.
"""

__all__ = ["Parser", "RespError", "Push", "encode_command"]


class RespError(Exception):
    """An error reply from the server (returned by the parser, not raised)."""


class Push(list):
    """An out-of-band message (RESP3 type ``>``), e.g. an invalidation."""


class _Incomplete(Exception):
    pass


def encode_command(*args):
    """The bytes of one command as a RESP array of bulk strings."""
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        if isinstance(a, str):
            a = a.encode()
        elif isinstance(a, int):
            a = b"%d" % a
        out.append(b"$%d\r\n%s\r\n" % (len(a), a))
    return b"".join(out)


class Parser:
    """Feed it bytes; take whole messages out with ``messages()``."""

    def __init__(self):
        self._buf = bytearray()

    def feed(self, data):
        self._buf += data

    def messages(self):
        """The complete messages buffered so far, in stream order."""
        out = []
        while self._buf:
            try:
                msg, pos = self._parse(0)
            except _Incomplete:
                break
            del self._buf[:pos]
            out.append(msg)
        return out

    def _line(self, pos):
        end = self._buf.find(b"\r\n", pos)
        if end < 0:
            raise _Incomplete
        return bytes(self._buf[pos:end]), end + 2

    def _parse(self, pos):
        if pos >= len(self._buf):
            raise _Incomplete
        t = self._buf[pos : pos + 1]
        line, pos = self._line(pos + 1)
        if t in (b"+",):
            return line, pos
        if t in (b"-", b"!"):
            if t == b"!":  # blob error: the length line, then the text
                n = int(line)
                if len(self._buf) < pos + n + 2:
                    raise _Incomplete
                line, pos = bytes(self._buf[pos : pos + n]), pos + n + 2
            return RespError(line.decode("utf-8", "replace")), pos
        if t == b":":
            return int(line), pos
        if t == b"_":
            return None, pos
        if t == b"#":
            return line == b"t", pos
        if t in (b",", b"("):
            return (float(line) if t == b"," else int(line)), pos
        if t in (b"$", b"="):
            n = int(line)
            if n < 0:
                return None, pos
            if len(self._buf) < pos + n + 2:
                raise _Incomplete
            data = bytes(self._buf[pos : pos + n])
            if t == b"=":  # verbatim string: "txt:" and the text
                data = data[4:]
            return data, pos + n + 2
        if t in (b"*", b"~", b">"):
            n = int(line)
            if n < 0:
                return None, pos
            items = Push() if t == b">" else []
            for _ in range(n):
                item, pos = self._parse(pos)
                items.append(item)
            return items, pos
        if t in (b"%", b"|"):
            n = int(line)
            d = {}
            for _ in range(n):
                k, pos = self._parse(pos)
                v, pos = self._parse(pos)
                d[k if not isinstance(k, list) else tuple(k)] = v
            if t == b"|":  # attributes precede the real reply: skip them
                return self._parse(pos)
            return d, pos
        raise ValueError(f"unknown RESP type byte {t!r}")
