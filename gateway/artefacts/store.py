"""Content-addressed artefact store.

Artefacts (task outputs, stdout/stderr captures, analysts' form input) are
stored by the lowercase hex SHA-256 of their content.  Two backends are
provided:

* :class:`FileStore` -- a directory tree on local disk (the default);
* :class:`S3Store` -- an S3 bucket (or S3-compatible service) via boto3.

Design rules shared by both backends:

* **Per-tenant namespaces.**  Every blob lives under its tenant's own prefix.
  Identical content uploaded by two tenants is stored twice, so one tenant can
  never learn (e.g. through de-duplication or timing) whether another tenant
  holds a given blob.
* **Streaming with bounded memory.**  Writes and reads move data in 1 MiB
  chunks; the whole content is only held in memory by :meth:`read_bytes`.
* **Verified reads.**  Every read path hashes the content as it streams and
  raises ``ArtefactError("digest_mismatch")`` if what the backend returned does
  not match the requested digest (bit rot, tampering, truncation).
* **Validated names.**  Digests must be 64 lowercase hex characters and tenant
  names ``[A-Za-z0-9_-]{1,64}``, so no caller-provided value can escape its
  directory / key prefix.

This module deliberately has no Django dependency; the Django layer records the
media type and other reference metadata next to the digest (see
:class:`Blob`).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import re
import stat
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, BinaryIO, Final, cast

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

#: Streaming granularity for reads and writes.
CHUNK_SIZE: Final = 1 << 20  # 1 MiB
_MiB: Final = 1 << 20

_DIGEST_RE: Final = re.compile(r"[0-9a-f]{64}")
_TENANT_RE: Final = re.compile(r"[A-Za-z0-9_-]{1,64}")


# --------------------------------------------------------------------------
# Errors, value types, validation
# --------------------------------------------------------------------------


class ArtefactError(Exception):
    """An artefact-store failure with a stable, machine-readable ``code``.

    Codes:

    ``not_found``
        No blob with that digest exists *for that tenant*.
    ``digest_mismatch``
        The stored content does not hash to (or is not the size of) the
        requested digest: corruption or tampering.
    ``too_large``
        The content exceeds a caller-supplied ``max_bytes`` limit.
    ``bad_digest``
        The digest string is not 64 lowercase hex characters.
    ``bad_tenant``
        The tenant name is not ``[A-Za-z0-9_-]{1,64}``.
    ``store_unavailable``
        The backend is misconfigured or cannot be reached / written to.
    """

    NOT_FOUND: Final = "not_found"
    DIGEST_MISMATCH: Final = "digest_mismatch"
    TOO_LARGE: Final = "too_large"
    BAD_DIGEST: Final = "bad_digest"
    BAD_TENANT: Final = "bad_tenant"
    STORE_UNAVAILABLE: Final = "store_unavailable"
    CODES: Final = frozenset(
        {NOT_FOUND, DIGEST_MISMATCH, TOO_LARGE, BAD_DIGEST, BAD_TENANT, STORE_UNAVAILABLE}
    )

    code: str
    message: str

    def __init__(self, code: str, message: str | None = None) -> None:
        if code not in self.CODES:
            raise ValueError(f"unknown ArtefactError code {code!r}")
        self.code = code
        self.message = message or code.replace("_", " ")
        super().__init__(self.message)

    def __reduce__(self) -> tuple[Any, ...]:
        # Keep the exception picklable (e.g. across Celery) despite the
        # two-argument constructor.
        return (type(self), (self.code, self.message))


@dataclass(frozen=True)
class Blob:
    """Identity of a stored blob: lowercase hex SHA-256 and size in bytes.

    The media type is deliberately *not* part of the blob: the same bytes may
    be referenced as ``text/plain`` by one record and ``application/json`` by
    another, and since storage is content-addressed the first writer would
    otherwise win.  Callers keep the media type on their own reference record.
    """

    digest: str
    size: int


def validate_digest(d: str) -> str:
    """Return ``d`` if it is 64 lowercase hex characters, else raise ``bad_digest``.

    Upper-case hex is refused rather than normalised so that a digest has
    exactly one spelling (it is used verbatim as a path / key component).
    """
    if not isinstance(d, str) or _DIGEST_RE.fullmatch(d) is None:
        raise ArtefactError(ArtefactError.BAD_DIGEST, f"not a lowercase sha256 hex digest: {d!r:.80}")
    return d


def validate_tenant(tenant: str) -> str:
    """Return ``tenant`` if it matches ``[A-Za-z0-9_-]{1,64}``, else raise ``bad_tenant``."""
    if not isinstance(tenant, str) or _TENANT_RE.fullmatch(tenant) is None:
        raise ArtefactError(ArtefactError.BAD_TENANT, f"invalid tenant name: {tenant!r:.80}")
    return tenant


def _hash_copy(
    src: IO[bytes], write: Callable[[bytes], object], *, max_bytes: int | None
) -> tuple[str, int]:
    """Copy ``src`` to ``write`` in 1 MiB chunks, returning ``(sha256 hex, size)``.

    Errors raised by ``src.read`` are the caller's and propagate unchanged.
    """
    hasher = hashlib.sha256()
    size = 0
    while True:
        chunk = src.read(CHUNK_SIZE)
        if not chunk:
            break
        size += len(chunk)
        if max_bytes is not None and size > max_bytes:
            raise ArtefactError(ArtefactError.TOO_LARGE, f"content exceeds {max_bytes} bytes")
        hasher.update(chunk)
        write(chunk)
    return hasher.hexdigest(), size


# --------------------------------------------------------------------------
# Verifying reader
# --------------------------------------------------------------------------


class VerifyingReader(io.RawIOBase):
    """A read-only stream that hashes what passes through it.

    When the underlying stream reports EOF the SHA-256 (and, if the backend
    declared one, the size) is compared with the expected values and
    ``ArtefactError("digest_mismatch")`` is raised on mismatch.  If the
    consumer reads exactly ``declared_size`` bytes but never asks for more,
    the check happens on :meth:`close` instead.  Closing after a *partial*
    read does not verify (there is nothing to compare against).

    Once a mismatch has been detected every further read raises again, so a
    consumer cannot accidentally carry on with unverified data.
    """

    def __init__(
        self,
        raw: Any,
        *,
        expected_digest: str,
        declared_size: int | None,
        error_map: Callable[[Exception], ArtefactError | None] | None = None,
    ) -> None:
        super().__init__()
        self._raw = raw
        self._expected = expected_digest
        self.declared_size = declared_size
        self._error_map = error_map
        self._hasher = hashlib.sha256()
        self.bytes_read = 0
        self._verified = False
        self._failure: ArtefactError | None = None

    # -- io protocol -----------------------------------------------------

    def readable(self) -> bool:
        return True

    def read(self, size: int | None = -1) -> bytes:
        if size is None or size < 0:
            return self.readall()
        return self._read(size)

    def readall(self) -> bytes:
        parts: list[bytes] = []
        while chunk := self._read(CHUNK_SIZE):
            parts.append(chunk)
        return b"".join(parts)

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        data = self._read(len(view))
        view[: len(data)] = data
        return len(data)

    def close(self) -> None:
        if self.closed:
            return
        try:
            if (
                not self._verified
                and self._failure is None
                and self.declared_size is not None
                and self.bytes_read == self.declared_size
            ):
                self._finish()
        finally:
            try:
                self._raw.close()
            finally:
                super().close()

    # -- internals -------------------------------------------------------

    @property
    def verified(self) -> bool:
        """True once the full content has been read and matched the digest."""
        return self._verified

    def _fail(self, message: str) -> ArtefactError:
        self._failure = ArtefactError(ArtefactError.DIGEST_MISMATCH, message)
        return self._failure

    def _read(self, n: int) -> bytes:
        if self.closed:
            raise ValueError("I/O operation on closed artefact stream")
        if self._failure is not None:
            raise ArtefactError(self._failure.code, self._failure.message)
        if n == 0 or self._verified:
            return b""
        try:
            data = self._raw.read(n)
        except ArtefactError:
            raise
        except Exception as exc:
            mapped = self._error_map(exc) if self._error_map is not None else None
            if mapped is None:
                raise
            if mapped.code == ArtefactError.DIGEST_MISMATCH:
                self._failure = mapped
            raise mapped from exc
        if data:
            self.bytes_read += len(data)
            self._hasher.update(data)
            if self.declared_size is not None and self.bytes_read > self.declared_size:
                raise self._fail(
                    f"content longer than the declared {self.declared_size} bytes"
                )
            return bytes(data)
        self._finish()
        return b""

    def _finish(self) -> None:
        if self.declared_size is not None and self.bytes_read != self.declared_size:
            raise self._fail(
                f"read {self.bytes_read} bytes, backend declared {self.declared_size}"
            )
        if self._hasher.hexdigest() != self._expected:
            raise self._fail("stored content does not match its digest")
        self._verified = True


# --------------------------------------------------------------------------
# Abstract store
# --------------------------------------------------------------------------


class ArtefactStore(ABC):
    """Content-addressed, per-tenant blob store.

    Subclasses implement :meth:`put_stream`, :meth:`open` and :meth:`exists`;
    every other operation is built on those and inherits their verification.
    """

    # -- writes ----------------------------------------------------------

    @abstractmethod
    def put_stream(
        self, tenant: str, fileobj: BinaryIO, *, max_bytes: int | None = None
    ) -> Blob:
        """Store everything readable from ``fileobj`` (read to EOF in 1 MiB chunks).

        ``max_bytes`` (an extension) rejects larger content with ``too_large``
        without storing anything.
        """

    def put_file(
        self, tenant: str, path: str | os.PathLike[str], *, max_bytes: int | None = None
    ) -> Blob:
        """Store the content of the local file at ``path`` (streamed)."""
        validate_tenant(tenant)
        with open(path, "rb") as fh:
            return self.put_stream(tenant, fh, max_bytes=max_bytes)

    def put_bytes(self, tenant: str, data: bytes, *, max_bytes: int | None = None) -> Blob:
        """Store ``data``."""
        if max_bytes is not None and len(data) > max_bytes:
            raise ArtefactError(ArtefactError.TOO_LARGE, f"content exceeds {max_bytes} bytes")
        return self.put_stream(tenant, io.BytesIO(data))

    # -- reads -----------------------------------------------------------

    @abstractmethod
    def open(self, tenant: str, digest: str) -> BinaryIO:
        """Open a blob for streaming reads.

        The returned stream is a :class:`VerifyingReader`: it raises
        ``digest_mismatch`` at EOF (or on close after reading the full declared
        size) if the content is wrong.  Raises ``not_found`` eagerly.
        """

    @abstractmethod
    def exists(self, tenant: str, digest: str) -> bool:
        """Whether ``tenant`` holds a blob with ``digest`` (content not verified)."""

    def read_bytes(self, tenant: str, digest: str, *, max_bytes: int | None = None) -> bytes:
        """Return the verified content; ``too_large`` if it exceeds ``max_bytes``."""
        reader = cast(VerifyingReader, self.open(tenant, digest))
        with reader:
            if (
                max_bytes is not None
                and reader.declared_size is not None
                and reader.declared_size > max_bytes
            ):
                raise ArtefactError(ArtefactError.TOO_LARGE, f"blob exceeds {max_bytes} bytes")
            parts: list[bytes] = []
            total = 0
            while chunk := reader.read(CHUNK_SIZE):
                total += len(chunk)
                if max_bytes is not None and total > max_bytes:
                    raise ArtefactError(ArtefactError.TOO_LARGE, f"blob exceeds {max_bytes} bytes")
                parts.append(chunk)
        return b"".join(parts)

    def copy_to(self, tenant: str, digest: str, dest: str | os.PathLike[str]) -> Blob:
        """Stream a blob into the local file ``dest`` and return its :class:`Blob`.

        The content is written to a temporary file (mode 0600) next to
        ``dest`` and atomically renamed into place only once verified, so on
        ``digest_mismatch`` (or any other error) no partial ``dest`` is left
        behind and a pre-existing ``dest`` is left untouched.
        """
        dest_path = Path(dest)
        reader = cast(VerifyingReader, self.open(tenant, digest))
        with reader:
            fd, tmp_name = tempfile.mkstemp(
                dir=dest_path.parent, prefix=f".{dest_path.name}.", suffix=".part"
            )
            try:
                with os.fdopen(fd, "wb") as out:
                    while chunk := reader.read(CHUNK_SIZE):
                        out.write(chunk)
                os.replace(tmp_name, dest_path)
            except BaseException:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp_name)
                raise
            return Blob(digest, reader.bytes_read)

    def iter_chunks(
        self, tenant: str, digest: str, chunk_size: int = CHUNK_SIZE
    ) -> Iterator[bytes]:
        """Yield the verified content in chunks (e.g. for ``StreamingHttpResponse``).

        The blob is opened eagerly, so ``not_found`` / ``bad_digest`` are raised
        by this call rather than on first iteration.  One chunk is held back
        until the next read succeeds, so the final chunk is only yielded after
        the digest has been verified: on ``digest_mismatch`` a consumer never
        receives the complete (bad) content.  Abandoning the iterator early
        closes the underlying stream.
        """
        if chunk_size <= 0:
            raise ValueError("chunk_size must be positive")
        reader = self.open(tenant, digest)

        def generate() -> Iterator[bytes]:
            with reader:
                pending = reader.read(chunk_size)
                while pending:
                    nxt = reader.read(chunk_size)  # at EOF this verifies
                    yield pending
                    pending = nxt

        return generate()


# --------------------------------------------------------------------------
# Local filesystem backend
# --------------------------------------------------------------------------


class FileStore(ArtefactStore):
    """Blobs as files under ``root/<tenant>/sha256/ab/cd/<digest>``.

    Writes go to a temporary file in ``root/<tenant>/tmp/`` (same filesystem as
    the final location; the final directory cannot be known before the content
    has been hashed), are fsynced and then ``os.replace``-d into place, which
    is atomic and idempotent: re-storing an existing blob simply replaces it
    with identical (freshly verified-by-construction) bytes.  Files are 0600,
    directories created by the store are 0700.
    """

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)

    # -- layout ----------------------------------------------------------

    def blob_path(self, tenant: str, digest: str) -> Path:
        """The on-disk path of a blob (validating both components)."""
        validate_tenant(tenant)
        validate_digest(digest)
        return self.root / tenant / "sha256" / digest[:2] / digest[2:4] / digest

    def _ensure_dir(self, path: Path) -> None:
        """Create ``path`` (below ``root``) with mode 0700 for every new level."""
        if not self.root.is_dir():
            self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        current = self.root
        for part in path.relative_to(self.root).parts:
            current = current / part
            try:
                current.mkdir(mode=0o700)
            except FileExistsError:
                continue
            os.chmod(current, 0o700)  # mkdir's mode is subject to the umask

    # -- ArtefactStore -----------------------------------------------------

    def put_stream(
        self, tenant: str, fileobj: BinaryIO, *, max_bytes: int | None = None
    ) -> Blob:
        validate_tenant(tenant)
        tmp_dir = self.root / tenant / "tmp"
        try:
            self._ensure_dir(tmp_dir)
            fd, tmp_name = tempfile.mkstemp(dir=tmp_dir, prefix=".put-")  # mode 0600
        except OSError as exc:
            raise ArtefactError(ArtefactError.STORE_UNAVAILABLE, f"cannot write to {self.root}: {exc}") from exc
        try:
            with os.fdopen(fd, "wb") as out:

                def write(chunk: bytes) -> None:
                    try:
                        out.write(chunk)
                    except OSError as exc:
                        raise ArtefactError(ArtefactError.STORE_UNAVAILABLE, f"write failed: {exc}") from exc

                digest, size = _hash_copy(fileobj, write, max_bytes=max_bytes)
                try:
                    out.flush()
                    os.fsync(out.fileno())
                except OSError as exc:
                    raise ArtefactError(ArtefactError.STORE_UNAVAILABLE, f"write failed: {exc}") from exc
            final = self.blob_path(tenant, digest)
            try:
                self._ensure_dir(final.parent)
                os.replace(tmp_name, final)
                _fsync_dir(final.parent)
            except OSError as exc:
                raise ArtefactError(ArtefactError.STORE_UNAVAILABLE, f"cannot store blob: {exc}") from exc
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp_name)
            raise
        return Blob(digest, size)

    def put_file(
        self, tenant: str, path: str | os.PathLike[str], *, max_bytes: int | None = None
    ) -> Blob:
        """Hash the file first: when the blob is already stored (same digest and size), nothing
        is written. Identical outputs (empty logs above all) then cost a read, not a write and
        two fsyncs. A blob damaged on disk is still caught by the digest check on every read."""
        validate_tenant(tenant)
        with open(path, "rb") as fh:
            digest, size = _hash_copy(fh, lambda chunk: None, max_bytes=max_bytes)
            known = self._stored(tenant, digest, size)
            if known is not None:
                return known
            fh.seek(0)
            return self.put_stream(tenant, fh, max_bytes=max_bytes)

    def put_bytes(self, tenant: str, data: bytes, *, max_bytes: int | None = None) -> Blob:
        validate_tenant(tenant)
        if max_bytes is not None and len(data) > max_bytes:
            raise ArtefactError(ArtefactError.TOO_LARGE, f"content exceeds {max_bytes} bytes")
        known = self._stored(tenant, hashlib.sha256(data).hexdigest(), len(data))
        return known if known is not None else self.put_stream(tenant, io.BytesIO(data))

    def _stored(self, tenant: str, digest: str, size: int) -> Blob | None:
        try:
            info = os.lstat(self.blob_path(tenant, digest))
        except OSError:
            return None
        return Blob(digest, size) if stat.S_ISREG(info.st_mode) and info.st_size == size else None

    def open(self, tenant: str, digest: str) -> BinaryIO:
        path = self.blob_path(tenant, digest)
        flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
        try:
            fd = os.open(path, flags)
        except (FileNotFoundError, NotADirectoryError) as exc:
            raise ArtefactError(ArtefactError.NOT_FOUND, f"no blob {digest}") from exc
        except OSError as exc:
            raise ArtefactError(ArtefactError.STORE_UNAVAILABLE, f"cannot open blob: {exc}") from exc
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            os.close(fd)
            raise ArtefactError(ArtefactError.STORE_UNAVAILABLE, f"blob {digest} is not a regular file")
        raw = os.fdopen(fd, "rb", buffering=0)
        return cast(BinaryIO, VerifyingReader(raw, expected_digest=digest, declared_size=info.st_size))

    def exists(self, tenant: str, digest: str) -> bool:
        return self.blob_path(tenant, digest).is_file()


def _fsync_dir(path: Path) -> None:
    """Persist a rename by fsyncing the containing directory (best effort)."""
    if os.name != "posix":
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# --------------------------------------------------------------------------
# S3 backend
# --------------------------------------------------------------------------


def _s3_error_code(exc: Exception) -> str:
    response = getattr(exc, "response", None) or {}
    return str(response.get("Error", {}).get("Code", ""))


_S3_MISSING_CODES: Final = frozenset({"404", "NoSuchKey", "NotFound"})


class S3Store(ArtefactStore):
    """Blobs as objects ``<prefix><tenant>/sha256/<digest>`` in one bucket.

    ``prefix`` is used verbatim (normally it ends in ``/``); tenant names
    cannot contain ``/`` so every tenant owns a distinct key prefix.

    Writes: the digest is only known after the whole input has been read, so
    the input is hashed into a :class:`tempfile.SpooledTemporaryFile` (kept in
    memory up to ``spool_max_size``, on disk beyond) and then uploaded with
    ``client.upload_fileobj``; inputs above ``multipart_threshold`` use a
    multipart upload in ``multipart_chunksize`` parts.  The upload is skipped
    if the object already exists with the same size and ``sha256`` metadata.
    The digest is stored as user metadata (``x-amz-meta-sha256``) and the
    upload requests ``ChecksumAlgorithm="SHA256"`` so that S3 verifies every
    request body server-side (moto accepts and records these checksums but
    does not verify them, so the tests cannot exercise that part).

    Memory: for file-like sources s3transfer reads each multipart part into
    memory, so peak memory is roughly ``(max_concurrency + 2) *
    multipart_chunksize`` during large uploads (measured: ~10 MiB with the
    defaults, ~45 MiB with ``max_concurrency=4``).  The default of one part
    in flight favours bounded memory over upload throughput; raise it for
    big artefacts on fast links.

    Reads stream the object body through a :class:`VerifyingReader`.
    """

    def __init__(
        self,
        bucket: str,
        *,
        prefix: str = "",
        client: Any = None,
        endpoint_url: str | None = None,
        region_name: str | None = None,
        multipart_threshold: int = 8 * _MiB,
        multipart_chunksize: int = 8 * _MiB,
        max_concurrency: int = 1,
        spool_max_size: int = CHUNK_SIZE,
    ) -> None:
        if not bucket:
            raise ArtefactError(ArtefactError.STORE_UNAVAILABLE, "S3Store needs a bucket name")
        if max_concurrency < 1:
            raise ValueError("max_concurrency must be >= 1")
        self.bucket = bucket
        self.prefix = prefix
        if client is None:
            import boto3  # imported lazily: file-only deployments need no boto3 import cost

            client = boto3.client("s3", endpoint_url=endpoint_url, region_name=region_name)
        self.client = client
        self.spool_max_size = spool_max_size

        from boto3.s3.transfer import TransferConfig

        config = TransferConfig(
            multipart_threshold=multipart_threshold,
            multipart_chunksize=multipart_chunksize,
            max_concurrency=max_concurrency,
            use_threads=max_concurrency > 1,
            preferred_transfer_client="classic",
        )
        # Not a TransferConfig constructor argument in boto3, but honoured by
        # s3transfer: caps how many part bodies are buffered in memory.
        config.max_in_memory_upload_chunks = max_concurrency
        self.transfer_config = config

    # -- layout ----------------------------------------------------------

    def key_for(self, tenant: str, digest: str) -> str:
        """The object key of a blob (validating both components)."""
        validate_tenant(tenant)
        validate_digest(digest)
        return f"{self.prefix}{tenant}/sha256/{digest}"

    # -- helpers ---------------------------------------------------------

    def _unavailable(self, exc: Exception, what: str) -> ArtefactError:
        return ArtefactError(
            ArtefactError.STORE_UNAVAILABLE, f"S3 {what} failed for bucket {self.bucket!r}: {exc}"
        )

    def _head(self, key: str) -> dict[str, Any] | None:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return cast(dict[str, Any], self.client.head_object(Bucket=self.bucket, Key=key))
        except ClientError as exc:
            if _s3_error_code(exc) in _S3_MISSING_CODES:
                return None
            raise self._unavailable(exc, "HeadObject") from exc
        except BotoCoreError as exc:
            raise self._unavailable(exc, "HeadObject") from exc

    # -- ArtefactStore -----------------------------------------------------

    def put_stream(
        self, tenant: str, fileobj: BinaryIO, *, max_bytes: int | None = None
    ) -> Blob:
        from boto3.exceptions import S3UploadFailedError
        from botocore.exceptions import BotoCoreError, ClientError

        validate_tenant(tenant)
        with tempfile.SpooledTemporaryFile(max_size=self.spool_max_size) as spool:
            digest, size = _hash_copy(fileobj, spool.write, max_bytes=max_bytes)
            key = self.key_for(tenant, digest)
            head = self._head(key)
            if (
                head is not None
                and head.get("ContentLength") == size
                and head.get("Metadata", {}).get("sha256") == digest
            ):
                return Blob(digest, size)
            spool.seek(0)
            try:
                self.client.upload_fileobj(
                    spool,
                    self.bucket,
                    key,
                    ExtraArgs={
                        "Metadata": {"sha256": digest},
                        "ContentType": "application/octet-stream",
                        # Supported by moto >= 5 (recorded and returned on
                        # HeadObject/GetObject with ChecksumMode=ENABLED;
                        # composite checksum for multipart), though moto does
                        # not reject a body whose checksum is wrong.
                        "ChecksumAlgorithm": "SHA256",
                    },
                    Config=self.transfer_config,
                )
            except (ClientError, BotoCoreError, S3UploadFailedError) as exc:
                raise self._unavailable(exc, "upload") from exc
        return Blob(digest, size)

    def open(self, tenant: str, digest: str) -> BinaryIO:
        from botocore.exceptions import BotoCoreError, ClientError

        key = self.key_for(tenant, digest)
        try:
            response = self.client.get_object(Bucket=self.bucket, Key=key)
        except ClientError as exc:
            if _s3_error_code(exc) in _S3_MISSING_CODES:
                raise ArtefactError(ArtefactError.NOT_FOUND, f"no blob {digest}") from exc
            raise self._unavailable(exc, "GetObject") from exc
        except BotoCoreError as exc:
            raise self._unavailable(exc, "GetObject") from exc
        declared = response.get("ContentLength")
        return cast(
            BinaryIO,
            VerifyingReader(
                response["Body"],
                expected_digest=digest,
                declared_size=int(declared) if declared is not None else None,
                error_map=self._map_read_error,
            ),
        )

    def _map_read_error(self, exc: Exception) -> ArtefactError | None:
        """Translate errors raised while streaming an object body."""
        from botocore.exceptions import BotoCoreError, FlexibleChecksumError
        from urllib3.exceptions import HTTPError as Urllib3Error

        if isinstance(exc, FlexibleChecksumError):
            # botocore's own response-checksum validation (single-part objects).
            return ArtefactError(ArtefactError.DIGEST_MISMATCH, f"S3 checksum mismatch: {exc}")
        if isinstance(exc, (BotoCoreError, Urllib3Error, OSError)):
            # Truncated transfers, read timeouts, reset connections: transient.
            return self._unavailable(exc, "GetObject body read")
        return None

    def exists(self, tenant: str, digest: str) -> bool:
        return self._head(self.key_for(tenant, digest)) is not None


# --------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------

_FILE_KEYS: Final = frozenset({"backend", "root"})
_S3_KEYS: Final = frozenset(
    {
        "backend",
        "bucket",
        "prefix",
        "endpoint_url",
        "region_name",
        "multipart_threshold",
        "multipart_chunksize",
        "max_concurrency",
        "spool_max_size",
    }
)


def store_from_config(config: Mapping[str, Any]) -> ArtefactStore:
    """Build a store from a settings mapping.

    ``{"backend": "file", "root": "/var/lib/gatehouse/artefacts"}`` or
    ``{"backend": "s3", "bucket": ..., "prefix": ..., "endpoint_url": ...,
    "region_name": ...}`` (optionally also the S3 tuning keys accepted by
    :class:`S3Store`).  S3 credentials come from boto3's usual chain
    (environment, instance role, ...), never from this mapping.

    Unknown backends, unknown keys and missing required keys raise
    ``ArtefactError("store_unavailable")``: a misconfigured store must fail
    loudly at start-up rather than silently use defaults.
    """
    backend = config.get("backend")

    def check_keys(allowed: frozenset[str], required: tuple[str, ...]) -> None:
        unknown = sorted(set(config) - allowed)
        if unknown:
            raise ArtefactError(
                ArtefactError.STORE_UNAVAILABLE,
                f"unknown keys for {backend!r} artefact store: {', '.join(unknown)}",
            )
        missing = [k for k in required if not config.get(k)]
        if missing:
            raise ArtefactError(
                ArtefactError.STORE_UNAVAILABLE,
                f"{backend!r} artefact store needs: {', '.join(missing)}",
            )

    if backend == "file":
        check_keys(_FILE_KEYS, ("root",))
        return FileStore(config["root"])
    if backend == "s3":
        check_keys(_S3_KEYS, ("bucket",))
        options = {k: v for k, v in config.items() if k not in ("backend", "bucket")}
        return S3Store(config["bucket"], **options)
    raise ArtefactError(ArtefactError.STORE_UNAVAILABLE, f"unknown artefact store backend {backend!r}")
