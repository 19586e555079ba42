"""The configured artefact store, and recording artefacts against task attempts."""
from __future__ import annotations

from functools import lru_cache

from django.conf import settings

from .artefacts import ArtefactStore, store_from_config


@lru_cache(maxsize=1)
def _store(key: str) -> ArtefactStore:
    return store_from_config(settings.GATEHOUSE_ARTEFACT_STORE)


def get_store() -> ArtefactStore:
    # Keyed by the configuration so tests that override the setting get their own store.
    return _store(repr(sorted(settings.GATEHOUSE_ARTEFACT_STORE.items())))


def tenant_key(tenant_id: int) -> str:
    """The store's namespace of one tenant."""
    return f"t{tenant_id}"
