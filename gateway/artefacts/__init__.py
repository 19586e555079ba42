"""Content-addressed, per-tenant artefact storage (pure Python, no Django).

See :mod:`gateway.artefacts.store` for the design notes.
"""

from gateway.artefacts.store import (
    CHUNK_SIZE,
    ArtefactError,
    ArtefactStore,
    Blob,
    FileStore,
    S3Store,
    VerifyingReader,
    store_from_config,
    validate_digest,
    validate_tenant,
)

__all__ = [
    "CHUNK_SIZE",
    "ArtefactError",
    "ArtefactStore",
    "Blob",
    "FileStore",
    "S3Store",
    "VerifyingReader",
    "store_from_config",
    "validate_digest",
    "validate_tenant",
]
