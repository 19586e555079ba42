"""Master key files: 32 random bytes, base64, mode 0600. Outside production a missing file is made on
first use (the embedded default needs no set-up); in production it must exist."""
from __future__ import annotations

import base64
import os
import secrets
from pathlib import Path

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured


def master_key_bytes(path: str | Path, what: str) -> bytes:
    """The key held in `path` (`what` names it in errors: "the approval master key")."""
    path = Path(path)
    if not path.exists():
        if settings.PROFILE == "production":
            raise ImproperlyConfigured(f"{what} {path} does not exist")
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass  # another process made it first
        else:
            with os.fdopen(fd, "w") as out:
                out.write(base64.b64encode(secrets.token_bytes(32)).decode("ascii") + "\n")
    try:
        raw = base64.b64decode(path.read_text().strip(), validate=True)
    except ValueError as exc:
        raise ImproperlyConfigured(f"{what} {path} is not base64") from exc
    if len(raw) != 32:
        raise ImproperlyConfigured(f"{what} {path} must hold 32 bytes (base64), not {len(raw)}")
    return raw
