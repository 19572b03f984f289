"""RFC 6962 Merkle tree: tree hash, inclusion and consistency proofs (generation and verification).

Hashes are raw 32-byte SHA-256 digests. `MerkleTree` keeps every complete, aligned subtree hash (about
2n hashes for n leaves), so a root or a proof costs O(log^2 n) lookups instead of O(n) rehashing.
Verification follows RFC 9162 sections 2.1.3.2 and 2.1.4.2 and costs O(log n).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence

from gateway.audit.errors import ProofInvalid

HASH_SIZE = 32
EMPTY_ROOT = hashlib.sha256(b"").digest()
"""MTH of the empty tree: SHA-256 of the empty string."""

_sha256 = hashlib.sha256


def leaf_hash(data: bytes) -> bytes:
    """RFC 6962 leaf hash: SHA-256(0x00 || data); the prefix keeps leaves and nodes apart."""
    return _sha256(b"\x00" + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """RFC 6962 interior node hash: SHA-256(0x01 || left || right)."""
    return _sha256(b"\x01" + left + right).digest()


def _split(n: int) -> int:
    """Largest power of two strictly smaller than n (n >= 2)."""
    return 1 << ((n - 1).bit_length() - 1)


class CompactRange:
    """The right edge of a growing tree: the roots of its maximal complete subtrees (O(log n) hashes).

    Appending a leaf and reading the root of the current size are both cheap, so a verifier streams a
    log once and reads the root at every checkpoint size on the way.
    """

    def __init__(self, size: int = 0, frontier: Sequence[bytes] = ()) -> None:
        if len(frontier) != size.bit_count():
            raise ValueError(f"a frontier of size {size} has {size.bit_count()} hashes")
        self.size = size
        self._stack: list[tuple[int, bytes]] = []
        sizes = [1 << level for level in range(size.bit_length() - 1, -1, -1) if size >> level & 1]
        self._stack = list(zip(sizes, frontier, strict=True))

    def append(self, leaf: bytes) -> None:
        stack = self._stack
        width, node = 1, leaf
        while stack and stack[-1][0] == width:
            node = node_hash(stack.pop()[1], node)
            width <<= 1
        stack.append((width, node))
        self.size += 1

    def root(self) -> bytes:
        if not self._stack:
            return EMPTY_ROOT
        node = self._stack[-1][1]
        for _, left in reversed(self._stack[:-1]):
            node = node_hash(left, node)
        return node


def root_from_leaf_hashes(hashes: Iterable[bytes], *, size: int = 0, frontier: Sequence[bytes] = ()) -> bytes:
    """MTH over already-hashed leaves (after an optional frontier of `size` leaves): O(n), O(log n) memory."""
    edge = CompactRange(size, frontier)
    for h in hashes:
        edge.append(h)
    return edge.root()


class MerkleTree:
    """An append-only in-memory tree of leaf hashes that answers roots and proofs for any size."""

    def __init__(self, leaf_hashes: Iterable[bytes] = ()) -> None:
        self._levels: list[list[bytes]] = [[]]
        for h in leaf_hashes:
            self.append(h)

    @property
    def size(self) -> int:
        return len(self._levels[0])

    def append(self, leaf: bytes) -> int:
        """Add one leaf hash; return its index."""
        if len(leaf) != HASH_SIZE:
            raise ValueError("a leaf hash is 32 bytes")
        index = len(self._levels[0])
        self._levels[0].append(leaf)
        level, node, i = 0, leaf, index
        while i & 1:
            left = self._levels[level][i - 1]
            node = node_hash(left, node)
            level += 1
            i >>= 1
            if len(self._levels) == level:
                self._levels.append([])
            self._levels[level].append(node)
        return index

    def leaf(self, index: int) -> bytes:
        return self._levels[0][index]

    def _subtree(self, start: int, end: int) -> bytes:
        """MTH(D[start:end]) where start is aligned to the largest power of two that fits."""
        n = end - start
        if n == 0:
            return EMPTY_ROOT
        if n & (n - 1) == 0:
            level = n.bit_length() - 1
            return self._levels[level][start >> level]
        k = _split(n)
        return node_hash(self._subtree(start, start + k), self._subtree(start + k, end))

    def _check_size(self, size: int | None) -> int:
        if size is None:
            return self.size
        if not 0 <= size <= self.size:
            raise ValueError(f"tree size {size} is outside 0..{self.size}")
        return size

    def root(self, size: int | None = None) -> bytes:
        """MTH of the first `size` leaves (default: all)."""
        return self._subtree(0, self._check_size(size))

    def frontier(self, size: int | None = None) -> list[bytes]:
        """The compact range of the first `size` leaves: one hash per set bit of size, largest first.

        It is all a verifier needs to extend the tree from `size` without the earlier leaves.
        """
        n = self._check_size(size)
        hashes: list[bytes] = []
        start = 0
        for level in range(n.bit_length() - 1, -1, -1):
            if n >> level & 1:
                hashes.append(self._levels[level][start >> level])
                start += 1 << level
        return hashes

    def inclusion_proof(self, index: int, size: int | None = None) -> list[bytes]:
        """RFC 6962 audit path PATH(index, D[size]), leaf sibling first."""
        n = self._check_size(size)
        if not 0 <= index < n:
            raise ValueError(f"leaf index {index} is outside 0..{n - 1}")
        path: list[bytes] = []
        start, end = 0, n
        while end - start > 1:
            k = _split(end - start)
            if index < start + k:
                path.append(self._subtree(start + k, end))
                end = start + k
            else:
                path.append(self._subtree(start, start + k))
                start += k
        path.reverse()
        return path

    def consistency_proof(self, old_size: int, new_size: int | None = None) -> list[bytes]:
        """RFC 6962 PROOF(old_size, D[new_size]); empty when old_size is 0 or equals new_size."""
        n = self._check_size(new_size)
        if not 0 <= old_size <= n:
            raise ValueError(f"old size {old_size} is outside 0..{n}")
        if old_size in (0, n):
            return []
        path: list[bytes] = []
        m, start, end, whole = old_size, 0, n, True
        while True:
            if m == end - start:
                if not whole:
                    path.append(self._subtree(start, end))
                break
            k = _split(end - start)
            if m <= k:
                path.append(self._subtree(start + k, end))
                end = start + k
            else:
                path.append(self._subtree(start, start + k))
                m -= k
                start += k
                whole = False
        path.reverse()
        return path


def root_from_inclusion_proof(leaf: bytes, index: int, size: int, proof: Sequence[bytes]) -> bytes:
    """Recompute the root implied by an audit path (RFC 9162 2.1.3.2); raise if the shape is wrong."""
    if not 0 <= index < size:
        raise ProofInvalid(f"leaf index {index} is not below tree size {size}")
    fn, sn, r = index, size - 1, leaf
    for p in proof:
        if len(p) != HASH_SIZE or sn == 0:
            raise ProofInvalid("inclusion proof has the wrong length or a malformed hash")
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise ProofInvalid("inclusion proof is too short for this tree size")
    return r


def verify_inclusion(leaf: bytes, index: int, size: int, proof: Sequence[bytes], root: bytes) -> None:
    """Raise ProofInvalid unless `proof` shows leaf `index` is in the tree of `size` leaves with `root`."""
    if root_from_inclusion_proof(leaf, index, size, proof) != root:
        raise ProofInvalid(f"inclusion proof for leaf {index} does not lead to the root of size {size}")


def verify_consistency(
    old_size: int, new_size: int, old_root: bytes, new_root: bytes, proof: Sequence[bytes]
) -> None:
    """Raise ProofInvalid unless the tree (new_size, new_root) extends (old_size, old_root).

    Follows RFC 9162 2.1.4.2; size 0 is the empty tree, consistent with anything by an empty proof.
    """
    if not 0 <= old_size <= new_size:
        raise ProofInvalid(f"old size {old_size} is larger than new size {new_size}")
    if any(len(p) != HASH_SIZE for p in proof):
        raise ProofInvalid("consistency proof holds a malformed hash")
    if old_size == 0:
        if proof or old_root != EMPTY_ROOT:
            raise ProofInvalid("a consistency proof from the empty tree is empty and starts at the empty root")
        return
    if old_size == new_size:
        if proof or old_root != new_root:
            raise ProofInvalid("two checkpoints of the same size must have the same root and an empty proof")
        return
    if not proof:
        raise ProofInvalid("consistency proof is empty")
    path = list(proof)
    if old_size & (old_size - 1) == 0:
        path.insert(0, old_root)
    fn, sn = old_size - 1, new_size - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            raise ProofInvalid("consistency proof is too long")
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    if sn != 0 or fr != old_root or sr != new_root:
        raise ProofInvalid(f"consistency proof from size {old_size} to {new_size} does not verify")
