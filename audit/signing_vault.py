"""Ed25519 note signing through Vault/OpenBao Transit.

:class:`VaultTransitNoteSigner` signs the audit log's checkpoints with an
Ed25519 key that never leaves Transit.  It implements the same protocol as the
audit log's local note signer (:class:`audit.note.Ed25519NoteSigner`)::

    name: str                       # note key name
    key_id: int                     # C2SP signed-note key hash (uint32)
    sign(message: bytes) -> bytes   # raw 64-byte Ed25519 signature
    verifier_key() -> str           # "<name>+<8 hex keyid>+<base64(0x01 || pubkey)>"

Key rules (C2SP signed-note, Ed25519 = algorithm 0x01): the key id is the
first 4 bytes, big-endian, of ``SHA-256(name || "\\n" || 0x01 || pubkey)``.

One signer is pinned to one Transit key *version*: the note name defaults to
``gatehouse-audit-<key_name>-v<version>``, so rotating the Transit key yields a
new note key (new name, new key id) while every older version's verifier key
stays computable (:meth:`VaultTransitNoteSigner.verifier_keys_all_versions`).
Each signature returned by Transit is verified locally against the pinned
public key before it is handed out, so a wrong key version (or a misbehaving
server) can never produce a checkpoint signature that does not verify.
"""

from __future__ import annotations

import base64
import binascii
import re
from typing import Any

import hvac
import hvac.exceptions
import requests
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from .note import ALG_ED25519, NoteVerifier, key_id

__all__ = [
    "ALG_ED25519",
    "SigningError",
    "VaultTransitNoteSigner",
    "note_key_id",
    "note_verifier_key",
    "vault_client_from_approle",
]

_SIGNATURE_RE = re.compile(r"^vault:v(\d+):(.+)$", re.DOTALL)
_VAULT_ERRORS = (hvac.exceptions.VaultError, requests.RequestException)


class SigningError(RuntimeError):
    """Signing through Vault failed; ``__cause__`` holds the underlying error, if any."""


def _check_note_name(name: str) -> None:
    # C2SP signed-note: a key name is non-empty, with no Unicode spaces and no "+".
    if not name or "+" in name or any(ch.isspace() for ch in name):
        raise ValueError(f"invalid note key name {name!r}: must be non-empty, without spaces or '+'")


def note_key_id(name: str, public_key: bytes) -> int:
    """C2SP key hash of an Ed25519 note key: big-endian uint32 of SHA-256(name \\n 0x01 pubkey)[:4]."""
    if len(public_key) != 32:
        raise ValueError(f"Ed25519 public key must be 32 bytes, got {len(public_key)}")
    return key_id(name, public_key)


def note_verifier_key(name: str, public_key: bytes) -> str:
    """C2SP verifier key string ``<name>+<8 hex keyid>+<base64(0x01 || pubkey)>``."""
    _check_note_name(name)
    note_key_id(name, public_key)  # checks the key length
    return NoteVerifier.from_public_key(name, public_key).key_string()


def _vault_error(action: str, exc: BaseException) -> SigningError:
    detail = str(exc).strip() or type(exc).__name__
    return SigningError(f"Vault Transit {action} failed: {type(exc).__name__}: {detail}")


class VaultTransitNoteSigner:
    """A C2SP note signer whose Ed25519 private key lives in Vault/OpenBao Transit.

    :param client: an authenticated ``hvac.Client``; the token needs ``read``
        on ``<mount>/keys/<key_name>`` and ``update`` on ``<mount>/sign/<key_name>``.
    :param key_name: the Transit key (type ``ed25519``, not derived).
    :param mount: where Transit is mounted.
    :param note_name: note key name; defaults to ``gatehouse-audit-<key_name>-v<version>``.
        An explicit name is used for every version (key ids still differ).
    :param key_version: Transit key version to sign with; defaults to the latest
        at construction time.  The signer stays pinned to it after rotations.

    :raises ValueError: the key is not an Ed25519, non-derived key, or the
        version does not exist (or was trimmed).
    :raises SigningError: Vault could not be read (e.g. permission denied).
    """

    def __init__(
        self,
        client: hvac.Client,
        key_name: str,
        *,
        mount: str = "transit",
        note_name: str | None = None,
        key_version: int | None = None,
    ) -> None:
        self._client = client
        self.key_name = key_name
        self.mount = mount
        self._explicit_note_name = note_name
        if note_name is not None:
            _check_note_name(note_name)

        data = self._read_key()
        keys = self._public_keys(data)
        version = int(data.get("latest_version", max(keys))) if key_version is None else int(key_version)
        if version not in keys:
            raise ValueError(
                f"Transit key {mount}/{key_name} has no available version {version} "
                f"(available: {sorted(keys)})"
            )
        self.key_version: int = version
        self.public_key: bytes = keys[version]
        self._verifier = Ed25519PublicKey.from_public_bytes(self.public_key)
        self.name: str = self._note_name_for(version)
        _check_note_name(self.name)
        self.key_id: int = note_key_id(self.name, self.public_key)

    # -- note signer protocol ---------------------------------------------------

    def sign(self, message: bytes) -> bytes:
        """Sign ``message`` with the pinned Transit key version; return the raw 64-byte signature."""
        if not isinstance(message, (bytes, bytearray, memoryview)):
            raise TypeError("message must be bytes")
        message = bytes(message)
        try:
            response = self._client.secrets.transit.sign_data(
                name=self.key_name,
                hash_input=base64.b64encode(message).decode("ascii"),
                key_version=self.key_version,
                prehashed=False,
                mount_point=self.mount,
            )
        except _VAULT_ERRORS as exc:
            raise _vault_error(f"sign with {self.mount}/{self.key_name} v{self.key_version}", exc) from exc

        try:
            token = response["data"]["signature"]
        except (KeyError, TypeError) as exc:
            raise SigningError(f"unexpected Transit sign response: {response!r}") from exc
        match = _SIGNATURE_RE.match(token) if isinstance(token, str) else None
        if match is None:
            raise SigningError(f"unexpected Transit signature format: {token!r}")
        if int(match.group(1)) != self.key_version:
            raise SigningError(
                f"Transit signed with key version {match.group(1)}, expected {self.key_version}"
            )
        try:
            signature = base64.b64decode(match.group(2), validate=True)
        except (binascii.Error, ValueError) as exc:
            raise SigningError("Transit signature is not valid base64") from exc
        if len(signature) != 64:
            raise SigningError(f"Transit signature is {len(signature)} bytes, expected 64 (Ed25519)")
        try:
            self._verifier.verify(signature, message)
        except InvalidSignature as exc:
            raise SigningError(
                f"Transit signature does not verify with {self.mount}/{self.key_name} "
                f"v{self.key_version}'s public key (note key {self.name}+{self.key_id:08x})"
            ) from exc
        return signature

    def verifier_key(self) -> str:
        """The C2SP verifier key string of this signer's note key."""
        return note_verifier_key(self.name, self.public_key)

    # -- extras -----------------------------------------------------------------

    def verifier_keys_all_versions(self) -> list[str]:
        """Verifier keys of every available version of the Transit key, oldest first.

        Reads the key from Vault again, so versions created after this signer
        was constructed are included.
        """
        keys = self._public_keys(self._read_key())
        return [note_verifier_key(self._note_name_for(v), keys[v]) for v in sorted(keys)]

    def __repr__(self) -> str:
        return (
            f"<VaultTransitNoteSigner {self.mount}/{self.key_name} v{self.key_version} "
            f"note={self.name}+{self.key_id:08x}>"
        )

    # -- internals --------------------------------------------------------------

    def _note_name_for(self, version: int) -> str:
        if self._explicit_note_name is not None:
            return self._explicit_note_name
        return f"gatehouse-audit-{self.key_name}-v{version}"

    def _read_key(self) -> dict[str, Any]:
        try:
            response = self._client.secrets.transit.read_key(name=self.key_name, mount_point=self.mount)
        except _VAULT_ERRORS as exc:
            raise _vault_error(f"read key {self.mount}/{self.key_name}", exc) from exc
        try:
            data = response["data"]
        except (KeyError, TypeError) as exc:
            raise SigningError(f"unexpected Transit read_key response: {response!r}") from exc
        key_type = data.get("type")
        if key_type != "ed25519":
            raise ValueError(
                f"Transit key {self.mount}/{self.key_name} has type {key_type!r}; "
                "a note signer needs an 'ed25519' key"
            )
        if data.get("derived"):
            raise ValueError(
                f"Transit key {self.mount}/{self.key_name} is a derived key (per-context public "
                "keys); a note signer needs a non-derived 'ed25519' key"
            )
        return data

    def _public_keys(self, data: dict[str, Any]) -> dict[int, bytes]:
        out: dict[int, bytes] = {}
        for version, info in (data.get("keys") or {}).items():
            encoded = info.get("public_key") if isinstance(info, dict) else None
            if not encoded:
                raise SigningError(
                    f"Transit key {self.mount}/{self.key_name} v{version} exposes no public key"
                )
            public_key = base64.b64decode(encoded)
            if len(public_key) != 32:
                raise SigningError(
                    f"Transit key {self.mount}/{self.key_name} v{version} public key is "
                    f"{len(public_key)} bytes, expected 32"
                )
            out[int(version)] = public_key
        if not out:
            raise SigningError(f"Transit key {self.mount}/{self.key_name} has no versions")
        return out


def vault_client_from_approle(
    url: str,
    role_id: str,
    secret_id: str,
    *,
    verify: bool | str = True,
    mount_point: str = "approle",
) -> hvac.Client:
    """Log in with AppRole and return an ``hvac.Client`` holding the resulting token.

    ``verify`` is passed to requests (``False`` or a CA bundle path).
    :raises SigningError: the login failed (bad credentials, unreachable server...).
    """
    client = hvac.Client(url=url, verify=verify)
    try:
        client.auth.approle.login(role_id=role_id, secret_id=secret_id, use_token=True, mount_point=mount_point)
    except _VAULT_ERRORS as exc:
        raise _vault_error(f"AppRole login at {url}", exc) from exc
    if not client.token:
        raise SigningError(f"AppRole login at {url} returned no client token")
    return client
