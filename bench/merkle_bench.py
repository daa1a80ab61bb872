"""Cost per leaf of appending record hashes to a Merkle frontier (not part of the tests):
`python bench/merkle_bench.py`.

Prints nanoseconds per leaf (this thread's CPU time) of the native merkle_extend and of the Python
reference for batches of several sizes, of Frontier.extend_packed (the call the shipper makes), and of
one SHA-256 of 33 and of 65 bytes through hashlib. Each leaf costs one hash of 33 bytes and, on average,
one hash of 65 bytes.
"""
from __future__ import annotations

import argparse
import hashlib
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from shipper.merkle import Frontier, merkle_extend_py  # noqa: E402
from shipper.native import module as native  # noqa: E402


def ns_per_leaf(extend, batch: int, total: int) -> float:
    leaves = os.urandom(32 * batch)
    frontier = Frontier().extend_packed(os.urandom(32 * 12345))
    nodes, size = frontier.nodes, frontier.size
    rounds = max(1, total // batch)
    best = float("inf")
    for _ in range(3):
        start = time.thread_time_ns()
        for _ in range(rounds):
            nodes = extend(nodes, size, leaves)
            size += batch
        best = min(best, (time.thread_time_ns() - start) / (rounds * batch))
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--leaves", type=int, default=2_000_000, help="leaves per measurement (native)")
    args = parser.parse_args()
    for label, data in (("hashlib sha256, 33 bytes", b"\x00" * 33), ("hashlib sha256, 65 bytes", b"\x01" * 65)):
        n = 300_000
        start = time.thread_time_ns()
        for _ in range(n):
            hashlib.sha256(data).digest()
        print(f"{label:34s} {(time.thread_time_ns() - start) / n:8.1f} ns")
    for batch in (1, 16, 256, 4096):
        if native is not None:
            print(f"native merkle_extend, batch {batch:5d} "
                  f"{ns_per_leaf(native.merkle_extend, batch, args.leaves):8.1f} ns/leaf")
        print(f"python reference,     batch {batch:5d} "
              f"{ns_per_leaf(merkle_extend_py, batch, args.leaves // 20):8.1f} ns/leaf")
    for batch in (1, 256):
        leaves = os.urandom(32 * batch)
        frontier = Frontier().extend_packed(os.urandom(32 * 12345))
        rounds = max(1, 200_000 // batch)
        start = time.thread_time_ns()
        for _ in range(rounds):
            frontier = frontier.extend_packed(leaves)
        spent = time.thread_time_ns() - start
        print(f"Frontier.extend_packed, batch {batch:4d} {spent / (rounds * batch):8.1f} ns/leaf")
    if native is None:
        print("(shipper._native is not built: no native numbers)")


if __name__ == "__main__":
    main()
