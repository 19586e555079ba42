"""FileStore specifics, configuration, errors and packaging constraints."""

from __future__ import annotations

import hashlib
import pickle
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import gateway.artefacts.store as store_module
from gateway.artefacts import (
    ArtefactError,
    Blob,
    FileStore,
    S3Store,
    store_from_config,
    validate_digest,
    validate_tenant,
)

DIGEST = hashlib.sha256(b"x").hexdigest()


# --------------------------------------------------------------------------
# FileStore layout and permissions
# --------------------------------------------------------------------------


def test_file_layout_and_permissions(tmp_path: Path) -> None:
    root = tmp_path / "root"
    store = FileStore(root)
    blob = store.put_bytes("acme", b"x")
    path = root / "acme" / "sha256" / DIGEST[:2] / DIGEST[2:4] / DIGEST
    assert store.blob_path("acme", blob.digest) == path
    assert path.read_bytes() == b"x"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    for directory in (root, root / "acme", root / "acme" / "sha256", path.parent.parent, path.parent, root / "acme" / "tmp"):
        assert stat.S_IMODE(directory.stat().st_mode) == 0o700, directory


def test_dirs_are_0700_despite_permissive_umask(tmp_path: Path) -> None:
    import os

    old = os.umask(0o000)
    try:
        store = FileStore(tmp_path / "root")
        blob = store.put_bytes("acme", b"x")
    finally:
        os.umask(old)
    assert stat.S_IMODE(store.blob_path("acme", blob.digest).parent.stat().st_mode) == 0o700


def test_put_is_idempotent_and_heals_a_corrupted_blob(tmp_path: Path) -> None:
    store = FileStore(tmp_path)
    blob = store.put_bytes("acme", b"x")
    path = store.blob_path("acme", blob.digest)
    path.write_bytes(b"corrupted")
    with pytest.raises(ArtefactError):
        store.read_bytes("acme", blob.digest)
    assert store.put_bytes("acme", b"x") == blob
    assert store.read_bytes("acme", blob.digest) == b"x"
    assert list((tmp_path / "acme" / "tmp").iterdir()) == []


def test_symlinked_blob_is_not_followed(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "root")
    blob = store.put_bytes("acme", b"x")
    path = store.blob_path("acme", blob.digest)
    outside = tmp_path / "outside"
    outside.write_bytes(b"x")
    path.unlink()
    path.symlink_to(outside)
    with pytest.raises(ArtefactError) as info:
        store.read_bytes("acme", blob.digest)
    assert info.value.code == "store_unavailable"


def test_directory_in_place_of_blob_is_store_unavailable(tmp_path: Path) -> None:
    store = FileStore(tmp_path)
    blob = store.put_bytes("acme", b"x")
    path = store.blob_path("acme", blob.digest)
    path.unlink()
    path.mkdir()
    with pytest.raises(ArtefactError) as info:
        store.read_bytes("acme", blob.digest)
    assert info.value.code == "store_unavailable"


def test_failed_source_read_leaves_no_temp_file(tmp_path: Path) -> None:
    class Exploding:
        def __init__(self) -> None:
            self.calls = 0

        def read(self, n: int) -> bytes:
            self.calls += 1
            if self.calls > 2:
                raise OSError("source went away")
            return b"z" * 100

    store = FileStore(tmp_path)
    with pytest.raises(OSError, match="source went away"):
        store.put_stream("acme", Exploding())  # type: ignore[arg-type]
    assert list((tmp_path / "acme" / "tmp").iterdir()) == []
    assert not (tmp_path / "acme" / "sha256").exists()


def test_unwritable_root_is_store_unavailable(tmp_path: Path) -> None:
    blocker = tmp_path / "file-not-dir"
    blocker.write_bytes(b"")
    store = FileStore(blocker / "root")
    with pytest.raises(ArtefactError) as info:
        store.put_bytes("acme", b"x")
    assert info.value.code == "store_unavailable"


def test_missing_root_reads_are_not_found(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "never-created")
    assert not store.exists("acme", DIGEST)
    with pytest.raises(ArtefactError) as info:
        store.read_bytes("acme", DIGEST)
    assert info.value.code == "not_found"
    assert not (tmp_path / "never-created").exists()


# --------------------------------------------------------------------------
# Validation helpers and errors
# --------------------------------------------------------------------------


def test_validate_digest() -> None:
    assert validate_digest(DIGEST) == DIGEST
    for bad in ("", DIGEST.upper(), DIGEST + "\n", DIGEST[:-1], None):
        with pytest.raises(ArtefactError) as info:
            validate_digest(bad)  # type: ignore[arg-type]
        assert info.value.code == "bad_digest"


def test_validate_tenant() -> None:
    for good in ("a", "Acme_Corp-01", "x" * 64, "-", "_"):
        assert validate_tenant(good) == good
    for bad in ("", "..", "a/b", "x" * 65, "a.b", "a\n", None):
        with pytest.raises(ArtefactError) as info:
            validate_tenant(bad)  # type: ignore[arg-type]
        assert info.value.code == "bad_tenant"


def test_artefact_error_codes_and_pickling() -> None:
    err = ArtefactError("not_found", "no blob abc")
    assert err.code == "not_found"
    assert "no blob abc" in str(err)
    again = pickle.loads(pickle.dumps(err))
    assert isinstance(again, ArtefactError)
    assert (again.code, again.message) == ("not_found", "no blob abc")
    with pytest.raises(ValueError):
        ArtefactError("made_up_code")
    assert ArtefactError.CODES >= {"not_found", "digest_mismatch", "too_large", "bad_digest", "store_unavailable"}


def test_blob_is_frozen() -> None:
    blob = Blob(DIGEST, 1)
    with pytest.raises(AttributeError):
        blob.size = 2  # type: ignore[misc]


# --------------------------------------------------------------------------
# store_from_config
# --------------------------------------------------------------------------


def test_config_file(tmp_path: Path) -> None:
    store = store_from_config({"backend": "file", "root": str(tmp_path)})
    assert isinstance(store, FileStore)
    assert store.root == tmp_path


def test_config_s3(aws_env: None) -> None:
    store = store_from_config(
        {
            "backend": "s3",
            "bucket": "artefacts",
            "prefix": "gh/",
            "endpoint_url": "http://127.0.0.1:9",
            "region_name": "eu-west-1",
            "multipart_chunksize": 16 << 20,
        }
    )
    assert isinstance(store, S3Store)
    assert (store.bucket, store.prefix) == ("artefacts", "gh/")
    assert store.client.meta.endpoint_url == "http://127.0.0.1:9"
    assert store.client.meta.region_name == "eu-west-1"
    assert store.transfer_config.multipart_chunksize == 16 << 20


@pytest.mark.parametrize(
    "config",
    [
        {},
        {"backend": "gcs", "bucket": "x"},
        {"backend": None},
        {"backend": "file"},
        {"backend": "file", "root": ""},
        {"backend": "file", "root": "/tmp", "bucket": "typo"},
        {"backend": "s3"},
        {"backend": "s3", "bucket": "b", "endpoint": "http://typo"},
    ],
    ids=repr,
)
def test_config_errors(config: dict[str, Any]) -> None:
    with pytest.raises(ArtefactError) as info:
        store_from_config(config)
    assert info.value.code == "store_unavailable"


# --------------------------------------------------------------------------
# Packaging
# --------------------------------------------------------------------------


def test_store_module_imports_neither_django_nor_boto3_eagerly() -> None:
    """The module is pure Python: loadable on its own, without Django (or boto3 until S3 is used)."""
    code = (
        "import importlib.util, sys\n"
        f"spec = importlib.util.spec_from_file_location('standalone_store', {store_module.__file__!r})\n"
        "mod = importlib.util.module_from_spec(spec)\n"
        "sys.modules[spec.name] = mod\n"
        "spec.loader.exec_module(mod)\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('django', 'boto3', 'botocore'))\n"
        "assert not bad, bad\n"
        "import tempfile\n"
        "s = mod.FileStore(tempfile.mkdtemp())\n"
        "assert s.read_bytes('t', s.put_bytes('t', b'ok').digest) == b'ok'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
