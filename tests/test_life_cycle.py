"""Life cycle of a segment: create, attach, close, unlink; the segment is
a file in /dev/shm that other processes (and multiprocessing.shared_memory)
open by its name."""
import errno
import os
import stat

import pytest

import apccache

from helpers.segments import segment_name


def test_create_makes_a_0600_segment_that_attach_sees(segments):
    c = segments(size=1 << 20)
    st = os.stat(f"/dev/shm/{c.name}")
    assert stat.S_IMODE(st.st_mode) == 0o600
    c.store("k", b"v")
    other = apccache.Cache.attach(c.name)
    try:
        assert other.fetch("k") == b"v"
        assert other.name == c.name
    finally:
        other.close()


def test_create_refuses_an_existing_name(cache):
    with pytest.raises(FileExistsError):
        apccache.Cache.create(cache.name, size=1 << 20)


def test_create_reserves_the_whole_segment_unless_told_not_to(segments):
    reserved = segments(size=8 << 20)
    lazy = segments(size=8 << 20, reserve=False)
    # st_blocks counts 512-byte blocks actually allocated in /dev/shm.
    assert os.stat(f"/dev/shm/{reserved.name}").st_blocks * 512 >= 8 << 20
    assert os.stat(f"/dev/shm/{lazy.name}").st_blocks * 512 < 4 << 20
    lazy.store("k", b"v" * 100_000)
    assert lazy.fetch("k") == b"v" * 100_000


def test_a_segment_larger_than_dev_shm_is_refused_at_create_and_leaves_nothing():
    st = os.statvfs("/dev/shm")
    too_big = st.f_bavail * st.f_frsize + (64 << 20)
    name = segment_name("huge")
    with pytest.raises(OSError) as e:
        apccache.Cache.create(name, size=too_big)
    assert e.value.errno == errno.ENOSPC
    assert "/dev/shm" in str(e.value) and "--shm-size" in str(e.value)
    assert not os.path.exists(f"/dev/shm/{name}")


def test_attach_to_a_missing_name_raises_file_not_found():
    with pytest.raises(FileNotFoundError):
        apccache.Cache.attach(segment_name("missing"))


def test_closing_an_attached_handle_does_not_unlink(cache):
    other = apccache.Cache.attach(cache.name)
    other.close()
    other.close()  # idempotent
    assert os.path.exists(f"/dev/shm/{cache.name}")
    assert apccache.Cache.attach(cache.name).close() is None


def test_unlink_removes_the_name_but_handles_keep_working(segments):
    c = segments(size=1 << 20)
    other = apccache.Cache.attach(c.name)
    c.store("k", 1)
    c.unlink()
    with pytest.raises(FileNotFoundError):
        apccache.Cache.attach(c.name)
    assert other.fetch("k") == 1
    other.store("j", 2)
    assert c.fetch("j") == 2
    other.close()


def test_context_manager_closes(segments):
    c = segments(size=1 << 20)
    with apccache.Cache.attach(c.name) as other:
        other.store("a", 1)
    assert other.closed
    assert c.fetch("a") == 1


def test_bad_create_arguments_are_refused_clearly():
    with pytest.raises(ValueError, match="too small"):
        apccache.Cache.create(segment_name(), size=1024)
    with pytest.raises(ValueError, match=r"ttl must be from 0 to 2147483647 seconds \(got -"):
        apccache.Cache.create(segment_name(), size=1 << 20, ttl=-1)
    with pytest.raises(TypeError):
        apccache.Cache.create(segment_name(), size="big")
    with pytest.raises(ValueError):
        apccache.Cache.create("a/b", size=1 << 20)


def test_slots_are_the_first_prime_at_or_above_the_hint(segments):
    assert segments(size=2 << 20, slots=1000).info()["num_slots"] == 1009
    assert segments(size=2 << 20, slots=1009).info()["num_slots"] == 1009
    # default: about 512 per MiB
    assert segments(size=8 << 20).info()["num_slots"] == 4099


def test_the_segment_is_the_object_multiprocessing_shared_memory_opens(cache):
    from multiprocessing import resource_tracker, shared_memory

    cache.store("k", b"v")
    shm = shared_memory.SharedMemory(cache.name)
    try:
        resource_tracker.unregister(shm._name, "shared_memory")  # Python < 3.13 would unlink it at exit
        assert shm.size == os.path.getsize(f"/dev/shm/{cache.name}")
        assert bytes(shm.buf[:8]) == b"APCCACHE"
    finally:
        shm.close()
