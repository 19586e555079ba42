"""S3-specific behaviour, against a live moto server over HTTP (no in-process mocks)."""

from __future__ import annotations

import base64
import hashlib
import os
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from gateway.artefacts import ArtefactError, Blob, S3Store
from tests.servers import free_port

MiB = 1 << 20


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def count_calls(client: Any) -> Counter[str]:
    """Count S3 API operations issued through ``client`` from now on."""
    calls: Counter[str] = Counter()

    def before_call(model: Any, **_: Any) -> None:
        calls[model.name] += 1

    client.meta.events.register("before-call.s3", before_call)
    return calls


def test_key_layout(s3_store: S3Store) -> None:
    blob = s3_store.put_bytes("acme", b"layout")
    key = f"gatehouse/acme/sha256/{blob.digest}"
    assert s3_store.key_for("acme", blob.digest) == key
    head = s3_store.client.head_object(Bucket=s3_store.bucket, Key=key)
    assert head["ContentLength"] == 6
    assert head["Metadata"] == {"sha256": blob.digest}


def test_single_part_upload_carries_sha256_checksum(s3_store: S3Store) -> None:
    data = b"checksummed"
    blob = s3_store.put_bytes("acme", data)
    head = s3_store.client.head_object(
        Bucket=s3_store.bucket, Key=s3_store.key_for("acme", blob.digest), ChecksumMode="ENABLED"
    )
    # S3's ChecksumSHA256 is the base64 of the raw digest: the same hash we address by.
    assert head["ChecksumSHA256"] == base64.b64encode(hashlib.sha256(data).digest()).decode()


def test_large_upload_uses_multipart_and_round_trips(s3_store: S3Store, tmp_path: Path) -> None:
    src = tmp_path / "twenty.bin"
    block = os.urandom(MiB)
    with open(src, "wb") as fh:
        for i in range(20):
            fh.write(i.to_bytes(4, "big") + block[4:])
    digest = sha(src.read_bytes())

    calls = count_calls(s3_store.client)
    blob = s3_store.put_file("acme", src)
    assert blob == Blob(digest, 20 * MiB)
    assert calls["CreateMultipartUpload"] == 1
    assert calls["UploadPart"] == 3  # 8 + 8 + 4 MiB
    assert calls["PutObject"] == 0

    key = s3_store.key_for("acme", digest)
    head = s3_store.client.head_object(Bucket=s3_store.bucket, Key=key, ChecksumMode="ENABLED")
    assert head["ETag"].strip('"').endswith("-3")
    assert head["Metadata"] == {"sha256": digest}
    assert head.get("ChecksumSHA256")  # composite SHA-256 of the parts

    dest = tmp_path / "back.bin"
    assert s3_store.copy_to("acme", digest, dest) == blob
    assert sha(dest.read_bytes()) == digest


def test_small_threshold_configurable(make_s3_store: Callable[..., S3Store]) -> None:
    store = make_s3_store(multipart_threshold=5 * MiB, multipart_chunksize=5 * MiB)
    data = os.urandom(6 * MiB)
    blob = store.put_bytes("acme", data)
    head = store.client.head_object(Bucket=store.bucket, Key=store.key_for("acme", blob.digest))
    assert head["ETag"].strip('"').endswith("-2")
    assert store.read_bytes("acme", blob.digest) == data


def test_upload_skipped_when_object_already_present(s3_store: S3Store) -> None:
    data = os.urandom(10_000)
    s3_store.put_bytes("acme", data)
    calls = count_calls(s3_store.client)
    assert s3_store.put_bytes("acme", data) == Blob(sha(data), len(data))
    assert calls["HeadObject"] == 1
    assert calls["PutObject"] == calls["CreateMultipartUpload"] == 0


def test_upload_repeated_when_existing_object_is_wrong(s3_store: S3Store) -> None:
    data = os.urandom(10_000)
    blob = s3_store.put_bytes("acme", data)
    key = s3_store.key_for("acme", blob.digest)
    # A truncated object without our metadata, e.g. from a broken earlier writer.
    s3_store.client.put_object(Bucket=s3_store.bucket, Key=key, Body=data[:100])
    with pytest.raises(ArtefactError):
        s3_store.read_bytes("acme", blob.digest)

    calls = count_calls(s3_store.client)
    assert s3_store.put_bytes("acme", data) == blob
    assert calls["PutObject"] == 1
    assert s3_store.read_bytes("acme", blob.digest) == data


def test_prefix_and_tenants_share_a_bucket(make_s3_store: Callable[..., S3Store]) -> None:
    one = make_s3_store(prefix="one/")
    two = make_s3_store(prefix="two/")
    blob = one.put_bytes("acme", b"prefixed")
    assert one.exists("acme", blob.digest)
    assert not two.exists("acme", blob.digest)
    assert not one.exists("other", blob.digest)


@pytest.fixture
def dead_store(aws_env: None) -> S3Store:
    import boto3
    from botocore.config import Config

    client = boto3.client(
        "s3",
        endpoint_url=f"http://127.0.0.1:{free_port()}",  # nothing listens here
        region_name="us-east-1",
        config=Config(retries={"max_attempts": 1, "mode": "standard"}, connect_timeout=2, read_timeout=2),
    )
    return S3Store("artefacts", client=client)


def test_unreachable_endpoint_is_store_unavailable(dead_store: S3Store, tmp_path: Path) -> None:
    digest = sha(b"x")
    for call in (
        lambda: dead_store.put_bytes("acme", b"x"),
        lambda: dead_store.exists("acme", digest),
        lambda: dead_store.open("acme", digest),
        lambda: dead_store.read_bytes("acme", digest),
        lambda: dead_store.copy_to("acme", digest, tmp_path / "out"),
    ):
        with pytest.raises(ArtefactError) as info:
            call()
        assert info.value.code == "store_unavailable"
    assert not (tmp_path / "out").exists()


def test_missing_bucket_is_store_unavailable(aws_env: None, moto_server: Any) -> None:
    store = S3Store("no-such-bucket-here", endpoint_url=moto_server.endpoint_url, region_name="us-east-1")
    with pytest.raises(ArtefactError) as info:
        store.put_bytes("acme", b"x")
    assert info.value.code == "store_unavailable"
    with pytest.raises(ArtefactError) as info:
        store.open("acme", sha(b"x"))
    assert info.value.code == "store_unavailable"
