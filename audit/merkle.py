"""RFC 6962 / RFC 9162 Merkle trees for the audit log, in pure Python.

Everything here is standalone (standard library only) so that an outside auditor can run the
bundle verifier with nothing but Python and ``cryptography``.

Vocabulary
----------
* A *leaf hash* is ``SHA-256(0x00 || data)``; an interior node is ``SHA-256(0x01 || left || right)``
  (RFC 6962 §2.1, RFC 9162 §2.1.1). The root of the empty tree is ``SHA-256("")``.
* A *perfect aligned subtree* ``(start, size)`` has ``size`` a power of two and ``start % size == 0``;
  it is a node of every tree of at least ``start + size`` leaves.
* A *compact range* for ``[begin, end)`` is the list of the maximal perfect aligned subtrees that
  cover it, left to right (Trillian / transparency-dev "compact ranges"). For ``[0, n)`` it has one
  subtree per set bit of ``n``, largest first, and folding it from the right gives the RFC 6962 root.

Proof *generation* takes a :data:`SubtreeHash` callback (hash of a perfect aligned subtree), so a
server can answer it from stored node hashes; :class:`MemoryTree` is the in-memory implementation.
Proof *verification* follows the algorithms of RFC 9162 §2.1.3.2 (inclusion) and §2.1.4.2
(consistency) literally.
"""
from __future__ import annotations

import hashlib
from typing import Callable, Iterable, Iterator, Sequence

__all__ = [
    "HASH_SIZE",
    "EMPTY_ROOT",
    "SubtreeHash",
    "leaf_hash",
    "node_hash",
    "root_from_leaf_hashes",
    "decompose",
    "CompactRange",
    "subtree_root",
    "inclusion_proof",
    "consistency_proof",
    "range_proof",
    "verify_inclusion",
    "root_from_inclusion",
    "verify_consistency",
    "root_from_range",
    "MemoryTree",
]

_sha256 = hashlib.sha256

HASH_SIZE = 32
"""Size in bytes of every hash in the tree (SHA-256)."""

EMPTY_ROOT: bytes = _sha256(b"").digest()
"""The root hash of the tree with no leaves (RFC 6962: MTH({}) = SHA-256())."""

SubtreeHash = Callable[[int, int], bytes]
"""``perfect(start, size)``: the hash of the perfect aligned subtree of ``size`` leaves (a power of
two) that starts at leaf ``start`` (a multiple of ``size``)."""


# --------------------------------------------------------------------------------------------
# Hashing


def leaf_hash(data: bytes) -> bytes:
    """RFC 6962 leaf hash: ``SHA-256(0x00 || data)``."""
    return _sha256(b"\x00" + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """RFC 6962 interior node hash: ``SHA-256(0x01 || left || right)``."""
    return _sha256(b"\x01" + left + right).digest()


def _is_pow2(n: int) -> bool:
    return n > 0 and n & (n - 1) == 0


def _split_point(n: int) -> int:
    """The largest power of two strictly smaller than ``n`` (``n >= 2``): RFC 6962's ``k``."""
    return 1 << ((n - 1).bit_length() - 1)


def _fold(hashes: Sequence[bytes]) -> bytes:
    """Fold a compact range of ``[0, n)`` from the right into the RFC 6962 root."""
    if not hashes:
        return EMPTY_ROOT
    root = hashes[-1]
    for h in reversed(hashes[:-1]):
        root = _sha256(b"\x01" + h + root).digest()
    return root


def root_from_leaf_hashes(hashes: Iterable[bytes]) -> bytes:
    """The RFC 6962 root of a tree given its leaf hashes in order, streaming in O(log n) memory."""
    stack: list[bytes] = []
    n = 0
    sha = _sha256
    for h in hashes:
        m = n
        while m & 1:
            h = sha(b"\x01" + stack.pop() + h).digest()
            m >>= 1
        stack.append(h)
        n += 1
    return _fold(stack)


# --------------------------------------------------------------------------------------------
# Compact ranges


def decompose(begin: int, end: int) -> list[tuple[int, int]]:
    """The ``(start, size)`` of the maximal perfect aligned subtrees covering ``[begin, end)``, left
    to right. Sizes first grow (following the low bits of ``begin``) then shrink (following the bits
    of ``end``)."""
    if begin < 0 or end < begin:
        raise ValueError(f"invalid range [{begin}, {end})")
    out: list[tuple[int, int]] = []
    pos = begin
    while pos < end:
        size = pos & -pos if pos else 1 << (end.bit_length())
        while size > end - pos:
            size >>= 1
        out.append((pos, size))
        pos += size
    return out


class CompactRange:
    """A compact range: the hashes of the perfect aligned subtrees covering ``[begin, end)``.

    ``CompactRange(begin, end, hashes)`` takes the hashes of ``decompose(begin, end)`` (validated);
    ``CompactRange()`` is the empty range at 0. Extend on the right with :meth:`append` (one leaf
    hash) or :meth:`append_subtree`; when ``begin == 0`` :meth:`root` is the RFC 6962 root of the tree
    of ``end`` leaves.
    """

    __slots__ = ("_begin", "_end", "_hashes", "_sizes")

    def __init__(self, begin: int = 0, end: int | None = None, hashes: Sequence[bytes] = ()) -> None:
        if end is None:
            end = begin
        sizes = [size for _, size in decompose(begin, end)]
        hashes = list(hashes)
        if len(hashes) != len(sizes):
            raise ValueError(
                f"compact range [{begin}, {end}) needs {len(sizes)} hashes, got {len(hashes)}"
            )
        for h in hashes:
            if not isinstance(h, bytes) or len(h) != HASH_SIZE:
                raise ValueError("every hash of a compact range must be 32 bytes")
        self._begin = begin
        self._end = end
        self._hashes = hashes
        self._sizes = sizes

    @classmethod
    def from_hashes(cls, begin: int, end: int, hashes: Sequence[bytes]) -> "CompactRange":
        """The compact range of ``[begin, end)`` with the given subtree hashes (validated against
        ``decompose(begin, end)``; ``ValueError`` if the count or a hash length is wrong)."""
        return cls(begin, end, hashes)

    @property
    def begin(self) -> int:
        return self._begin

    @property
    def end(self) -> int:
        return self._end

    def hashes(self) -> list[bytes]:
        """The subtree hashes, left to right (a copy)."""
        return list(self._hashes)

    def copy(self) -> "CompactRange":
        c = CompactRange.__new__(CompactRange)
        c._begin, c._end = self._begin, self._end
        c._hashes, c._sizes = list(self._hashes), list(self._sizes)
        return c

    def append(self, leaf: bytes) -> None:
        """Extend the range by one leaf, given its leaf hash."""
        self.append_subtree(1, leaf)

    def append_subtree(self, size: int, subtree_hash: bytes) -> None:
        """Extend the range by the perfect subtree ``[end, end + size)`` given its hash. ``size``
        must be a power of two with ``end % size == 0`` (``ValueError`` otherwise)."""
        if not _is_pow2(size) or self._end % size:
            raise ValueError(f"subtree of size {size} is not aligned at {self._end}")
        if len(subtree_hash) != HASH_SIZE:
            raise ValueError("subtree hash must be 32 bytes")
        hashes, sizes = self._hashes, self._sizes
        pos = self._end
        self._end = pos + size
        h = subtree_hash
        # Merge with the left sibling while the new node is a right child whose sibling lies in range.
        while pos & size and pos - size >= self._begin and sizes and sizes[-1] == size:
            h = _sha256(b"\x01" + hashes.pop() + h).digest()
            sizes.pop()
            pos -= size
            size <<= 1
        hashes.append(h)
        sizes.append(size)

    def root(self) -> bytes:
        """The RFC 6962 root of the tree of ``end`` leaves (only for ranges starting at 0)."""
        if self._begin != 0:
            raise ValueError("only a compact range starting at 0 has a root")
        return _fold(self._hashes)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, CompactRange):
            return NotImplemented
        return (self._begin, self._end, self._hashes) == (other._begin, other._end, other._hashes)

    def __repr__(self) -> str:
        return f"CompactRange(begin={self._begin}, end={self._end}, hashes={len(self._hashes)})"


# --------------------------------------------------------------------------------------------
# Proof generation (RFC 6962 §2.1.1, §2.1.2)


def subtree_root(start: int, end: int, perfect: SubtreeHash) -> bytes:
    """MTH(D[start:end]): the RFC 6962 hash of the leaves ``[start, end)``, splitting at the largest
    power of two smaller than the size and asking ``perfect`` for perfect aligned subtrees."""
    n = end - start
    if n < 0 or start < 0:
        raise ValueError(f"invalid range [{start}, {end})")
    if n == 0:
        return EMPTY_ROOT
    if _is_pow2(n) and start % n == 0:
        return perfect(start, n)
    k = _split_point(n)
    return node_hash(subtree_root(start, start + k, perfect), subtree_root(start + k, end, perfect))


def inclusion_proof(index: int, size: int, perfect: SubtreeHash) -> list[bytes]:
    """RFC 6962 PATH(index, D[0:size]): the audit path of leaf ``index``, leaf level first."""
    if not 0 <= index < size:
        raise ValueError(f"leaf {index} is not in a tree of size {size}")
    path: list[bytes] = []
    start, end = 0, size
    while end - start > 1:
        mid = start + _split_point(end - start)
        if index < mid:
            path.append(subtree_root(mid, end, perfect))
            end = mid
        else:
            path.append(subtree_root(start, mid, perfect))
            start = mid
    path.reverse()
    return path


def consistency_proof(m: int, n: int, perfect: SubtreeHash) -> list[bytes]:
    """RFC 6962 PROOF(m, D[0:n]) = SUBPROOF(m, D[0:n], true). Empty when ``m == n`` or ``m == 0``."""
    if not 0 <= m <= n:
        raise ValueError(f"no consistency proof from size {m} to size {n}")
    if m == 0 or m == n:
        return []
    proof: list[bytes] = []
    start, end, sub_m, complete = 0, n, m, True
    while sub_m != end - start:
        k = _split_point(end - start)
        if sub_m <= k:
            proof.append(subtree_root(start + k, end, perfect))
            end = start + k
        else:
            proof.append(subtree_root(start, start + k, perfect))
            start += k
            sub_m -= k
            complete = False
    if not complete:
        proof.append(subtree_root(start, end, perfect))
    proof.reverse()
    return proof


def range_proof(begin: int, end: int, size: int, perfect: SubtreeHash) -> tuple[list[bytes], list[bytes]]:
    """What binds the leaves ``[begin, end)`` to the tree of ``size`` leaves: the hashes of
    ``decompose(0, begin)`` (left) and of ``decompose(end, size)`` (right)."""
    if not 0 <= begin <= end <= size:
        raise ValueError(f"invalid range [{begin}, {end}) of a tree of size {size}")
    left = [perfect(s, z) for s, z in decompose(0, begin)]
    right = [perfect(s, z) for s, z in decompose(end, size)]
    return left, right


# --------------------------------------------------------------------------------------------
# Proof verification (RFC 9162 §2.1.3.2, §2.1.4.2)


def _hashes_ok(*hashes: bytes) -> bool:
    return all(isinstance(h, bytes) and len(h) == HASH_SIZE for h in hashes)


def root_from_inclusion(leaf: bytes, index: int, size: int, proof: Sequence[bytes]) -> bytes | None:
    """The root an inclusion proof leads to (RFC 9162 §2.1.3.2 steps 1-4), or None if the proof
    has the wrong shape for ``(index, size)``."""
    if not 0 <= index < size or not _hashes_ok(leaf, *proof):
        return None
    fn, sn, r = index, size - 1, leaf
    sha = _sha256
    for p in proof:
        if sn == 0:
            return None
        if fn & 1 or fn == sn:
            r = sha(b"\x01" + p + r).digest()
            if not fn & 1:
                while not fn & 1 and fn != 0:
                    fn >>= 1
                    sn >>= 1
        else:
            r = sha(b"\x01" + r + p).digest()
        fn >>= 1
        sn >>= 1
    if sn != 0:
        return None
    return r


def verify_inclusion(leaf: bytes, index: int, size: int, proof: Sequence[bytes], root: bytes) -> bool:
    """True iff ``proof`` shows the leaf hash ``leaf`` at ``index`` of the tree of ``size`` leaves
    whose root is ``root`` (RFC 9162 §2.1.3.2)."""
    r = root_from_inclusion(leaf, index, size, proof)
    return r is not None and isinstance(root, bytes) and r == root


def verify_consistency(m: int, n: int, root_m: bytes, root_n: bytes, proof: Sequence[bytes]) -> bool:
    """True iff ``proof`` shows that the tree of ``m`` leaves with root ``root_m`` is a prefix of the
    tree of ``n`` leaves with root ``root_n`` (RFC 9162 §2.1.4.2).

    Edge cases: ``m == n`` needs an empty proof and equal roots; ``m == 0`` (which RFC 9162 does not
    prove) needs an empty proof and ``root_m == EMPTY_ROOT`` (the only root a tree of 0 leaves has);
    ``m > n`` is never consistent.
    """
    if not 0 <= m <= n or not _hashes_ok(root_m, root_n, *proof):
        return False
    if m == 0:
        return not proof and root_m == EMPTY_ROOT
    if m == n:
        return not proof and root_m == root_n
    # 1. An empty path cannot prove 0 < m < n.
    if not proof:
        return False
    path = list(proof)
    # 2. If m is an exact power of two, the old root itself is the first node of the path.
    if _is_pow2(m):
        path.insert(0, root_m)
    # 3. fn = m - 1, sn = n - 1; 4. shift out the common right-edge ones.
    fn, sn = m - 1, n - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    # 5. fr = sr = path[0]
    fr = sr = path[0]
    sha = _sha256
    # 6. For each subsequent value c:
    for c in path[1:]:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            fr = sha(b"\x01" + c + fr).digest()
            sr = sha(b"\x01" + c + sr).digest()
            if not fn & 1:
                while not fn & 1 and fn != 0:
                    fn >>= 1
                    sn >>= 1
        else:
            sr = sha(b"\x01" + sr + c).digest()
        fn >>= 1
        sn >>= 1
    # 7. fr == root_m, sr == root_n and sn == 0.
    return sn == 0 and fr == root_m and sr == root_n


def root_from_range(
    left: Sequence[bytes], leaves: Iterable[bytes], right: Sequence[bytes], begin: int, end: int, size: int
) -> bytes:
    """The root of the tree of ``size`` leaves recomputed from a range proof: ``left`` (hashes of
    ``decompose(0, begin)``), the leaf hashes of ``[begin, end)`` and ``right`` (hashes of
    ``decompose(end, size)``). ``ValueError`` if any count or hash length does not fit."""
    if not 0 <= begin <= end <= size:
        raise ValueError(f"invalid range [{begin}, {end}) of a tree of size {size}")
    cr = CompactRange.from_hashes(0, begin, left)
    for h in leaves:
        if cr.end >= end:
            raise ValueError(f"more than {end - begin} leaves for the range [{begin}, {end})")
        cr.append(h)
    if cr.end != end:
        raise ValueError(f"{cr.end - begin} leaves given for the range [{begin}, {end})")
    subtrees = decompose(end, size)
    if len(right) != len(subtrees):
        raise ValueError(f"right range of [{end}, {size}) needs {len(subtrees)} hashes, got {len(right)}")
    for (_, sz), h in zip(subtrees, right):
        cr.append_subtree(sz, h)
    return cr.root()


# --------------------------------------------------------------------------------------------
# In-memory tree


class MemoryTree:
    """A Merkle tree held in memory as a list of leaf hashes, with node hashes cached by
    ``(level, index)``. Its :meth:`perfect` is a :data:`SubtreeHash` for the proof generators."""

    def __init__(self, leaf_hashes: Iterable[bytes] = ()) -> None:
        self._leaves: list[bytes] = []
        self._nodes: dict[tuple[int, int], bytes] = {}
        for h in leaf_hashes:
            self.append_hash(h)

    def __len__(self) -> int:
        return len(self._leaves)

    @property
    def size(self) -> int:
        return len(self._leaves)

    def append(self, data: bytes) -> int:
        """Add a leaf by its data; returns its index."""
        return self.append_hash(leaf_hash(data))

    def append_hash(self, h: bytes) -> int:
        """Add a leaf by its leaf hash; returns its index."""
        if len(h) != HASH_SIZE:
            raise ValueError("leaf hash must be 32 bytes")
        self._leaves.append(h)
        return len(self._leaves) - 1

    def leaf_hash(self, index: int) -> bytes:
        return self._leaves[index]

    def perfect(self, start: int, size: int) -> bytes:
        """Hash of the perfect aligned subtree ``[start, start + size)``."""
        if not _is_pow2(size) or start % size or start < 0 or start + size > len(self._leaves):
            raise ValueError(f"no perfect subtree ({start}, {size}) in a tree of {len(self._leaves)}")
        if size == 1:
            return self._leaves[start]
        level = size.bit_length() - 1
        key = (level, start >> level)
        h = self._nodes.get(key)
        if h is None:
            half = size >> 1
            h = node_hash(self.perfect(start, half), self.perfect(start + half, half))
            self._nodes[key] = h
        return h

    def root(self, size: int | None = None) -> bytes:
        """The root of the first ``size`` leaves (default: all)."""
        size = len(self._leaves) if size is None else size
        if not 0 <= size <= len(self._leaves):
            raise ValueError(f"tree has only {len(self._leaves)} leaves")
        return subtree_root(0, size, self.perfect)

    def inclusion_proof(self, index: int, size: int | None = None) -> list[bytes]:
        return inclusion_proof(index, len(self._leaves) if size is None else size, self._checked(size))

    def consistency_proof(self, m: int, n: int | None = None) -> list[bytes]:
        return consistency_proof(m, len(self._leaves) if n is None else n, self._checked(n))

    def range_proof(self, begin: int, end: int, size: int | None = None) -> tuple[list[bytes], list[bytes]]:
        return range_proof(begin, end, len(self._leaves) if size is None else size, self._checked(size))

    def _checked(self, size: int | None) -> SubtreeHash:
        if size is not None and size > len(self._leaves):
            raise ValueError(f"tree has only {len(self._leaves)} leaves")
        return self.perfect

    def __iter__(self) -> Iterator[bytes]:
        return iter(self._leaves)
