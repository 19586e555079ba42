"""Unit tests for VerifyingReader and the ArtefactStore base-class helpers."""

from __future__ import annotations

import hashlib
import io
from typing import BinaryIO

import pytest

from gateway.artefacts import ArtefactError, ArtefactStore, Blob, VerifyingReader

DATA = b"0123456789" * 1000
DIGEST = hashlib.sha256(DATA).hexdigest()


def reader(content: bytes, *, declared: int | None, **kwargs: object) -> VerifyingReader:
    return VerifyingReader(io.BytesIO(content), expected_digest=DIGEST, declared_size=declared, **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize("declared", [len(DATA), None])
def test_read_all_ways(declared: int | None) -> None:
    assert reader(DATA, declared=declared).read() == DATA
    assert reader(DATA, declared=declared).readall() == DATA
    r = reader(DATA, declared=declared)
    buf = bytearray(3000)
    out = bytearray()
    while n := r.readinto(buf):
        out += buf[:n]
    assert bytes(out) == DATA and r.verified
    assert io.BufferedReader(reader(DATA, declared=declared)).read() == DATA


def test_longer_than_declared_fails_early_and_stays_failed() -> None:
    r = reader(DATA, declared=50)
    with pytest.raises(ArtefactError) as info:
        r.read(100)
    assert info.value.code == "digest_mismatch"
    for _ in range(3):
        with pytest.raises(ArtefactError):
            r.read(10)
    r.close()  # no second error on close


def test_shorter_than_declared_is_mismatch_even_if_hash_matches() -> None:
    r = reader(DATA, declared=len(DATA) + 1)
    with pytest.raises(ArtefactError) as info:
        r.read()
    assert info.value.code == "digest_mismatch"


def test_unknown_size_verifies_only_at_eof() -> None:
    bad = DATA[:-1] + b"X"
    r = reader(bad, declared=None)
    assert r.read(len(bad)) == bad
    r.close()  # size unknown: a close cannot tell a full read from a partial one
    r = reader(bad, declared=None)
    with pytest.raises(ArtefactError):
        r.read()


def test_closed_reader_refuses_reads() -> None:
    r = reader(DATA, declared=len(DATA))
    r.close()
    with pytest.raises(ValueError):
        r.read(1)


def test_error_map_translates_backend_errors() -> None:
    class Broken(io.RawIOBase):
        def readable(self) -> bool:
            return True

        def readinto(self, b: object) -> int:
            raise ConnectionResetError("peer went away")

    def error_map(exc: Exception) -> ArtefactError | None:
        if isinstance(exc, ConnectionResetError):
            return ArtefactError("store_unavailable", str(exc))
        return None

    r = VerifyingReader(Broken(), expected_digest=DIGEST, declared_size=10, error_map=error_map)
    with pytest.raises(ArtefactError) as info:
        r.read(5)
    assert info.value.code == "store_unavailable"
    assert isinstance(info.value.__cause__, ConnectionResetError)
    unmapped = VerifyingReader(Broken(), expected_digest=DIGEST, declared_size=10)
    with pytest.raises(ConnectionResetError):
        unmapped.read(5)


class SizelessMemoryStore(ArtefactStore):
    """A minimal backend that cannot tell sizes up front (like a chunked HTTP body)."""

    def __init__(self) -> None:
        self.blobs: dict[tuple[str, str], bytes] = {}

    def put_stream(self, tenant: str, fileobj: BinaryIO, *, max_bytes: int | None = None) -> Blob:
        data = fileobj.read()
        digest = hashlib.sha256(data).hexdigest()
        self.blobs[tenant, digest] = data
        return Blob(digest, len(data))

    def open(self, tenant: str, digest: str) -> BinaryIO:
        try:
            data = self.blobs[tenant, digest]
        except KeyError:
            raise ArtefactError("not_found") from None
        return VerifyingReader(io.BytesIO(data), expected_digest=digest, declared_size=None)  # type: ignore[return-value]

    def exists(self, tenant: str, digest: str) -> bool:
        return (tenant, digest) in self.blobs


def test_read_bytes_limit_enforced_while_streaming_when_size_unknown() -> None:
    store = SizelessMemoryStore()
    blob = store.put_bytes("acme", DATA)
    assert store.read_bytes("acme", blob.digest, max_bytes=len(DATA)) == DATA
    with pytest.raises(ArtefactError) as info:
        store.read_bytes("acme", blob.digest, max_bytes=len(DATA) - 1)
    assert info.value.code == "too_large"


def test_base_class_helpers_verify_for_any_backend(tmp_path: object) -> None:
    store = SizelessMemoryStore()
    blob = store.put_bytes("acme", DATA)
    store.blobs["acme", blob.digest] = DATA[::-1]
    with pytest.raises(ArtefactError) as info:
        list(store.iter_chunks("acme", blob.digest, chunk_size=100))
    assert info.value.code == "digest_mismatch"
    with pytest.raises(ValueError):
        store.iter_chunks("acme", blob.digest, chunk_size=0)


def test_backend_reported_mismatch_is_sticky() -> None:
    """A mismatch reported by the backend (e.g. botocore's checksum check) ends the stream for good."""

    class FlakyChecksum(io.RawIOBase):
        calls = 0

        def readable(self) -> bool:
            return True

        def readinto(self, b: bytearray) -> int:  # type: ignore[override]
            self.calls += 1
            if self.calls == 1:
                raise ValueError("checksum mismatch reported by backend")
            b[:1] = b"x"
            return 1

    def error_map(exc: Exception) -> ArtefactError | None:
        return ArtefactError("digest_mismatch", str(exc))

    r = VerifyingReader(FlakyChecksum(), expected_digest=DIGEST, declared_size=None, error_map=error_map)
    for _ in range(3):
        with pytest.raises(ArtefactError) as info:
            r.read(10)
        assert info.value.code == "digest_mismatch"
