"""Checkpoints written outside the database, so that a rewrite of the audit tables (even with
every hash recomputed) is caught against them: a directory, or an S3 bucket."""
from __future__ import annotations

import os
import tempfile
from functools import lru_cache
from pathlib import Path

from django.conf import settings


def _tree_dir(tree: str) -> str:
    return tree.replace(":", "-")


class DirectoryWitness:
    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)

    def write(self, tree: str, size: int, note: bytes) -> None:
        folder = self.root / _tree_dir(tree)
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        final = folder / f"{size:020d}.note"
        if final.exists():
            return  # checkpoints are immutable; a different note of the same size is a fork to report, not overwrite
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".note-")
        with os.fdopen(fd, "wb") as out:
            out.write(note)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, final)

    def read_all(self, tree: str) -> dict[int, bytes]:
        folder = self.root / _tree_dir(tree)
        if not folder.is_dir():
            return {}
        return {int(p.stem): p.read_bytes() for p in sorted(folder.glob("*.note"))}


class S3Witness:
    def __init__(self, bucket: str, prefix: str = "", client=None):
        import boto3

        self.bucket, self.prefix = bucket, prefix
        self.client = client or boto3.client("s3")

    def write(self, tree: str, size: int, note: bytes) -> None:
        key = f"{self.prefix}{_tree_dir(tree)}/{size:020d}.note"
        try:
            self.client.put_object(Bucket=self.bucket, Key=key, Body=note, IfNoneMatch="*")
        except self.client.exceptions.ClientError as exc:  # already there: immutable
            if exc.response.get("Error", {}).get("Code") not in ("PreconditionFailed", "ConditionalRequestConflict"):
                raise

    def read_all(self, tree: str) -> dict[int, bytes]:
        prefix = f"{self.prefix}{_tree_dir(tree)}/"
        found = {}
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix):
            for item in page.get("Contents", []):
                size = int(item["Key"].rsplit("/", 1)[1].split(".")[0])
                found[size] = self.client.get_object(Bucket=self.bucket, Key=item["Key"])["Body"].read()
        return found


@lru_cache(maxsize=4)
def _witness(location: str):
    if location.startswith("s3://"):
        bucket, _, prefix = location[5:].partition("/")
        return S3Witness(bucket, prefix + "/" if prefix and not prefix.endswith("/") else prefix)
    return DirectoryWitness(location)


def get_witness():
    return _witness(settings.GATEHOUSE_AUDIT["CHECKPOINT_STORE"])
