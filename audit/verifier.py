"""Offline verifier of Gatehouse audit bundles.

    python -m audit.verifier DIR [--trusted-key KEY_OR_FILE]... [--trusted-checkpoint FILE] [--quiet]
    python verifier.py DIR ...          (copied alone next to merkle.py and note.py)

Needs nothing but Python 3.11+ and ``cryptography``. Exit status: 0 the bundle verifies, 1 it does
not (``FAILED ...`` on stderr), 2 usage error.

Bundle layout (directory)::

    manifest.json          canonical JSON describing the bundle, with the digest of every file
    manifest.sig           signed note "gatehouse-audit-bundle/1\\n<sha256 hex of manifest.json>\\n"
    entries.jsonl          entries [begin, end) of the tree, one per line, each line exactly the leaf
    checkpoints/<S>.note   signed checkpoints of the tree (C2SP tlog-checkpoint), size S <= C
    proofs.json            range proof of [begin, end) in the tree of size C, consistency proofs
    keys.txt               verifier keys (every key that signed something in the bundle)

Checks, in order, with the failure ``kind`` each reports: ``file_missing`` / ``manifest_mismatch``
(files against the manifest), ``manifest_signature``, ``unknown_key`` / ``checkpoint_signature`` /
``fork`` (checkpoints), ``proof_missing`` / ``proof_invalid`` (consistency and range proofs), then the
entries streamed in order (``malformed``, ``entry_missing``, ``entry_order``, ``entry_modified``,
``timestamp_backwards``, ``backdated``, ``root_mismatch`` at every checkpoint the entries reach), and
last the auditor's trusted checkpoint (``truncated``, ``fork``, ``proof_missing``). ``malformed``
can come from any stage.

How the cases are told apart:

* ``fork``: two signed checkpoints of one size with different roots; or a *shrinking log*, a
  checkpoint dated later than a checkpoint of a larger size (the log, later, showed fewer entries);
  or a trusted checkpoint that the bundle contradicts.
* ``timestamp_backwards``: an entry integrated before the entry before it; or a checkpoint dated
  more than ``CLOCK_SKEW_SECONDS`` before the ``integrated_at`` of the last entry it covers (reported
  at that entry).
* The chain link of entry ``p`` not matching entry ``p - 1`` is reported as ``entry_modified`` at
  ``p - 1``. A changed last entry, or a rewrite that recomputed the chain, shows as ``root_mismatch``
  at the first checkpoint after it.
* A range proof hash that is wrong gives ``proof_invalid`` when nothing but the proof can explain it
  (a checkpoint exactly at ``begin`` for the left part, exactly at ``end`` for the right part), and
  ``root_mismatch`` otherwise. A range proof of the wrong length is always ``proof_invalid``.
* An entry position that jumps ahead is ``entry_missing`` at the first missing position, unless that
  position appears later in the file (``entry_order``); going back or repeating is ``entry_order``.
"""
from __future__ import annotations

import argparse
import base64
import binascii
import hashlib
import json
import os
import re
import sys
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from json.scanner import make_scanner
from pathlib import Path
from typing import Any, Callable, Sequence

try:  # inside the audit package
    from . import merkle, note
except ImportError:  # copied alone next to merkle.py and note.py (also under python -I)
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import merkle  # type: ignore[no-redef]
    import note  # type: ignore[no-redef]

__all__ = [
    "BUNDLE_FORMAT",
    "CLOCK_SKEW_SECONDS",
    "KINDS",
    "Report",
    "VerificationFailure",
    "verify_bundle",
    "canonical_json",
    "manifest_sig_text",
    "checkpoint_file_size",
    "main",
]

BUNDLE_FORMAT = "gatehouse-audit-bundle/1"

CLOCK_SKEW_SECONDS = 5
"""An entry's ``at`` may be at most this much later than its ``integrated_at``; a checkpoint may be
dated at most this much before the ``integrated_at`` of the last entry it covers."""

KINDS = (
    "file_missing", "manifest_mismatch", "manifest_signature", "malformed", "unknown_key",
    "checkpoint_signature", "fork", "timestamp_backwards", "proof_invalid", "proof_missing",
    "entry_missing", "entry_order", "entry_modified", "backdated", "root_mismatch", "truncated",
)
"""Every failure kind the verifier reports."""

ZERO_HASH_HEX = "0" * 64
_HEX64 = re.compile(r"[0-9a-f]{64}")
_CHECKPOINT_FILE = re.compile(r"checkpoints/(0|[1-9][0-9]{0,19})(?:-[0-9a-z]{1,32})?\.note")
_FIXED_FILES = ("entries.jsonl", "proofs.json", "keys.txt")
_CHUNK = 1 << 22
MAX_LINE_BYTES = 1 << 24
"""Longest entry line accepted (memory stays bounded whatever the bundle holds)."""
_PROGRESS_EVERY = 1 << 16
_MIN_TIME = datetime.min.replace(tzinfo=timezone.utc)
_TREE_FIELDS = {"global": ("seq", "prev"), "tenant": ("tenant_seq", "tenant_prev")}


def canonical_json(obj: Any) -> bytes:
    """Sorted keys, no whitespace, UTF-8: the encoding of manifest.json and proofs.json."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def manifest_sig_text(manifest_digest_hex: str) -> bytes:
    """The text of manifest.sig: the format line and the SHA-256 hex of manifest.json."""
    return f"{BUNDLE_FORMAT}\n{manifest_digest_hex}\n".encode("ascii")


def checkpoint_file_size(name: str) -> int | None:
    """The tree size a checkpoint file name (``checkpoints/<size>[-<tag>].note``) declares, or None
    if the name is not one."""
    m = _CHECKPOINT_FILE.fullmatch(name)
    return int(m.group(1)) if m else None


class VerificationFailure(Exception):
    """Raised inside the verifier; :func:`verify_bundle` turns it into a failed :class:`Report`."""

    def __init__(self, kind: str, message: str, position: int | None = None) -> None:
        assert kind in KINDS, kind
        super().__init__(f"{kind}: {message}")
        self.kind = kind
        self.message = message
        self.position = position


@dataclass
class Report:
    """The outcome of :func:`verify_bundle`. On failure ``kind``, ``message`` and (when the failure
    is tied to a log position) ``position`` say what and where."""

    ok: bool
    kind: str | None = None
    position: int | None = None
    message: str = ""
    counts: dict[str, int] = field(default_factory=dict)
    origin: str | None = None
    tree: str | None = None
    tenant: str | None = None
    begin: int | None = None
    end: int | None = None
    checkpoint_size: int | None = None
    root: bytes | None = None
    signed_by: list[str] = field(default_factory=list)
    trusted_keys: list[str] = field(default_factory=list)
    keys_from_bundle: bool = True
    trusted_checkpoint_size: int | None = None

    def result_line(self) -> str:
        """``OK: ...`` or ``FAILED ...``: what the CLI prints."""
        if self.ok:
            root = base64.b64encode(self.root or b"").decode()
            return (
                f"OK: {self.counts.get('entries', 0)} entries [{self.begin}, {self.end}) of {self.origin}, "
                f"{self.counts.get('checkpoints', 0)} checkpoints verified, "
                f"root at {self.checkpoint_size} = {root}, signed by {', '.join(self.signed_by)}"
            )
        if self.position is not None:
            return f"FAILED at entry {self.position}: {self.kind}: {self.message}"
        return f"FAILED: {self.kind}: {self.message}"


@dataclass
class _Manifest:
    raw: bytes
    origin: str
    tree: str
    tenant: str | None
    begin: int
    end: int
    checkpoint_size: int
    seq_field: str
    prev_field: str
    start_prev: str
    max_lag: float
    files: dict[str, dict[str, Any]]


@dataclass
class _Cp:
    file: str
    cp: note.Checkpoint
    keys: list[str]


def _fail(kind: str, message: str, position: int | None = None) -> VerificationFailure:
    return VerificationFailure(kind, message, position)


def _is_int(x: Any) -> bool:
    return type(x) is int


def _b64hash(value: Any, where: str) -> bytes:
    """A 32-byte hash from canonical standard base64, or ``malformed``."""
    if not isinstance(value, str):
        raise _fail("malformed", f"{where} is not a base64 string")
    try:
        raw = base64.b64decode(value.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError):
        raise _fail("malformed", f"{where} is not valid base64") from None
    if len(raw) != merkle.HASH_SIZE:
        raise _fail("malformed", f"{where} is {len(raw)} bytes, not a 32-byte hash")
    return raw


def _note_failure(e: note.NoteError, what: str, bad_signature_kind: str) -> VerificationFailure:
    kind = {"malformed": "malformed", "unknown_key": "unknown_key", "bad_signature": bad_signature_kind}[e.kind]
    return _fail(kind, f"{what}: {e.message}")


def _parse_keys(lines: Sequence[str], where: str) -> list[note.NoteVerifier]:
    out: list[note.NoteVerifier] = []
    for line in lines:
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        v = note.NoteVerifier(line)  # NoteError("malformed") propagates
        if v not in out:
            out.append(v)
    return out


def _load_trusted_keys(trusted_keys: Sequence[str]) -> list[note.NoteVerifier]:
    """Parse verifier key strings given by the auditor; ``ValueError`` for a bad one."""
    try:
        keys = _parse_keys(trusted_keys, "trusted keys")
    except note.NoteError as e:
        raise ValueError(f"invalid trusted key: {e.message}") from None
    if not keys:
        raise ValueError("no trusted key given")
    return keys


class _BundleVerifier:
    def __init__(
        self,
        directory: Path,
        trusted_keys: Sequence[str] | None,
        trusted_checkpoint: bytes | None,
        progress: Callable[[int, int], None] | None,
    ) -> None:
        self.dir = directory
        self.report = Report(ok=False)
        self.trusted_arg = _load_trusted_keys(trusted_keys) if trusted_keys is not None else None
        self.trusted_checkpoint_note = trusted_checkpoint
        self.progress = progress
        self.signed_by: list[str] = []
        self._entries_digest_checked = False

    # ---------------------------------------------------------------- stage 1: manifest and files

    def _read(self, name: str) -> bytes:
        path = self.dir / name
        if not path.is_file():
            raise _fail("file_missing", f"{name} is missing")
        return path.read_bytes()

    def load_manifest(self) -> _Manifest:
        raw = self._read("manifest.json")
        self._read("manifest.sig")
        try:
            m = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as e:
            raise _fail("malformed", f"manifest.json is not JSON: {e}") from None
        man = self._parse_manifest(m, raw)
        r = self.report
        r.origin, r.tree, r.tenant = man.origin, man.tree, man.tenant
        r.begin, r.end, r.checkpoint_size = man.begin, man.end, man.checkpoint_size
        return man

    @staticmethod
    def _parse_manifest(m: Any, raw: bytes) -> _Manifest:
        def bad(msg: str) -> VerificationFailure:
            return _fail("malformed", f"manifest.json: {msg}")

        if not isinstance(m, dict):
            raise bad("not an object")
        if m.get("format") != BUNDLE_FORMAT:
            raise bad(f"format is not {BUNDLE_FORMAT!r}")
        origin = m.get("origin")
        if not isinstance(origin, str) or not origin or "\n" in origin:
            raise bad("origin must be a non-empty string")
        tree = m.get("tree")
        if tree not in _TREE_FIELDS:
            raise bad("tree must be 'global' or 'tenant'")
        tenant = m.get("tenant")
        if tree == "global" and tenant is not None:
            raise bad("a global bundle has tenant null")
        if tree == "tenant" and (not isinstance(tenant, str) or not tenant):
            raise bad("a tenant bundle names its tenant")
        rng = m.get("range")
        if not isinstance(rng, dict) or not _is_int(rng.get("begin")) or not _is_int(rng.get("end")):
            raise bad("range must be {begin, end} integers")
        begin, end = rng["begin"], rng["end"]
        size = m.get("checkpoint_size")
        if not _is_int(size) or not 0 <= begin <= end <= size:
            raise bad("need 0 <= range.begin <= range.end <= checkpoint_size")
        if (m.get("seq_field"), m.get("prev_field")) != _TREE_FIELDS[tree]:
            raise bad(f"a {tree} bundle has seq_field/prev_field {_TREE_FIELDS[tree]}")
        start_prev = m.get("start_prev")
        if not isinstance(start_prev, str) or not _HEX64.fullmatch(start_prev):
            raise bad("start_prev must be 64 lowercase hex digits")
        if begin == 0 and start_prev != ZERO_HASH_HEX:
            raise bad("start_prev must be zeros when the range begins at 0")
        lag = m.get("max_integration_lag_seconds")
        if type(lag) not in (int, float) or not 0 <= lag < 10**9:
            raise bad("max_integration_lag_seconds must be a non-negative number")
        for key in ("created_at", "exported_by"):
            if not isinstance(m.get(key), str):
                raise bad(f"{key} must be a string")
        files = m.get("files")
        if not isinstance(files, dict):
            raise bad("files must be an object")
        for name in _FIXED_FILES:
            if name not in files:
                raise bad(f"files does not list {name}")
        sizes_listed = set()
        for name, info in files.items():
            if name not in _FIXED_FILES:
                cp_size = checkpoint_file_size(name)
                if cp_size is None:
                    raise bad(f"unexpected file name {name!r}")
                sizes_listed.add(cp_size)
            if (
                not isinstance(info, dict)
                or not isinstance(info.get("sha256"), str)
                or not _HEX64.fullmatch(info["sha256"])
                or not _is_int(info.get("size"))
                or info["size"] < 0
            ):
                raise bad(f"files[{name!r}] must have sha256 (hex) and size")
        if not _is_int(files["entries.jsonl"].get("lines")) or files["entries.jsonl"]["lines"] != end - begin:
            raise bad("files['entries.jsonl'].lines must equal range.end - range.begin")
        if size not in sizes_listed:
            raise bad(f"no checkpoint of size {size} (checkpoint_size) is listed")
        return _Manifest(
            raw=raw, origin=origin, tree=tree, tenant=tenant, begin=begin, end=end, checkpoint_size=size,
            seq_field=m["seq_field"], prev_field=m["prev_field"], start_prev=start_prev, max_lag=float(lag),
            files=files,
        )

    def check_files(self, man: _Manifest) -> None:
        """Every listed file exists with its size, and (except entries.jsonl, see below) its SHA-256;
        no unlisted checkpoint file. entries.jsonl, the one large file, is hashed while it streams;
        :meth:`check_entries_digest` does it up front instead whenever a failure is found first, so
        that a digest mismatch is always the failure reported."""
        for name in sorted(man.files):
            if not (self.dir / name).is_file():
                raise _fail("file_missing", f"{name} is listed in the manifest but missing")
        for name, info in sorted(man.files.items()):
            path = self.dir / name
            if name == "entries.jsonl":
                size = path.stat().st_size
                if size != info["size"]:
                    raise _fail("manifest_mismatch", f"{name} is {size} bytes, the manifest says {info['size']}")
                continue
            h = hashlib.sha256()
            size = lines = 0
            with open(path, "rb") as f:
                while chunk := f.read(_CHUNK):
                    h.update(chunk)
                    size += len(chunk)
                    lines += chunk.count(b"\n")
            if size != info["size"]:
                raise _fail("manifest_mismatch", f"{name} is {size} bytes, the manifest says {info['size']}")
            if "lines" in info and lines != info["lines"]:
                raise _fail("manifest_mismatch", f"{name} has {lines} lines, the manifest says {info['lines']}")
            if h.hexdigest() != info["sha256"]:
                raise _fail("manifest_mismatch", f"{name} does not match its SHA-256 in the manifest")
        cp_dir = self.dir / "checkpoints"
        if cp_dir.is_dir():
            for p in sorted(cp_dir.iterdir()):
                if f"checkpoints/{p.name}" not in man.files:
                    raise _fail("manifest_mismatch", f"checkpoints/{p.name} is not listed in the manifest")

    def check_entries_digest(self, man: _Manifest) -> None:
        """Hash entries.jsonl and count its lines against the manifest (a separate pass)."""
        h = hashlib.sha256()
        lines = 0
        with open(self.dir / "entries.jsonl", "rb") as f:
            while chunk := f.read(_CHUNK):
                h.update(chunk)
                lines += chunk.count(b"\n")
        self._entries_digest_checked = True
        info = man.files["entries.jsonl"]
        if lines != info["lines"]:
            raise _fail("manifest_mismatch", f"entries.jsonl has {lines} lines, the manifest says {info['lines']}")
        if h.hexdigest() != info["sha256"]:
            raise _fail("manifest_mismatch", "entries.jsonl does not match its SHA-256 in the manifest")

    def load_keys(self) -> list[note.NoteVerifier]:
        raw = self._read("keys.txt")
        try:
            bundle_keys = _parse_keys(raw.decode("utf-8").splitlines(), "keys.txt")
        except (note.NoteError, UnicodeDecodeError) as e:
            raise _fail("malformed", f"keys.txt: {getattr(e, 'message', e)}") from None
        if self.trusted_arg is not None:
            self.report.keys_from_bundle = False
            trusted = self.trusted_arg
        else:
            if not bundle_keys:
                raise _fail("malformed", "keys.txt lists no key")
            trusted = bundle_keys
        self.report.trusted_keys = [k.key_string() for k in trusted]
        return trusted

    def check_manifest_signature(self, man: _Manifest, trusted: list[note.NoteVerifier]) -> None:
        sig = self._read("manifest.sig")
        try:
            text, keys = note.open_note_keys(sig, trusted)
        except note.NoteError as e:
            raise _note_failure(e, "manifest.sig", "manifest_signature") from None
        if text != manifest_sig_text(hashlib.sha256(man.raw).hexdigest()):
            raise _fail("manifest_signature", "manifest.sig does not name the SHA-256 of manifest.json")
        self._signed(keys)

    def _signed(self, keys: list[note.NoteVerifier]) -> None:
        for k in keys:
            if k.label not in self.signed_by:
                self.signed_by.append(k.label)

    # ---------------------------------------------------------------- stage 2: checkpoints

    def load_checkpoints(self, man: _Manifest, trusted: list[note.NoteVerifier]) -> list[_Cp]:
        cps: list[_Cp] = []
        names = sorted((n for n in man.files if n.startswith("checkpoints/")), key=lambda n: (checkpoint_file_size(n), n))
        for name in names:
            raw = self._read(name)
            try:
                cp, keys = note.open_checkpoint(raw, trusted)
            except note.NoteError as e:
                raise _note_failure(e, name, "checkpoint_signature") from None
            self._check_cp(cp, man, name)
            if cp.size != checkpoint_file_size(name):
                raise _fail("malformed", f"{name} holds a checkpoint of size {cp.size}")
            self._signed(keys)
            cps.append(_Cp(name, cp, [k.label for k in keys]))
        # Same size, different roots: the log showed two different trees of one size.
        by_size: dict[int, _Cp] = {}
        for c in cps:
            first = by_size.setdefault(c.cp.size, c)
            if first.cp.root != c.cp.root:
                raise _fail(
                    "fork", f"{first.file} and {c.file} are signed checkpoints of size {c.cp.size} with different roots"
                )
        self._check_times(cps)
        return cps

    @staticmethod
    def _check_cp(cp: note.Checkpoint, man: _Manifest, name: str) -> None:
        if cp.origin != man.origin:
            raise _fail("malformed", f"{name} is a checkpoint of {cp.origin!r}, not of {man.origin!r}")
        if cp.time is None:
            raise _fail("malformed", f"{name} has no time extension")
        if cp.size > man.checkpoint_size:
            raise _fail("malformed", f"{name} is beyond checkpoint_size {man.checkpoint_size}")

    @staticmethod
    def _check_times(cps: Sequence[_Cp]) -> None:
        """A checkpoint dated later than a checkpoint of a larger size means the log, at that later
        time, showed fewer entries than it had already shown: a shrinking log, reported as ``fork``."""
        ordered = sorted(cps, key=lambda c: (c.cp.size, c.cp.time))
        latest: _Cp | None = None  # the latest-dated checkpoint among strictly smaller sizes
        group_latest: _Cp | None = None
        for i, c in enumerate(ordered):
            if i and c.cp.size != ordered[i - 1].cp.size:
                if group_latest is not None and (latest is None or group_latest.cp.time > latest.cp.time):
                    latest = group_latest
                group_latest = None
            if latest is not None and c.cp.time < latest.cp.time:
                raise _fail(
                    "fork",
                    f"shrinking log: {latest.file} (size {latest.cp.size}) is dated "
                    f"{note.format_time(latest.cp.time)}, after {c.file} (size {c.cp.size}) dated "
                    f"{note.format_time(c.cp.time)}",
                )
            if group_latest is None or c.cp.time > group_latest.cp.time:
                group_latest = c

    def load_trusted_checkpoint(self, man: _Manifest, trusted: list[note.NoteVerifier]) -> _Cp | None:
        if self.trusted_checkpoint_note is None:
            return None
        try:
            cp, keys = note.open_checkpoint(self.trusted_checkpoint_note, trusted)
        except note.NoteError as e:
            raise _note_failure(e, "trusted checkpoint", "checkpoint_signature") from None
        if cp.origin != man.origin:
            raise _fail("malformed", f"the trusted checkpoint is of {cp.origin!r}, not of {man.origin!r}")
        self.report.trusted_checkpoint_size = cp.size
        return _Cp("trusted checkpoint", cp, [k.label for k in keys])

    # ---------------------------------------------------------------- stage 3: proofs

    def load_proofs(self, man: _Manifest) -> tuple[list[bytes], list[bytes], dict[tuple[int, int], list[bytes]]]:
        raw = self._read("proofs.json")
        try:
            p = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as e:
            raise _fail("malformed", f"proofs.json is not JSON: {e}") from None
        if not isinstance(p, dict) or not isinstance(p.get("range"), dict) or not isinstance(p.get("consistency"), list):
            raise _fail("malformed", "proofs.json must be {range: {left, right}, consistency: [...]}")
        lists = {}
        for side in ("left", "right"):
            hashes = p["range"].get(side)
            if not isinstance(hashes, list):
                raise _fail("malformed", f"proofs.json: range.{side} must be a list")
            lists[side] = [_b64hash(h, f"proofs.json: range.{side}[{i}]") for i, h in enumerate(hashes)]
        consistency: dict[tuple[int, int], list[bytes]] = {}
        for i, c in enumerate(p["consistency"]):
            if (
                not isinstance(c, dict) or not _is_int(c.get("from")) or not _is_int(c.get("to"))
                or not isinstance(c.get("proof"), list)
            ):
                raise _fail("malformed", f"proofs.json: consistency[{i}] must be {{from, to, proof}}")
            key = (c["from"], c["to"])
            if key in consistency:
                raise _fail("malformed", f"proofs.json: two consistency proofs from {key[0]} to {key[1]}")
            consistency[key] = [_b64hash(h, f"proofs.json: consistency[{i}].proof[{j}]") for j, h in enumerate(c["proof"])]
        return lists["left"], lists["right"], consistency

    @staticmethod
    def check_consistency(cps: Sequence[_Cp], consistency: dict[tuple[int, int], list[bytes]]) -> int:
        roots: dict[int, bytes] = {}
        for c in cps:
            roots.setdefault(c.cp.size, c.cp.root)
        sizes = sorted(roots)
        for m, n in zip(sizes, sizes[1:]):
            proof = consistency.get((m, n))
            if proof is None:
                raise _fail("proof_missing", f"no consistency proof from checkpoint {m} to checkpoint {n}")
            if not merkle.verify_consistency(m, n, roots[m], roots[n], proof):
                raise _fail("proof_invalid", f"the consistency proof from checkpoint {m} to checkpoint {n} does not verify")
        return max(len(sizes) - 1, 0)

    @staticmethod
    def check_range_shape(man: _Manifest, left: list[bytes], right: list[bytes]) -> None:
        need_left = len(merkle.decompose(0, man.begin))
        need_right = len(merkle.decompose(man.end, man.checkpoint_size))
        if len(left) != need_left:
            raise _fail("proof_invalid", f"range proof: left has {len(left)} hashes, [0, {man.begin}) needs {need_left}")
        if len(right) != need_right:
            raise _fail(
                "proof_invalid",
                f"range proof: right has {len(right)} hashes, [{man.end}, {man.checkpoint_size}) needs {need_right}",
            )

    # ---------------------------------------------------------------- stage 4: entries and Merkle

    def stream_entries(
        self, man: _Manifest, cps: Sequence[_Cp], left: list[bytes], right: list[bytes], record: int | None
    ) -> tuple[bytes, bytes | None]:
        """Stream entries.jsonl: per-line checks, the hash chain, and the compact range of [0, pos)
        checked against every checkpoint the entries reach. Returns (root at C, root at ``record``)."""
        begin, end, size_c = man.begin, man.end, man.checkpoint_size
        seq_field, prev_field, tenant = man.seq_field, man.prev_field, man.tenant
        tenant_mode = man.tree == "tenant"
        lag = timedelta(seconds=man.max_lag)
        neg_skew = -timedelta(seconds=CLOCK_SKEW_SECONDS)

        roots: dict[int, bytes] = {}
        times: dict[int, datetime] = {}
        for c in cps:
            roots.setdefault(c.cp.size, c.cp.root)
            t = times.get(c.cp.size)
            if t is None or c.cp.time < t:
                times[c.cp.size] = c.cp.time
        # Log positions at which the compact range is checked (or, for the trusted checkpoint, recorded).
        check_sizes = {s for s in roots if begin <= s <= end}
        if record is not None and begin <= record <= end:
            check_sizes.add(record)
        checks = sorted(check_sizes)
        recorded: bytes | None = None
        ci = 0
        next_check = checks[0] if checks else -1

        stack = list(left)  # compact range of [0, pos): one hash per set bit of pos, largest first
        pos = begin
        prev_hex = man.start_prev
        last_ia = _MIN_TIME
        sha = hashlib.sha256
        fromiso = datetime.fromisoformat
        scan = make_scanner(json.JSONDecoder())
        progress = self.progress
        file_hash = hashlib.sha256()  # entries.jsonl is hashed here, in the same single read

        with open(self.dir / "entries.jsonl", "rb") as f:
            tail = b""
            while True:
                chunk = f.read(_CHUNK)
                if not chunk:
                    break
                file_hash.update(chunk)
                if tail:
                    chunk = tail + chunk
                lines = chunk.split(b"\n")
                tail = lines.pop()
                for line in lines:
                    if pos == next_check:
                        root = self._at_check(pos, stack, last_ia, roots, times, begin)
                        if pos == record:
                            recorded = root
                        ci += 1
                        next_check = checks[ci] if ci < len(checks) else -1
                    # Fast path: the tests of _slow_line, inlined and conservative. Anything odd
                    # (including any exception) goes to _slow_line, which raises the precise
                    # failure or accepts the line.
                    try:
                        s = line.decode()
                        obj, idx = scan(s, 0)
                        p = obj[seq_field]
                        v = obj["v"]
                        t = obj["tenant"]
                        ia = fromiso(obj["integrated_at"])
                        lagged = ia - fromiso(obj["at"])  # TypeError if only one is naive
                        bad = (
                            idx != len(s)
                            or p != pos or type(p) is not int
                            or obj[prev_field] != prev_hex
                            or v != 1 or type(v) is not int
                            or type(obj["event"]) is not str
                            or (
                                t != tenant or type(obj["seq"]) is not int or type(obj["prev"]) is not str
                                if tenant_mode else
                                not (
                                    (t is None and obj["tenant_seq"] is None and obj["tenant_prev"] is None)
                                    or (type(t) is str and type(obj["tenant_seq"]) is int
                                        and type(obj["tenant_prev"]) is str)
                                )
                            )
                            or ia.tzinfo is None
                            or ia < last_ia
                            or lagged > lag or lagged < neg_skew
                        )
                    except Exception:
                        bad = True
                    if bad:
                        ia = self._slow_line(man, line, pos, prev_hex, last_ia)
                    d = sha(b"\x00" + line).digest()
                    if pos & 1:  # a right child: merge up the compact range
                        n = pos
                        h = d
                        while n & 1:
                            h = sha(b"\x01" + stack.pop() + h).digest()
                            n >>= 1
                        stack.append(h)
                    else:
                        stack.append(d)
                    prev_hex = d.hex()
                    last_ia = ia
                    pos += 1
                if len(tail) > MAX_LINE_BYTES:
                    raise _fail("malformed", f"entry line longer than {MAX_LINE_BYTES} bytes", pos)
                if progress is not None:
                    progress(pos - begin, end - begin)
            if tail:
                raise _fail("malformed", "the last line of entries.jsonl does not end with a newline", pos)
        self._entries_digest_checked = True
        if file_hash.hexdigest() != man.files["entries.jsonl"]["sha256"]:
            raise _fail("manifest_mismatch", "entries.jsonl does not match its SHA-256 in the manifest")
        if pos != end:
            raise _fail("manifest_mismatch", f"entries.jsonl holds {pos - begin} entries, the range needs {end - begin}")
        if next_check == pos:
            root = self._at_check(pos, stack, last_ia, roots, times, begin)
            if pos == record:
                recorded = root

        if end == size_c:
            return merkle._fold(stack), recorded
        cr = merkle.CompactRange.from_hashes(0, end, stack)
        for (_, sz), h in zip(merkle.decompose(end, size_c), right):
            cr.append_subtree(sz, h)
        root_c = cr.root()
        if root_c != roots[size_c]:
            if end in roots:
                raise _fail("proof_invalid", f"the range proof (right) does not reproduce the root of checkpoint {size_c}")
            raise _fail(
                "root_mismatch",
                f"the root of {size_c} entries recomputed from the bundle does not match checkpoint {size_c}", size_c,
            )
        return root_c, recorded

    @staticmethod
    def _at_check(
        s: int, stack: list[bytes], last_ia: datetime, roots: dict[int, bytes], times: dict[int, datetime],
        begin: int,
    ) -> bytes:
        """At log position ``s`` (before entry ``s`` joins): the root of [0, s) must be checkpoint s's
        root, and checkpoint s must not be dated before entry s-1 was integrated. Returns the root."""
        root = merkle._fold(stack)
        if s in roots:
            if root != roots[s]:
                if s == begin and begin > 0:
                    raise _fail("proof_invalid", f"the range proof (left) does not reproduce the root of checkpoint {s}")
                raise _fail(
                    "root_mismatch",
                    f"the root of the first {s} entries recomputed from the bundle does not match checkpoint {s}", s,
                )
            if s > begin and last_ia - timedelta(seconds=CLOCK_SKEW_SECONDS) > times[s]:
                raise _fail(
                    "timestamp_backwards",
                    f"checkpoint {s} is dated {note.format_time(times[s])}, before entry {s - 1} was integrated",
                    s - 1,
                )
        return root

    def _slow_line(self, man: _Manifest, line: bytes, pos: int, prev_hex: str, last_ia: datetime) -> datetime:
        """The reference per-line checks, in order. Raises the failure, or returns integrated_at."""
        def bad(msg: str) -> VerificationFailure:
            return _fail("malformed", msg, pos)

        try:
            obj = json.loads(line.decode("utf-8"))
        except (ValueError, UnicodeDecodeError):
            raise bad("the line is not JSON (UTF-8)") from None
        if not isinstance(obj, dict):
            raise bad("the line is not a JSON object")
        for key in ("v", "seq", "prev", "tenant", "tenant_seq", "tenant_prev", "at", "integrated_at", "event"):
            if key not in obj:
                raise bad(f"missing field {key!r}")
        if type(obj["v"]) is not int or obj["v"] != 1:
            raise bad("v must be 1")
        if type(obj["seq"]) is not int:
            raise bad("seq must be an integer")
        if not isinstance(obj["prev"], str):
            raise bad("prev must be a hex string")
        if not isinstance(obj["event"], str):
            raise bad("event must be a string")
        t, ts, tp = obj["tenant"], obj["tenant_seq"], obj["tenant_prev"]
        if not ((t is None and ts is None and tp is None) or (type(t) is str and type(ts) is int and type(tp) is str)):
            raise bad("tenant, tenant_seq and tenant_prev must be all null or a string, an integer and a string")
        if man.tree == "tenant" and t != man.tenant:
            raise bad(f"the entry belongs to tenant {t!r}, not to {man.tenant!r}")
        p, pv = obj[man.seq_field], obj[man.prev_field]
        if p != pos:
            if p > pos:
                if self._position_appears_later(man, pos, pos - man.begin + 1):
                    raise _fail("entry_order", f"found entry {p} where entry {pos} belongs; entry {pos} comes later", pos)
                raise _fail("entry_missing", f"entry {pos} is missing (the next entry is {p})", pos)
            raise _fail("entry_order", f"found entry {p} where entry {pos} belongs (the sequence goes back or repeats)", pos)
        if pv != prev_hex:
            if not isinstance(pv, str) or not _HEX64.fullmatch(pv):
                raise bad(f"{man.prev_field} must be 64 lowercase hex digits")
            if pos == man.begin:
                where = max(pos - 1, 0)
                raise _fail(
                    "entry_modified",
                    f"the {man.prev_field} link of entry {pos} does not match start_prev in the manifest "
                    f"(the hash of entry {pos - 1})" if pos else f"entry 0 must have {man.prev_field} of 64 zeros",
                    where,
                )
            raise _fail(
                "entry_modified",
                f"entry {pos - 1} was altered: the {man.prev_field} link from entry {pos} does not match its hash",
                pos - 1,
            )
        times = {}
        for key in ("at", "integrated_at"):
            try:
                value = datetime.fromisoformat(obj[key])
            except (TypeError, ValueError):
                raise bad(f"{key} is not an RFC 3339 time") from None
            if value.tzinfo is None:
                raise bad(f"{key} has no time zone")
            times[key] = value
        ia, at = times["integrated_at"], times["at"]
        if ia < last_ia:
            raise _fail(
                "timestamp_backwards", f"integrated_at {obj['integrated_at']} is earlier than the previous entry's", pos
            )
        lagged = ia - at
        if lagged > timedelta(seconds=man.max_lag):
            raise _fail(
                "backdated",
                f"at is {lagged.total_seconds():g} s before integrated_at (at most {man.max_lag:g} s allowed)", pos,
            )
        if lagged < -timedelta(seconds=CLOCK_SKEW_SECONDS):
            raise _fail(
                "backdated",
                f"at is {-lagged.total_seconds():g} s after integrated_at (at most {CLOCK_SKEW_SECONDS} s allowed)", pos,
            )
        return ia

    def _position_appears_later(self, man: _Manifest, target: int, from_line: int) -> bool:
        """Whether a line at index >= ``from_line`` claims position ``target`` (a reordering rather
        than a gap). Only runs on the failure path."""
        with open(self.dir / "entries.jsonl", "rb") as f:
            for i, line in enumerate(f):
                if i < from_line:
                    continue
                try:
                    obj = json.loads(line)
                    if obj.get(man.seq_field) == target:
                        return True
                except (ValueError, AttributeError):
                    continue
        return False

    # ---------------------------------------------------------------- stage 5: trusted checkpoint

    @staticmethod
    def check_trusted(
        man: _Manifest, trusted_cp: _Cp, cps: Sequence[_Cp], recorded: bytes | None, root_c: bytes,
        consistency: dict[tuple[int, int], list[bytes]],
    ) -> None:
        t = trusted_cp.cp
        size_c = man.checkpoint_size
        if t.size > size_c:
            raise _fail(
                "truncated",
                f"the trusted checkpoint has {t.size} entries but the bundle's log has only {size_c}: "
                f"entries were removed from the tail",
            )
        for c in cps:
            if c.cp.size == t.size and c.cp.root != t.root:
                raise _fail("fork", f"the trusted checkpoint of size {t.size} and {c.file} have different roots")
        if man.begin <= t.size <= man.end:
            if recorded != t.root:
                raise _fail(
                    "fork", f"the root of the first {t.size} entries of the bundle is not the trusted checkpoint's root"
                )
        elif t.size not in {c.cp.size for c in cps}:
            proof = consistency.get((t.size, size_c))
            if proof is None:
                raise _fail(
                    "proof_missing", f"no consistency proof from the trusted checkpoint ({t.size}) to checkpoint {size_c}"
                )
            if not merkle.verify_consistency(t.size, size_c, t.root, root_c, proof):
                raise _fail("fork", f"the trusted checkpoint ({t.size}) is not consistent with checkpoint {size_c}")
        if t.time is not None:
            _BundleVerifier._check_times([*cps, trusted_cp])

    # ---------------------------------------------------------------- driver

    def run(self) -> Report:
        man = self.load_manifest()
        self.check_files(man)
        try:
            return self._run_checked(man)
        except VerificationFailure:
            if not self._entries_digest_checked:
                self.check_entries_digest(man)  # a manifest mismatch comes first
            raise

    def _run_checked(self, man: _Manifest) -> Report:
        r = self.report
        trusted = self.load_keys()
        self.check_manifest_signature(man, trusted)
        cps = self.load_checkpoints(man, trusted)
        trusted_cp = self.load_trusted_checkpoint(man, trusted)
        left, right, consistency = self.load_proofs(man)
        n_consistency = self.check_consistency(cps, consistency)
        self.check_range_shape(man, left, right)
        record = trusted_cp.cp.size if trusted_cp is not None else None
        root_c, recorded = self.stream_entries(man, cps, left, right, record)
        if trusted_cp is not None:
            self.check_trusted(man, trusted_cp, cps, recorded, root_c, consistency)
        r.ok = True
        r.root = root_c
        r.signed_by = list(self.signed_by)
        r.counts = {
            "entries": man.end - man.begin,
            "checkpoints": len(cps),
            "consistency_proofs": n_consistency,
            "keys": len(r.trusted_keys),
        }
        return r


def verify_bundle(
    directory: str | os.PathLike[str],
    *,
    trusted_keys: list[str] | None = None,
    trusted_checkpoint: bytes | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> Report:
    """Verify the bundle in ``directory``.

    ``trusted_keys``: verifier key strings; when given, only these keys are trusted (anything in the
    bundle signed by another key fails with ``unknown_key``); when None, the keys in keys.txt are
    trusted (the report lists them so the auditor can compare). ``trusted_checkpoint``: a signed
    checkpoint note the auditor kept from an earlier export; it must verify against the trusted keys
    and be consistent with the bundle. ``progress(done, total)`` is called as entries stream.
    ``ValueError`` if a trusted key does not parse; every problem with the bundle is a failed Report.
    """
    v = _BundleVerifier(Path(directory), trusted_keys, trusted_checkpoint, progress)
    try:
        if not v.dir.is_dir():
            raise _fail("file_missing", f"{directory} is not a directory")
        return v.run()
    except VerificationFailure as e:
        r = v.report
        r.ok, r.kind, r.message, r.position = False, e.kind, e.message, e.position
        r.signed_by = list(v.signed_by)
        return r


# ------------------------------------------------------------------------------------------------
# Command line


def _read_key_args(values: Sequence[str]) -> list[str]:
    keys: list[str] = []
    for value in values:
        if os.path.isfile(value):
            with open(value, encoding="utf-8") as f:
                keys.extend(line.strip() for line in f if line.strip() and not line.startswith("#"))
        else:
            keys.append(value)
    return keys


def main(argv: Sequence[str] | None = None) -> int:
    """The command line; returns the exit status (0 verified, 1 failed, 2 usage error)."""
    parser = argparse.ArgumentParser(
        prog="verifier", description="Verify a Gatehouse audit bundle offline (needs only Python and cryptography)."
    )
    parser.add_argument("directory", help="the bundle directory")
    parser.add_argument(
        "--trusted-key", action="append", default=[], metavar="KEY_OR_FILE",
        help="a verifier key string, or a file of them (one per line); repeatable. "
        "When given, only these keys are trusted.",
    )
    parser.add_argument("--trusted-checkpoint", metavar="FILE", help="a signed checkpoint kept from an earlier export")
    parser.add_argument("--quiet", action="store_true", help="print only the result line")
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:
        return int(e.code or 0)

    def usage(msg: str) -> int:
        print(f"verifier: error: {msg}", file=sys.stderr)
        return 2

    if not os.path.isdir(args.directory):
        return usage(f"{args.directory} is not a directory")
    trusted_keys = None
    if args.trusted_key:
        try:
            trusted_keys = _read_key_args(args.trusted_key)
            _load_trusted_keys(trusted_keys)
        except (OSError, UnicodeDecodeError, ValueError) as e:
            return usage(str(e))
    trusted_checkpoint = None
    if args.trusted_checkpoint is not None:
        try:
            with open(args.trusted_checkpoint, "rb") as f:
                trusted_checkpoint = f.read()
        except OSError as e:
            return usage(f"cannot read the trusted checkpoint: {e}")

    progress = None
    if not args.quiet and sys.stderr.isatty():
        def progress(done: int, total: int) -> None:
            print(f"\r{done}/{total} entries", end="", file=sys.stderr, flush=True)

    report = verify_bundle(
        args.directory, trusted_keys=trusted_keys, trusted_checkpoint=trusted_checkpoint, progress=progress
    )
    if progress is not None:
        print("\r", end="", file=sys.stderr)
    if not args.quiet:
        if report.keys_from_bundle and report.trusted_keys:
            print("No --trusted-key given: trusting the keys in keys.txt. Compare them with the log's published keys:")
            for k in report.trusted_keys:
                print(f"  {k}")
        if report.trusted_checkpoint_size is not None and report.ok:
            print(f"Trusted checkpoint of size {report.trusted_checkpoint_size} is consistent with this bundle.")
    if report.ok:
        print(report.result_line())
        return 0
    print(report.result_line(), file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
