"""Synthetic audit logs and bundles for the offline verifier tests (no Django, no database).

:class:`SyntheticLog` plays the sequencer: canonical JSON entries with correct global and per-tenant
hash chains and non-decreasing ``integrated_at``, a :class:`~audit.merkle.MemoryTree` per tree, and
checkpoints every ``checkpoint_every`` entries signed by a log key that rotates halfway through.
:meth:`SyntheticLog.export` writes a bundle with :class:`~audit.bundle.BundleWriter`, as the server
would. The module-level helpers tamper with a written bundle the way an attacker would, including
:func:`reseal`, which re-signs the manifest so that the inner checks (not the manifest digest) must
catch the change.
"""
from __future__ import annotations

import base64
import hashlib
import json
import random
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable, Iterable

from audit import merkle, note
from audit.bundle import BundleWriter
from audit.verifier import canonical_json, manifest_sig_text

ORIGIN = "audit.gatehouse.test/global"
KEY_NAME = "audit.gatehouse.test"
T0 = datetime(2025, 3, 1, 9, 0, 0, tzinfo=timezone.utc)
ZERO = "0" * 64
LAG = 60


def tenant_origin(slug: str) -> str:
    return f"audit.gatehouse.test/tenant/{slug}"


def canonical(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def leaf_hex(line: bytes) -> str:
    return merkle.leaf_hash(line).hex()


@dataclass
class Cp:
    """A checkpoint the synthetic server made."""

    size: int
    time: datetime
    root: bytes
    note: bytes
    signer: note.Ed25519NoteSigner


@dataclass
class Tree:
    origin: str
    mtree: merkle.MemoryTree = field(default_factory=merkle.MemoryTree)
    lines: list[bytes] = field(default_factory=list)
    checkpoints: list[Cp] = field(default_factory=list)


class SyntheticLog:
    """A log of ``n`` entries across ``tenants`` (some entries have no tenant).

    ``overrides[i]`` (a dict to merge, or a function that edits the entry dict) is applied to entry
    ``i`` before it is serialised and chained, so a test can
    make a log that is correctly hashed and signed yet wrong in content (a genuinely backdated entry,
    integrated_at going backwards). ``key1`` signs checkpoints up to ``rotate_at`` (default n // 2),
    ``key2`` after.
    """

    def __init__(
        self,
        n: int,
        *,
        tenants: Iterable[str] = ("acme", "globex", "initech"),
        checkpoint_every: int = 8,
        seed: int = 1,
        overrides: dict[int, dict[str, Any] | Callable[[dict[str, Any]], None]] | None = None,
        key1: note.Ed25519NoteSigner | None = None,
        key2: note.Ed25519NoteSigner | None = None,
        rotate_at: int | None = None,
        origin: str = ORIGIN,
    ) -> None:
        self.key1 = key1 or note.Ed25519NoteSigner.generate(KEY_NAME)
        self.key2 = key2 or note.Ed25519NoteSigner.generate(KEY_NAME)
        self.rotate_at = n // 2 if rotate_at is None else rotate_at
        self.tenants = list(tenants)
        self.global_tree = Tree(origin)
        self.tenant_trees = {slug: Tree(tenant_origin(slug)) for slug in self.tenants}
        rng = random.Random(seed)
        overrides = overrides or {}
        prev = ZERO
        integrated = T0
        last_cp_time = T0
        for i in range(n):
            slug = None if i % 5 == 4 else rng.choice(self.tenants)
            integrated = integrated + timedelta(seconds=rng.choice([0, 1, 1, 2]), microseconds=rng.randrange(0, 10**6, 1000))
            at = integrated - timedelta(seconds=rng.randrange(0, 5))
            entry: dict[str, Any] = {
                "v": 1,
                "seq": i,
                "prev": prev,
                "tenant": slug,
                "tenant_seq": None,
                "tenant_prev": None,
                "at": note.format_time(at),
                "integrated_at": note.format_time(integrated),
                "event": rng.choice(["gate.decided", "run.submitted", "member.created", "artefact.read"]),
                "actor": {"id": rng.randrange(1, 50), "username": f"user-{rng.randrange(1, 50)}"},
                "object": {"type": "gate", "id": f"{rng.getrandbits(64):016x}"},
                "outcome": "success",
                "where": {"ip": f"10.0.{rng.randrange(256)}.{rng.randrange(256)}"},
                "data": {"note": "ünïcode ✓", "n": i},
            }
            if slug is not None:
                t = self.tenant_trees[slug]
                entry["tenant_seq"] = len(t.lines)
                entry["tenant_prev"] = leaf_hex(t.lines[-1]) if t.lines else ZERO
            override = overrides.get(i)
            if callable(override):
                override(entry)
            elif override:
                entry.update(override)
            line = canonical(entry)
            prev = leaf_hex(line)
            self.global_tree.lines.append(line)
            self.global_tree.mtree.append(line)
            if slug is not None:
                t = self.tenant_trees[slug]
                t.lines.append(line)
                t.mtree.append(line)
            if (i + 1) % checkpoint_every == 0 or i == n - 1:
                last_cp_time = max(last_cp_time, integrated) + timedelta(seconds=1)
                self._checkpoint_all(i + 1, last_cp_time)

    # -------------------------------------------------------------------------------------------

    def signer_for(self, global_size: int) -> note.Ed25519NoteSigner:
        return self.key1 if global_size <= self.rotate_at else self.key2

    def _checkpoint_all(self, global_size: int, time: datetime) -> None:
        signer = self.signer_for(global_size)
        for tree in [self.global_tree, *self.tenant_trees.values()]:
            size = len(tree.lines)
            if tree.checkpoints and tree.checkpoints[-1].size == size:
                continue
            self.add_checkpoint(tree, size, time, signer)

    @staticmethod
    def add_checkpoint(tree: Tree, size: int, time: datetime, signer: note.Ed25519NoteSigner,
                       root: bytes | None = None) -> Cp:
        root = tree.mtree.root(size) if root is None else root
        cp = Cp(size, time, root, note.sign_checkpoint(tree.origin, size, root, time, [signer]), signer)
        tree.checkpoints.append(cp)
        return cp

    def tree(self, name: str = "global") -> Tree:
        return self.global_tree if name == "global" else self.tenant_trees[name]

    @property
    def verifier_keys(self) -> list[str]:
        return [self.key1.verifier_key(), self.key2.verifier_key()]

    def checkpoint(self, tree: str, size: int) -> Cp:
        return next(c for c in self.tree(tree).checkpoints if c.size == size)

    def export(
        self,
        directory: Path,
        *,
        tree: str = "global",
        begin: int = 0,
        end: int | None = None,
        size: int | None = None,
        signer: note.Ed25519NoteSigner | None = None,
        include_older: bool = True,
        extra_checkpoints: Iterable[tuple[int, bytes]] = (),
        extra_consistency: Iterable[tuple[int, int]] = (),
        keys: Iterable[str] | None = None,
        max_lag: int | float = LAG,
    ) -> Path:
        """Write the bundle of entries [begin, end) of ``tree`` bound to its checkpoint of ``size``
        leaves (default: the latest checkpoint; ``end`` defaults to ``size``)."""
        t = self.tree(tree)
        size = t.checkpoints[-1].size if size is None else size
        end = size if end is None else end
        cps = [c for c in t.checkpoints if c.size <= size and (include_older or c.size >= begin)]
        assert any(c.size == size for c in cps), f"no checkpoint of size {size}"
        w = BundleWriter(
            directory,
            origin=t.origin,
            tree="global" if tree == "global" else "tenant",
            tenant=None if tree == "global" else tree,
            begin=begin,
            seq_field="seq" if tree == "global" else "tenant_seq",
            prev_field="prev" if tree == "global" else "tenant_prev",
            start_prev=leaf_hex(t.lines[begin - 1]) if begin else ZERO,
            max_integration_lag_seconds=max_lag,
            exported_by="auditor@acme",
            created_at=T0 + timedelta(days=1),
        )
        for line in t.lines[begin:end]:
            w.write_entry(line)
        for c in cps:
            w.add_checkpoint(c.size, c.note)
        for s, raw in extra_checkpoints:
            w.add_checkpoint(s, raw)
        w.set_range_proof(size, *t.mtree.range_proof(begin, end, size))
        sizes = sorted({c.size for c in cps} | {s for s, _ in extra_checkpoints})
        for m, n in [*zip(sizes, sizes[1:]), *extra_consistency]:
            w.add_consistency(m, n, t.mtree.consistency_proof(m, n))
        w.add_keys(self.verifier_keys if keys is None else keys)
        return w.close(signer or self.key2)


# -----------------------------------------------------------------------------------------------
# Tampering helpers


def manifest(directory: Path) -> dict[str, Any]:
    return json.loads((directory / "manifest.json").read_bytes())


def read_lines(directory: Path) -> list[bytes]:
    return (directory / "entries.jsonl").read_bytes().split(b"\n")[:-1]


def write_lines(directory: Path, lines: list[bytes]) -> None:
    (directory / "entries.jsonl").write_bytes(b"".join(line + b"\n" for line in lines))


def edit_entry(line: bytes, **changes: Any) -> bytes:
    obj = json.loads(line)
    obj.update(changes)
    return canonical(obj)


def rechain(lines: list[bytes], start_prev: str, seq_field: str = "seq", prev_field: str = "prev",
            renumber_from: int | None = None) -> list[bytes]:
    """Recompute the prev links (and, with ``renumber_from``, the positions) after a tamper: what a
    careful attacker does so that the hash chain holds."""
    out = []
    prev = start_prev
    for i, line in enumerate(lines):
        obj = json.loads(line)
        obj[prev_field] = prev
        if renumber_from is not None:
            obj[seq_field] = renumber_from + i
        new = canonical(obj)
        out.append(new)
        prev = leaf_hex(new)
    return out


def reseal(directory: Path, signer: note.NoteSigner, **changes: Any) -> None:
    """Make manifest.json describe the files as they now are (digests, sizes, line count, the range
    end, the checkpoint files present), apply ``changes`` and sign it again with ``signer``."""
    m = manifest(directory)
    files: dict[str, Any] = {}
    names = ["entries.jsonl", "proofs.json", "keys.txt"]
    names += sorted(f"checkpoints/{p.name}" for p in (directory / "checkpoints").iterdir())
    for name in names:
        data = (directory / name).read_bytes()
        files[name] = {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
    lines = (directory / "entries.jsonl").read_bytes().count(b"\n")
    files["entries.jsonl"]["lines"] = lines
    m["files"] = files
    m["range"]["end"] = m["range"]["begin"] + lines
    m.update(changes)
    raw = canonical_json(m)
    (directory / "manifest.json").write_bytes(raw)
    (directory / "manifest.sig").write_bytes(
        note.sign_note(manifest_sig_text(hashlib.sha256(raw).hexdigest()), [signer])
    )


def sign_manifest(directory: Path, signer: note.NoteSigner) -> None:
    """Sign manifest.json exactly as it is now (whatever it says)."""
    raw = (directory / "manifest.json").read_bytes()
    (directory / "manifest.sig").write_bytes(
        note.sign_note(manifest_sig_text(hashlib.sha256(raw).hexdigest()), [signer])
    )


def proofs(directory: Path) -> dict[str, Any]:
    return json.loads((directory / "proofs.json").read_bytes())


def write_proofs(directory: Path, p: dict[str, Any]) -> None:
    (directory / "proofs.json").write_bytes(canonical_json(p))


def flip_b64(value: str, byte: int = 0) -> str:
    raw = bytearray(base64.b64decode(value))
    raw[byte] ^= 0x01
    return base64.b64encode(bytes(raw)).decode()


def edit_proofs(directory: Path, fn: Callable[[dict[str, Any]], None]) -> None:
    p = proofs(directory)
    fn(p)
    write_proofs(directory, p)


def honest_range(directory: Path, log: SyntheticLog, tree: str = "global") -> None:
    """Replace the range proof by the honest one for the entries now in the bundle: what a lying
    server that drops or adds lines, but answers proofs from its real tree, would write."""
    m = manifest(directory)
    begin = m["range"]["begin"]
    end = begin + len(read_lines(directory))
    left, right = log.tree(tree).mtree.range_proof(begin, end, m["checkpoint_size"])

    def fix(p: dict[str, Any]) -> None:
        p["range"] = {"left": [base64.b64encode(h).decode() for h in left],
                      "right": [base64.b64encode(h).decode() for h in right]}

    edit_proofs(directory, fix)
