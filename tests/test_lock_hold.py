"""The engine's record of the longest whole-lock hold (info()['whole_lock_max_us']):
what stops every writer is measured, and inspecting a cache leaves no trace."""


def test_a_fresh_cache_has_held_no_lock(segments):
    assert segments().info(limited=True)["whole_lock_max_us"] == 0


def test_the_walks_and_inspections_record_no_hold(segments):
    c = segments(size=4 << 20)
    for i in range(3000):
        c.store(f"k{i}", b"v" * 10)
    c.delete("k1")  # a pending slot: info() walks the GC list under the whole lock
    assert len(c) == 2999 and len(list(c.keys())) == 2999
    assert len(c.info()["entries"]) == 2999
    c.sma_info()
    assert c.check() == []
    assert c.info(limited=True)["whole_lock_max_us"] == 0


def test_a_clear_is_recorded_and_the_record_only_grows(segments):
    c = segments(size=8 << 20)
    for i in range(20000):
        c.store(f"k{i}", b"v" * 100)
    c.clear()
    held = c.info(limited=True)["whole_lock_max_us"]
    assert held >= 1  # freeing 20,000 entries takes more than a microsecond
    c.clear()  # clear() resets the counters, not this record
    assert c.info(limited=True)["whole_lock_max_us"] >= held
