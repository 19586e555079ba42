"""Fixtures for the ``batch`` executor tests: moto's standalone server over real HTTP.

boto3 talks to a ``moto_server`` process (``tests.servers.MotoServer``); nothing is patched in
between. The session creates, through boto3, a compute environment, a job queue, a job definition
and the artefact bucket. moto's Batch runs a job's container with Docker: without a Docker daemon
(as here) every job fails at once, so most tests switch the server to moto's Docker-less Batch
(``use_docker: false``), where a submitted job succeeds at once, and the tests that need a job to
stay open hold it in SUBMITTED through moto's state manager.
"""

from __future__ import annotations

import itertools
import json
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from executors import batch as batch_module
from executors import registry
from executors.base import JobRequest
from executors.batch import BatchExecutor
from executors.batch_tracker import BatchTracker
from tests.servers import MotoServer

REGION = "us-east-1"
QUEUE = "gatehouse-queue"
DEFINITION = "gatehouse-jobdef"
BASE_IMAGE = "public.ecr.aws/docker/library/busybox:1.36"
BUCKET = "gatehouse-artefacts"
TENANT = "acme"
_counter = itertools.count(1)


@pytest.fixture(scope="session")
def moto_server() -> Iterator[MotoServer]:
    with MotoServer() as server:
        yield server


@pytest.fixture(scope="session")
def aws_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """Dummy AWS credentials for the session; never a developer's real AWS configuration."""
    empty = tmp_path_factory.mktemp("no-aws")
    env = {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_SESSION_TOKEN": "testing",
        "AWS_DEFAULT_REGION": REGION,
        "AWS_CONFIG_FILE": str(empty / "config"),
        "AWS_SHARED_CREDENTIALS_FILE": str(empty / "credentials"),
        "AWS_EC2_METADATA_DISABLED": "true",
    }
    with pytest.MonkeyPatch.context() as mp:
        for name in ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_ROLE_ARN", "AWS_WEB_IDENTITY_TOKEN_FILE",
                     "AWS_ENDPOINT_URL"):
            mp.delenv(name, raising=False)
        for name, value in env.items():
            mp.setenv(name, value)
        yield env


def moto_api(server: MotoServer, path: str, body: dict[str, Any]) -> None:
    """POST to moto's own control API (server configuration, state transitions)."""
    request = urllib.request.Request(f"{server.endpoint_url}/moto-api/{path}", data=json.dumps(body).encode(),
                                     method="POST", headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10):
        pass


class BatchWorld:
    """What the session set up on the moto server, and its control switches."""

    def __init__(self, server: MotoServer) -> None:
        import boto3

        self.server = server
        self.endpoint_url = server.endpoint_url
        self.batch = boto3.client("batch", endpoint_url=self.endpoint_url, region_name=REGION)
        self.s3 = boto3.client("s3", endpoint_url=self.endpoint_url, region_name=REGION)
        iam = boto3.client("iam", endpoint_url=self.endpoint_url, region_name=REGION)
        self.service_role = iam.create_role(RoleName="gatehouse-batch-service", AssumeRolePolicyDocument="{}")[
            "Role"]["Arn"]
        self.job_role = iam.create_role(RoleName="gatehouse-batch-job", AssumeRolePolicyDocument="{}")["Role"]["Arn"]
        env = self.batch.create_compute_environment(computeEnvironmentName="gatehouse-ce", type="UNMANAGED",
                                                    state="ENABLED", serviceRole=self.service_role)
        self.queue_arn = self.batch.create_job_queue(
            jobQueueName=QUEUE, state="ENABLED", priority=1,
            computeEnvironmentOrder=[{"order": 1, "computeEnvironment": env["computeEnvironmentArn"]}],
        )["jobQueueArn"]
        self.definition_arn = self.batch.register_job_definition(
            jobDefinitionName=DEFINITION, type="container",
            containerProperties={"image": BASE_IMAGE, "command": ["true"],
                                 "resourceRequirements": [{"type": "VCPU", "value": "1"},
                                                          {"type": "MEMORY", "value": "512"}]},
        )["jobDefinitionArn"]
        self.s3.create_bucket(Bucket=BUCKET)

    def docker_less(self, on: bool = True) -> None:
        """moto's Docker-less Batch (a job succeeds at once) or its Docker one (fails here)."""
        moto_api(self.server, "config", {"batch": {"use_docker": not on}})

    def hold_submitted(self, on: bool = True) -> None:
        """Keep new Docker-run jobs in SUBMITTED (moto's state manager) until released."""
        if on:
            moto_api(self.server, "state-manager/set-transition",
                     {"model_name": "batch::job", "transition": {"progression": "manual", "times": 1_000_000}})
        else:
            moto_api(self.server, "state-manager/unset-transition", {"model_name": "batch::job"})

    def describe(self, job_id: str) -> dict[str, Any]:
        return self.batch.describe_jobs(jobs=[job_id])["jobs"][0]


@pytest.fixture(scope="session")
def world(moto_server: MotoServer, aws_env: dict[str, str]) -> BatchWorld:
    return BatchWorld(moto_server)


@pytest.fixture(autouse=True)
def _fresh_process_state() -> Iterator[None]:
    """Each test starts as a new process would: no shared tracker, bucket or cached executor."""
    BatchTracker.forget_all()
    batch_module._buckets.clear()
    registry.clear_cache()
    yield
    BatchTracker.forget_all()
    batch_module._buckets.clear()
    registry.clear_cache()


@pytest.fixture
def simple(world: BatchWorld) -> Iterator[BatchWorld]:
    world.docker_less(True)
    yield world


@pytest.fixture
def docker_mode(world: BatchWorld) -> Iterator[BatchWorld]:
    world.docker_less(False)
    yield world
    world.hold_submitted(False)
    world.docker_less(True)


def executor_config(world: BatchWorld, **overrides: Any) -> dict[str, Any]:
    config: dict[str, Any] = {
        "job_queue": QUEUE,
        "job_definition": DEFINITION,
        "region": REGION,
        "endpoint_url": world.endpoint_url,
        "artefact_bucket": BUCKET,
        "artefact_prefix": "gatehouse/",
        "tenant": TENANT,
        "poll_interval": 60.0,
        "submit_rate": 1000.0,
        "submit_burst": 1000,
    }
    config.update(overrides)
    return config


@pytest.fixture
def make_executor(world: BatchWorld) -> Callable[..., BatchExecutor]:
    def make(**overrides: Any) -> BatchExecutor:
        return BatchExecutor(**executor_config(world, **overrides))

    return make


@pytest.fixture
def make_req(tmp_path: Path) -> Callable[..., JobRequest]:
    """A request with a unique job key and its own local work dir (override anything by keyword)."""

    def make(argv: Any = ("echo", "hello"), **kw: Any) -> JobRequest:
        n = next(_counter)
        kw.setdefault("job_key", f"run{n}/task/1")
        kw.setdefault("env", {})
        kw.setdefault("workdir", str(tmp_path / f"wd{n}"))
        kw.setdefault("labels", {"run_id": f"run{n}", "task_id": "task", "attempt": "1"})
        return JobRequest(argv=tuple(argv), **kw)

    return make
