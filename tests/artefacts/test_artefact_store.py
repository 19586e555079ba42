"""Behaviour tests run against both backends (FileStore and S3Store on a live moto server)."""

from __future__ import annotations

import hashlib
import io
import os
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from gateway.artefacts import CHUNK_SIZE, ArtefactError, ArtefactStore, Blob, FileStore, S3Store

MiB = 1 << 20
Tamper = Callable[[ArtefactStore, str, str, bytes], None]


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def stored_keys(store: ArtefactStore, tenant: str) -> list[str]:
    """Every blob object/file the backend holds for ``tenant``."""
    if isinstance(store, FileStore):
        base = store.root / tenant / "sha256"
        return sorted(str(p.relative_to(store.root)) for p in base.rglob("*") if p.is_file())
    assert isinstance(store, S3Store)
    response = store.client.list_objects_v2(Bucket=store.bucket, Prefix=f"{store.prefix}{tenant}/")
    return sorted(obj["Key"] for obj in response.get("Contents", []))


def leftover_temp_files(store: ArtefactStore, tenant: str) -> list[Path]:
    if isinstance(store, FileStore):
        tmp = store.root / tenant / "tmp"
        return list(tmp.iterdir()) if tmp.exists() else []
    return []


class ShortReads(io.RawIOBase):
    """A non-seekable stream that returns at most ``step`` bytes per read."""

    def __init__(self, data: bytes, step: int) -> None:
        self._data = memoryview(data)
        self._step = step
        self._pos = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        n = min(len(buffer), self._step, len(self._data) - self._pos)
        buffer[:n] = self._data[self._pos : self._pos + n]
        self._pos += n
        return n


# --------------------------------------------------------------------------
# Round trips
# --------------------------------------------------------------------------


def test_put_bytes_round_trip(store: ArtefactStore) -> None:
    data = b"hello, gatehouse\n" * 1000
    blob = store.put_bytes("acme", data)
    assert blob == Blob(sha(data), len(data))
    assert store.exists("acme", blob.digest)
    assert store.read_bytes("acme", blob.digest) == data


def test_put_file_round_trip_and_copy_to(store: ArtefactStore, tmp_path: Path) -> None:
    data = os.urandom(2 * CHUNK_SIZE + 12345)  # several chunks, ragged end
    src = tmp_path / "src.bin"
    src.write_bytes(data)
    blob = store.put_file("acme", src)
    assert blob == Blob(sha(data), len(data))

    dest = tmp_path / "out.bin"
    assert store.copy_to("acme", blob.digest, dest) == blob
    assert dest.read_bytes() == data
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".part")] == []


def test_put_stream_round_trip_with_short_reads(store: ArtefactStore) -> None:
    data = os.urandom(300_000)
    blob = store.put_stream("acme", ShortReads(data, 7777))  # type: ignore[arg-type]
    assert blob == Blob(sha(data), len(data))
    assert b"".join(store.iter_chunks("acme", blob.digest, chunk_size=65536)) == data


def test_empty_blob(store: ArtefactStore, tmp_path: Path) -> None:
    blob = store.put_bytes("acme", b"")
    assert blob == Blob(sha(b""), 0)
    assert store.read_bytes("acme", blob.digest) == b""
    assert list(store.iter_chunks("acme", blob.digest)) == []
    assert store.copy_to("acme", blob.digest, tmp_path / "empty") == blob
    assert (tmp_path / "empty").read_bytes() == b""


def test_open_streams_and_verifies(store: ArtefactStore) -> None:
    data = os.urandom(100_000)
    blob = store.put_bytes("acme", data)
    with store.open("acme", blob.digest) as fh:
        parts = []
        while chunk := fh.read(4096):
            parts.append(chunk)
        assert fh.verified  # type: ignore[attr-defined]
    assert b"".join(parts) == data


def test_same_content_same_digest_one_blob(store: ArtefactStore, tmp_path: Path) -> None:
    data = b"identical content"
    src = tmp_path / "f"
    src.write_bytes(data)
    blobs = {
        store.put_bytes("acme", data),
        store.put_file("acme", src),
        store.put_stream("acme", io.BytesIO(data)),
    }
    assert blobs == {Blob(sha(data), len(data))}
    assert len(stored_keys(store, "acme")) == 1
    assert leftover_temp_files(store, "acme") == []
    assert store.read_bytes("acme", sha(data)) == data


def test_different_content_different_blobs(store: ArtefactStore) -> None:
    a = store.put_bytes("acme", b"a")
    b = store.put_bytes("acme", b"b")
    assert a.digest != b.digest
    assert len(stored_keys(store, "acme")) == 2
    assert store.read_bytes("acme", a.digest) == b"a"
    assert store.read_bytes("acme", b.digest) == b"b"


# --------------------------------------------------------------------------
# Tenant isolation and not_found
# --------------------------------------------------------------------------


def test_tenant_isolation(store: ArtefactStore, tmp_path: Path) -> None:
    data = b"tenant A's secret report"
    blob = store.put_bytes("tenant-a", data)

    assert store.exists("tenant-a", blob.digest)
    assert not store.exists("tenant-b", blob.digest)
    for read in (
        lambda: store.read_bytes("tenant-b", blob.digest),
        lambda: store.open("tenant-b", blob.digest),
        lambda: store.iter_chunks("tenant-b", blob.digest),
        lambda: store.copy_to("tenant-b", blob.digest, tmp_path / "leak"),
    ):
        with pytest.raises(ArtefactError) as info:
            read()
        assert info.value.code == "not_found"
    assert not (tmp_path / "leak").exists()

    # The same bytes stored by B become a separate blob, not a shared one.
    assert store.put_bytes("tenant-b", data) == blob
    assert stored_keys(store, "tenant-a") != stored_keys(store, "tenant-b")
    assert len(stored_keys(store, "tenant-a")) == len(stored_keys(store, "tenant-b")) == 1


def test_not_found(store: ArtefactStore, tmp_path: Path) -> None:
    missing = sha(b"never stored")
    store.put_bytes("acme", b"something else")
    assert not store.exists("acme", missing)
    for read in (
        lambda: store.read_bytes("acme", missing),
        lambda: store.open("acme", missing),
        lambda: store.iter_chunks("acme", missing),  # raised eagerly, not on iteration
        lambda: store.copy_to("acme", missing, tmp_path / "out"),
    ):
        with pytest.raises(ArtefactError) as info:
            read()
        assert info.value.code == "not_found"
    assert not (tmp_path / "out").exists()


def test_unknown_tenant_is_not_found(store: ArtefactStore) -> None:
    with pytest.raises(ArtefactError) as info:
        store.read_bytes("nobody", sha(b"x"))
    assert info.value.code == "not_found"


# --------------------------------------------------------------------------
# Tampering / corruption
# --------------------------------------------------------------------------

ORIGINAL = bytes(range(256)) * 20  # 5120 bytes


def _flip_one_byte(data: bytes) -> bytes:
    return data[:-1] + bytes([data[-1] ^ 0x01])


TAMPERINGS = {
    "same-size": _flip_one_byte(ORIGINAL),
    "truncated": ORIGINAL[:-100],
    "extended": ORIGINAL + b"extra",
    "emptied": b"",
}


@pytest.fixture(params=sorted(TAMPERINGS))
def tampered(request: pytest.FixtureRequest, store: ArtefactStore, tamper: Tamper) -> tuple[ArtefactStore, str]:
    blob = store.put_bytes("acme", ORIGINAL)
    tamper(store, "acme", blob.digest, TAMPERINGS[request.param])
    return store, blob.digest


def test_tampered_read_bytes_raises(tampered: tuple[ArtefactStore, str]) -> None:
    store, digest = tampered
    with pytest.raises(ArtefactError) as info:
        store.read_bytes("acme", digest)
    assert info.value.code == "digest_mismatch"


def test_tampered_iter_chunks_raises_and_withholds_last_chunk(tampered: tuple[ArtefactStore, str]) -> None:
    store, digest = tampered
    received = bytearray()
    with pytest.raises(ArtefactError) as info:
        for chunk in store.iter_chunks("acme", digest, chunk_size=1000):
            received += chunk
    assert info.value.code == "digest_mismatch"
    # The consumer never got the complete (bad) content.
    assert len(received) < len(ORIGINAL)


def test_tampered_copy_to_raises_and_leaves_no_file(tampered: tuple[ArtefactStore, str], tmp_path: Path) -> None:
    store, digest = tampered
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    dest = out_dir / "result.bin"
    with pytest.raises(ArtefactError) as info:
        store.copy_to("acme", digest, dest)
    assert info.value.code == "digest_mismatch"
    assert list(out_dir.iterdir()) == []  # neither dest nor a temp file


def test_tampered_copy_to_keeps_existing_dest(store: ArtefactStore, tamper: Tamper, tmp_path: Path) -> None:
    blob = store.put_bytes("acme", ORIGINAL)
    tamper(store, "acme", blob.digest, _flip_one_byte(ORIGINAL))
    dest = tmp_path / "existing"
    dest.write_bytes(b"previous content")
    with pytest.raises(ArtefactError):
        store.copy_to("acme", blob.digest, dest)
    assert dest.read_bytes() == b"previous content"


def test_tampered_open_raises_at_eof(tampered: tuple[ArtefactStore, str]) -> None:
    store, digest = tampered
    fh = store.open("acme", digest)
    with pytest.raises(ArtefactError) as info:
        while fh.read(1000):
            pass
    assert info.value.code == "digest_mismatch"
    with pytest.raises(ArtefactError):  # it stays failed
        fh.read(1000)
    fh.close()


def test_tampered_open_raises_on_close_after_full_read(store: ArtefactStore, tamper: Tamper) -> None:
    blob = store.put_bytes("acme", ORIGINAL)
    tamper(store, "acme", blob.digest, _flip_one_byte(ORIGINAL))
    fh = store.open("acme", blob.digest)
    assert len(fh.read(len(ORIGINAL))) == len(ORIGINAL)  # full read, EOF not yet seen
    with pytest.raises(ArtefactError) as info:
        fh.close()
    assert info.value.code == "digest_mismatch"
    assert fh.closed


def test_partial_read_then_close_does_not_raise(store: ArtefactStore, tamper: Tamper) -> None:
    blob = store.put_bytes("acme", ORIGINAL)
    tamper(store, "acme", blob.digest, _flip_one_byte(ORIGINAL))
    with store.open("acme", blob.digest) as fh:
        assert fh.read(10) == ORIGINAL[:10]
    assert fh.closed


def test_read_bytes_after_retampering_back_succeeds(store: ArtefactStore, tamper: Tamper) -> None:
    """Guard against a reader that always fails: restored content verifies again."""
    blob = store.put_bytes("acme", ORIGINAL)
    tamper(store, "acme", blob.digest, b"bad")
    with pytest.raises(ArtefactError):
        store.read_bytes("acme", blob.digest)
    tamper(store, "acme", blob.digest, ORIGINAL)
    assert store.read_bytes("acme", blob.digest) == ORIGINAL


# --------------------------------------------------------------------------
# Size limits
# --------------------------------------------------------------------------


def test_read_bytes_max_bytes(store: ArtefactStore) -> None:
    blob = store.put_bytes("acme", b"x" * 1000)
    assert store.read_bytes("acme", blob.digest, max_bytes=1000) == b"x" * 1000
    with pytest.raises(ArtefactError) as info:
        store.read_bytes("acme", blob.digest, max_bytes=999)
    assert info.value.code == "too_large"


@pytest.mark.parametrize("method", ["bytes", "stream", "file"])
def test_put_max_bytes_refuses_and_stores_nothing(store: ArtefactStore, tmp_path: Path, method: str) -> None:
    data = b"y" * 5000
    src = tmp_path / "big"
    src.write_bytes(data)
    with pytest.raises(ArtefactError) as info:
        if method == "bytes":
            store.put_bytes("acme", data, max_bytes=4999)
        elif method == "stream":
            store.put_stream("acme", io.BytesIO(data), max_bytes=4999)
        else:
            store.put_file("acme", src, max_bytes=4999)
    assert info.value.code == "too_large"
    assert stored_keys(store, "acme") == []
    assert not store.exists("acme", sha(data))
    assert leftover_temp_files(store, "acme") == []
    assert store.put_bytes("acme", data, max_bytes=5000) == Blob(sha(data), 5000)


# --------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------

BAD_DIGESTS = [
    "",
    "abc",
    "0" * 63,
    "0" * 65,
    "A" * 64,
    "g" * 64,
    "0" * 64 + "\n",
    " " + "0" * 63,
    "../" + "0" * 61,
    "/etc/passwd",
    None,
    b"0" * 64,
]


@pytest.mark.parametrize("digest", BAD_DIGESTS, ids=repr)
def test_bad_digest_refused(store: ArtefactStore, digest: Any, tmp_path: Path) -> None:
    for call in (
        lambda: store.exists("acme", digest),
        lambda: store.open("acme", digest),
        lambda: store.read_bytes("acme", digest),
        lambda: store.iter_chunks("acme", digest),
        lambda: store.copy_to("acme", digest, tmp_path / "out"),
    ):
        with pytest.raises(ArtefactError) as info:
            call()
        assert info.value.code == "bad_digest"
    assert not (tmp_path / "out").exists()


BAD_TENANTS = [
    "",
    ".",
    "..",
    "../other",
    "a/b",
    "a\\b",
    "/abs",
    "t" * 65,
    "tenant\n",
    "tenant ",
    "t\x00",
    "tén",
    None,
]


@pytest.mark.parametrize("tenant", BAD_TENANTS, ids=repr)
def test_bad_tenant_refused(store: ArtefactStore, tenant: Any, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.write_bytes(b"data")
    digest = sha(b"data")
    for call in (
        lambda: store.put_bytes(tenant, b"data"),
        lambda: store.put_stream(tenant, io.BytesIO(b"data")),
        lambda: store.put_file(tenant, src),
        lambda: store.exists(tenant, digest),
        lambda: store.open(tenant, digest),
        lambda: store.read_bytes(tenant, digest),
        lambda: store.iter_chunks(tenant, digest),
        lambda: store.copy_to(tenant, digest, tmp_path / "out"),
    ):
        with pytest.raises(ArtefactError) as info:
            call()
        assert info.value.code == "bad_tenant"
    # Nothing was written anywhere: not in the store, not next to it.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]
    if isinstance(store, S3Store):
        assert "Contents" not in store.client.list_objects_v2(Bucket=store.bucket)


def test_longest_valid_tenant(store: ArtefactStore) -> None:
    tenant = "T_-9" * 16
    blob = store.put_bytes(tenant, b"ok")
    assert store.read_bytes(tenant, blob.digest) == b"ok"


# --------------------------------------------------------------------------
# Large files: bounded memory
# --------------------------------------------------------------------------


def _write_random_file(path: Path, size: int) -> str:
    hasher = hashlib.sha256()
    with open(path, "wb") as fh:
        remaining = size
        block = os.urandom(4 * MiB)
        i = 0
        while remaining:
            # Vary each block cheaply so the content is not periodic.
            chunk = (i.to_bytes(8, "big") + block[8:])[: min(remaining, len(block))]
            fh.write(chunk)
            hasher.update(chunk)
            remaining -= len(chunk)
            i += 1
    return hasher.hexdigest()


def test_large_file_memory_bounded(store: ArtefactStore, tmp_path: Path) -> None:
    """Default configuration: a 64 MiB file never costs more than 16 MiB of Python heap."""
    size = 64 * MiB
    limit = 16 * MiB
    src = tmp_path / "big.bin"
    digest = _write_random_file(src, size)
    dest = tmp_path / "big.out"

    tracemalloc.start()
    try:
        blob = store.put_file("acme", src)
        _, put_peak = tracemalloc.get_traced_memory()

        tracemalloc.reset_peak()
        assert store.copy_to("acme", blob.digest, dest) == blob
        _, copy_peak = tracemalloc.get_traced_memory()

        tracemalloc.reset_peak()
        hasher = hashlib.sha256()
        total = 0
        for chunk in store.iter_chunks("acme", blob.digest):
            hasher.update(chunk)
            total += len(chunk)
        _, iter_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert blob == Blob(digest, size)
    assert (hasher.hexdigest(), total) == (digest, size)
    assert dest.stat().st_size == size
    peaks = {"put_file": put_peak, "copy_to": copy_peak, "iter_chunks": iter_peak}
    assert max(peaks.values()) < limit, {k: f"{v / MiB:.1f} MiB" for k, v in peaks.items()}
