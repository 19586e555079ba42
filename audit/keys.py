"""The key that signs checkpoints: an Ed25519 key in a file, or an OpenBao/Vault Transit key.
Every key that ever signed is kept in AuditKey, so rotated-out keys still verify old checkpoints."""
from __future__ import annotations

import os
import threading
from pathlib import Path

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.utils import timezone

from .models import AuditKey
from .services import audit_append
from .note import Ed25519NoteSigner

_lock = threading.Lock()
_cached: dict[str, object] = {}


def _file_signer(path: Path, name: str):
    if not path.exists():
        if settings.PROFILE == "production":
            raise ImproperlyConfigured(f"the audit signing key {path} does not exist (create it with manage.py audit_rotate_key)")
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        signer = Ed25519NoteSigner.generate(name)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(signer.signer_key() + "\n")
    return Ed25519NoteSigner.from_key_string(path.read_text().strip())


def _vault_signer(config):
    from .signing_vault import VaultTransitNoteSigner, vault_client_from_approle

    if not (config["VAULT_URL"] and config["VAULT_ROLE_ID"] and config["VAULT_SECRET_ID"]):
        raise ImproperlyConfigured("GATEHOUSE_AUDIT_SIGNER=vault needs GATEHOUSE_VAULT_URL, _ROLE_ID and _SECRET_ID")
    client = vault_client_from_approle(config["VAULT_URL"], config["VAULT_ROLE_ID"], config["VAULT_SECRET_ID"])
    return VaultTransitNoteSigner(client, config["VAULT_KEY"], mount=config["VAULT_MOUNT"])


def get_signer():
    """The current signer, registered in AuditKey the first time it is used."""
    config = settings.GATEHOUSE_AUDIT
    cache_key = f"{config['SIGNER']}:{config['KEY_FILE']}:{config['VAULT_KEY']}"
    with _lock:
        signer = _cached.get(cache_key)
        if signer is None:
            if config["SIGNER"] == "vault":
                signer = _vault_signer(config)
            elif config["SIGNER"] == "file":
                signer = _file_signer(Path(config["KEY_FILE"]), config["KEY_NAME"])
            else:
                raise ImproperlyConfigured(f"unknown GATEHOUSE_AUDIT_SIGNER {config['SIGNER']!r}")
            _cached[cache_key] = signer
    _register(signer, config["SIGNER"])
    return signer


def _register(signer, backend: str) -> None:
    from .services import audit_append

    key, created = AuditKey.objects.get_or_create(
        verifier_key=signer.verifier_key(),
        defaults={"name": signer.name, "key_id": f"{signer.key_id:08x}", "backend": backend},
    )
    if created:
        audit_append(event="audit.key_created", object_type="auditkey", object_id=str(key.id),
                     data={"name": key.name, "key_id": key.key_id, "backend": backend, "verifier_key": key.verifier_key})


def forget_signer() -> None:
    with _lock:
        _cached.clear()


def rotate_file_key() -> str:
    """Archive the current key file, create a new one, retire the old key (kept for verification)."""
    config = settings.GATEHOUSE_AUDIT
    path = Path(config["KEY_FILE"])
    if path.exists():
        old = Ed25519NoteSigner.from_key_string(path.read_text().strip())
        stamp = timezone.now().strftime("%Y%m%dT%H%M%S")
        path.rename(path.with_name(f"{path.name}.retired-{stamp}"))
        retired = AuditKey.objects.filter(verifier_key=old.verifier_key(), retired_at__isnull=True)
        for key in retired:
            audit_append(event="audit.key_retired", object_type="auditkey", object_id=str(key.id),
                         data={"name": key.name, "key_id": key.key_id})
        retired.update(retired_at=timezone.now())
    forget_signer()
    name = f"{config['KEY_NAME']}-{timezone.now().strftime('%Y%m%d%H%M%S')}"
    signer = _file_signer(path, name)
    _register(signer, "file")
    return signer.verifier_key()
