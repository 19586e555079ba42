"""Who signs a decision document: one interface, two backends.

    signer.key_id                               the key it will sign with (goes into the document)
    signer.sign(document_bytes) -> (key_id, signature)
    signer.public_key(key_id) -> bytes          a registered public key (raw Ed25519 / P-256 point)

``LocalSigner`` (the embedded default) signs with the approver's Ed25519 key, kept on the server
sealed under the master key (approvals.signing.keys.MasterKey).

``TransitSigner`` signs with OpenBao/Vault Transit (``<transit>/sign/<key>``), one key per approver
named after their identity provider subject. The gateway holds no Vault credential that can sign:
it passes the approver's own access token (a Keycloak RS256 JWT) to Vault's JWT auth method, which
checks it against the realm's JWKS and issues a short-lived token whose templated policy allows
``update`` on ``<transit>/sign/{{identity.entity.aliases.<jwt accessor>.name}}`` only, the alias
name being the token's ``sub`` (the role's ``user_claim``). So with approver A's token nothing can
sign with B's key: Vault answers 403. ``vault_approver_auth_configure`` sets this up. Every
signature Transit returns is checked locally against the registered public key before use.
"""
from __future__ import annotations

import base64
import binascii
import re
from typing import Protocol, runtime_checkable

import hvac
import hvac.exceptions
import requests
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat, load_pem_public_key
from django.conf import settings

from .document import ECDSA_P256, ED25519, DecisionSignatureError, _verify_raw, key_fingerprint
from .keys import MasterKey, SigningKeyError, active_key, key_record
from .models import ApproverKey, ApproverPrivateKey, KeyBackend

_VAULT_ERRORS = (hvac.exceptions.VaultError, requests.RequestException)
_SIGNATURE_RE = re.compile(r"^vault:v(\d+):(.+)$", re.DOTALL)
APPROVER_POLICY = "gatehouse-approver-sign"


class SigningError(RuntimeError):
    """A document could not be signed. ``status`` is the HTTP status Vault answered, if any."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


@runtime_checkable
class Signer(Protocol):
    key_id: str

    def sign(self, document_bytes: bytes) -> tuple[str, bytes]: ...

    def public_key(self, key_id: str) -> bytes: ...


def _registered_public_key(key_id: str) -> bytes:
    key = ApproverKey.objects.filter(key_id=key_id).first()
    if key is None:
        raise SigningKeyError(f"no key {key_id}")
    return bytes(key.public_key)


def _check_usable(key: ApproverKey) -> ApproverKey:
    key.refresh_from_db(fields=["retired_at", "revoked_at"])
    if key.revoked_at is not None or key.retired_at is not None:
        raise SigningKeyError(f"key {key.key_id} is {'revoked' if key.revoked_at else 'retired'}: it signs nothing new")
    return key


class LocalSigner:
    """Signs with the approver's Ed25519 key sealed in ApproverPrivateKey."""

    def __init__(self, key: ApproverKey, master: MasterKey | None = None) -> None:
        if key.backend != KeyBackend.LOCAL:
            raise SigningKeyError(f"key {key.key_id} is not a local key")
        self.key = key
        self.key_id = key.key_id
        self._master = master

    @classmethod
    def for_user(cls, user) -> LocalSigner:
        key = active_key(user, KeyBackend.LOCAL)
        if key is None:
            raise SigningKeyError(f"{user.get_username()} has no signing key in use (enrol one)")
        return cls(key)

    def sign(self, document_bytes: bytes) -> tuple[str, bytes]:
        key = _check_usable(self.key)
        sealed = ApproverPrivateKey.objects.filter(key=key).first()
        if sealed is None:
            raise SigningKeyError(f"the private key of {key.key_id} is not on this server")
        master = self._master or MasterKey.from_settings()
        seed = master.open(key.key_id, bytes(sealed.sealed), sealed.master_key_id)
        signature = Ed25519PrivateKey.from_private_bytes(seed).sign(bytes(document_bytes))
        return key.key_id, signature

    def public_key(self, key_id: str) -> bytes:
        return _registered_public_key(key_id)


# -------------------------------------------------------------------------------- Transit


def _client(url: str, token: str | None = None, verify: bool | str = True) -> hvac.Client:
    session = requests.Session()
    session.trust_env = False  # never through a proxy from the environment
    return hvac.Client(url=url, token=token, verify=verify, session=session)


def _status(exc: BaseException) -> int | None:
    if isinstance(exc, hvac.exceptions.Forbidden):
        return 403
    if isinstance(exc, hvac.exceptions.InvalidRequest):
        return 400
    if isinstance(exc, hvac.exceptions.Unauthorized):
        return 401
    return getattr(exc, "status_code", None)


def _vault_error(action: str, exc: BaseException) -> SigningError:
    detail = str(exc).strip() or type(exc).__name__
    status = _status(exc)
    return SigningError(f"Vault {action} failed{f' ({status})' if status else ''}: {detail}", status)


def transit_public_key(client: hvac.Client, name: str, *, mount: str = "transit",
                       version: int | None = None) -> tuple[str, bytes, int]:
    """(algorithm, public key, version) of a Transit key version (the latest by default)."""
    try:
        data = client.secrets.transit.read_key(name=name, mount_point=mount)["data"]
    except _VAULT_ERRORS as exc:
        raise _vault_error(f"read key {mount}/{name}", exc) from exc
    version = int(data["latest_version"]) if version is None else int(version)
    info = (data.get("keys") or {}).get(str(version))
    if not isinstance(info, dict) or not info.get("public_key"):
        raise SigningError(f"Transit key {mount}/{name} has no public key for version {version}")
    if data.get("type") == "ed25519" and not data.get("derived"):
        public = base64.b64decode(info["public_key"])
        if len(public) != 32:
            raise SigningError(f"Transit key {mount}/{name} v{version} is not a 32-byte Ed25519 key")
        return ED25519, public, version
    if data.get("type") == "ecdsa-p256":
        loaded = load_pem_public_key(info["public_key"].encode("ascii"))
        if not isinstance(loaded, ec.EllipticCurvePublicKey):
            raise SigningError(f"Transit key {mount}/{name} v{version} is not a P-256 key")
        return ECDSA_P256, loaded.public_bytes(Encoding.X962, PublicFormat.UncompressedPoint), version
    raise SigningError(f"Transit key {mount}/{name} has type {data.get('type')!r} (derived: {data.get('derived')}); "
                       "decisions are signed with non-derived ed25519 (or ecdsa-p256) keys")


def transit_key_ensure(client: hvac.Client, name: str, *, mount: str = "transit", key_type: str = "ed25519") -> None:
    """Create the approver's Transit key if it does not exist (not exportable, not deletable)."""
    if client is None:
        raise SigningError("a Vault client allowed to manage Transit keys is needed to enrol a Transit key")
    try:
        client.secrets.transit.read_key(name=name, mount_point=mount)
        return
    except hvac.exceptions.InvalidPath:
        pass
    except _VAULT_ERRORS as exc:
        raise _vault_error(f"read key {mount}/{name}", exc) from exc
    try:
        client.secrets.transit.create_key(name=name, key_type=key_type, exportable=False, mount_point=mount)
    except _VAULT_ERRORS as exc:
        raise _vault_error(f"create key {mount}/{name}", exc) from exc


def transit_key_rotate(client: hvac.Client, name: str, *, mount: str = "transit") -> None:
    if client is None:
        raise SigningError("a Vault client allowed to manage Transit keys is needed to rotate a Transit key")
    try:
        client.secrets.transit.rotate_key(name=name, mount_point=mount)
    except _VAULT_ERRORS as exc:
        raise _vault_error(f"rotate key {mount}/{name}", exc) from exc


def vault_approver_auth_configure(client: hvac.Client, *, jwks_url: str, issuer: str, audience: str,
                                  jwt_mount: str = "jwt", role: str = "gatehouse-approver",
                                  transit_mount: str = "transit", token_ttl: str = "60s") -> str:
    """Set up Vault for TransitSigner (with an administrator's client): the JWT auth method trusting
    the realm's JWKS, a role mapping ``sub`` to the entity alias, and the templated policy that lets a
    token sign with the Transit key named after its own subject only. Returns the policy text."""
    try:
        methods = client.sys.list_auth_methods()
        methods = methods.get("data", methods)
        if f"{jwt_mount}/" not in methods:
            client.sys.enable_auth_method(method_type="jwt", path=jwt_mount)
            methods = client.sys.list_auth_methods()
            methods = methods.get("data", methods)
        accessor = methods[f"{jwt_mount}/"]["accessor"]
        policy = (
            f'path "{transit_mount}/sign/{{{{identity.entity.aliases.{accessor}.name}}}}" '
            '{\n  capabilities = ["update"]\n}\n'
        )
        client.sys.create_or_update_policy(name=APPROVER_POLICY, policy=policy)
        client.auth.jwt.configure(jwks_url=jwks_url, bound_issuer=issuer, jwt_supported_algs=["RS256"], path=jwt_mount)
        client.auth.jwt.create_role(
            name=role, role_type="jwt", user_claim="sub", bound_audiences=[audience], allowed_redirect_uris=[],
            token_policies=[APPROVER_POLICY], token_ttl=token_ttl, token_max_ttl=token_ttl,
            token_no_default_policy=False, path=jwt_mount,
        )
    except _VAULT_ERRORS as exc:
        raise _vault_error("configure JWT auth for approvers", exc) from exc
    return policy


def vault_token_for_approver(access_token: str, *, url: str | None = None, jwt_mount: str | None = None,
                             role: str | None = None, verify: bool | str | None = None) -> hvac.Client:
    """Log in to Vault with the approver's access token; a client holding the short-lived token."""
    conf = settings.GATEHOUSE_APPROVAL_SIGNING
    url = url or conf["VAULT_URL"]
    if not url:
        raise SigningError("GATEHOUSE_APPROVAL_VAULT_URL (or GATEHOUSE_VAULT_URL) is not set")
    client = _client(url, verify=conf["VAULT_VERIFY_TLS"] if verify is None else verify)
    try:
        client.auth.jwt.jwt_login(role=role or conf["VAULT_JWT_ROLE"], jwt=access_token, use_token=True,
                                  path=jwt_mount or conf["VAULT_JWT_MOUNT"])
    except _VAULT_ERRORS as exc:
        raise _vault_error("JWT login", exc) from exc
    if not client.token:
        raise SigningError("Vault's JWT login returned no token")
    return client


class TransitSigner:
    """Signs with the approver's Transit key, version pinned to the registered ApproverKey.

    ``access_token``: the approver's own access token. Vault, not this class, decides whether that
    token may use the key: nothing here compares the token's subject with the key's name."""

    def __init__(self, key: ApproverKey, access_token: str, *, url: str | None = None, jwt_mount: str | None = None,
                 role: str | None = None, verify: bool | str | None = None) -> None:
        if key.backend != KeyBackend.TRANSIT:
            raise SigningKeyError(f"key {key.key_id} is not a Transit key")
        self.key = key
        self.key_id = key.key_id
        self._access_token = access_token
        self._login = {"url": url, "jwt_mount": jwt_mount, "role": role, "verify": verify}

    @classmethod
    def for_user(cls, user, access_token: str, **login) -> TransitSigner:
        key = active_key(user, KeyBackend.TRANSIT)
        if key is None:
            raise SigningKeyError(f"{user.get_username()} has no Transit signing key in use (enrol one)")
        return cls(key, access_token, **login)

    def sign(self, document_bytes: bytes) -> tuple[str, bytes]:
        key = _check_usable(self.key)
        ref = key.backend_ref
        client = vault_token_for_approver(self._access_token, **self._login)
        try:
            answer = client.secrets.transit.sign_data(
                name=ref["name"], hash_input=base64.b64encode(bytes(document_bytes)).decode("ascii"),
                key_version=int(ref["version"]), mount_point=ref["mount"],
                **({"hash_algorithm": "sha2-256", "marshaling_algorithm": "asn1"} if key.algorithm == ECDSA_P256 else {}),
            )
        except _VAULT_ERRORS as exc:
            raise _vault_error(f"sign with {ref['mount']}/{ref['name']} v{ref['version']}", exc) from exc
        finally:
            try:
                client.auth.token.revoke_self()
            except _VAULT_ERRORS:
                pass  # short-lived anyway
        token = (answer or {}).get("data", {}).get("signature") if isinstance(answer, dict) else None
        match = _SIGNATURE_RE.match(token) if isinstance(token, str) else None
        if match is None or int(match.group(1)) != int(ref["version"]):
            raise SigningError(f"unexpected Transit signature {token!r}")
        try:
            signature = base64.b64decode(match.group(2), validate=True)
        except (binascii.Error, ValueError) as exc:
            raise SigningError("Transit signature is not valid base64") from exc
        if key_fingerprint(key.algorithm, bytes(key.public_key)) != key.key_id:
            raise SigningKeyError(f"the registered public key of {key.key_id} is not that key")
        try:
            _verify_raw(key_record(key), signature, bytes(document_bytes))
        except DecisionSignatureError as exc:
            raise SigningError(f"Transit's signature does not verify with the registered key {key.key_id}: {exc}") from exc
        return key.key_id, signature

    def public_key(self, key_id: str) -> bytes:
        return _registered_public_key(key_id)


def signer_for(user, *, access_token: str | None = None) -> Signer:
    """The configured backend's signer for this approver (Transit needs their access token)."""
    backend = settings.GATEHOUSE_APPROVAL_SIGNING["BACKEND"]
    if backend == KeyBackend.LOCAL:
        return LocalSigner.for_user(user)
    if backend == KeyBackend.TRANSIT:
        if not access_token:
            raise SigningError("signing through Vault needs the approver's access token")
        return TransitSigner.for_user(user, access_token)
    raise SigningError(f"unknown GATEHOUSE_APPROVAL_SIGNER {backend!r}")
