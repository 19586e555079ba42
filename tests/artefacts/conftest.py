"""Fixtures for the artefact-store tests.

``moto_server`` runs one real moto server (HTTP on loopback) per session;
``s3_store`` gives each test a fresh bucket on it.  ``store`` is parametrised
over both backends so behaviour tests run against FileStore and S3Store.
"""

from __future__ import annotations

import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

try:
    from tests.servers import MotoServer
except ImportError:  # pytest started without the repo root on sys.path
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from tests.servers import MotoServer

from gateway.artefacts import ArtefactStore, FileStore, S3Store

REGION = "us-east-1"


@pytest.fixture(scope="session")
def moto_server() -> Iterator[MotoServer]:
    """A live moto server shared by the whole test session."""
    with MotoServer() as server:
        yield server


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Dummy AWS credentials; never touch a developer's real AWS config."""
    for name in ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_ROLE_ARN", "AWS_WEB_IDENTITY_TOKEN_FILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_SESSION_TOKEN", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


@pytest.fixture
def s3_client(moto_server: MotoServer, aws_env: None) -> Any:
    """A plain boto3 S3 client pointed at the moto server (for set-up / tampering)."""
    import boto3

    return boto3.client("s3", endpoint_url=moto_server.endpoint_url, region_name=REGION)


@pytest.fixture
def s3_bucket(s3_client: Any) -> str:
    """A fresh, empty bucket for this test."""
    name = f"artefacts-{uuid.uuid4().hex[:20]}"
    s3_client.create_bucket(Bucket=name)
    return name


@pytest.fixture
def make_s3_store(moto_server: MotoServer, s3_bucket: str, aws_env: None) -> Callable[..., S3Store]:
    """Factory for S3Stores on this test's bucket (extra kwargs go to S3Store)."""

    def make(**kwargs: Any) -> S3Store:
        kwargs.setdefault("prefix", "gatehouse/")
        return S3Store(
            s3_bucket, endpoint_url=moto_server.endpoint_url, region_name=REGION, **kwargs
        )

    return make


@pytest.fixture
def s3_store(make_s3_store: Callable[..., S3Store]) -> S3Store:
    """An S3Store on a fresh bucket, building its own boto3 client from the endpoint."""
    return make_s3_store()


@pytest.fixture
def file_store(tmp_path: Path) -> FileStore:
    return FileStore(tmp_path / "store")


@pytest.fixture(params=["file", "s3"])
def store(request: pytest.FixtureRequest) -> ArtefactStore:
    """Each behaviour test runs once per backend."""
    return request.getfixturevalue(f"{request.param}_store")


@pytest.fixture
def tamper(request: pytest.FixtureRequest) -> Callable[[ArtefactStore, str, str, bytes], None]:
    """Replace a stored blob's bytes behind the store's back."""

    def do_tamper(store: ArtefactStore, tenant: str, digest: str, content: bytes) -> None:
        if isinstance(store, FileStore):
            path = store.blob_path(tenant, digest)
            assert path.is_file()
            path.write_bytes(content)
        elif isinstance(store, S3Store):
            key = store.key_for(tenant, digest)
            store.client.head_object(Bucket=store.bucket, Key=key)  # must exist
            # Keep the metadata so only the content differs.
            store.client.put_object(
                Bucket=store.bucket, Key=key, Body=content, Metadata={"sha256": digest}
            )
        else:  # pragma: no cover
            raise TypeError(type(store))

    return do_tamper
