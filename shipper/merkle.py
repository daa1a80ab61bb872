"""RFC 6962 / RFC 9162 Merkle tree hashing: the tree over a chain's record hashes, its compact form
(`Frontier`), inclusion proofs and their verification. Pure: no I/O.

Invariants (each named by a test in tests/unit/test_merkle.py):
- DOMAIN_SEPARATION: a leaf hashes as SHA-256(0x00 || data), an inner node as SHA-256(0x01 || left ||
  right), the empty tree as SHA-256(""), so a leaf can never pass for a node.
- FRONTIER: a tree of `size` leaves is kept as the roots of the perfect subtrees of size's binary
  decomposition, largest (leftmost) first: popcount(size) hashes, enough to append and to compute the
  root. Any split of the same leaves into `extend` calls gives the same frontier.
- PROOF_ORDER: an inclusion proof lists sibling hashes from the leaf up (RFC 9162 2.1.3.1, the order
  Go's golang.org/x/mod/sumdb/tlog checks); verification never raises, it answers False.

`Frontier.extend_packed` runs in C (shipper._native.merkle_extend) when it is built, unless
SHIPPER_NATIVE=0; `merkle_extend_py` is the reference it must match byte for byte.
"""
from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from .native import module as _native

HASH_SIZE = 32
EMPTY_ROOT = hashlib.sha256(b"").digest()

_sha256 = hashlib.sha256
_merkle_extend_native = getattr(_native, "merkle_extend", None)
NATIVE = _merkle_extend_native is not None  # tests skip native comparisons without it


def leaf_hash(data: bytes) -> bytes:
    return _sha256(b"\x00" + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return _sha256(b"\x01" + left + right).digest()


def merkle_extend_py(nodes: bytes, size: int, leaves: bytes) -> bytes:
    """The frontier nodes after appending `leaves` (32-byte leaf datas, packed) to the tree of `size`
    leaves whose frontier is `nodes`: the reference for the native merkle_extend."""
    stack = [bytes(nodes[i:i + HASH_SIZE]) for i in range(0, len(nodes), HASH_SIZE)]
    sha256 = _sha256
    for start in range(0, len(leaves), HASH_SIZE):
        digest = sha256(b"\x00" + leaves[start:start + HASH_SIZE]).digest()
        # Each trailing 1 bit of size is a perfect subtree of the new leaf's size: they merge.
        carry = size
        while carry & 1:
            digest = sha256(b"\x01" + stack.pop() + digest).digest()
            carry >>= 1
        stack.append(digest)
        size += 1
    return b"".join(stack)


def _push(stack: list[bytes], size: int, digest: bytes) -> None:
    while size & 1:
        digest = node_hash(stack.pop(), digest)
        size >>= 1
    stack.append(digest)


@dataclass(frozen=True, slots=True)
class Frontier:
    """The compact range of a tree of `size` leaves: see the FRONTIER invariant."""

    size: int = 0
    nodes: bytes = b""

    def __post_init__(self) -> None:
        if isinstance(self.size, bool) or not isinstance(self.size, int) or not 0 <= self.size < 2**64:
            raise ValueError(f"a tree size is an integer in [0, 2**64), not {self.size!r}")
        if not isinstance(self.nodes, bytes) or len(self.nodes) != HASH_SIZE * self.size.bit_count():
            raise ValueError(f"a tree of {self.size} leaves has {self.size.bit_count()} frontier hashes")

    def extend(self, leaf_datas: Iterable[bytes]) -> Frontier:
        """The frontier after appending these leaves (their data, of any length)."""
        datas = list(leaf_datas)
        if all(len(data) == HASH_SIZE for data in datas):
            return self.extend_packed(b"".join(datas))
        stack = [self.nodes[i:i + HASH_SIZE] for i in range(0, len(self.nodes), HASH_SIZE)]
        size = self.size
        for data in datas:
            _push(stack, size, leaf_hash(data))
            size += 1
        return Frontier(size, b"".join(stack))

    def extend_packed(self, leaves: bytes) -> Frontier:
        """The frontier after appending len(leaves) / 32 leaves whose data are 32-byte hashes (record
        hashes), concatenated."""
        if len(leaves) % HASH_SIZE:
            raise ValueError("packed leaves are a multiple of 32 bytes")
        size = self.size + len(leaves) // HASH_SIZE
        if size >= 2**64:
            raise ValueError("a tree has fewer than 2**64 leaves")
        if _merkle_extend_native is not None:
            return _frontier(size, _merkle_extend_native(self.nodes, self.size, leaves))
        return _frontier(size, merkle_extend_py(self.nodes, self.size, leaves))

    def root(self) -> bytes:
        """The tree's RFC 6962 Merkle Tree Hash."""
        if not self.nodes:
            return EMPTY_ROOT
        # The smaller subtrees are on the right: fold from there.
        digest = self.nodes[-HASH_SIZE:]
        for end in range(len(self.nodes) - HASH_SIZE, 0, -HASH_SIZE):
            digest = node_hash(self.nodes[end - HASH_SIZE:end], digest)
        return digest

    def to_bytes(self) -> bytes:
        """8 bytes of size (big-endian), then the frontier hashes."""
        return self.size.to_bytes(8, "big") + self.nodes

    @classmethod
    def from_bytes(cls, raw: bytes) -> Frontier:
        """The frontier `to_bytes` wrote; ValueError when `raw` is not one."""
        if len(raw) < 8:
            raise ValueError("a stored frontier starts with an 8-byte size")
        return cls(int.from_bytes(raw[:8], "big"), bytes(raw[8:]))


_new = object.__new__
_set_size = Frontier.__dict__["size"].__set__
_set_nodes = Frontier.__dict__["nodes"].__set__


def _frontier(size: int, nodes: bytes) -> Frontier:
    """A Frontier whose nodes were just computed for its size: built without the checks of __init__,
    which cost more than extending by one leaf (this runs once per batch on the hot path)."""
    frontier = _new(Frontier)
    _set_size(frontier, size)
    _set_nodes(frontier, nodes)
    return frontier


def root_of(leaf_datas: Iterable[bytes]) -> bytes:
    """The Merkle Tree Hash of these leaves (their data)."""
    return Frontier().extend(leaf_datas).root()


def _split(n: int) -> int:
    """The largest power of two below n (n > 1): the size of the left subtree."""
    return 1 << ((n - 1).bit_length() - 1)


def _subtree_root(hashes: Sequence[bytes], lo: int, hi: int) -> bytes:
    if hi - lo == 1:
        return hashes[lo]
    k = _split(hi - lo)
    return node_hash(_subtree_root(hashes, lo, lo + k), _subtree_root(hashes, lo + k, hi))


def inclusion_proof(leaf_datas: Sequence[bytes], index: int, size: int) -> list[bytes]:
    """The audit path of leaf `index` in the tree of the first `size` leaves, from the leaf up."""
    if not 0 <= index < size <= len(leaf_datas):
        raise ValueError(f"no leaf {index} in a tree of {size} leaves (of {len(leaf_datas)} given)")
    hashes = [leaf_hash(data) for data in leaf_datas[:size]]
    path = []
    lo, hi = 0, size
    while hi - lo > 1:
        k = _split(hi - lo)
        if index < lo + k:
            path.append(_subtree_root(hashes, lo + k, hi))
            hi = lo + k
        else:
            path.append(_subtree_root(hashes, lo, lo + k))
            lo += k
    path.reverse()
    return path


def _is_hash(value: object) -> bool:
    return isinstance(value, (bytes, bytearray)) and len(value) == HASH_SIZE


def verify_inclusion(leaf_data: bytes, index: int, size: int, proof: Sequence[bytes], root: bytes) -> bool:
    """Whether `proof` shows leaf `index` with this data in the tree of `size` leaves with this root
    (RFC 9162 section 2.1.3.2). False, not an exception, for any bad proof, index or size."""
    if (isinstance(index, bool) or isinstance(size, bool) or not isinstance(index, int)
            or not isinstance(size, int) or not 0 <= index < size or not _is_hash(root)
            or not isinstance(leaf_data, (bytes, bytearray))):
        return False
    try:
        path = list(proof)
    except TypeError:
        return False
    if not all(_is_hash(p) for p in path):
        return False
    fn, sn = index, size - 1
    digest = leaf_hash(bytes(leaf_data))
    for sibling in path:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            digest = node_hash(bytes(sibling), digest)
            # The right edge of an unbalanced tree: climb past the levels where this node has no sibling.
            while fn and not fn & 1:
                fn >>= 1
                sn >>= 1
        else:
            digest = node_hash(digest, bytes(sibling))
        fn >>= 1
        sn >>= 1
    return sn == 0 and hmac.compare_digest(digest, bytes(root))
