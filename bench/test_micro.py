"""Micro benchmarks: one cache operation per call, apccache beside its peers.

Run: ``pytest bench/ --benchmark-only`` (``bench/run_all.sh`` adds the JSON
output and the settings used for the committed results).

Each class is one pytest-benchmark group, so every table pytest-benchmark
prints holds one operation measured on every peer, and the summary printed at
the end gives each median as a ratio to apccache's plus the pass/fail line of
each performance target. The peers:

* ``apccache`` -- the shared-memory cache under test; returns a fresh copy.
* ``dict``     -- a per-process Python dict: the floor. It is not shared and
  returns a reference to the stored object, not a copy.
* ``lmdb``     -- LMDB on /dev/shm, ``writemap=True, sync=False,
  metasync=False``, one transaction per operation; objects go through pickle.
* ``diskcache``-- ``diskcache.Cache`` (SQLite) in a directory on /dev/shm.
* ``baseline`` -- what the operation costs with no cache at all: a cffi call
  (see ``benchlib.CffiBaseline``), or ``bytes(memoryview)`` of shared memory.

All keys are ``bytes`` (see ``benchlib``). A benchmark calls the peer's bound
method directly where the peer has one, so no peer pays for a wrapper the
others skip; LMDB's wrappers are its transaction, which is part of its cost.
"""

from __future__ import annotations

import pytest

import benchlib as bl


def run(benchmark, impl, scenario, fn, *args):
    """Time ``fn(*args)`` and tag the result for the ratio report."""
    benchmark.extra_info["impl"] = impl
    benchmark.extra_info["scenario"] = scenario
    return benchmark(fn, *args)


# --- fetch hit, 10-byte bytes value -------------------------------------------------


@pytest.mark.benchmark(group="fetch hit 10 B")
class TestFetchHit10B:
    def test_apccache(self, benchmark, apc):
        """apccache.fetch of a 10-byte bytes value stored natively (not pickled)."""
        assert run(benchmark, "apccache", "fetch_hit_10b", apc.fetch, bl.KEY_10B) == bl.VALUE_10B

    def test_apccache_str_key(self, benchmark, apc):
        """The same fetch with a str key, which apccache encodes to UTF-8 first."""
        key = bl.KEY_10B.decode()
        assert run(benchmark, "apccache-str-key", "fetch_hit_10b", apc.fetch, key) == bl.VALUE_10B

    def test_dict(self, benchmark, pydict):
        """dict.get of the same value (a reference, no copy, not shared)."""
        assert run(benchmark, "dict", "fetch_hit_10b", pydict.get, bl.KEY_10B) == bl.VALUE_10B

    def test_lmdb(self, benchmark, lmdb_ops):
        """LMDB read transaction + get of 10 bytes (returns a bytes copy)."""
        assert run(benchmark, "lmdb", "fetch_hit_10b", lmdb_ops.get, bl.KEY_10B) == bl.VALUE_10B

    def test_diskcache(self, benchmark, dcache):
        """diskcache.Cache.get of 10 bytes."""
        assert run(benchmark, "diskcache", "fetch_hit_10b", dcache.get, bl.KEY_10B) == bl.VALUE_10B

    def test_baseline_cffi_10b(self, benchmark, cffi_base):
        """One cffi call taking the key and copying 10 bytes out, then ffi.unpack: the floor of a fetch."""
        assert run(benchmark, "baseline-cffi-10B", "fetch_hit_10b", cffi_base.ret10, bl.KEY_10B) == bl.VALUE_10B


# --- fetch hit, small dict (pickled) -----------------------------------------------------


@pytest.mark.benchmark(group="fetch hit small dict")
class TestFetchHitDict:
    def test_apccache(self, benchmark, apc):
        """apccache.fetch of a 5-field dict (pickled on store, unpickled on fetch)."""
        assert run(benchmark, "apccache", "fetch_hit_dict", apc.fetch, bl.KEY_DICT) == bl.SMALL_DICT

    def test_dict(self, benchmark, pydict):
        """dict.get of the same dict (returns the stored object itself)."""
        assert run(benchmark, "dict", "fetch_hit_dict", pydict.get, bl.KEY_DICT) == bl.SMALL_DICT

    def test_lmdb(self, benchmark, lmdb_ops):
        """LMDB get + pickle.loads of the same dict."""
        assert run(benchmark, "lmdb", "fetch_hit_dict", lmdb_ops.get_obj, bl.KEY_DICT) == bl.SMALL_DICT

    def test_diskcache(self, benchmark, dcache):
        """diskcache.Cache.get of the same dict (diskcache unpickles it)."""
        assert run(benchmark, "diskcache", "fetch_hit_dict", dcache.get, bl.KEY_DICT) == bl.SMALL_DICT


# --- fetch miss ---------------------------------------------------------------------------


@pytest.mark.benchmark(group="fetch miss")
class TestFetchMiss:
    def test_apccache(self, benchmark, apc):
        """apccache.fetch of a key that was never stored (returns the default, None)."""
        assert run(benchmark, "apccache", "fetch_miss", apc.fetch, bl.KEY_MISS) is None

    def test_dict(self, benchmark, pydict):
        """dict.get of a missing key."""
        assert run(benchmark, "dict", "fetch_miss", pydict.get, bl.KEY_MISS) is None

    def test_lmdb(self, benchmark, lmdb_ops):
        """LMDB read transaction + get of a missing key."""
        assert run(benchmark, "lmdb", "fetch_miss", lmdb_ops.get, bl.KEY_MISS) is None

    def test_diskcache(self, benchmark, dcache):
        """diskcache.Cache.get of a missing key."""
        assert run(benchmark, "diskcache", "fetch_miss", dcache.get, bl.KEY_MISS) is None

    def test_baseline_cffi_bare(self, benchmark, cffi_base):
        """A bare cffi call (no arguments, int result): the floor of any one-call operation."""
        run(benchmark, "baseline-cffi-bare", "fetch_miss", cffi_base.bare)


# --- store 10 B ----------------------------------------------------------------------------


@pytest.mark.benchmark(group="store 10 B")
class TestStore10B:
    def test_apccache(self, benchmark, apc):
        """apccache.store overwriting one key with a 10-byte value."""
        run(benchmark, "apccache", "store_10b", apc.store, bl.KEY_STORE_10B, bl.VALUE_10B)

    def test_dict(self, benchmark, pydict):
        """dict item assignment of the same value."""
        run(benchmark, "dict", "store_10b", pydict.put, bl.KEY_STORE_10B, bl.VALUE_10B)

    def test_lmdb(self, benchmark, lmdb_ops):
        """LMDB write transaction + put of 10 bytes (commit without sync)."""
        run(benchmark, "lmdb", "store_10b", lmdb_ops.put, bl.KEY_STORE_10B, bl.VALUE_10B)

    def test_diskcache(self, benchmark, dcache):
        """diskcache.Cache.set of 10 bytes."""
        run(benchmark, "diskcache", "store_10b", dcache.set, bl.KEY_STORE_10B, bl.VALUE_10B)


# --- store 10 KiB ----------------------------------------------------------------------------


@pytest.mark.benchmark(group="store 10 KiB")
class TestStore10K:
    def test_apccache(self, benchmark, apc):
        """apccache.store overwriting one key with a 10 KiB bytes value."""
        run(benchmark, "apccache", "store_10kib", apc.store, bl.KEY_STORE_10K, bl.VALUE_10K)

    def test_dict(self, benchmark, pydict):
        """dict item assignment of the same value."""
        run(benchmark, "dict", "store_10kib", pydict.put, bl.KEY_STORE_10K, bl.VALUE_10K)

    def test_lmdb(self, benchmark, lmdb_ops):
        """LMDB write transaction + put of 10 KiB."""
        run(benchmark, "lmdb", "store_10kib", lmdb_ops.put, bl.KEY_STORE_10K, bl.VALUE_10K)

    def test_diskcache(self, benchmark, dcache):
        """diskcache.Cache.set of 10 KiB."""
        run(benchmark, "diskcache", "store_10kib", dcache.set, bl.KEY_STORE_10K, bl.VALUE_10K)


# --- fetch 10 KiB -------------------------------------------------------------------------------


@pytest.mark.benchmark(group="fetch 10 KiB")
class TestFetch10K:
    def test_apccache(self, benchmark, apc):
        """apccache.fetch of a 10 KiB bytes value."""
        assert len(run(benchmark, "apccache", "fetch_10kib", apc.fetch, bl.KEY_10K)) == 10 * bl.KiB

    def test_dict(self, benchmark, pydict):
        """dict.get of the same value (a reference, no copy)."""
        assert len(run(benchmark, "dict", "fetch_10kib", pydict.get, bl.KEY_10K)) == 10 * bl.KiB

    def test_lmdb(self, benchmark, lmdb_ops):
        """LMDB read transaction + get of 10 KiB (a bytes copy)."""
        assert len(run(benchmark, "lmdb", "fetch_10kib", lmdb_ops.get, bl.KEY_10K)) == 10 * bl.KiB

    def test_diskcache(self, benchmark, dcache):
        """diskcache.Cache.get of 10 KiB."""
        assert len(run(benchmark, "diskcache", "fetch_10kib", dcache.get, bl.KEY_10K)) == 10 * bl.KiB


# --- fetch 1 MiB ----------------------------------------------------------------------------------


@pytest.mark.benchmark(group="fetch 1 MiB")
class TestFetch1M:
    def test_apccache(self, benchmark, apc):
        """apccache.fetch of a 1 MiB bytes value."""
        assert len(run(benchmark, "apccache", "fetch_1mib", apc.fetch, bl.KEY_1M)) == bl.MiB

    def test_dict(self, benchmark, pydict):
        """dict.get of the same value (a reference: no copy at all)."""
        assert len(run(benchmark, "dict", "fetch_1mib", pydict.get, bl.KEY_1M)) == bl.MiB

    def test_lmdb(self, benchmark, lmdb_ops):
        """LMDB read transaction + get of 1 MiB (a bytes copy out of the map)."""
        assert len(run(benchmark, "lmdb", "fetch_1mib", lmdb_ops.get, bl.KEY_1M)) == bl.MiB

    def test_diskcache(self, benchmark, dcache):
        """diskcache.Cache.get of 1 MiB (stored as a file beside the SQLite index)."""
        assert len(run(benchmark, "diskcache", "fetch_1mib", dcache.get, bl.KEY_1M)) == bl.MiB

    def test_baseline_memoryview_copy(self, benchmark, shm_1mib):
        """bytes(memoryview) of 1 MiB of shared memory: the floor of any 1 MiB fetch."""
        assert len(run(benchmark, "baseline", "fetch_1mib", bytes, shm_1mib)) == bl.MiB


# --- inc ------------------------------------------------------------------------------------------------


@pytest.mark.benchmark(group="inc")
class TestInc:
    def test_apccache(self, benchmark, apc):
        """apccache.inc of an int counter by 1 (atomic across processes)."""
        run(benchmark, "apccache", "inc", apc.inc, bl.KEY_INC)

    def test_dict(self, benchmark, pydict):
        """d[k] = d.get(k, 0) + 1 (not atomic across anything)."""
        run(benchmark, "dict", "inc", pydict.inc, bl.KEY_INC)

    def test_lmdb(self, benchmark, lmdb_ops):
        """LMDB write transaction: get, int(), put of the decimal text."""
        run(benchmark, "lmdb", "inc", lmdb_ops.inc, bl.KEY_INC)

    def test_diskcache(self, benchmark, dcache):
        """diskcache.Cache.incr (a SQLite transaction)."""
        run(benchmark, "diskcache", "inc", dcache.incr, bl.KEY_INC)


# --- harness floor ---------------------------------------------------------------------------------------


def _noop():
    return None


@pytest.mark.benchmark(group="baselines")
class TestBaselines:
    def test_python_noop_call(self, benchmark):
        """A Python function that does nothing: the harness's own cost per call."""
        run(benchmark, "baseline-python-noop", "noop", _noop)

    def test_cffi_bare(self, benchmark, cffi_base):
        """A bare cffi call again, in its own group for reading beside the no-op."""
        run(benchmark, "baseline-cffi-bare", "bare_call", cffi_base.bare)

    def test_cffi_10b(self, benchmark, cffi_base):
        """The cffi 10-byte return again, in its own group."""
        run(benchmark, "baseline-cffi-10B", "ret_10b", cffi_base.ret10, bl.KEY_10B)


# --- the targets, timed pairwise --------------------------------------------------------------------------


@pytest.mark.benchmark(group="paired target check")
def test_targets_paired(benchmark, paired_results, apc, lmdb_ops, shm_1mib):
    """Each latency target's two sides timed alternately, for a verdict robust to a noisy machine.

    pytest-benchmark runs one benchmark after another, so two medians taken
    seconds apart can differ by a slow spell of the machine. Here both sides
    of each target (apccache vs LMDB, apccache vs bytes(memoryview)) are timed
    in short batches in interleaved, rotating rounds, and the target's ratio
    is the median over rounds of the ratio within a round. The end-of-run
    summary judges the targets on these ratios and shows the ratio of the
    pytest-benchmark medians beside them. (The ``benchmark`` fixture is only
    requested so that ``--benchmark-only`` runs this test.)
    """
    contestants = [
        ("apccache:fetch_hit_10b", apc.fetch, (bl.KEY_10B,)),
        ("lmdb:fetch_hit_10b", lmdb_ops.get, (bl.KEY_10B,)),
        ("apccache:fetch_miss", apc.fetch, (bl.KEY_MISS,)),
        ("lmdb:fetch_miss", lmdb_ops.get, (bl.KEY_MISS,)),
        ("apccache:store_10b", apc.store, (bl.KEY_STORE_10B, bl.VALUE_10B)),
        ("lmdb:store_10b", lmdb_ops.put, (bl.KEY_STORE_10B, bl.VALUE_10B)),
        ("apccache:fetch_1mib", apc.fetch, (bl.KEY_1M,)),
        ("baseline:fetch_1mib", bytes, (shm_1mib,)),
    ]
    samples, sizes = bl.interleave(contestants, rounds=31, batch_s=0.005)
    paired_results["samples"] = samples
    paired_results["ratios"] = bl.paired_target_ratios(samples)
    assert len(paired_results["ratios"]) == 4
