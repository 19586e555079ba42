"""C2SP signed notes (https://c2sp.org/signed-note) with Ed25519 keys, and C2SP tlog checkpoints
(https://c2sp.org/tlog-checkpoint).

Standalone: standard library plus ``cryptography`` only, so the bundle verifier can be copied out
of the project.

A signed note is UTF-8 text (ending in a newline, no blank line, no control characters besides
newline) followed by a blank line and one signature line per signer::

    — <key name> <base64(4-byte big-endian key id || 64-byte Ed25519 signature)>

The key id of an Ed25519 key is the first 4 bytes of ``SHA-256(name || "\\n" || 0x01 || public key)``.
Keys travel as strings: ``<name>+<8 hex key id>+<base64(0x01 || public key)>`` (verifier key) and
``PRIVATE+KEY+<name>+<8 hex key id>+<base64(0x01 || 32-byte seed)>`` (signer key).

A checkpoint is a note whose text is ``origin``, the decimal tree size and the base64 root hash,
one per line, then optional extension lines. Gatehouse adds one extension, ``time <RFC 3339 UTC>``.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Iterable, Mapping, Protocol, Sequence, Union, runtime_checkable

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat, PublicFormat

__all__ = [
    "ALG_ED25519",
    "MAX_SIGNATURES",
    "NoteError",
    "NoteSigner",
    "Ed25519NoteSigner",
    "NoteVerifier",
    "key_id",
    "valid_key_name",
    "sign_note",
    "open_note",
    "open_note_keys",
    "Checkpoint",
    "checkpoint_text",
    "parse_checkpoint",
    "sign_checkpoint",
    "open_checkpoint",
    "format_time",
    "parse_time",
    "time_extension",
]

ALG_ED25519 = 0x01
"""Signature type byte of Ed25519 keys in signed notes."""

MAX_SIGNATURES = 100
"""More signature lines than this make a note malformed (the Go reference implementation's cap)."""

_EM_DASH_PREFIX = "\u2014 "
_HEX8 = re.compile(r"[0-9a-fA-F]{8}")
_CONTROL = re.compile(r"[\x00-\x09\x0b-\x1f]")


class NoteError(ValueError):
    """A note or key could not be used. ``kind`` is ``"malformed"``, ``"unknown_key"`` (no
    signature by a known key) or ``"bad_signature"`` (a known key's signature does not verify)."""

    KINDS = ("malformed", "unknown_key", "bad_signature")

    def __init__(self, kind: str, message: str) -> None:
        if kind not in self.KINDS:
            raise ValueError(f"unknown NoteError kind {kind!r}")
        super().__init__(f"{kind}: {message}")
        self.kind = kind
        self.message = message


# --------------------------------------------------------------------------------------------
# Keys


def valid_key_name(name: str) -> bool:
    """A key name is non-empty and contains no '+' and no (Unicode) whitespace."""
    return bool(name) and "+" not in name and not any(c.isspace() for c in name) and name.isprintable()


def key_id(name: str, public_key: bytes, alg: int = ALG_ED25519) -> int:
    """The 32-bit key id: the first 4 bytes, big-endian, of SHA-256(name || "\\n" || alg || key)."""
    digest = hashlib.sha256(name.encode("utf-8") + b"\n" + bytes([alg]) + public_key).digest()
    return int.from_bytes(digest[:4], "big")


def _b64decode_strict(text: str, what: str) -> bytes:
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError):
        raise NoteError("malformed", f"{what} is not valid base64") from None


@runtime_checkable
class NoteSigner(Protocol):
    """Something that signs notes: a log key held in a file, an HSM or a KMS."""

    @property
    def name(self) -> str: ...

    @property
    def key_id(self) -> int: ...

    def sign(self, message: bytes) -> bytes:
        """The 64-byte Ed25519 signature of ``message``."""
        ...

    def verifier_key(self) -> str:
        """The verifier key string of this signer."""
        ...


class NoteVerifier:
    """A verifier key: parse from ``<name>+<hex key id>+<base64(0x01 || public key)>``."""

    __slots__ = ("name", "key_id", "public_key", "_key")

    def __init__(self, key: str) -> None:
        if not isinstance(key, str):
            raise NoteError("malformed", "verifier key must be a string")
        key = key.strip()
        parts = key.split("+", 2)
        if len(parts) != 3:
            raise NoteError("malformed", "verifier key must be <name>+<key id>+<key>")
        name, hex_id, b64 = parts
        if not valid_key_name(name):
            raise NoteError("malformed", f"invalid key name {name!r}")
        if not _HEX8.fullmatch(hex_id):
            raise NoteError("malformed", "key id must be 8 hex digits")
        raw = _b64decode_strict(b64, "verifier key")
        if len(raw) != 33 or raw[0] != ALG_ED25519:
            raise NoteError("malformed", "verifier key is not an Ed25519 key (0x01 || 32 bytes)")
        public_key = raw[1:]
        if key_id(name, public_key) != int(hex_id, 16):
            raise NoteError("malformed", f"key id {hex_id} does not match the key of {name}")
        try:
            self._key = Ed25519PublicKey.from_public_bytes(public_key)
        except ValueError:
            raise NoteError("malformed", "invalid Ed25519 public key") from None
        self.name = name
        self.key_id = int(hex_id, 16)
        self.public_key = public_key

    @classmethod
    def from_public_key(cls, name: str, public_key: bytes) -> "NoteVerifier":
        """The verifier of ``name`` for a raw 32-byte Ed25519 public key."""
        if not valid_key_name(name):
            raise NoteError("malformed", f"invalid key name {name!r}")
        kid = key_id(name, public_key)
        return cls(f"{name}+{kid:08x}+" + base64.b64encode(bytes([ALG_ED25519]) + public_key).decode())

    def key_string(self) -> str:
        """The canonical verifier key string."""
        return f"{self.name}+{self.key_id:08x}+" + base64.b64encode(bytes([ALG_ED25519]) + self.public_key).decode()

    @property
    def label(self) -> str:
        """``<name>+<key id>``: how reports name this key."""
        return f"{self.name}+{self.key_id:08x}"

    def verify(self, message: bytes, signature: bytes) -> bool:
        """True iff ``signature`` is this key's Ed25519 signature of ``message``."""
        if len(signature) != 64:
            return False
        try:
            self._key.verify(signature, message)
        except InvalidSignature:
            return False
        return True

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, NoteVerifier):
            return NotImplemented
        return (self.name, self.key_id, self.public_key) == (other.name, other.key_id, other.public_key)

    def __hash__(self) -> int:
        return hash((self.name, self.key_id, self.public_key))

    def __repr__(self) -> str:
        return f"NoteVerifier({self.key_string()!r})"


class Ed25519NoteSigner:
    """An Ed25519 note signer holding its private key in memory."""

    def __init__(self, name: str, private_key: Ed25519PrivateKey) -> None:
        if not valid_key_name(name):
            raise NoteError("malformed", f"invalid key name {name!r}")
        self._name = name
        self._private = private_key
        self._public = private_key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        self._key_id = key_id(name, self._public)

    @classmethod
    def generate(cls, name: str) -> "Ed25519NoteSigner":
        """A signer with a fresh random key."""
        return cls(name, Ed25519PrivateKey.generate())

    @classmethod
    def from_key_string(cls, key: str) -> "Ed25519NoteSigner":
        """Parse ``PRIVATE+KEY+<name>+<hex key id>+<base64(0x01 || seed)>``."""
        parts = key.strip().split("+", 4)
        if len(parts) != 5 or parts[0] != "PRIVATE" or parts[1] != "KEY":
            raise NoteError("malformed", "signer key must be PRIVATE+KEY+<name>+<key id>+<key>")
        _, _, name, hex_id, b64 = parts
        if not _HEX8.fullmatch(hex_id):
            raise NoteError("malformed", "key id must be 8 hex digits")
        raw = _b64decode_strict(b64, "signer key")
        if len(raw) != 33 or raw[0] != ALG_ED25519:
            raise NoteError("malformed", "signer key is not an Ed25519 key (0x01 || 32-byte seed)")
        signer = cls(name, Ed25519PrivateKey.from_private_bytes(raw[1:]))
        if signer.key_id != int(hex_id, 16):
            raise NoteError("malformed", f"key id {hex_id} does not match the key of {name}")
        return signer

    @property
    def name(self) -> str:
        return self._name

    @property
    def key_id(self) -> int:
        return self._key_id

    @property
    def public_key(self) -> bytes:
        return self._public

    def sign(self, message: bytes) -> bytes:
        return self._private.sign(message)

    def verifier_key(self) -> str:
        return f"{self._name}+{self._key_id:08x}+" + base64.b64encode(bytes([ALG_ED25519]) + self._public).decode()

    def verifier(self) -> NoteVerifier:
        return NoteVerifier(self.verifier_key())

    def signer_key(self) -> str:
        """The ``PRIVATE+KEY+...`` string (secret: store it like a password)."""
        seed = self._private.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
        return f"PRIVATE+KEY+{self._name}+{self._key_id:08x}+" + base64.b64encode(bytes([ALG_ED25519]) + seed).decode()

    def __repr__(self) -> str:
        return f"Ed25519NoteSigner({self._name}+{self._key_id:08x})"


# --------------------------------------------------------------------------------------------
# Notes


def _check_text(text: str) -> None:
    """Text rules shared by signing and opening: non-empty, ends with "\\n", no blank line, no
    control characters other than "\\n"."""
    if not text or not text.endswith("\n"):
        raise NoteError("malformed", "note text must be non-empty and end with a newline")
    if "\n\n" in text or text.startswith("\n"):
        raise NoteError("malformed", "note text must not contain a blank line")
    if _CONTROL.search(text):
        raise NoteError("malformed", "note text contains a control character")


def sign_note(text: bytes | str, signers: Iterable[NoteSigner]) -> bytes:
    """The signed note of ``text`` with one signature line per signer."""
    if isinstance(text, bytes):
        try:
            text_str = text.decode("utf-8")
        except UnicodeDecodeError:
            raise NoteError("malformed", "note text is not UTF-8") from None
    else:
        text_str = text
    _check_text(text_str)
    message = text_str.encode("utf-8")
    lines = []
    for signer in signers:
        if not valid_key_name(signer.name):
            raise NoteError("malformed", f"invalid key name {signer.name!r}")
        sig = signer.sign(message)
        if len(sig) != 64:
            raise NoteError("malformed", "signer returned a signature that is not 64 bytes")
        blob = signer.key_id.to_bytes(4, "big") + sig
        lines.append(f"{_EM_DASH_PREFIX}{signer.name} {base64.b64encode(blob).decode()}\n")
    if not lines:
        raise NoteError("malformed", "a note needs at least one signer")
    return message + b"\n" + "".join(lines).encode("utf-8")


VerifierSet = Union[Mapping[object, Union[NoteVerifier, str]], Iterable[Union[NoteVerifier, str]]]


def _verifier_map(verifiers: VerifierSet) -> dict[tuple[str, int], NoteVerifier]:
    items = verifiers.values() if isinstance(verifiers, Mapping) else verifiers
    out: dict[tuple[str, int], NoteVerifier] = {}
    for v in items:
        if isinstance(v, str):
            v = NoteVerifier(v)
        if not isinstance(v, NoteVerifier):
            raise TypeError(f"not a verifier: {v!r}")
        key = (v.name, v.key_id)
        if key in out and out[key] != v:
            raise NoteError("malformed", f"two different keys share the name and id {v.label}")
        out[key] = v
    return out


def open_note_keys(note: bytes, verifiers: VerifierSet) -> tuple[bytes, list[NoteVerifier]]:
    """Open a signed note: ``(text, the known keys whose signatures verified)``.

    Raises :class:`NoteError`: ``malformed`` if the note does not parse; ``bad_signature`` if any
    signature by a known key fails to verify; ``unknown_key`` if no signature is by a known key.
    Signatures by unknown keys are ignored when a known key verified (C2SP signed-note).
    """
    known = _verifier_map(verifiers)
    if not isinstance(note, (bytes, bytearray)):
        raise NoteError("malformed", "a note is bytes")
    try:
        s = bytes(note).decode("utf-8")
    except UnicodeDecodeError:
        raise NoteError("malformed", "note is not UTF-8") from None
    split = s.rfind("\n\n")
    if split < 0:
        raise NoteError("malformed", "note has no signature block")
    text, sig_block = s[: split + 1], s[split + 2 :]
    _check_text(text)
    if not sig_block or not sig_block.endswith("\n"):
        raise NoteError("malformed", "signature block must be non-empty and end with a newline")
    sig_lines = sig_block[:-1].split("\n")
    if len(sig_lines) > MAX_SIGNATURES:
        raise NoteError("malformed", f"more than {MAX_SIGNATURES} signatures")
    message = text.encode("utf-8")
    verified: list[NoteVerifier] = []
    seen: set[tuple[str, int]] = set()
    for line in sig_lines:
        if not line.startswith(_EM_DASH_PREFIX):
            raise NoteError("malformed", "signature line must start with an em dash and a space")
        rest = line[len(_EM_DASH_PREFIX) :]
        name, sep, b64 = rest.partition(" ")
        if not sep or not valid_key_name(name) or not b64 or " " in b64:
            raise NoteError("malformed", "signature line must be '— <name> <base64>'")
        blob = _b64decode_strict(b64, "signature")
        if len(blob) < 5:
            raise NoteError("malformed", "signature is too short")
        kid = int.from_bytes(blob[:4], "big")
        verifier = known.get((name, kid))
        if verifier is None:
            continue  # signatures by unknown keys are ignored
        if (name, kid) in seen:
            continue  # a repeated signature by the same key decides nothing new
        seen.add((name, kid))
        if not verifier.verify(message, blob[4:]):
            raise NoteError("bad_signature", f"signature by {verifier.label} does not verify")
        verified.append(verifier)
    if not verified:
        raise NoteError("unknown_key", "no signature by a known key")
    return message, verified


def open_note(note: bytes, verifiers: VerifierSet) -> tuple[bytes, list[str]]:
    """Open a signed note: ``(text, names of the known keys whose signatures verified)``. See
    :func:`open_note_keys` for the errors."""
    text, keys = open_note_keys(note, verifiers)
    return text, [k.name for k in keys]


# --------------------------------------------------------------------------------------------
# Time


_TIME_RE = re.compile(r"(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,6}))?Z")


def format_time(t: datetime) -> str:
    """RFC 3339 in UTC with a ``Z``: second precision, or microseconds when there are any."""
    if t.tzinfo is None:
        raise ValueError("time must be timezone-aware")
    t = t.astimezone(timezone.utc)
    if t.microsecond:
        return t.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(text: str) -> datetime:
    """Parse the strict form written by :func:`format_time` (1 to 6 fractional digits allowed);
    ``ValueError`` otherwise."""
    m = _TIME_RE.fullmatch(text) if isinstance(text, str) else None
    if not m:
        raise ValueError(f"not an RFC 3339 UTC time: {text!r}")
    y, mo, d, h, mi, s, frac = m.groups()
    micro = int((frac or "0").ljust(6, "0"))
    return datetime(int(y), int(mo), int(d), int(h), int(mi), int(s), micro, tzinfo=timezone.utc)


def time_extension(t: datetime) -> str:
    """The Gatehouse checkpoint extension line ``time <RFC 3339>``."""
    return "time " + format_time(t)


# --------------------------------------------------------------------------------------------
# Checkpoints


@dataclass(frozen=True)
class Checkpoint:
    """A parsed checkpoint. ``time`` is the value of the ``time`` extension, if any."""

    origin: str
    size: int
    root: bytes
    time: datetime | None = None
    extensions: tuple[str, ...] = field(default_factory=tuple)


_SIZE_RE = re.compile(r"0|[1-9][0-9]{0,19}")


def checkpoint_text(
    origin: str, size: int, root: bytes, extensions: Sequence[str] = (), *, time: datetime | None = None
) -> bytes:
    """The checkpoint body: origin, size, base64 root, then each extension line (a ``time``
    extension first when ``time`` is given)."""
    if not origin or "\n" in origin or not origin.isprintable():
        raise ValueError("origin must be a non-empty printable line")
    if not isinstance(size, int) or isinstance(size, bool) or not 0 <= size < 1 << 64:
        raise ValueError("size must be an unsigned 64-bit integer")
    if not isinstance(root, bytes) or len(root) != 32:
        raise ValueError("root must be 32 bytes")
    ext = list(extensions)
    if time is not None:
        ext.insert(0, time_extension(time))
    for line in ext:
        if not line or "\n" in line or not line.isprintable():
            raise ValueError(f"invalid extension line {line!r}")
    lines = [origin, str(size), base64.b64encode(root).decode(), *ext]
    return ("\n".join(lines) + "\n").encode("utf-8")


def parse_checkpoint(text: bytes | str) -> Checkpoint:
    """Parse a checkpoint body; ``NoteError("malformed")`` on any deviation (missing lines, leading
    zeros or non-digits in the size, non-canonical base64, a root that is not 32 bytes, empty
    extension lines, more than one or an unparseable ``time`` extension)."""
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError:
            raise NoteError("malformed", "checkpoint is not UTF-8") from None
    if not text.endswith("\n"):
        raise NoteError("malformed", "checkpoint must end with a newline")
    lines = text[:-1].split("\n")
    if len(lines) < 3:
        raise NoteError("malformed", "checkpoint needs origin, size and root lines")
    origin, size_s, root_s, *ext = lines
    if not origin or not origin.isprintable():
        raise NoteError("malformed", "checkpoint origin must be a non-empty printable line")
    if not _SIZE_RE.fullmatch(size_s) or int(size_s) >= 1 << 64:
        raise NoteError("malformed", f"checkpoint size {size_s!r} is not a canonical decimal")
    root = _b64decode_strict(root_s, "checkpoint root")
    if base64.b64encode(root).decode() != root_s:
        raise NoteError("malformed", "checkpoint root is not canonical base64")
    if len(root) != 32:
        raise NoteError("malformed", f"checkpoint root is {len(root)} bytes, not 32")
    time: datetime | None = None
    for line in ext:
        if not line or not line.isprintable():
            raise NoteError("malformed", "empty or unprintable checkpoint extension line")
        if line.startswith("time "):
            if time is not None:
                raise NoteError("malformed", "more than one time extension")
            try:
                time = parse_time(line[5:])
            except ValueError as e:
                raise NoteError("malformed", str(e)) from None
    return Checkpoint(origin=origin, size=int(size_s), root=root, time=time, extensions=tuple(ext))


def sign_checkpoint(
    origin: str, size: int, root: bytes, time: datetime | None, signers: Iterable[NoteSigner],
    extensions: Sequence[str] = (),
) -> bytes:
    """A signed checkpoint note (with a ``time`` extension when ``time`` is given)."""
    return sign_note(checkpoint_text(origin, size, root, extensions, time=time), signers)


def open_checkpoint(
    note: bytes, verifiers: VerifierSet, origin: str | None = None
) -> tuple[Checkpoint, list[NoteVerifier]]:
    """Open a signed checkpoint: ``(checkpoint, verified keys)``; ``NoteError`` as
    :func:`open_note_keys`, or ``malformed`` if the body does not parse or the origin differs."""
    text, keys = open_note_keys(note, verifiers)
    cp = parse_checkpoint(text)
    if origin is not None and cp.origin != origin:
        raise NoteError("malformed", f"checkpoint origin {cp.origin!r} is not {origin!r}")
    return cp, keys
