"""audit.merkle against the RFC 6962 reference vectors (Certificate Transparency / Trillian /
transparency-dev merkle test suites) and property tests."""
from __future__ import annotations

import hashlib

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from audit import merkle
from audit.merkle import (
    EMPTY_ROOT, CompactRange, MemoryTree, consistency_proof, decompose, inclusion_proof, leaf_hash, node_hash,
    range_proof, root_from_leaf_hashes, root_from_range, subtree_root, verify_consistency, verify_inclusion,
)

h = bytes.fromhex

# The 8-leaf tree of the CT reference tests.
LEAVES = [
    b"", b"\x00", b"\x10", b"\x20\x21", b"\x30\x31", b"\x40\x41\x42\x43",
    bytes.fromhex("5051525354555657"), bytes.fromhex("606162636465666768696a6b6c6d6e6f"),
]
ROOTS = [h(x) for x in (
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
)]
# (leaf index, tree size, proof): 0-based versions of the reference vectors.
INCLUSION = [
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
    (0, 1, []),
]
CONSISTENCY = [
    (1, 1, []),
    (1, 8, ["96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4"]),
    (6, 8, ["0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"]),
    (2, 5, ["5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b"]),
    (6, 7, ["0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
            "b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"]),
]


@pytest.fixture(scope="module")
def tree8() -> MemoryTree:
    t = MemoryTree()
    for data in LEAVES:
        t.append(data)
    return t


def test_hash_primitives():
    assert EMPTY_ROOT == h("e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
    assert leaf_hash(b"") == hashlib.sha256(b"\x00").digest() == ROOTS[0]
    assert node_hash(b"a" * 32, b"b" * 32) == hashlib.sha256(b"\x01" + b"a" * 32 + b"b" * 32).digest()
    assert root_from_leaf_hashes([]) == EMPTY_ROOT == MemoryTree().root()


@pytest.mark.parametrize("size", range(1, 9))
def test_reference_roots(tree8, size):
    assert tree8.root(size) == ROOTS[size - 1]
    assert root_from_leaf_hashes(leaf_hash(x) for x in LEAVES[:size]) == ROOTS[size - 1]
    cr = CompactRange()
    for x in LEAVES[:size]:
        cr.append(leaf_hash(x))
    assert cr.root() == ROOTS[size - 1]


@pytest.mark.parametrize("index,size,proof", INCLUSION)
def test_reference_inclusion_proofs(tree8, index, size, proof):
    proof = [h(x) for x in proof]
    assert tree8.inclusion_proof(index, size) == proof
    assert verify_inclusion(leaf_hash(LEAVES[index]), index, size, proof, ROOTS[size - 1])
    # Corruptions from the reference suite must all fail.
    leaf, root = leaf_hash(LEAVES[index]), ROOTS[size - 1]
    bad = [
        (leaf, index + 1, size, proof, root),
        (leaf, index, size * 2, proof, root),
        (leaf, index, size, proof, EMPTY_ROOT),
        (leaf_hash(b"WrongLeaf"), index, size, proof, root),
        (leaf, index, size, proof + [root], root),
        (leaf, index, size, [root] + proof, root),
        (leaf, index, size, proof[:-1], root) if proof else (leaf, index, size, [root], root),
    ]
    if index:
        bad.append((leaf, index - 1, size, proof, root))
    for args in bad:
        assert not verify_inclusion(*args), args


@pytest.mark.parametrize("m,n,proof", CONSISTENCY)
def test_reference_consistency_proofs(tree8, m, n, proof):
    proof = [h(x) for x in proof]
    assert tree8.consistency_proof(m, n) == proof
    assert verify_consistency(m, n, ROOTS[m - 1], ROOTS[n - 1], proof)
    if proof:
        assert not verify_consistency(m, n, ROOTS[n - 1], ROOTS[m - 1], proof)  # swapped roots
        assert not verify_consistency(m, n, ROOTS[m - 1], ROOTS[n - 1], [])
        assert not verify_consistency(m, n, ROOTS[m - 1], ROOTS[n - 1], proof[:-1])
        assert not verify_consistency(m, n, ROOTS[m - 1], ROOTS[n - 1], [ROOTS[m - 1], *proof])
        assert not verify_consistency(m - 1 or m + 1, n, ROOTS[m - 1], ROOTS[n - 1], proof)
        assert not verify_consistency(m, n * 2, ROOTS[m - 1], ROOTS[n - 1], proof)


def test_consistency_edge_cases(tree8):
    r = ROOTS
    assert verify_consistency(0, 0, EMPTY_ROOT, EMPTY_ROOT, [])
    assert verify_consistency(0, 5, EMPTY_ROOT, r[4], [])       # everything extends the empty tree
    assert not verify_consistency(0, 5, r[0], r[4], [])          # but a size-0 tree has one root
    assert not verify_consistency(0, 5, EMPTY_ROOT, r[4], [r[0]])
    assert verify_consistency(3, 3, r[2], r[2], [])
    assert not verify_consistency(3, 3, r[2], r[3], [])
    assert not verify_consistency(3, 3, r[2], r[2], [r[0]])
    assert not verify_consistency(5, 3, r[4], r[2], [])          # time travel
    assert not verify_consistency(2, 5, r[1], r[4], [b"short"])
    assert consistency_proof(0, 8, tree8.perfect) == [] == consistency_proof(8, 8, tree8.perfect)
    with pytest.raises(ValueError):
        consistency_proof(5, 3, tree8.perfect)
    with pytest.raises(ValueError):
        inclusion_proof(8, 8, tree8.perfect)
    assert not verify_inclusion(ROOTS[0], 0, 0, [], EMPTY_ROOT)
    assert not verify_inclusion(ROOTS[0], 1, 1, [], ROOTS[0])


def test_decompose():
    assert decompose(0, 0) == []
    assert decompose(0, 13) == [(0, 8), (8, 4), (12, 1)]
    assert decompose(5, 16) == [(5, 1), (6, 2), (8, 8)]
    assert decompose(3, 21) == [(3, 1), (4, 4), (8, 8), (16, 4), (20, 1)]
    assert decompose(7, 8) == [(7, 1)]
    with pytest.raises(ValueError):
        decompose(5, 4)


@given(st.integers(0, 5000), st.integers(0, 5000))
def test_decompose_covers_with_maximal_aligned_subtrees(a, b):
    begin, end = min(a, b), max(a, b)
    parts = decompose(begin, end)
    pos = begin
    for start, size in parts:
        assert start == pos and size & (size - 1) == 0 and start % size == 0
        pos += size
    assert pos == end
    # Maximal: no two neighbours of equal size could merge into an aligned parent.
    for (s1, z1), (_, z2) in zip(parts, parts[1:]):
        assert not (z1 == z2 and s1 % (2 * z1) == 0)


def test_compact_range_validation():
    leaves = [leaf_hash(bytes([i])) for i in range(13)]
    cr = CompactRange()
    for x in leaves:
        cr.append(x)
    assert cr.end == 13 and len(cr.hashes()) == 3
    again = CompactRange.from_hashes(0, 13, cr.hashes())
    assert again == cr and again.root() == root_from_leaf_hashes(leaves)
    with pytest.raises(ValueError):
        CompactRange.from_hashes(0, 13, cr.hashes()[:2])
    with pytest.raises(ValueError):
        CompactRange.from_hashes(0, 13, [b"x" * 31, *cr.hashes()[1:]])
    with pytest.raises(ValueError):
        cr.append_subtree(2, leaves[0])       # 13 is odd: a 2-subtree is not aligned there
    with pytest.raises(ValueError):
        cr.copy().append_subtree(3, leaves[0])  # not a power of two
    c = cr.copy()
    c.append(leaves[0])
    assert c.end == 14 and cr.end == 13
    with pytest.raises(ValueError):
        CompactRange(begin=3).root()


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_compact_range_with_begin_matches_subtree_hashes(data):
    size = data.draw(st.integers(1, 300))
    t = MemoryTree(leaf_hash(i.to_bytes(4, "big")) for i in range(size))
    begin = data.draw(st.integers(0, size))
    end = data.draw(st.integers(begin, size))
    cr = CompactRange(begin)
    for i in range(begin, end):
        cr.append(t.leaf_hash(i))
    assert cr.hashes() == [t.perfect(s, z) for s, z in decompose(begin, end)]
    # Appending perfect subtrees gives the same compact range as appending their leaves.
    cr2 = CompactRange.from_hashes(0, begin, [t.perfect(s, z) for s, z in decompose(0, begin)])
    for s, z in decompose(begin, size):
        cr2.append_subtree(z, t.perfect(s, z))
    assert cr2.root() == t.root()


def _flip(b: bytes, i: int) -> bytes:
    return b[:i] + bytes([b[i] ^ 0x01]) + b[i + 1:]


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_inclusion_proofs_verify_and_any_change_fails(data):
    size = data.draw(st.integers(1, 400), label="size")
    t = MemoryTree(leaf_hash(b"leaf %d" % i) for i in range(size))
    index = data.draw(st.integers(0, size - 1), label="index")
    root, leaf = t.root(), t.leaf_hash(index)
    proof = t.inclusion_proof(index)
    assert verify_inclusion(leaf, index, size, proof, root)
    assert merkle.root_from_inclusion(leaf, index, size, proof) == root
    byte = data.draw(st.integers(0, 31), label="byte")
    assert not verify_inclusion(leaf, index, size, proof, _flip(root, byte))
    assert not verify_inclusion(_flip(leaf, byte), index, size, proof, root)
    if proof:
        k = data.draw(st.integers(0, len(proof) - 1), label="element")
        bad = list(proof)
        bad[k] = _flip(bad[k], byte)
        assert not verify_inclusion(leaf, index, size, bad, root)
    other = data.draw(st.integers(0, size), label="other index")
    if other != index:
        assert not verify_inclusion(leaf, other, size, proof, root)


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_consistency_proofs_verify_and_any_change_fails(data):
    n = data.draw(st.integers(1, 400), label="n")
    m = data.draw(st.integers(1, n), label="m")
    t = MemoryTree(leaf_hash(b"leaf %d" % i) for i in range(n))
    root_m, root_n = t.root(m), t.root(n)
    proof = t.consistency_proof(m, n)
    assert verify_consistency(m, n, root_m, root_n, proof)
    byte = data.draw(st.integers(0, 31), label="byte")
    assert not verify_consistency(m, n, _flip(root_m, byte), root_n, proof)
    assert not verify_consistency(m, n, root_m, _flip(root_n, byte), proof)
    if proof:
        k = data.draw(st.integers(0, len(proof) - 1), label="element")
        bad = list(proof)
        bad[k] = _flip(bad[k], byte)
        assert not verify_consistency(m, n, root_m, root_n, bad)
    other = data.draw(st.integers(1, n), label="other m")
    if other != m:
        assert not verify_consistency(other, n, root_m, root_n, proof)


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_root_from_range_equals_full_root(data):
    size = data.draw(st.integers(0, 400), label="size")
    t = MemoryTree(leaf_hash(b"leaf %d" % i) for i in range(size))
    begin = data.draw(st.integers(0, size), label="begin")
    end = data.draw(st.integers(begin, size), label="end")
    left, right = t.range_proof(begin, end)
    leaves = [t.leaf_hash(i) for i in range(begin, end)]
    assert root_from_range(left, leaves, right, begin, end, size) == t.root()
    assert (left, right) == range_proof(begin, end, size, t.perfect)
    parts = {"left": left, "right": right, "leaves": leaves}
    nonempty = [name for name, seq in parts.items() if seq]
    if nonempty:
        seq = parts[data.draw(st.sampled_from(nonempty))]
        k = data.draw(st.integers(0, len(seq) - 1))
        seq[k] = _flip(seq[k], data.draw(st.integers(0, 31)))
        assert root_from_range(left, leaves, right, begin, end, size) != t.root()
    with pytest.raises(ValueError):
        root_from_range(left + [EMPTY_ROOT], leaves, right, begin, end, size)
    with pytest.raises(ValueError):
        root_from_range(left, leaves, right + [EMPTY_ROOT], begin, end, size)


@given(st.integers(0, 200), st.integers(0, 200))
def test_subtree_root_is_rfc6962_mth(a, b):
    start, end = min(a, b), max(a, b)
    t = MemoryTree(leaf_hash(b"%d" % i) for i in range(end))

    def mth(hashes: list[bytes]) -> bytes:  # the RFC's recursive definition, literally
        if not hashes:
            return EMPTY_ROOT
        if len(hashes) == 1:
            return hashes[0]
        k = 1 << ((len(hashes) - 1).bit_length() - 1)
        return node_hash(mth(hashes[:k]), mth(hashes[k:]))

    assert subtree_root(start, end, t.perfect) == mth([t.leaf_hash(i) for i in range(start, end)])
