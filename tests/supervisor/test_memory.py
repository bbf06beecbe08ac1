"""Private memory as memory_limit counts it: heap growth counts, shared-memory pages do not."""

import mmap
import os

from apccache.supervisor import memory
from helpers.segments import segment_name, shm_path


def test_heap_growth_counts_and_touched_shared_memory_does_not():
    before = memory.read()
    assert before is not None and before.private > 0 and before.rss >= before.private
    block = bytearray(64 << 20)
    for i in range(0, len(block), 4096):
        block[i] = 1
    grown = memory.read()
    assert grown.private - before.private > 56 << 20
    del block

    path = shm_path(segment_name("sup"))
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.ftruncate(fd, 64 << 20)
        with mmap.mmap(fd, 64 << 20) as m:
            base = memory.read()
            for i in range(0, 64 << 20, 4096):
                m[i] = 1
            touched = memory.read()
            assert touched.rss - base.rss > 56 << 20
            assert touched.private - base.private < 4 << 20
    finally:
        os.close(fd)
        os.unlink(path)


def test_other_processes_and_missing_ones():
    assert memory.read(os.getpid()).private > 0
    assert memory.read(2 ** 22 + 12345) is None


def test_the_smaps_fallback_agrees_with_the_rollup():
    fast = memory.read()
    slow = memory._from_smaps("self")
    assert abs(fast.private - slow.private) < 8 << 20
