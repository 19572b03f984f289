"""RFC 6962 Merkle tree: Certificate Transparency known answers, and every proof mutation fails."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.audit.errors import ProofInvalid
from gateway.audit.merkle import (
    EMPTY_ROOT,
    CompactRange,
    MerkleTree,
    leaf_hash,
    root_from_inclusion_proof,
    root_from_leaf_hashes,
    verify_consistency,
    verify_inclusion,
)

# The 8-leaf tree of the CT codebase (merkle_tree_test.cc, Go's transparency-dev/merkle testdata).
LEAVES = [bytes.fromhex(h) for h in ["", "00", "10", "2021", "3031", "40414243", "5051525354555657",
                                      "606162636465666768696a6b6c6d6e6f"]]
ROOTS = [
    "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
]
INCLUSION = [  # (index, size, path)
    (0, 1, []),
    (0, 8, ["96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4"]),
    (5, 8, ["bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"]),
    (2, 3, ["fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125"]),
    (1, 5, ["6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b"]),
]
CONSISTENCY = [  # (old, new, proof)
    (1, 1, []),
    (1, 8, ["96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4"]),
    (6, 8, ["0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"]),
    (2, 5, ["5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b"]),
]
TREE = MerkleTree(leaf_hash(d) for d in LEAVES)


def _hx(path: list[str]) -> list[bytes]:
    return [bytes.fromhex(h) for h in path]


def test_empty_root_is_sha256_of_nothing() -> None:
    assert EMPTY_ROOT == hashlib.sha256(b"").digest() == MerkleTree().root()


@pytest.mark.parametrize("size", range(9))
def test_known_roots(size: int) -> None:
    assert TREE.root(size).hex() == ROOTS[size]
    assert root_from_leaf_hashes([leaf_hash(d) for d in LEAVES[:size]]).hex() == ROOTS[size]


@pytest.mark.parametrize(("index", "size", "path"), INCLUSION)
def test_known_inclusion_proofs(index: int, size: int, path: list[str]) -> None:
    assert TREE.inclusion_proof(index, size) == _hx(path)
    verify_inclusion(leaf_hash(LEAVES[index]), index, size, _hx(path), bytes.fromhex(ROOTS[size]))


@pytest.mark.parametrize(("old", "new", "path"), CONSISTENCY)
def test_known_consistency_proofs(old: int, new: int, path: list[str]) -> None:
    assert TREE.consistency_proof(old, new) == _hx(path)
    verify_consistency(old, new, bytes.fromhex(ROOTS[old]), bytes.fromhex(ROOTS[new]), _hx(path))


def _flips(proof: list[bytes]) -> list[list[bytes]]:
    out = []
    for i, h in enumerate(proof):
        for bit in range(256):
            flipped = bytearray(h)
            flipped[bit // 8] ^= 1 << (bit % 8)
            out.append([*proof[:i], bytes(flipped), *proof[i + 1 :]])
    return out


def _shape_mutations(proof: list[bytes]) -> list[list[bytes]]:
    extra = hashlib.sha256(b"extra").digest()
    out = [[*proof, extra], [extra, *proof]]
    out += [proof[:i] + proof[i + 1 :] for i in range(len(proof))]
    out += [[*proof[:i], proof[i], *proof[i:]] for i in range(len(proof))]
    if len(proof) > 1:
        out.append(list(reversed(proof)))
    return out


@pytest.mark.parametrize("size", range(1, 9))
def test_every_inclusion_mutation_fails(size: int) -> None:
    root = TREE.root(size)
    for index in range(size):
        leaf, proof = TREE.leaf(index), TREE.inclusion_proof(index, size)
        verify_inclusion(leaf, index, size, proof, root)
        for bad in _flips(proof) + _shape_mutations(proof):
            with pytest.raises(ProofInvalid):
                verify_inclusion(leaf, index, size, bad, root)
        for other_index in [*range(-1, size + 2)]:
            if other_index != index:
                with pytest.raises(ProofInvalid):
                    verify_inclusion(leaf, other_index, size, proof, root)
        # A size always travels with its root (both come from one signed checkpoint): claiming the proof
        # belongs to another size means checking it against that size's root.
        for other_size in range(0, 9):
            if other_size != size:
                with pytest.raises(ProofInvalid):
                    verify_inclusion(leaf, index, other_size, proof, TREE.root(other_size))
        for flipped_leaf in _flips([leaf])[:64]:
            with pytest.raises(ProofInvalid):
                verify_inclusion(flipped_leaf[0], index, size, proof, root)


@pytest.mark.parametrize("new", range(1, 9))
def test_every_consistency_mutation_fails(new: int) -> None:
    for old in range(1, new):
        proof = TREE.consistency_proof(old, new)
        old_root, new_root = TREE.root(old), TREE.root(new)
        verify_consistency(old, new, old_root, new_root, proof)
        for bad in _flips(proof) + _shape_mutations(proof):
            with pytest.raises(ProofInvalid):
                verify_consistency(old, new, old_root, new_root, bad)
        # Sizes travel with their roots (signed checkpoints): other sizes are checked with their roots.
        for o2 in range(0, 9):
            for n2 in range(0, 9):
                if (o2, n2) != (old, new):
                    with pytest.raises(ProofInvalid):
                        verify_consistency(o2, n2, TREE.root(o2), TREE.root(n2), proof)
        with pytest.raises(ProofInvalid):
            verify_consistency(old, new, new_root, old_root, proof)


def test_consistency_edge_cases() -> None:
    verify_consistency(0, 5, EMPTY_ROOT, TREE.root(5), [])
    with pytest.raises(ProofInvalid):
        verify_consistency(0, 5, TREE.root(1), TREE.root(5), [])
    with pytest.raises(ProofInvalid):
        verify_consistency(3, 3, TREE.root(3), TREE.root(4), [])
    with pytest.raises(ProofInvalid):
        verify_consistency(5, 3, TREE.root(5), TREE.root(3), [])


@settings(max_examples=60, deadline=None)
@given(st.lists(st.binary(max_size=8), min_size=1, max_size=300), st.data())
def test_proofs_round_trip_on_random_trees(leaves: list[bytes], data: st.DataObject) -> None:
    tree = MerkleTree(leaf_hash(x) for x in leaves)
    size = data.draw(st.integers(1, len(leaves)))
    index = data.draw(st.integers(0, size - 1))
    old = data.draw(st.integers(0, size))
    assert tree.root(size) == root_from_leaf_hashes([leaf_hash(x) for x in leaves[:size]])
    proof = tree.inclusion_proof(index, size)
    assert root_from_inclusion_proof(tree.leaf(index), index, size, proof) == tree.root(size)
    verify_consistency(old, size, tree.root(old), tree.root(size), tree.consistency_proof(old, size))
    edge = CompactRange(old, tree.frontier(old))
    for h in (tree.leaf(i) for i in range(old, size)):
        edge.append(h)
    assert edge.root() == tree.root(size)


def test_large_tree_proofs_are_cheap() -> None:
    """A proof costs O(log^2 n) node lookups, not a rehash of the tree."""
    tree = MerkleTree(hashlib.sha256(i.to_bytes(4, "big")).digest() for i in range(1 << 16))
    root = tree.root()
    for index in (0, 12345, (1 << 16) - 1):
        verify_inclusion(tree.leaf(index), index, tree.size, tree.inclusion_proof(index), root)
    verify_consistency(40000, tree.size, tree.root(40000), root, tree.consistency_proof(40000))
