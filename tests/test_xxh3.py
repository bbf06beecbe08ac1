"""The engine's XXH3-64 (csrc/xxh3.c) must equal python-xxhash's, bit for bit.

Every slot stores its key's XXH3-64 and every bucket is chosen from it, so
a key hashed by the engine and the same key hashed by ``xxhash`` have to
give the same 64-bit integer, or entries written through one path would be
invisible to the other.  These tests compare ``lib.apc_xxh3_64(data, len)``
with ``xxhash.xxh3_64_intdigest(data)`` over every code path of XXH3: empty
input, 1-3, 4-8, 9-16, 17-128, 129-240 bytes, and the long path with its
64-byte stripes, 1024-byte blocks and overlapping last stripe.
"""
import random

import pytest
import xxhash
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from apccache._bindings import ffi, lib

ref = xxhash.xxh3_64_intdigest


def engine(data, offset=0):
    """The engine's hash of ``data``; with ``offset``, read from a pointer
    ``offset`` bytes into a larger buffer, so that it is misaligned."""
    if offset:
        buf = bytearray(offset) + data
        return lib.apc_xxh3_64(ffi.from_buffer(buf) + offset, len(data))
    return lib.apc_xxh3_64(data, len(data))


def check(data, offset=0):
    got = engine(data, offset)
    want = ref(data)
    assert got == want, (
        f"len={len(data)} offset={offset}: engine {got:#018x} != xxhash {want:#018x}; "
        f"data starts {data[:32].hex()}"
    )


def test_known_values():
    # Fixed points, so that a change in both implementations at once (a
    # different xxhash release, say) is noticed too.
    assert engine(b"") == 0x2D06800538D394C2
    assert engine(b"") == ref(b"")
    assert engine(b"a") == ref(b"a")
    assert engine(b"abc") == ref(b"abc")


def test_empty_from_null_pointer():
    assert lib.apc_xxh3_64(ffi.NULL, 0) == ref(b"")


def test_returns_unsigned_64_bit_int():
    h = engine(b"some key")
    assert isinstance(h, int)
    assert 0 <= h < 1 << 64


@pytest.mark.parametrize("seed", range(4))
def test_every_length_up_to_2048(seed):
    rng = random.Random(seed)
    for n in range(2049):
        check(rng.randbytes(n))


@pytest.mark.parametrize("fill", [0x00, 0xFF, 0x80])
def test_every_length_constant_bytes(fill):
    for n in range(2049):
        check(bytes([fill]) * n)


def test_misaligned_pointers():
    rng = random.Random(7)
    for n in list(range(0, 300)) + [1023, 1024, 1025, 2047, 2048, 2049]:
        data = rng.randbytes(n)
        for offset in range(1, 8):
            check(data, offset)


def _block_boundary_sizes():
    sizes = set()
    for blocks in (2, 3, 4, 7, 8, 16, 33, 64, 100):
        for d in (-65, -64, -63, -1, 0, 1, 63, 64, 65):
            sizes.add(blocks * 1024 + d)
    sizes.update([100_000, 102_400, 1 << 17, (1 << 20) + 13, 4 << 20])
    return sorted(sizes)


@pytest.mark.parametrize("size", _block_boundary_sizes())
def test_large_sizes(size):
    rng = random.Random(size)
    check(rng.randbytes(size))


_settings = settings(
    max_examples=500,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@_settings
@given(st.binary())
def test_arbitrary_bytes(data):
    check(data)


@_settings
@given(st.binary(min_size=129, max_size=5000), st.integers(0, 7))
def test_arbitrary_medium_and_long(data, offset):
    check(data, offset)


@_settings
@given(
    st.integers(0, 64).flatmap(
        lambda n: st.sampled_from([240, 1024, 2048, 3072]).map(lambda b: b - 32 + n)
    ),
    st.randoms(use_true_random=False),
)
def test_around_path_and_block_edges(size, rnd):
    check(rnd.randbytes(size))
