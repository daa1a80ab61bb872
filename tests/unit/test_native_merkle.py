"""The native frontier extension (shipper._native.merkle_extend) against the Python reference
(merkle.merkle_extend_py), byte for byte, on random trees and batches."""
from __future__ import annotations

import random
import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shipper import merkle
from shipper.merkle import Frontier, merkle_extend_py
from shipper.native import module as native

pytestmark = pytest.mark.skipif(not merkle.NATIVE, reason="shipper._native is not built")


def frontier_of(size: int, rng: random.Random) -> Frontier:
    return Frontier(size, rng.randbytes(32 * size.bit_count()))


@settings(max_examples=400, deadline=None)
@given(size=st.one_of(st.integers(0, 300), st.integers(0, 2**64 - 2000)), count=st.integers(0, 300),
       seed=st.integers(0, 2**32))
def test_native_merkle_extend_equals_the_reference(size, count, seed):
    rng = random.Random(seed)
    start = frontier_of(size, rng)
    leaves = rng.randbytes(32 * count)
    assert native.merkle_extend(start.nodes, size, leaves) == merkle_extend_py(start.nodes, size, leaves)


@pytest.mark.parametrize("size", [0, 1, 255, 256, 2**32 - 1, 2**63 - 1, 2**64 - 1025])
def test_native_merkle_extend_equals_the_reference_on_large_batches_and_carries(size):
    rng = random.Random(size)
    start = frontier_of(size, rng)
    leaves = rng.randbytes(32 * 1024)  # above the GIL release threshold
    assert native.merkle_extend(start.nodes, size, leaves) == merkle_extend_py(start.nodes, size, leaves)


def test_native_merkle_extend_accepts_any_buffer():
    leaves = bytearray(random.Random(1).randbytes(32 * 5))
    assert native.merkle_extend(b"", 0, leaves) == native.merkle_extend(b"", 0, memoryview(leaves)) \
        == merkle_extend_py(b"", 0, bytes(leaves))


@pytest.mark.parametrize("nodes,size,leaves,error", [
    (b"", 1, b"", ValueError),                 # a tree of 1 leaf has one node
    (b"\x00" * 32, 0, b"", ValueError),
    (b"\x00" * 64, 3, b"\x00" * 33, ValueError),
    (b"", -1, b"", OverflowError),
    (b"", 2**64, b"", OverflowError),
    (b"\x00" * 32 * 64, 2**64 - 1, b"\x00" * 32, OverflowError),
    ("text", 0, b"", TypeError),
])
def test_native_merkle_extend_refuses_inconsistent_input(nodes, size, leaves, error):
    with pytest.raises(error):
        native.merkle_extend(nodes, size, leaves)


def test_native_merkle_extend_runs_while_other_threads_do():
    leaves = random.Random(2).randbytes(32 * 20000)
    expected = merkle_extend_py(b"", 0, leaves)
    results = []
    threads = [threading.Thread(target=lambda: results.append(native.merkle_extend(b"", 0, leaves)))
               for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == [expected] * 4
