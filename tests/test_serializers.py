"""Serializers: the JSON serializer never unpickles, and unpickling a value
may call back into the cache."""

import pytest

import apccache


def test_json_serializer_never_unpickles(segments):
    c = segments(size=1 << 20, serializer=apccache.JSONSerializer())
    c.store("d", {"a": [1, 2.5, None, True]})
    assert c.fetch("d") == {"a": [1, 2.5, None, True]}
    with pytest.raises(TypeError):
        c.store("s", {1, 2})
    # a pickle written by another handle is not loaded as pickle: bytes the
    # serializer refuses are a miss, counted as corruption
    other = apccache.Cache.attach(c.name)
    other.store("p", {"x": 1})
    assert c.fetch("p") is None and c.fetch("p", 0) == 0
    assert c.info(limited=True)["corrupt_reads"] == 2
    other.close()


def test_unpickling_may_call_into_the_cache(cache):
    cache.store("obj", Reentrant(cache.name))
    obj = cache.fetch("obj")
    assert isinstance(obj, Reentrant)
    assert cache.fetch("side-effect") == "set in __setstate__"


class Reentrant:
    def __init__(self, name):
        self.name = name

    def __getstate__(self):
        return {"name": self.name}

    def __setstate__(self, state):
        self.name = state["name"]
        with apccache.Cache.attach(self.name) as c:
            c.store("side-effect", "set in __setstate__")
