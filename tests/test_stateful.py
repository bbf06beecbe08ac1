"""The cache against a dict model, driven by hypothesis, on a fake clock;
check() after every step."""
import hypothesis.strategies as st
from hypothesis import settings
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

import apccache

from helpers.segments import FakeClock, segment_name

KEYS = st.sampled_from(["a", "b", "c", b"\x00bin", "", "\u00e9t\u00e9", b"\xff"])
VALUES = st.one_of(
    st.binary(max_size=300),
    st.text(max_size=50),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.integers(min_value=2**63, max_value=2**70),
    st.floats(allow_nan=False),
    st.booleans(),
    st.none(),
    st.lists(st.integers(), max_size=5),
    st.binary(min_size=4000, max_size=9000),
)
TTLS = st.sampled_from([0, 0, 1, 2, 5])
INT64 = st.integers(min_value=-(2**63), max_value=2**63 - 1)


def norm(k):
    return k.encode() if isinstance(k, str) else k


class CacheModel(RuleBasedStateMachine):
    def __init__(self):
        super().__init__()
        self.clock = FakeClock()
        self.cache = apccache.Cache.create(segment_name("sm"), size=2 << 20, clock=self.clock)
        self.model = {}  # key bytes -> [value, ctime, ttl]

    def teardown(self):
        self.cache.unlink()
        self.cache.close()

    def live(self, k):
        e = self.model.get(k)
        if e is None:
            return None
        value, ctime, ttl = e
        if ttl and ctime + ttl < self.clock.now:
            del self.model[k]
            return None
        return e

    @rule(k=KEYS, v=VALUES, ttl=TTLS)
    def store(self, k, v, ttl):
        self.do_store(k, v, ttl)

    def do_store(self, k, v, ttl):
        assert self.cache.store(k, v, ttl=ttl) is True
        self.model[norm(k)] = [v, self.clock.now, ttl]

    @rule(k=KEYS, v=VALUES, ttl=TTLS)
    def add(self, k, v, ttl):
        self.do_add(k, v, ttl)

    def do_add(self, k, v, ttl):
        expected = self.live(norm(k)) is None
        assert self.cache.add(k, v, ttl=ttl) is expected
        if expected:
            self.model[norm(k)] = [v, self.clock.now, ttl]

    @rule(k=KEYS)
    def fetch(self, k):
        e = self.live(norm(k))
        got = self.cache.fetch(k, default=KeyError)
        if e is None:
            assert got is KeyError
        else:
            assert got == e[0] and type(got) is type(e[0])

    @rule(k=KEYS)
    def delete(self, k):
        expected = self.live(norm(k)) is not None
        assert self.cache.delete(k) is expected
        self.model.pop(norm(k), None)

    @rule(k=KEYS)
    def exists(self, k):
        assert self.cache.exists(k) is (self.live(norm(k)) is not None)

    @rule(k=KEYS, step=st.integers(min_value=-(2**62), max_value=2**62), ttl=TTLS)
    def inc(self, k, step, ttl):
        self.do_inc(k, step, ttl)

    def do_inc(self, k, step, ttl):
        e = self.live(norm(k))
        if e is None:
            assert self.cache.inc(k, step, ttl=ttl) == step
            self.model[norm(k)] = [step, self.clock.now, ttl]
            return
        if type(e[0]) is not int or not -(2**63) <= e[0] <= 2**63 - 1:
            try:
                self.cache.inc(k, step)
            except TypeError:
                return
            raise AssertionError("inc on a non-int did not raise TypeError")
        new = e[0] + step
        if not -(2**63) <= new <= 2**63 - 1:
            try:
                self.cache.inc(k, step)
            except OverflowError:
                return
            raise AssertionError("overflow did not raise")
        assert self.cache.inc(k, step) == new
        e[0] = new

    @rule(k=KEYS, old=INT64, new=INT64, use_current=st.booleans())
    def cas(self, k, old, new, use_current):
        e = self.live(norm(k))
        is_int64 = e is not None and type(e[0]) is int and -(2**63) <= e[0] < 2**63
        if use_current and is_int64:
            old = e[0]
        ok = is_int64 and e[0] == old
        assert self.cache.cas(k, old, new) is ok
        if ok:
            e[0] = new

    @rule(k=KEYS, v=VALUES, ttl=TTLS)
    def entry(self, k, v, ttl):
        self.do_entry(k, v, ttl)

    def do_entry(self, k, v, ttl):
        e = self.live(norm(k))
        got = self.cache.entry(k, lambda key: v, ttl=ttl)
        if e is None:
            assert got == v
            self.model[norm(k)] = [v, self.clock.now, ttl]
        else:
            assert got == e[0]

    @rule(seconds=st.integers(min_value=0, max_value=3))
    def tick(self, seconds):
        self.clock.advance(seconds)

    @precondition(lambda self: len(self.model) > 3)
    @rule()
    def clear(self):
        self.cache.clear()
        self.model.clear()
        assert self.cache.info()["num_inserts"] == 0

    @invariant()
    def same_keys_and_sound(self):
        live = {k for k in list(self.model) if self.live(k) is not None}
        assert len(self.cache) == len(live)
        assert {norm(k) if isinstance(k, str) else k for k in self.cache.keys()} == live
        assert self.cache.check() == []


CacheModel.TestCase.settings = settings(max_examples=60, stateful_step_count=40, deadline=None)
TestCacheModel = CacheModel.TestCase


class CacheModelNoClock(CacheModel):
    """The same machine on a cache without a clock, which takes the C fast
    path for fetch and store; entries get no ttl and time does not move."""

    def __init__(self):
        RuleBasedStateMachine.__init__(self)
        self.clock = FakeClock()  # never advanced: the model's own idea of "now"
        self.cache = apccache.Cache.create(segment_name("smf"), size=2 << 20)
        self.model = {}

    @rule(k=KEYS, v=VALUES)
    def store(self, k, v):
        self.do_store(k, v, 0)

    @rule(k=KEYS, v=VALUES)
    def add(self, k, v):
        self.do_add(k, v, 0)

    @rule(k=KEYS, step=st.integers(min_value=-(2**62), max_value=2**62))
    def inc(self, k, step):
        self.do_inc(k, step, 0)

    @rule(k=KEYS, v=VALUES)
    def entry(self, k, v):
        self.do_entry(k, v, 0)

    @rule(seconds=st.just(0))
    def tick(self, seconds):
        pass


CacheModelNoClock.TestCase.settings = settings(max_examples=40, stateful_step_count=40, deadline=None)
TestCacheModelNoClock = CacheModelNoClock.TestCase
