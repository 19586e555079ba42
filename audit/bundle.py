"""Writer of Gatehouse audit bundles (the directory format that :mod:`audit.verifier` checks).

Pure Python plus ``cryptography``: the server uses it to export, tests use it to build bundles. The
format itself (names, canonical JSON, the manifest signature text) is defined in
:mod:`audit.verifier`, the one module an outside auditor runs; this writer follows it.

    with BundleWriter(path, origin=..., tree="global", tenant=None, begin=0, seq_field="seq",
                      prev_field="prev", start_prev="0" * 64, max_integration_lag_seconds=60,
                      exported_by="auditor@acme") as w:
        for line in entries:                       # streamed to disk, never held in memory
            w.write_entry(line)
        for size, note_bytes in checkpoints:       # every checkpoint with begin <= size <= C
            w.add_checkpoint(size, note_bytes)
        w.set_range_proof(C, left, right)          # merkle.range_proof(begin, end, C, ...)
        w.add_consistency(m, n, proof)             # between consecutive checkpoint sizes
        w.add_keys(verifier_keys)
        w.close(signer)                            # proofs.json, keys.txt, manifest.json, manifest.sig
"""
from __future__ import annotations

import base64
import hashlib
import os
import re
from datetime import datetime, timezone
from pathlib import Path
from types import TracebackType
from typing import Iterable, Sequence

try:
    from . import note
    from .verifier import BUNDLE_FORMAT, ZERO_HASH_HEX, canonical_json, checkpoint_file_size, manifest_sig_text
except ImportError:  # copied alone next to verifier.py, merkle.py and note.py
    import note  # type: ignore[no-redef]
    from verifier import (  # type: ignore[no-redef]
        BUNDLE_FORMAT, ZERO_HASH_HEX, canonical_json, checkpoint_file_size, manifest_sig_text,
    )

__all__ = ["BundleWriter", "BUNDLE_FORMAT"]

_HEX64 = re.compile(r"[0-9a-f]{64}")
_TREE_FIELDS = {"global": ("seq", "prev"), "tenant": ("tenant_seq", "tenant_prev")}
_BUFFER = 1 << 20


def _b64(hashes: Iterable[bytes]) -> list[str]:
    out = []
    for h in hashes:
        if not isinstance(h, bytes) or len(h) != 32:
            raise ValueError("every proof hash must be 32 bytes")
        out.append(base64.b64encode(h).decode("ascii"))
    return out


class BundleWriter:
    """Writes one bundle directory. Entries are streamed to ``entries.jsonl`` (hashed as they go);
    everything else is small and kept until :meth:`close`, which writes proofs.json, keys.txt,
    manifest.json and manifest.sig. Refuses a directory that exists and is not empty."""

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        origin: str,
        tree: str,
        tenant: str | None,
        begin: int,
        seq_field: str,
        prev_field: str,
        start_prev: str | bytes,
        max_integration_lag_seconds: int | float,
        exported_by: str,
        created_at: datetime | None = None,
    ) -> None:
        if tree not in _TREE_FIELDS:
            raise ValueError("tree must be 'global' or 'tenant'")
        if (tree == "global") != (tenant is None):
            raise ValueError("a global bundle has no tenant; a tenant bundle names one")
        if (seq_field, prev_field) != _TREE_FIELDS[tree]:
            raise ValueError(f"a {tree} bundle uses the fields {_TREE_FIELDS[tree]}")
        if not isinstance(begin, int) or begin < 0:
            raise ValueError("begin must be a non-negative integer")
        if isinstance(start_prev, bytes):
            start_prev = start_prev.hex()
        if not _HEX64.fullmatch(start_prev):
            raise ValueError("start_prev must be 64 lowercase hex digits (or 32 bytes)")
        if begin == 0 and start_prev != ZERO_HASH_HEX:
            raise ValueError("start_prev must be zeros when begin is 0")
        if not origin or "\n" in origin:
            raise ValueError("origin must be a non-empty line")
        if max_integration_lag_seconds < 0:
            raise ValueError("max_integration_lag_seconds must be >= 0")

        self.directory = Path(directory)
        if self.directory.exists():
            if not self.directory.is_dir() or any(self.directory.iterdir()):
                raise FileExistsError(f"{self.directory} exists and is not an empty directory")
        self.directory.mkdir(parents=True, exist_ok=True)
        (self.directory / "checkpoints").mkdir()

        self.origin, self.tree, self.tenant, self.begin = origin, tree, tenant, begin
        self.seq_field, self.prev_field, self.start_prev = seq_field, prev_field, start_prev
        self.max_integration_lag_seconds = max_integration_lag_seconds
        self.exported_by = exported_by
        self.created_at = created_at or datetime.now(timezone.utc)

        self._entries = open(self.directory / "entries.jsonl", "wb", buffering=_BUFFER)
        self._entries_hash = hashlib.sha256()
        self._entries_size = 0
        self._lines = 0
        self._files: dict[str, dict[str, object]] = {}
        self._checkpoint_size: int | None = None
        self._left: list[str] = []
        self._right: list[str] = []
        self._consistency: dict[tuple[int, int], list[str]] = {}
        self._keys: list[str] = []
        self._closed = False

    # ------------------------------------------------------------------------------------------

    @property
    def end(self) -> int:
        """One past the position of the last entry written so far."""
        return self.begin + self._lines

    def write_entry(self, line: bytes) -> None:
        """Append one entry: exactly its leaf bytes (one trailing newline is accepted and dropped)."""
        self._check_open()
        if line.endswith(b"\n"):
            line = line[:-1]
        if b"\n" in line or not line:
            raise ValueError("an entry is one non-empty line")
        data = line + b"\n"
        self._entries.write(data)
        self._entries_hash.update(data)
        self._entries_size += len(data)
        self._lines += 1

    def add_checkpoint(self, size: int, note_bytes: bytes) -> str:
        """Store a signed checkpoint note of the tree of ``size`` leaves; returns its file name
        (``checkpoints/<size>.note``, or ``<size>-<n>.note`` for a further checkpoint of the same size)."""
        self._check_open()
        if not isinstance(size, int) or size < 0:
            raise ValueError("size must be a non-negative integer")
        name = f"checkpoints/{size}.note"
        n = 1
        while name in self._files:
            name = f"checkpoints/{size}-{n}.note"
            n += 1
        assert checkpoint_file_size(name) == size
        self._write_small(name, bytes(note_bytes))
        return name

    def set_range_proof(self, checkpoint_size: int, left: Sequence[bytes], right: Sequence[bytes]) -> None:
        """The range proof binding [begin, end) to the tree of ``checkpoint_size`` leaves: hashes of
        ``merkle.decompose(0, begin)`` (left) and of ``merkle.decompose(end, checkpoint_size)`` (right)."""
        self._check_open()
        self._checkpoint_size = checkpoint_size
        self._left, self._right = _b64(left), _b64(right)

    def add_consistency(self, m: int, n: int, proof: Sequence[bytes]) -> None:
        """A consistency proof from the tree of ``m`` leaves to the tree of ``n`` leaves."""
        self._check_open()
        self._consistency[(m, n)] = _b64(proof)

    def add_keys(self, verifier_keys: Iterable[str]) -> None:
        """Verifier keys of every key that signed something in the bundle (rotated-out ones too)."""
        self._check_open()
        for k in verifier_keys:
            k = note.NoteVerifier(k).key_string()  # validates
            if k not in self._keys:
                self._keys.append(k)

    def close(self, signer: note.NoteSigner) -> Path:
        """Finish the bundle: write proofs.json, keys.txt, manifest.json and manifest.sig (signed by
        ``signer``, whose key joins keys.txt). Returns the directory."""
        self._check_open()
        self._entries.close()
        self._closed = True
        end = self.end
        c = self._checkpoint_size
        if c is None:
            raise ValueError("set_range_proof was not called")
        if c < end:
            raise ValueError(f"checkpoint_size {c} is smaller than the end of the range {end}")
        if f"checkpoints/{c}.note" not in self._files:
            raise ValueError(f"no checkpoint of size {c} was added")
        self._files["entries.jsonl"] = {
            "sha256": self._entries_hash.hexdigest(), "size": self._entries_size, "lines": self._lines,
        }
        proofs = {
            "range": {"left": self._left, "right": self._right},
            "consistency": [
                {"from": m, "to": n, "proof": p} for (m, n), p in sorted(self._consistency.items())
            ],
        }
        self._write_small("proofs.json", canonical_json(proofs))
        keys = list(self._keys)
        signer_key = note.NoteVerifier(signer.verifier_key()).key_string()
        if signer_key not in keys:
            keys.append(signer_key)
        self._write_small("keys.txt", "".join(k + "\n" for k in keys).encode("utf-8"))
        manifest = {
            "format": BUNDLE_FORMAT,
            "origin": self.origin,
            "tree": self.tree,
            "tenant": self.tenant,
            "range": {"begin": self.begin, "end": end},
            "checkpoint_size": c,
            "seq_field": self.seq_field,
            "prev_field": self.prev_field,
            "start_prev": self.start_prev,
            "max_integration_lag_seconds": self.max_integration_lag_seconds,
            "created_at": note.format_time(self.created_at),
            "exported_by": self.exported_by,
            "files": self._files,
        }
        raw = canonical_json(manifest)
        (self.directory / "manifest.json").write_bytes(raw)
        sig = note.sign_note(manifest_sig_text(hashlib.sha256(raw).hexdigest()), [signer])
        (self.directory / "manifest.sig").write_bytes(sig)
        return self.directory

    def abort(self) -> None:
        """Stop writing (the directory is left without a manifest, so it never verifies)."""
        if not self._closed:
            self._entries.close()
            self._closed = True

    def __enter__(self) -> "BundleWriter":
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if exc_type is not None:
            self.abort()
        elif not self._closed:
            self.abort()
            raise RuntimeError("BundleWriter left without close(signer)")

    # ------------------------------------------------------------------------------------------

    def _write_small(self, name: str, data: bytes) -> None:
        (self.directory / name).write_bytes(data)
        self._files[name] = {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("the bundle is closed")
