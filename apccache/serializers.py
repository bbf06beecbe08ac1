"""Serializers for values that are not stored natively.

bytes, str, int (int64), float, bool and None are stored with a type tag and
never go through a serializer.  Everything else is turned into bytes by the
cache's serializer, chosen when the handle is made::

    Cache.create("web", serializer=JSONSerializer())

SECURITY: the default, :class:`PickleSerializer`, runs ``pickle.loads`` on
fetch, and unpickling can execute arbitrary code.  Anyone who can write the
segment can therefore run code in every process that fetches from it, which
is why it is created mode 0600 and ``Cache.attach`` refuses a segment owned
by another user or writable by group or others (``UntrustedSegmentError``).
A segment shared with a group (``create(mode=0o660)``,
``attach(trust_group=True)``) needs an explicit serializer: use
:class:`JSONSerializer`, which can only ever produce JSON data, or name
``PickleSerializer()`` on purpose.
"""
_pickle = None  # imported on first use: a process that stores no objects never pays for it


def _import_pickle():
    global _pickle
    import pickle

    _pickle = pickle
    return pickle


class PickleSerializer:
    """Any picklable object; fetch returns an equal copy of the same type.
    protocol: the pickle protocol of stores (default: pickle's default,
    which costs no wrapper per call).

    Unpickling executes code chosen by whoever wrote the segment."""

    name = "pickle"

    def __init__(self, protocol=None):
        self.protocol = protocol

    def dumps(self, value):
        p = _pickle or _import_pickle()
        self._bind(p)
        return p.dumps(value) if self.protocol is None else p.dumps(value, self.protocol)

    def loads(self, data):
        p = _pickle or _import_pickle()
        self._bind(p)
        return p.loads(data)

    def _bind(self, p):
        """On first use: make this instance's dumps and loads pickle's own
        functions, so that a value costs no Python frame of ours (not where
        a subclass has its own)."""
        import functools

        cls = type(self)
        if cls.dumps is PickleSerializer.dumps:
            if self.protocol is None:
                self.dumps = p.dumps  # pickle's default protocol
            else:
                self.dumps = functools.partial(p.dumps, protocol=self.protocol)
        if cls.loads is PickleSerializer.loads:
            self.loads = p.loads


class JSONSerializer:
    """JSON data only (dict with str keys, list, str, int, float, bool,
    None); tuples come back as lists.  Loading never executes code."""

    name = "json"

    def __init__(self):
        import json  # only for caches that use it

        self._json = json

    def dumps(self, value):
        try:
            return self._json.dumps(value, separators=(",", ":"), allow_nan=True).encode()
        except (TypeError, ValueError) as e:
            raise TypeError(f"value is not JSON-serialisable: {e}") from None

    def loads(self, data):
        return self._json.loads(data)
