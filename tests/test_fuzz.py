"""A damaged segment never crashes, hangs or lies: the segment fuzzer.

Each seeded run (tests/segfuzz.py) fills a segment in a child process,
damages it (byte flips, header and entry fields, free lists, block tags,
garbage, zeroed pages, the lock word...) and then uses it with every kind
of operation.  Over all runs: no child dies by a signal, none runs past
its timeout, no operation raises anything but a CacheError or its
documented TypeError/OverflowError/KeyError, and on segments made with
checksums=True no fetch returns a value that was not stored.

APCCACHE_FUZZ_RUNS (default 300) and APCCACHE_FUZZ_SEED (default 0) choose
the seeds; a failure names the seeds, which replay alone with
``python bench/fuzz_segment.py SEED SEED+1 -v``.
"""
import os

import pytest

import segfuzz

RUNS = int(os.environ.get("APCCACHE_FUZZ_RUNS", "300"))
SEED0 = int(os.environ.get("APCCACHE_FUZZ_SEED", "0"))
TIMEOUT = float(os.environ.get("APCCACHE_FUZZ_TIMEOUT", "10"))


@pytest.fixture(scope="module")
def results():
    return segfuzz.run_seeds(range(SEED0, SEED0 + RUNS), jobs=2, timeout=TIMEOUT)


def _describe(runs, field, limit=5):
    out = []
    for r in runs[:limit]:
        detail = r.get(field)
        if isinstance(detail, list):
            detail = "\n    ".join(str(d)[:600] for d in detail[:3])
        out.append(f"seed {r['seed']} (checksums={r['checksums']}): damage {r.get('corruptions')}"
                   f"\n    {detail or r.get('stacks', '')[-800:]}")
    return f"{len(runs)} runs:\n" + "\n".join(out)


@pytest.mark.timeout(900)
def test_the_harness_itself_works_on_every_seed(results):
    assert len(results) == RUNS
    broken = [r for r in results if r["outcome"] == "harness error"]
    assert not broken, _describe(broken, "harness_error")


def test_no_run_dies_by_a_signal(results):
    died = [r for r in results if r["outcome"] == "signal"]
    assert not died, _describe(died, "signal")


def test_no_run_hangs(results):
    hung = [r for r in results if r["outcome"] == "hang"]
    assert not hung, _describe(hung, "stacks")


def test_no_operation_raises_an_undocumented_exception(results):
    bad = [r for r in results if r.get("undocumented")]
    assert not bad, _describe(bad, "undocumented")


def test_a_checksummed_segment_never_returns_a_wrong_value(results):
    if not segfuzz.HAS_CHECKSUMS:
        pytest.skip("Cache.create has no checksums option in this build")
    lied = [r for r in results if r.get("checksums") and r.get("wrong")]
    assert not lied, _describe(lied, "wrong")


def test_a_repair_leaves_every_damaged_segment_sound(results):
    """After the run's operations, the next writer repairs (repair_due set,
    as a reader that met a broken claim sets it): check() then finds
    nothing wrong, whatever the damage was."""
    unsound = [r for r in results if r.get("after_repair")]
    assert not unsound, _describe(unsound, "after_repair")


def test_the_damage_is_real(results):
    """The fuzzer bites: in many runs the engine noticed the damage (it
    repaired, counted a corrupt read or raised CorruptSegmentError)."""
    noticed = [r for r in results if r.get("noticed")]
    assert len(noticed) >= len(results) // 10, f"only {len(noticed)} of {len(results)} runs"
