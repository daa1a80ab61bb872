"""RFC 6962 Merkle trees (shipper/merkle.py): each test is named after the invariant it proves, checked
against a naive recursive Merkle Tree Hash written here from the RFC and against published roots."""
from __future__ import annotations

import hashlib

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shipper.merkle import (EMPTY_ROOT, Frontier, inclusion_proof, leaf_hash, merkle_extend_py, node_hash, root_of,
                            verify_inclusion)


def sha(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def naive_mth(leaves: list[bytes]) -> bytes:
    """RFC 6962 section 2.1, literally."""
    n = len(leaves)
    if n == 0:
        return sha(b"")
    if n == 1:
        return sha(b"\x00" + leaves[0])
    k = 1
    while k * 2 < n:
        k *= 2
    return sha(b"\x01" + naive_mth(leaves[:k]) + naive_mth(leaves[k:]))


# The leaves and roots of the Certificate Transparency reference tests for RFC 6962 trees.
CT_LEAVES = [b"", b"\x00", b"\x10", b"\x20\x21", b"\x30\x31", b"\x40\x41\x42\x43", bytes(range(0x50, 0x58)),
             bytes(range(0x60, 0x70))]
CT_ROOTS = [
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
]

def path_shape(index: int, size: int) -> list[bool]:
    """From the leaf up, whether each sibling of leaf `index` in a tree of `size` leaves is on its left."""
    shape, lo, hi = [], 0, size
    while hi - lo > 1:
        k = 1
        while k * 2 < hi - lo:
            k *= 2
        shape.append(index >= lo + k)
        lo, hi = (lo + k, hi) if index >= lo + k else (lo, lo + k)
    return shape[::-1]


hashes32 = st.binary(min_size=32, max_size=32)


def random_leaves(count: int, seed: int = 0) -> list[bytes]:
    return [sha(b"%d/%d" % (seed, i)) for i in range(count)]


def test_DOMAIN_SEPARATION_leaves_nodes_and_the_empty_tree():
    assert leaf_hash(b"abc") == sha(b"\x00abc")
    assert node_hash(b"L" * 32, b"R" * 32) == sha(b"\x01" + b"L" * 32 + b"R" * 32)
    assert EMPTY_ROOT == sha(b"") == root_of([]) == Frontier().root()
    # One leaf's root is its leaf hash, never its data's plain hash.
    assert root_of([b"x"]) == leaf_hash(b"x") != sha(b"x")


@pytest.mark.parametrize("size", range(1, 9))
def test_roots_match_the_published_rfc6962_test_vectors(size):
    assert root_of(CT_LEAVES[:size]).hex() == CT_ROOTS[size - 1]
    assert naive_mth(CT_LEAVES[:size]).hex() == CT_ROOTS[size - 1]


@settings(max_examples=200, deadline=None)
@given(leaves=st.lists(hashes32, max_size=70), cuts=st.lists(st.integers(0, 70), max_size=6))
def test_FRONTIER_any_split_into_extend_calls_gives_the_naive_root(leaves, cuts):
    bounds = sorted({0, len(leaves), *(c for c in cuts if c <= len(leaves))})
    frontier = Frontier()
    for lo, hi in zip(bounds, bounds[1:]):
        frontier = frontier.extend(leaves[lo:hi]) if lo % 2 else frontier.extend_packed(b"".join(leaves[lo:hi]))
        assert frontier.size == hi
        assert frontier.root() == naive_mth(leaves[:hi])
    assert frontier == Frontier().extend_packed(b"".join(leaves))


@settings(max_examples=100, deadline=None)
@given(st.lists(st.binary(max_size=40), max_size=40))
def test_FRONTIER_leaves_of_any_length_give_the_naive_root(leaves):
    assert Frontier().extend(leaves).root() == naive_mth(leaves) == root_of(leaves)


@pytest.mark.parametrize("size", [0, 1, 2, 3, 5, 8, 13, 64, 100])
def test_FRONTIER_holds_one_perfect_subtree_root_per_bit_of_the_size_largest_first(size):
    leaves = random_leaves(size)
    frontier = Frontier().extend(leaves)
    expected, start = [], 0
    for bit in reversed(range(size.bit_length())):
        if size >> bit & 1:
            expected.append(naive_mth(leaves[start:start + (1 << bit)]))
            start += 1 << bit
    assert frontier.nodes == b"".join(expected)


def test_FRONTIER_persists_through_to_bytes_and_back():
    frontier = Frontier().extend(random_leaves(77))
    raw = frontier.to_bytes()
    assert raw[:8] == (77).to_bytes(8, "big") and len(raw) == 8 + 32 * 4
    assert Frontier.from_bytes(raw) == frontier
    assert Frontier.from_bytes(raw).extend(random_leaves(3, 1)) == frontier.extend(random_leaves(3, 1))
    for bad in (b"", raw[:7], raw[:-1], raw + b"x" * 32, (79).to_bytes(8, "big") + raw[8:]):
        with pytest.raises(ValueError):
            Frontier.from_bytes(bad)


def test_frontier_refuses_inconsistent_fields_and_ragged_packed_leaves():
    with pytest.raises(ValueError):
        Frontier(3, b"\x00" * 32)
    with pytest.raises(ValueError):
        Frontier(-1, b"")
    with pytest.raises(ValueError):
        Frontier().extend_packed(b"\x00" * 33)


def test_merkle_extend_py_is_extend_packed():
    leaves = random_leaves(21)
    start = Frontier().extend(leaves[:6])
    assert merkle_extend_py(start.nodes, start.size, b"".join(leaves[6:])) == Frontier().extend(leaves).nodes


@pytest.mark.parametrize("size", [1, 2, 3, 4, 5, 6, 7, 8, 9, 31, 32, 33, 70])
def test_PROOF_ORDER_every_inclusion_proof_verifies(size):
    leaves = random_leaves(size, size)
    root = naive_mth(leaves)
    for index in range(size):
        proof = inclusion_proof(leaves, index, size)
        assert verify_inclusion(leaves[index], index, size, proof, root)


def test_PROOF_ORDER_the_path_runs_from_the_leaf_up():
    leaves = CT_LEAVES[:7]
    # Leaf 4 in a tree of 7: its sibling leaf 5, then the node over leaves 6, then the left half.
    assert inclusion_proof(leaves, 4, 7) == [leaf_hash(leaves[5]), leaf_hash(leaves[6]), naive_mth(leaves[:4])]
    # Leaf 6, on the unbalanced right edge: the node over 4..5, then the left half.
    assert inclusion_proof(leaves, 6, 7) == [naive_mth(leaves[4:6]), naive_mth(leaves[:4])]
    assert inclusion_proof(leaves[:1], 0, 1) == []


@settings(max_examples=200, deadline=None)
@given(data=st.data(), size=st.integers(1, 70))
def test_PROOF_ORDER_proofs_in_a_larger_list_cover_only_the_first_size_leaves(data, size):
    leaves = random_leaves(size + data.draw(st.integers(0, 5)), size)
    index = data.draw(st.integers(0, size - 1))
    proof = inclusion_proof(leaves, index, size)
    root = naive_mth(leaves[:size])
    assert verify_inclusion(leaves[index], index, size, proof, root)

    # Any flipped byte of the proof, the leaf or the root fails.
    if proof:
        which = data.draw(st.integers(0, len(proof) - 1))
        at = data.draw(st.integers(0, 31))
        bad = [bytearray(p) for p in proof]
        bad[which][at] ^= 1 << data.draw(st.integers(0, 7))
        assert not verify_inclusion(leaves[index], index, size, [bytes(p) for p in bad], root)
    flipped_leaf = bytearray(leaves[index])
    flipped_leaf[data.draw(st.integers(0, 31))] ^= 0x80
    assert not verify_inclusion(bytes(flipped_leaf), index, size, proof, root)
    flipped_root = bytearray(root)
    flipped_root[data.draw(st.integers(0, 31))] ^= 0x01
    assert not verify_inclusion(leaves[index], index, size, proof, bytes(flipped_root))

    # So do a wrong index, a missing, extra or reordered hash.
    other = data.draw(st.integers(-2, size + 2).filter(lambda i: i != index))
    assert not verify_inclusion(leaves[index], other, size, proof, root)
    # A wrong size fails unless it puts the leaf at the same place in a tree of the same shape: then
    # the same hashes are combined in the same order (an inclusion proof does not bind the size; the
    # signed checkpoint binds size and root together).
    other_size = data.draw(st.integers(0, size + 70).filter(lambda s: s != size))
    same_shape = index < other_size and path_shape(index, other_size) == path_shape(index, size)
    assert verify_inclusion(leaves[index], index, other_size, proof, root) == same_shape
    if proof:
        assert not verify_inclusion(leaves[index], index, size, proof[:-1], root)
    assert not verify_inclusion(leaves[index], index, size, proof + [root], root)
    if len(proof) > 1 and proof[0] != proof[1]:
        assert not verify_inclusion(leaves[index], index, size, [proof[1], proof[0], *proof[2:]], root)


@pytest.mark.parametrize("args", [
    (b"x", 0, 1, [], b"short"),
    (b"x", 0, 1, [b"short"], leaf_hash(b"x")),
    (b"x", 0, 0, [], leaf_hash(b"x")),
    (b"x", -1, 1, [], leaf_hash(b"x")),
    (b"x", True, 2, [leaf_hash(b"y")], b"\x00" * 32),
    (b"x", 0, 1, None, leaf_hash(b"x")),
    (b"x", 0, 1, [None], leaf_hash(b"x")),
    (None, 0, 1, [], leaf_hash(b"x")),
    (b"x", "0", 1, [], leaf_hash(b"x")),
    (b"x", 0, 2**80, [leaf_hash(b"y")] * 90, leaf_hash(b"x")),
])
def test_PROOF_ORDER_verification_answers_false_never_raises(args):
    assert verify_inclusion(*args) is False


def test_a_single_leaf_tree_proves_its_leaf_with_an_empty_path():
    assert verify_inclusion(b"x", 0, 1, [], leaf_hash(b"x"))


@pytest.mark.parametrize("index,size,count", [(0, 0, 0), (1, 1, 1), (0, 3, 2), (-1, 2, 2)])
def test_inclusion_proof_refuses_a_leaf_outside_the_tree(index, size, count):
    with pytest.raises(ValueError):
        inclusion_proof(random_leaves(count), index, size)


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(hashes32, min_size=1, max_size=40), st.data())
def test_a_proof_for_one_leaf_does_not_prove_another(leaves, data):
    size = len(leaves)
    index = data.draw(st.integers(0, size - 1))
    other = data.draw(st.integers(0, size - 1))
    proof = inclusion_proof(leaves, index, size)
    if leaves[other] != leaves[index]:
        assert not verify_inclusion(leaves[other], index, size, proof, root_of(leaves))


def test_a_proof_checked_against_another_size_fails_whenever_the_leafs_path_differs():
    for size in range(1, 21):
        leaves = random_leaves(size, size)
        root = root_of(leaves)
        for index in range(size):
            proof = inclusion_proof(leaves, index, size)
            for other_size in range(0, 41):
                same_shape = index < other_size and path_shape(index, other_size) == path_shape(index, size)
                assert verify_inclusion(leaves[index], index, other_size, proof, root) == same_shape
