"""Channel-layer group names.

A message about an object of tenant T with label L goes to the group of (T, L) only; a socket is
in that group only while its user may read L in T (gateway.selectors.scope_for decides it). Group
names may hold ASCII letters, digits, hyphens, underscores and periods and must stay under 100
characters, so the label appears as a short digest of its canonical banner (the form every row
stores), never in clear.
"""
from __future__ import annotations

import hashlib
from functools import lru_cache

PREFIX = "gh"


@lru_cache(maxsize=4096)
def label_group(tenant_id: int, banner: str) -> str:
    """The group of every socket allowed to read `banner` (canonical, as stored) in the tenant."""
    digest = hashlib.sha256(banner.encode("utf-8")).hexdigest()[:24]
    return f"{PREFIX}.t{int(tenant_id)}.l{digest}"


def tenant_group(tenant_id: int) -> str:
    """Control messages for every socket of the tenant (a label registered since they connected).
    Never carries an event about an object."""
    return f"{PREFIX}.t{int(tenant_id)}.ctl"


def user_group(user_id: int) -> str:
    """Control messages for every socket of one user (their clearance, roles or account changed)."""
    return f"{PREFIX}.u{int(user_id)}"
