"""Backend credentials (an SSH key for a login node, a slurmrestd JWT, AWS keys or a role): read for
a task at dispatch, written by tenant admins, never in the database, logs or artefacts.

Two stores behind one interface (`read(slug, backend)`, `write(slug, backend, values)`):

* **vault** (OpenBao/Vault KV v2): `<KV_MOUNT>/data/tenants/<tenant-slug>/backends/<backend>`.
  Vault itself keeps tenants apart. Each tenant has its own AppRole (on the mount
  VAULT_TENANT_APPROLE_MOUNT, role name = tenant slug), whose tokens carry one templated policy
  (`vault_tenant_policy`) that opens `tenants/<the role's own name>/backends/*` and nothing else: a
  token of one tenant asking for another's path gets 403 from Vault. The gateway logs in with its
  own AppRole (VAULT_ROLE_ID/VAULT_SECRET_ID) once per process; that token reads no secret: it may
  only create tenant roles (with that policy and no other, enforced by `allowed_parameters`) and
  issue single-use secret ids for them. A tenant's token is obtained once per process and tenant,
  and renewed when a third of its TTL is left (logged in again when renewal fails).
* **local** (the embedded default): one file per backend under LOCAL_DIR/<slug>/, sealed with
  AES-256-GCM under the master key file (created on first use outside production); the tenant and
  backend are bound in as associated data, so a file copied to another tenant's place does not open.

`credentials_get` keeps what it read in memory for CACHE_SECONDS (seconds), audits every read
(`credential.read`, key names and source, never values), and turns "the store did not answer" into
CredentialsUnavailable (retryable: the task waits and retries; it never runs without credentials).
`credentials_set` audits the write (`credential.written`, key names only) and records which keys
are set and when (`BackendCredentialSet`), the only trace in the database.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import hvac
import hvac.exceptions
import requests
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.db import transaction

from .base import ExecutorError

__all__ = [
    "CredentialsError",
    "CredentialsMissing",
    "CredentialsRefused",
    "CredentialsUnavailable",
    "LocalCredentialStore",
    "VaultCredentialStore",
    "credential_store",
    "credentials_for_task",
    "credentials_get",
    "credentials_set",
    "credentials_status",
    "forget_credential_store",
    "vault_credentials_setup",
    "vault_tenant_policy",
]

KEY_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]{0,63}$")
MAX_KEYS = 32
MAX_VALUE_BYTES = 64 * 1024


class CredentialsError(ExecutorError):
    """A backend's credentials could not be had. `retryable` says whether waiting may help."""

    retryable = False


class CredentialsUnavailable(CredentialsError):
    """The credential store did not answer (Vault down, sealed, unreachable): retry later."""

    retryable = True

    def __init__(self, message: str) -> None:
        super().__init__("credentials_unavailable", message)


class CredentialsRefused(CredentialsError):
    """The store refused (Vault answered 403): a policy or configuration problem, not transient."""

    def __init__(self, message: str) -> None:
        super().__init__("credentials_refused", message)


class CredentialsMissing(CredentialsError):
    def __init__(self, message: str) -> None:
        super().__init__("credentials_missing", message)


def _check_values(values) -> dict[str, str]:
    from gateway.errors import ErrorCode, GatehouseError

    if not isinstance(values, dict) or not values:
        raise GatehouseError(ErrorCode.CREDENTIALS_INVALID, "Credentials are a non-empty mapping of names to strings.")
    if len(values) > MAX_KEYS:
        raise GatehouseError(ErrorCode.CREDENTIALS_INVALID, f"At most {MAX_KEYS} credential keys.")
    bad = sorted(k for k in values if not isinstance(k, str) or not KEY_NAME.match(k))
    if bad:
        raise GatehouseError(ErrorCode.CREDENTIALS_INVALID, "Credential key names are 1-64 letters, digits, '_', '.' "
                             "or '-', starting with a letter or '_'.", detail=[{"key": str(k)[:64]} for k in bad])
    wrong = sorted(k for k, v in values.items() if not isinstance(v, str) or len(v.encode("utf-8")) > MAX_VALUE_BYTES)
    if wrong:
        raise GatehouseError(ErrorCode.CREDENTIALS_INVALID,
                             f"Each credential value is a string of at most {MAX_VALUE_BYTES} bytes.",
                             detail=[{"key": k} for k in wrong])
    return dict(values)


# --------------------------------------------------------------------------- local store

_SEAL_VERSION = b"\x01"
_AAD = b"gatehouse-credentials|v1|"


def _master_key(path: Path) -> bytes:
    from gateway.keyfiles import master_key_bytes

    return master_key_bytes(path, "the credentials master key")


class LocalCredentialStore:
    """Sealed files: `<root>/<slug>/<backend>.sealed` = version, nonce, AES-256-GCM ciphertext of the
    JSON values, with `<slug>/<backend>` as associated data."""

    name = "local"

    def __init__(self, root: str | Path, master_key_file: str | Path) -> None:
        self.root = Path(root)
        self.master_key_file = Path(master_key_file)
        self._aead: AESGCM | None = None

    def _cipher(self) -> AESGCM:
        if self._aead is None:
            self._aead = AESGCM(_master_key(self.master_key_file))
        return self._aead

    def path(self, slug: str, backend: str) -> Path:
        if not KEY_NAME.match(backend) or not re.fullmatch(r"[-a-zA-Z0-9_]+", slug):
            raise CredentialsRefused("not a tenant slug and backend name")
        return self.root / slug / f"{backend}.sealed"

    def read(self, slug: str, backend: str) -> dict[str, str] | None:
        path = self.path(slug, backend)
        try:
            sealed = path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise CredentialsUnavailable(f"the local credential store could not be read ({exc.strerror})") from None
        if sealed[:1] != _SEAL_VERSION or len(sealed) < 1 + 12 + 16:
            raise CredentialsRefused(f"the sealed credentials of backend {backend!r} are not in a known format")
        try:
            plain = self._cipher().decrypt(sealed[1:13], sealed[13:], _AAD + f"{slug}/{backend}".encode())
        except InvalidTag:
            raise CredentialsRefused(f"the sealed credentials of backend {backend!r} do not open under the master "
                                     "key (another key, another tenant's file, or changed bytes)") from None
        return json.loads(plain)

    def write(self, slug: str, backend: str, values: dict[str, str]) -> int:
        path = self.path(slug, backend)
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        nonce = secrets.token_bytes(12)
        plain = json.dumps(values, sort_keys=True).encode("utf-8")
        sealed = _SEAL_VERSION + nonce + self._cipher().encrypt(nonce, plain, _AAD + f"{slug}/{backend}".encode())
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(sealed)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
        return 0


# --------------------------------------------------------------------------- Vault


def vault_tenant_policy(*, kv_mount: str, tenant_approle_accessor: str) -> str:
    """The one policy every tenant role's tokens carry: the path of the role's own name (its tenant
    slug), templated by Vault on the token's AppRole alias; nothing else."""
    who = f"{{{{identity.entity.aliases.{tenant_approle_accessor}.metadata.role_name}}}}"
    return (f'path "{kv_mount}/data/tenants/{who}/backends/*" {{\n'
            f'  capabilities = ["create", "update", "read"]\n}}\n')


def _broker_policy(*, tenant_approle_mount: str, tenant_policy: str) -> str:
    return f'''
path "auth/{tenant_approle_mount}/role/+" {{
  capabilities = ["create", "update", "read"]
  allowed_parameters = {{
    "token_policies" = ["{tenant_policy}"]
    "token_ttl" = []
    "token_max_ttl" = []
    "secret_id_ttl" = []
    "secret_id_num_uses" = []
  }}
}}
path "auth/{tenant_approle_mount}/role/+/role-id" {{
  capabilities = ["read"]
}}
path "auth/{tenant_approle_mount}/role/+/secret-id" {{
  capabilities = ["update"]
}}
'''


def vault_credentials_setup(admin: hvac.Client, *, kv_mount: str = "gatehouse", approle_mount: str = "approle",
                            tenant_approle_mount: str = "gatehouse-tenants",
                            tenant_policy: str = "gatehouse-tenant-credentials",
                            broker_role: str = "gatehouse-credentials", broker_token_ttl: str = "1h",
                            broker_token_max_ttl: str = "24h") -> tuple[str, str]:
    """Prepare a Vault for the credential store with an administrator's client (idempotent): the KV v2
    mount, the AppRole mounts, the templated tenant policy, the gateway's (broker) policy and role.
    Returns the gateway's role id and a new secret id (GATEHOUSE_CREDENTIALS_VAULT_ROLE_ID/_SECRET_ID)."""
    mounts = admin.sys.list_mounted_secrets_engines()
    mounts = mounts.get("data", mounts)
    if f"{kv_mount}/" not in mounts:
        admin.sys.enable_secrets_engine("kv", path=kv_mount, options={"version": "2"})
    auths = admin.sys.list_auth_methods()
    auths = auths.get("data", auths)
    for mount in (approle_mount, tenant_approle_mount):
        if f"{mount}/" not in auths:
            admin.sys.enable_auth_method("approle", path=mount)
    accessor = admin.sys.list_auth_methods()["data"][f"{tenant_approle_mount}/"]["accessor"]
    admin.sys.create_or_update_policy(tenant_policy, vault_tenant_policy(kv_mount=kv_mount,
                                                                         tenant_approle_accessor=accessor))
    broker_policy = f"{broker_role}-broker"
    admin.sys.create_or_update_policy(broker_policy, _broker_policy(tenant_approle_mount=tenant_approle_mount,
                                                                    tenant_policy=tenant_policy))
    admin.auth.approle.create_or_update_approle(broker_role, token_policies=[broker_policy],
                                                token_ttl=broker_token_ttl, token_max_ttl=broker_token_max_ttl,
                                                mount_point=approle_mount)
    role_id = admin.auth.approle.read_role_id(broker_role, mount_point=approle_mount)["data"]["role_id"]
    secret_id = admin.auth.approle.generate_secret_id(broker_role, mount_point=approle_mount)["data"]["secret_id"]
    return role_id, secret_id


_UNAVAILABLE = (requests.RequestException, hvac.exceptions.VaultDown, hvac.exceptions.InternalServerError,
                hvac.exceptions.BadGateway, hvac.exceptions.RateLimitExceeded)


@dataclass
class _Session:
    client: hvac.Client
    ttl: float
    expires_at: float  # time.monotonic()
    renewable: bool


class VaultCredentialStore:
    """KV v2 per tenant, read and written with that tenant's own token (see the module)."""

    name = "vault"

    def __init__(self, *, url: str, role_id: str, secret_id: str, approle_mount: str = "approle",
                 tenant_approle_mount: str = "gatehouse-tenants", tenant_policy: str = "gatehouse-tenant-credentials",
                 kv_mount: str = "gatehouse", tenant_token_ttl: int = 900, verify: bool | str = True,
                 timeout: float = 5.0) -> None:
        if not (url and role_id and secret_id):
            raise ImproperlyConfigured("the Vault credential store needs a URL, a role id and a secret id")
        self.url, self._role_id, self._secret_id = url, role_id, secret_id
        self.approle_mount, self.tenant_approle_mount = approle_mount, tenant_approle_mount
        self.tenant_policy, self.kv_mount, self.tenant_token_ttl = tenant_policy, kv_mount, int(tenant_token_ttl)
        self.verify, self.timeout = verify, timeout
        self._lock = threading.RLock()
        self._broker: _Session | None = None
        self._tenants: dict[str, _Session] = {}
        self.stats: Counter = Counter()  # logins and renewals, by who: "broker" or the tenant slug

    def _client(self, token: str | None = None) -> hvac.Client:
        session = requests.Session()
        session.trust_env = False  # never through a proxy from the environment
        return hvac.Client(url=self.url, token=token, verify=self.verify, timeout=self.timeout, session=session)

    @staticmethod
    def _session(client: hvac.Client, auth: dict) -> _Session:
        ttl = float(auth.get("lease_duration") or 0)
        return _Session(client, ttl, time.monotonic() + ttl if ttl else float("inf"), bool(auth.get("renewable")))

    def _fresh(self, session: _Session | None, who: str, login) -> _Session:
        """The session, renewed when a third of its TTL is left; a new login when there is none or
        renewal fails (past its maximum TTL, revoked)."""
        if session is not None:
            left = session.expires_at - time.monotonic()
            if left > session.ttl / 3:
                return session
            if session.renewable and left > 0:
                try:
                    auth = session.client.auth.token.renew_self()["auth"]
                except _UNAVAILABLE:
                    raise
                except hvac.exceptions.VaultError:
                    auth = None
                if auth and float(auth.get("lease_duration") or 0) > session.ttl / 3:
                    self.stats[f"renewals:{who}"] += 1
                    return self._session(session.client, auth)
        self.stats[f"logins:{who}"] += 1
        return login()

    def _broker_login(self) -> _Session:
        client = self._client()
        auth = client.auth.approle.login(role_id=self._role_id, secret_id=self._secret_id,
                                         mount_point=self.approle_mount)["auth"]
        return self._session(client, auth)

    def _tenant_login(self, slug: str) -> _Session:
        self._broker = self._fresh(self._broker, "broker", self._broker_login)
        broker = self._broker.client.auth.approle
        try:
            role_id = broker.read_role_id(slug, mount_point=self.tenant_approle_mount)["data"]["role_id"]
        except hvac.exceptions.InvalidPath:  # the tenant's first credential: its role
            broker.create_or_update_approle(
                slug, token_policies=[self.tenant_policy], token_ttl=f"{self.tenant_token_ttl}s",
                token_max_ttl=f"{self.tenant_token_ttl * 4}s", secret_id_ttl="60s", secret_id_num_uses=1,
                mount_point=self.tenant_approle_mount)
            role_id = broker.read_role_id(slug, mount_point=self.tenant_approle_mount)["data"]["role_id"]
        secret_id = broker.generate_secret_id(slug, mount_point=self.tenant_approle_mount)["data"]["secret_id"]
        client = self._client()
        auth = client.auth.approle.login(role_id=role_id, secret_id=secret_id,
                                         mount_point=self.tenant_approle_mount)["auth"]
        return self._session(client, auth)

    def tenant_client(self, slug: str) -> hvac.Client:
        """An hvac client holding the tenant's own token (its policy opens that tenant's path only)."""
        if not re.fullmatch(r"[-a-zA-Z0-9_]+", slug):
            raise CredentialsRefused("not a tenant slug")
        with self._lock:
            session = self._fresh(self._tenants.get(slug), slug, lambda: self._tenant_login(slug))
            self._tenants[slug] = session
            return session.client

    def _call(self, slug: str, action: str, fn):
        for attempt in (1, 2):
            try:
                return fn(self.tenant_client(slug))
            except _UNAVAILABLE as exc:
                raise CredentialsUnavailable(f"Vault did not answer ({action}: {type(exc).__name__}); "
                                             "the task waits and retries") from None
            except hvac.exceptions.Forbidden:
                with self._lock:  # an expired or revoked token also answers 403: log in once more
                    self._tenants.pop(slug, None)
                    if attempt == 2:
                        self._broker = None
                if attempt == 2:
                    raise CredentialsRefused(f"Vault refused {action} (403)") from None
            except hvac.exceptions.VaultError as exc:
                raise CredentialsRefused(f"Vault refused {action} ({type(exc).__name__})") from None

    def kv_path(self, slug: str, backend: str) -> str:
        return f"tenants/{slug}/backends/{backend}"

    def read(self, slug: str, backend: str) -> dict[str, str] | None:
        def read(client):
            try:
                response = client.secrets.kv.v2.read_secret_version(
                    path=self.kv_path(slug, backend), mount_point=self.kv_mount, raise_on_deleted_version=True)
            except hvac.exceptions.InvalidPath:
                return None
            return dict(response["data"]["data"])

        return self._call(slug, f"reading the credentials of backend {backend!r}", read)

    def write(self, slug: str, backend: str, values: dict[str, str]) -> int:
        def write(client):
            response = client.secrets.kv.v2.create_or_update_secret(
                path=self.kv_path(slug, backend), secret=dict(values), mount_point=self.kv_mount)
            return int(response["data"]["version"])

        return self._call(slug, f"writing the credentials of backend {backend!r}", write)


# --------------------------------------------------------------------------- the process's store

_store_lock = threading.Lock()
_store: tuple[str, object] | None = None
_cache_lock = threading.Lock()
_cache: dict[tuple[int, str], tuple[float, dict[str, str]]] = {}


def _config_key(config: dict) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()


def credential_store():
    """The configured store, one per process (the Vault store's logins are kept in it)."""
    global _store
    config = settings.GATEHOUSE_CREDENTIALS
    key = _config_key(config)
    with _store_lock:
        if _store is not None and _store[0] == key:
            return _store[1]
        if config["STORE"] == "local":
            store = LocalCredentialStore(config["LOCAL_DIR"], config["MASTER_KEY_FILE"])
        elif config["STORE"] == "vault":
            store = VaultCredentialStore(
                url=config["VAULT_URL"], role_id=config["VAULT_ROLE_ID"], secret_id=config["VAULT_SECRET_ID"],
                approle_mount=config["VAULT_APPROLE_MOUNT"], tenant_approle_mount=config["VAULT_TENANT_APPROLE_MOUNT"],
                tenant_policy=config["VAULT_TENANT_POLICY"], kv_mount=config["VAULT_KV_MOUNT"],
                tenant_token_ttl=config["VAULT_TENANT_TOKEN_TTL"], verify=config["VAULT_VERIFY_TLS"],
                timeout=config["VAULT_TIMEOUT"])
        else:
            raise ImproperlyConfigured(f"GATEHOUSE_CREDENTIALS_STORE must be local or vault, not {config['STORE']!r}")
        _store = (key, store)
        return store


def forget_credential_store() -> None:
    """Drop the process's store (its Vault logins) and every cached credential (tests, reconfiguration)."""
    global _store
    with _store_lock:
        _store = None
    with _cache_lock:
        _cache.clear()


def _configured_backend(tenant, backend: str):
    from executors.backends import tenant_backends

    backends, _ = tenant_backends(tenant.id)
    return next((b for b in backends if b.name == backend), None)


def credentials_get(*, tenant, backend: str, actor=None, task=None) -> dict[str, str]:
    """The backend's credentials for one use, from the cache (CACHE_SECONDS) or the store. Every call
    is audited without the values. Raises CredentialsUnavailable (retry later), CredentialsMissing or
    CredentialsRefused; never returns without credentials."""
    from audit.services import audit_append

    now = time.monotonic()
    key = (tenant.id, backend)
    with _cache_lock:
        cached = _cache.get(key)
    source = "cache"
    values = cached[1] if cached is not None and cached[0] > now else None
    data = {"backend": backend, "task": None if task is None else f"{task.run_id}/{task.key}"}
    if values is None:
        store = credential_store()
        source = store.name
        try:
            values = store.read(tenant.slug, backend)
            if values is None:
                raise CredentialsMissing(f"no credentials are set for backend {backend!r}")
        except CredentialsError as exc:
            audit_append(event="credential.read", tenant=tenant, actor=actor, object_type="backend",
                         object_id=backend, outcome="error", error_code=exc.code, data={**data, "source": source})
            raise
        ttl = float(settings.GATEHOUSE_CREDENTIALS["CACHE_SECONDS"])
        if ttl > 0:
            with _cache_lock:
                _cache[key] = (time.monotonic() + ttl, values)
    audit_append(event="credential.read", tenant=tenant, actor=actor, object_type="backend", object_id=backend,
                 data={**data, "source": source, "keys": sorted(values)})
    return dict(values)


def credentials_for_task(task) -> dict[str, str]:
    """For an executor at dispatch: the credentials of the task's backend, read for its tenant."""
    from gateway.models import Tenant

    return credentials_get(tenant=Tenant.objects.get(id=task.tenant_id), backend=task.backend, task=task)


def credentials_set(*, tenant, backend: str, values: dict, actor):
    """Store a backend's credentials (replacing the previous ones) and record which keys are set.
    The backend must be one of the tenant's. Audited with the key names only."""
    from audit.services import audit_append
    from gateway.errors import NotFound

    from .models import BackendCredentialSet

    values = _check_values(values)
    if _configured_backend(tenant, backend) is None:
        raise NotFound("No such backend.")
    store = credential_store()
    with transaction.atomic():
        row = BackendCredentialSet.objects.select_for_update().filter(tenant=tenant, backend=backend).first()
        before = sorted(row.keys) if row is not None else None
        if row is None:
            row = BackendCredentialSet(tenant=tenant, backend=backend, version=0)
        row.keys, row.store, row.updated_by = sorted(values), store.name, actor
        row.version += 1
        row.save()
        audit_append(event="credential.written", tenant=tenant, actor=actor, object_type="backend",
                     object_id=backend, data={"backend": backend, "store": store.name, "keys_before": before,
                                              "keys": sorted(values), "version": row.version})
        # Last, so that a refusal leaves no row and no entry (a remote write cannot join the transaction).
        store.write(tenant.slug, backend, values)
    with _cache_lock:
        _cache.pop((tenant.id, backend), None)
    return row


def credentials_status(*, tenant, backend: str) -> dict:
    """Which keys are set and when; never a value."""
    from gateway.errors import NotFound

    from .models import BackendCredentialSet

    if _configured_backend(tenant, backend) is None:
        raise NotFound("No such backend.")
    row = BackendCredentialSet.objects.filter(tenant=tenant, backend=backend).select_related("updated_by").first()
    if row is None:
        return {"backend": backend, "set": False, "keys": [], "updated_at": None, "updated_by": None, "store": None,
                "version": 0}
    return {"backend": backend, "set": True, "keys": list(row.keys), "updated_at": row.updated_at,
            "updated_by": row.updated_by.get_username() if row.updated_by else None, "store": row.store,
            "version": row.version}
