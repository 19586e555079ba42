"""The ``batch`` executor: run tasks as AWS Batch jobs through boto3.

**Inputs and outputs travel through S3.** A Batch job runs in a container on an instance that
cannot see the worker's disk, so the job's files move through the tenant's prefix of the S3
artefact store (``artefact_bucket`` / ``artefact_prefix`` / ``tenant``, the layout of
:class:`gateway.artefacts.S3Store`):

* each input is stored content-addressed, ``<prefix><tenant>/sha256/<digest>`` (nothing is
  uploaded when the artefact is already there), and so is the task's script;
* for each job the executor writes a small POSIX shell script (:func:`element_script`) to
  ``<prefix><tenant>/batch/<submitted job name>/<job|index>.sh``; the container's command
  (:data:`BOOTSTRAP`) fetches it with ``aws s3 cp`` and runs it. It makes the container's work dir,
  fetches every input to its path, runs the task's command with stdout and stderr in
  ``.gatehouse/``, then uploads stdout, stderr and each declared output that exists to
  ``<prefix><tenant>/batch/<job name>/`` (``stdout``, ``stderr``, ``out/<output name>``) and
  exits with the task's status (111 when staging failed);
* :meth:`BatchExecutor.collect` downloads them into the request's local work dir, so the worker
  stores outputs as it does for every backend.

The container image must therefore have ``sh`` and the AWS CLI, and the job's role
(``job_role_arn``, or the job definition's) must read and write that prefix.

Lifecycle of a job:

1. :meth:`BatchExecutor.submit` stages the files above, waits for a token of the account's
   ``SubmitJob`` rate limit (AWS documents 50 per second; ``submit_rate``), then calls ``SubmitJob``
   (:meth:`BatchExecutor.build_submit`: job name and tags carrying the run, task and attempt; queue
   and job definition from the configuration; the task's environment; vCPUs, memory and GPUs as
   ``resourceRequirements``; the timeout as ``attemptDurationSeconds``; one attempt only: a retry
   is a new Gatehouse attempt). ``SubmitJob`` cannot change the image or the role, so a task whose
   ``container:`` names another image (or a configured ``job_role_arn``) runs on a job definition
   derived from the configured one, registered once under a name that digests what changed.
   :meth:`BatchExecutor.submit_array` submits N similar requests as one array job.
2. :meth:`poll_many` answers from the queue's shared :class:`~executors.batch_tracker.BatchTracker`:
   one batched ``DescribeJobs`` (100 ids a call) per poll interval for every job of the process.
3. :meth:`cancel` calls ``TerminateJob`` (which, unlike ``CancelJob``, also stops a started job)
   with :data:`CANCEL_REASON`, which :func:`batch_status` reads back as CANCELLED.
4. :meth:`reattach` and :meth:`lookup` (by job name, through ``ListJobs``) take a job up again in
   another process, so a redelivered message never submits twice.

Batch states map to :class:`JobState` in :func:`batch_status`: ``SUBMITTED``, ``PENDING``,
``RUNNABLE`` and ``STARTING`` -> PENDING, ``RUNNING`` -> RUNNING, ``SUCCEEDED`` -> SUCCEEDED,
``FAILED`` -> TIMED_OUT (attempt duration exceeded), CANCELLED (our termination) or FAILED with
``statusReason``, the container's reason and exit code.

Credentials: the boto3 session is built from the configuration (``region``, ``profile_name``) and,
when given, explicit ``credentials`` (what :func:`executors.credentials.credentials_for_task`
returns: ``aws_access_key_id``, ``aws_secret_access_key``, ``aws_session_token``). They are never
logged, never put in a handle, an error or the executor's ``repr``.

Pure Python, no Django; boto3 is imported when an executor is built.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shlex
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

from .base import Collected, CollectedOutput, ExecutorError, JobHandle, JobRequest, JobState, JobStatus
from .batch_tracker import DESCRIBE_BATCH, BatchTracker, _error_text
from .local import SCRIPT_PLACEHOLDER, label_env
from .remote import RemoteExecutor
from .slurm import TokenBucket, _memory, _seconds
from .workdir import CONTROL_DIR, _abs_workdir, _split_relpath, check_inputs

__all__ = [
    "AWS_SUBMIT_RATE",
    "BATCH_STATES",
    "BOOTSTRAP",
    "CANCEL_REASON",
    "BatchExecutor",
    "attempt_duration",
    "batch_status",
    "element_script",
    "job_name",
    "job_tags",
    "resource_requirements",
]

#: ``SubmitJob`` calls per second and account that AWS documents.
AWS_SUBMIT_RATE = 50.0
#: The reason given to ``TerminateJob``; a FAILED job with it is reported CANCELLED.
CANCEL_REASON = "Cancelled by Gatehouse"
#: Exit status of the job script when it cannot stage an input.
STAGING_EXIT = 111
#: The container's command: fetch this job's script (an array element's by its index) and run it.
BOOTSTRAP: tuple[str, ...] = (
    "sh",
    "-c",
    'set -e; s="${TMPDIR:-/tmp}/gatehouse-job-$$.sh"; '
    'aws s3 cp --only-show-errors "$GATEHOUSE_BATCH_URI/${AWS_BATCH_JOB_ARRAY_INDEX:-job}.sh" "$s"; '
    'exec sh "$s"',
)
_NAME_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")
_TAG_UNSAFE = re.compile(r"[^A-Za-z0-9 +=._:/@-]+")
_OUTPUT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
_JOB_ID = re.compile(r"^[A-Za-z0-9-]{1,128}(:\d{1,5})?$")
_CREDENTIAL_KEYS = ("aws_access_key_id", "aws_secret_access_key", "aws_session_token")
#: Every state AWS Batch reports.
BATCH_STATES = ("SUBMITTED", "PENDING", "RUNNABLE", "STARTING", "RUNNING", "SUCCEEDED", "FAILED")


def _bad(message: str) -> ExecutorError:
    return ExecutorError("bad_request", message)


# --------------------------------------------------------------------------- building a job (pure)


def job_name(job_key: str) -> str:
    """The Batch job name of a task attempt (also how :meth:`BatchExecutor.lookup` finds it):
    letters, digits, ``-`` and ``_``, at most 128, with a digest of the key so that two keys
    differing only in other characters never share a name."""
    digest = hashlib.sha256(job_key.encode("utf-8")).hexdigest()[:10]
    safe = _NAME_UNSAFE.sub("-", job_key).strip("-_") or "job"
    return f"gatehouse-{safe[:106]}-{digest}"


def _tag(value: Any) -> str:
    return _TAG_UNSAFE.sub("_", str(value))[:256]


def job_tags(req: JobRequest) -> dict[str, str]:
    """``gatehouse:run``, ``gatehouse:task``, ``gatehouse:attempt`` and ``gatehouse:job-key``."""
    tags: dict[str, str] = {}
    for label, tag in (("run_id", "run"), ("task_id", "task"), ("attempt", "attempt")):
        if label in req.labels:
            tags[f"gatehouse:{tag}"] = _tag(req.labels[label])
    tags["gatehouse:job-key"] = _tag(req.job_key)
    return tags


def resource_requirements(
    resources: Mapping[str, Any], *, defaults: Mapping[str, Any] | None = None
) -> list[dict[str, str]]:
    """``cpus`` (or ``vcpus``; fractions for Fargate), ``memory`` (bytes or ``512M``, ``4G``:
    whole MiB, rounded up) and ``gpus`` over the backend's defaults, as Batch's
    ``resourceRequirements`` (VCPU, MEMORY, GPU). Other resource names are ignored."""
    merged = {**(defaults or {}), **{k: v for k, v in resources.items() if v is not None}}
    if "vcpus" in merged and "cpus" not in merged:
        merged["cpus"] = merged["vcpus"]
    out = []
    if "cpus" in merged:
        value = merged["cpus"]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
            raise _bad(f"resource cpus={value!r} must be a positive number")
        out.append({"type": "VCPU", "value": f"{value:g}" if isinstance(value, float) else str(value)})
    if "memory" in merged:
        out.append({"type": "MEMORY", "value": _memory(merged["memory"]).removesuffix("M")})
    if "gpus" in merged:
        value = merged["gpus"]
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise _bad(f"resource gpus={value!r} must be a whole number")
        if value:
            out.append({"type": "GPU", "value": str(value)})
    return out


def attempt_duration(resources: Mapping[str, Any], timeout: float | None) -> int | None:
    """``attemptDurationSeconds``: ``time`` in the resources, else the task's timeout, in whole
    seconds rounded up and at least 60 (Batch's minimum)."""
    limit = resources.get("time", timeout)
    if limit is None:
        return None
    seconds = _seconds(limit)
    if seconds <= 0:
        raise _bad("time limit must be positive")
    return max(60, math.ceil(seconds))


def _env_list(env: Mapping[str, str]) -> list[dict[str, str]]:
    return [{"name": k, "value": v} for k, v in sorted(env.items())]


def _check_env(env: Mapping[str, str]) -> None:
    for key, value in env.items():
        if not isinstance(key, str) or not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", key):
            raise _bad(f"invalid environment variable name {key!r}")
        if key.startswith("AWS_BATCH"):
            raise _bad(f"environment variable {key}: names starting with AWS_BATCH are reserved by AWS Batch")
        if not isinstance(value, str) or "\x00" in value:
            raise _bad(f"environment variable {key} must be a string without NUL bytes")


def task_environment(req: JobRequest) -> dict[str, str]:
    """The task's variables in its container: ``GATEHOUSE_JOB_KEY``, ``GATEHOUSE_*`` from the
    labels, then the task's own (later wins). PATH, HOME and the like are the image's."""
    env = {"GATEHOUSE_JOB_KEY": req.job_key, **label_env(req.labels), **req.env}
    _check_env(env)
    return env


def _command(req: JobRequest, workdir: str) -> list[str]:
    argv = list(req.argv)
    if not all(isinstance(a, str) and "\x00" not in a for a in argv):
        raise _bad("argv items must be strings without NUL bytes")
    if req.script is None:
        if any(SCRIPT_PLACEHOLDER in a for a in argv):
            raise _bad("argv references {script} but the request has no script")
        if not argv:
            raise _bad("argv is empty and there is no script")
        return argv
    if not argv:
        argv = ["/bin/sh", SCRIPT_PLACEHOLDER]
    script = f"{workdir}/{CONTROL_DIR}/script"
    return [a.replace(SCRIPT_PLACEHOLDER, script) for a in argv]


def element_script(
    req: JobRequest,
    *,
    workdir: str,
    inputs: Sequence[tuple[str, str]],
    io_uri: str,
    exports: Mapping[str, str] | None = None,
) -> str:
    """The shell script one job (or array element) runs in its container (pure).

    ``workdir`` is the container's work dir; ``inputs`` are ``(s3 uri, relative path)`` pairs
    (the script, if any, is among them as ``.gatehouse/script``); ``io_uri`` is where stdout,
    stderr and outputs go; ``exports`` are variables of this element only (array elements)."""
    q = shlex.quote
    lines = [
        "#!/bin/sh",
        f"# Gatehouse batch job {_tag(req.job_key)}: inputs from S3, the task, outputs to S3.",
        "set -u",
        f"W={q(workdir)}",
        f'mkdir -p "$W/{CONTROL_DIR}" && cd "$W" || exit {STAGING_EXIT}',
        "fetch() {",
        '  mkdir -p "$(dirname "$2")" && aws s3 cp --only-show-errors "$1" "$2" && return 0',
        f'  echo "gatehouse: cannot stage $2 from $1" >&2; exit {STAGING_EXIT}',
        "}",
        "put() {",
        '  aws s3 cp --only-show-errors "$1" "$2" || echo "gatehouse: cannot upload $1 to $2" >&2',
        "}",
    ]
    lines += [f"fetch {q(uri)} {q(path)}" for uri, path in inputs]
    lines += [f"export {q(f'{k}={v}')}" for k, v in sorted((exports or {}).items())]
    lines += [
        f"{shlex.join(_command(req, workdir))} >{CONTROL_DIR}/stdout 2>{CONTROL_DIR}/stderr",
        "rc=$?",
        f"put {CONTROL_DIR}/stdout {q(io_uri + '/stdout')}",
        f"put {CONTROL_DIR}/stderr {q(io_uri + '/stderr')}",
    ]
    for out in req.outputs:
        path = "/".join(_split_relpath(out.path, "output"))
        target = q(f"{io_uri}/out/{out.name}")
        lines.append(f"if [ -f {q(path)} ] && [ ! -L {q(path)} ]; then put {q(path)} {target}; fi")
    lines.append('exit "$rc"')
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- states (pure)


def _exit_code(job: Mapping[str, Any]) -> int | None:
    container = job.get("container") or {}
    code = container.get("exitCode")
    if code is None:
        for attempt in reversed(job.get("attempts") or []):
            code = (attempt.get("container") or {}).get("exitCode")
            if code is not None:
                break
    return int(code) if isinstance(code, (int, float)) and not isinstance(code, bool) else None


def _container_reason(job: Mapping[str, Any]) -> str:
    reason = (job.get("container") or {}).get("reason")
    if not reason:
        for attempt in reversed(job.get("attempts") or []):
            reason = (attempt.get("container") or {}).get("reason")
            if reason:
                break
    return str(reason or "")


def batch_status(job: Mapping[str, Any]) -> JobStatus:
    """Map one ``DescribeJobs`` entry to a :class:`JobStatus` with a reason for humans."""
    state = str(job.get("status") or "")
    why = str(job.get("statusReason") or "")
    because = f" ({why})" if why else ""
    code = _exit_code(job)
    if state == "SUBMITTED":
        return JobStatus(JobState.PENDING, None, f"submitted to AWS Batch{because}")
    if state == "PENDING":
        return JobStatus(JobState.PENDING, None, f"pending in AWS Batch: waiting for dependencies{because}")
    if state == "RUNNABLE":
        return JobStatus(JobState.PENDING, None, f"runnable: waiting for compute resources{because}")
    if state == "STARTING":
        return JobStatus(JobState.PENDING, None, f"starting: its container is being launched{because}")
    if state == "RUNNING":
        stream = (job.get("container") or {}).get("logStreamName")
        return JobStatus(JobState.RUNNING, None, f"running (log stream {stream})" if stream else "running")
    if state == "SUCCEEDED":
        return JobStatus(JobState.SUCCEEDED, 0 if code is None else code, f"exit code {0 if code is None else code}")
    if state == "FAILED":
        if why.startswith(CANCEL_REASON):
            return JobStatus(JobState.CANCELLED, code, "cancelled in AWS Batch")
        if "attempt duration exceeded" in why.lower():
            return JobStatus(JobState.TIMED_OUT, code, f"killed by AWS Batch at its attempt duration{because}")
        parts = [why or "failed in AWS Batch"]
        container_reason = _container_reason(job)
        if container_reason and container_reason != why:
            parts.append(container_reason)
        if code is not None:
            note = " (the job script could not stage an input)" if code == STAGING_EXIT else ""
            parts.append(f"exit code {code}{note}")
        return JobStatus(JobState.FAILED, code, ", ".join(parts))
    return JobStatus(JobState.UNKNOWN, code, f"unrecognised AWS Batch state {state!r}{because}")


# --------------------------------------------------------------------------- the executor

_buckets: dict[str, TokenBucket] = {}
_buckets_lock = threading.Lock()


def _bucket_for(key: str, rate: float, burst: int) -> TokenBucket:
    """The process-wide SubmitJob bucket of an account and region."""
    with _buckets_lock:
        bucket = _buckets.get(key)
        if bucket is None or bucket.rate != rate or bucket.burst != max(1, int(burst)):
            bucket = _buckets[key] = TokenBucket(rate, burst)
        return bucket


def _credential_values(credentials: Mapping[str, str] | None) -> dict[str, str]:
    """The boto3 keyword arguments from stored credentials (names matched case-insensitively).
    Errors name keys, never values."""
    if not credentials:
        return {}
    values: dict[str, str] = {}
    for key, value in credentials.items():
        name = str(key).lower()
        if name not in _CREDENTIAL_KEYS:
            raise _bad(f"unknown AWS credential {key!r} (expected {', '.join(_CREDENTIAL_KEYS)})")
        if not isinstance(value, str) or not value:
            raise _bad(f"AWS credential {key!r} must be a non-empty string")
        values[name] = value
    if "aws_access_key_id" not in values or "aws_secret_access_key" not in values:
        raise _bad("AWS credentials need both aws_access_key_id and aws_secret_access_key")
    return values


class BatchExecutor(RemoteExecutor):
    """Runs tasks as AWS Batch jobs. See the module docstring.

    Configuration (all keywords, so ``get_executor("batch", **config)`` works):

    * ``job_queue`` and ``job_definition`` (name, ``name:revision`` or ARN): required.
    * ``region``, ``endpoint_url`` (another Batch endpoint), ``s3_endpoint_url`` (defaults to
      ``endpoint_url``), ``profile_name``; ``credentials``: explicit keys (see the module).
    * ``job_role_arn``, ``execution_role_arn``: the roles the job runs with (a derived job
      definition is registered when they differ from the configured one's).
    * ``artefact_bucket``, ``artefact_prefix``, ``tenant``: the tenant's S3 prefix the job's files
      travel through (required to submit).
    * ``defaults``: resources (``cpus``, ``memory``, ``gpus``, ``time``) when the task gives none.
    * ``container_work_root``: where work dirs are made inside the container.
    * ``submit_rate`` (SubmitJob per second, default AWS's 50), ``submit_burst``, ``submit_wait``
      (seconds to wait for a token before ``rate_limited``).
    * ``poll_interval``, ``max_backoff``, ``missing_grace``: the tracker's timings;
      ``describe_batch``: ids per DescribeJobs call (at most 100).
    * ``timeout_grace``: how long past a task's timeout :meth:`wait` trusts Batch to enforce it.
    """

    name = "batch"
    synchronous = False

    def __init__(
        self,
        *,
        job_queue: str | None = None,
        job_definition: str | None = None,
        region: str | None = None,
        endpoint_url: str | None = None,
        s3_endpoint_url: str | None = None,
        profile_name: str | None = None,
        credentials: Mapping[str, str] | None = None,
        job_role_arn: str | None = None,
        execution_role_arn: str | None = None,
        artefact_bucket: str | None = None,
        artefact_prefix: str = "",
        tenant: str | None = None,
        defaults: Mapping[str, Any] | None = None,
        container_work_root: str = "/tmp/gatehouse",
        submit_rate: float = AWS_SUBMIT_RATE,
        submit_burst: int = int(AWS_SUBMIT_RATE),
        submit_wait: float = 60.0,
        poll_interval: float = 10.0,
        max_backoff: float = 300.0,
        missing_grace: float = 120.0,
        describe_batch: int = DESCRIBE_BATCH,
        timeout_grace: float = 120.0,
        max_attempts: int = 4,
    ) -> None:
        if not job_queue or not job_definition:
            raise _bad("the batch backend needs job_queue and job_definition in its configuration")
        if not os.path.isabs(container_work_root):
            raise _bad("container_work_root must be absolute")
        import boto3
        from botocore.config import Config

        secrets = _credential_values(credentials)
        session = boto3.session.Session(region_name=region, profile_name=profile_name, **secrets)
        self.region = session.region_name
        if not self.region:
            raise _bad("the batch backend needs a region (configuration or the AWS environment)")
        self.job_queue = job_queue
        self.job_definition = job_definition
        self.endpoint_url = endpoint_url
        self.job_role_arn = job_role_arn
        self.execution_role_arn = execution_role_arn
        self.artefact_bucket = artefact_bucket
        self.artefact_prefix = artefact_prefix or ""
        self.tenant = tenant
        self.defaults = dict(defaults or {})
        self.container_work_root = os.path.normpath(container_work_root)
        self.submit_wait = float(submit_wait)
        self.timeout_grace = float(timeout_grace)
        config = Config(retries={"mode": "standard", "max_attempts": int(max_attempts)}, connect_timeout=10,
                        read_timeout=30, user_agent_extra="gatehouse")
        self.client = session.client("batch", endpoint_url=endpoint_url, config=config)
        self.s3 = session.client("s3", endpoint_url=s3_endpoint_url or endpoint_url, config=config)
        #: AWS operations this executor's Batch client made, by name (tests, benchmarks).
        self.calls: Counter[str] = Counter()
        self._calls_lock = threading.Lock()
        self.client.meta.events.register("before-call.batch", self._count)
        if secrets:
            identity = "key:" + hashlib.sha256(secrets["aws_access_key_id"].encode()).hexdigest()[:16]
        else:
            identity = f"profile:{profile_name}" if profile_name else "default-chain"
        account = f"{endpoint_url or 'aws'}|{self.region}|{identity}"
        self.bucket = _bucket_for(account, float(submit_rate), submit_burst)
        self.poll_group = f"batch|{account}|{job_queue}"  # jobs polled together (the queue's tracker)
        self.tracker = BatchTracker.for_key(
            f"{account}|{job_queue}", self.client, status_of=batch_status, poll_interval=poll_interval,
            max_backoff=max_backoff, missing_grace=missing_grace, batch_size=describe_batch)
        self._definitions: dict[str, str] = {}
        self._definitions_lock = threading.Lock()
        self._store: Any = None

    def __repr__(self) -> str:
        return f"<BatchExecutor queue={self.job_queue!r} region={self.region!r}>"

    def _count(self, model: Any, **_: Any) -> None:
        with self._calls_lock:
            self.calls[model.name] += 1

    # ---------------------------------------------------------------- S3 layout

    @property
    def store(self) -> Any:
        """The tenant's artefact store on this executor's S3 client."""
        if self._store is None:
            if not self.artefact_bucket or not self.tenant:
                raise _bad("the batch backend needs artefact_bucket and tenant: a job's files travel through S3")
            from gateway.artefacts.store import S3Store, validate_tenant

            validate_tenant(self.tenant)
            self._store = S3Store(self.artefact_bucket, prefix=self.artefact_prefix, client=self.s3)
        return self._store

    def _uri(self, key: str) -> str:
        return f"s3://{self.artefact_bucket}/{key}"

    def job_prefix(self, name: str) -> str:
        """The key prefix of one submitted job's script and files."""
        return f"{self.artefact_prefix}{self.tenant}/batch/{name}"

    # ---------------------------------------------------------------- checks

    def _check(self, req: JobRequest) -> None:
        if not isinstance(req.job_key, str) or not req.job_key:
            raise _bad("job_key must be a non-empty string")
        _abs_workdir(req)  # where collect() puts what the job produced
        if req.script is not None and not isinstance(req.script, str):
            raise _bad("script must be a string")
        check_inputs(req)
        names: set[str] = set()
        for out in req.outputs:
            if not _OUTPUT_NAME.match(out.name) or out.name in names:
                raise _bad(f"output name {out.name!r} is invalid or given twice")
            names.add(out.name)
            if _split_relpath(out.path, "output")[0] == CONTROL_DIR:
                raise _bad(f"output path {out.path!r} is inside the reserved {CONTROL_DIR}/ directory")
        _command(req, self.container_workdir(req))
        task_environment(req)
        self._image(req)

    def container_workdir(self, req: JobRequest) -> str:
        return f"{self.container_work_root}/{job_name(req.job_key)}"

    @staticmethod
    def _image(req: JobRequest) -> str | None:
        if not req.container:
            return None
        image = req.container.get("image")
        if not isinstance(image, str) or not image.strip() or image.startswith("-") or any(c.isspace() for c in image):
            raise _bad(f"container image must be a non-empty string without spaces, got {image!r}")
        return image

    # ---------------------------------------------------------------- job definitions

    def _describe_definition(self, ref: str) -> dict[str, Any]:
        if ref.startswith("arn:") or ":" in ref:
            found = self.client.describe_job_definitions(jobDefinitions=[ref]).get("jobDefinitions") or []
        else:
            found = self.client.describe_job_definitions(jobDefinitionName=ref, status="ACTIVE").get(
                "jobDefinitions") or []
        found = [d for d in found if d.get("status", "ACTIVE") == "ACTIVE"]
        if not found:
            raise ExecutorError("submit_failed", f"AWS Batch has no active job definition {ref!r}")
        return max(found, key=lambda d: int(d.get("revision") or 0))

    def definition_for(self, image: str | None) -> str:
        """The job definition a task runs on: the configured one, or one derived from it with the
        task's image and the configured roles (registered once; found again by its name)."""
        if image is None and not self.job_role_arn and not self.execution_role_arn:
            return self.job_definition
        cache_key = image or ""
        with self._definitions_lock:
            if cache_key in self._definitions:
                return self._definitions[cache_key]
            from botocore.exceptions import BotoCoreError, ClientError

            try:
                base = self._describe_definition(self.job_definition)
                props = dict(base.get("containerProperties") or {})
                wanted = {"image": image or props.get("image"),
                          "jobRoleArn": self.job_role_arn or props.get("jobRoleArn"),
                          "executionRoleArn": self.execution_role_arn or props.get("executionRoleArn")}
                wanted = {k: v for k, v in wanted.items() if v}
                if all(props.get(k) == v for k, v in wanted.items()):
                    arn = base["jobDefinitionArn"]
                else:
                    props.update(wanted)
                    digest = hashlib.sha256(json.dumps([base["jobDefinitionArn"], wanted], sort_keys=True).encode())
                    name = f"{base['jobDefinitionName'][:100]}-gh-{digest.hexdigest()[:12]}"
                    existing = self.client.describe_job_definitions(jobDefinitionName=name, status="ACTIVE").get(
                        "jobDefinitions") or []
                    if existing:
                        arn = max(existing, key=lambda d: int(d.get("revision") or 0))["jobDefinitionArn"]
                    else:
                        extra = {k: base[k] for k in ("parameters", "timeout", "platformCapabilities", "propagateTags")
                                 if base.get(k) is not None}
                        arn = self.client.register_job_definition(
                            jobDefinitionName=name, type=base.get("type", "container"), containerProperties=props,
                            retryStrategy={"attempts": 1}, **extra)["jobDefinitionArn"]
            except (ClientError, BotoCoreError) as exc:
                raise ExecutorError("batch_unavailable",
                                    f"cannot prepare the job definition: {_error_text(exc)}") from exc
            self._definitions[cache_key] = arn
            return arn

    # ---------------------------------------------------------------- submit

    def build_submit(
        self, requests: Sequence[JobRequest], *, job_definition: str, batch_uri: str
    ) -> dict[str, Any]:
        """The exact ``SubmitJob`` parameters for one request or an array (pure: no I/O). Every
        element shares the first request's resources, timeout and image; variables that differ
        between elements are exported by each element's script instead."""
        first = requests[0]
        envs = [task_environment(r) for r in requests]
        shared = {k: v for k, v in envs[0].items() if all(e.get(k) == v for e in envs[1:])}
        if len(requests) > 1:
            shared = {k: v for k, v in shared.items() if k not in ("GATEHOUSE_JOB_KEY",)}
        shared["GATEHOUSE_BATCH_URI"] = batch_uri
        overrides: dict[str, Any] = {"command": list(BOOTSTRAP), "environment": _env_list(shared)}
        requirements = resource_requirements(first.resources, defaults=self.defaults)
        if requirements:
            overrides["resourceRequirements"] = requirements
        name = job_name(first.job_key) if len(requests) == 1 else job_name(_array_key(requests))
        params: dict[str, Any] = {
            "jobName": name,
            "jobQueue": self.job_queue,
            "jobDefinition": job_definition,
            "containerOverrides": overrides,
            "retryStrategy": {"attempts": 1},
            "propagateTags": True,
            "tags": job_tags(first) if len(requests) == 1 else _array_tags(requests),
        }
        limit = attempt_duration({**self.defaults, **first.resources}, first.timeout)
        if limit is not None:
            params["timeout"] = {"attemptDurationSeconds": limit}
        if len(requests) > 1:
            params["arrayProperties"] = {"size": len(requests)}
        return params

    def _exports(self, requests: Sequence[JobRequest], index: int) -> dict[str, str]:
        if len(requests) == 1:
            return {}
        envs = [task_environment(r) for r in requests]
        mine = envs[index]
        return {k: v for k, v in mine.items() if k == "GATEHOUSE_JOB_KEY" or any(e.get(k) != v for e in envs)}

    def _stage(self, requests: Sequence[JobRequest], name: str) -> None:
        """Inputs and scripts to S3, then each element's job script."""
        from gateway.artefacts.store import ArtefactError

        store = self.store
        prefix = self.job_prefix(name)
        try:
            for index, req in enumerate(requests):
                inputs = []
                for item in req.inputs:
                    blob = store.put_file(self.tenant, item.source)
                    inputs.append((self._uri(store.key_for(self.tenant, blob.digest)), "/".join(
                        _split_relpath(item.path, "input"))))
                if req.script is not None:
                    blob = store.put_bytes(self.tenant, req.script.encode("utf-8"))
                    inputs.append((self._uri(store.key_for(self.tenant, blob.digest)), f"{CONTROL_DIR}/script"))
                text = element_script(req, workdir=self.container_workdir(req), inputs=inputs,
                                      io_uri=self._uri(self.job_prefix(job_name(req.job_key))),
                                      exports=self._exports(requests, index))
                key = f"{prefix}/{'job' if len(requests) == 1 else index}.sh"
                self.s3.put_object(Bucket=self.artefact_bucket, Key=key, Body=text.encode("utf-8"),
                                   ContentType="text/x-shellscript")
        except ArtefactError as exc:
            raise ExecutorError("staging_failed", f"cannot stage the job's files in S3: {exc.message}") from exc
        except Exception as exc:  # botocore errors of put_object
            from botocore.exceptions import BotoCoreError, ClientError

            if isinstance(exc, (ClientError, BotoCoreError)):
                raise ExecutorError("staging_failed",
                                    f"cannot stage the job's files in S3: {_error_text(exc)}") from exc
            raise

    def _submit(self, params: dict[str, Any]) -> str:
        from botocore.exceptions import BotoCoreError, ClientError

        if not self.bucket.acquire(timeout=self.submit_wait):
            raise ExecutorError("rate_limited", f"no SubmitJob slot within {self.submit_wait:g}s "
                                                f"(rate {self.bucket.rate:g}/s)")
        try:
            return str(self.client.submit_job(**params)["jobId"])
        except ClientError as exc:
            code = "rate_limited" if exc.response.get("Error", {}).get("Code") == "TooManyRequestsException" else (
                "submit_failed")
            raise ExecutorError(code, f"AWS Batch refused the job: {_error_text(exc)}") from exc
        except BotoCoreError as exc:
            raise ExecutorError("batch_unavailable", f"AWS Batch did not answer: {_error_text(exc)}") from exc

    def _prepare(self, requests: Sequence[JobRequest]) -> dict[str, Any]:
        for req in requests:
            self._check(req)
        self.store  # noqa: B018 - refuse before any side effect when there is nowhere to stage
        name = job_name(requests[0].job_key) if len(requests) == 1 else job_name(_array_key(requests))
        params = self.build_submit(requests, job_definition=self.job_definition,
                                   batch_uri=self._uri(self.job_prefix(name)))
        self._stage(requests, name)
        params["jobDefinition"] = self.definition_for(self._image(requests[0]))
        return params

    def submit(self, req: JobRequest) -> JobHandle:
        """Stage the job's files in S3 and submit one Batch job; returns once Batch gave its id."""
        params = self._prepare([req])
        job_id = self._submit(params)
        self.tracker.track([job_id])
        return self._handle(job_id, job_id, req, array=None)

    def submit_array(self, requests: Sequence[JobRequest]) -> list[JobHandle]:
        """Submit similar requests as one array job (one SubmitJob, one rate-limit token): handle i
        is element i (``<job id>:<i>``). Resources, timeout and image are the first request's."""
        requests = list(requests)
        if not requests:
            return []
        if len(requests) == 1:
            return [self.submit(requests[0])]
        if len(requests) > 10_000:
            raise _bad("an AWS Batch array job has at most 10,000 elements")
        if len({job_name(r.job_key) for r in requests}) != len(requests):
            raise _bad("every element of an array needs its own job key")
        params = self._prepare(requests)
        array_id = self._submit(params)
        handles = [self._handle(f"{array_id}:{i}", array_id, req, array=i) for i, req in enumerate(requests)]
        self.tracker.track([h.external_id for h in handles])
        return handles

    def _handle(self, key: str, job_id: str, req: JobRequest, *, array: int | None) -> JobHandle:
        name = job_name(req.job_key)
        data: dict[str, Any] = {
            "job_queue": self.job_queue,
            "region": self.region,
            "job_id": job_id,
            "job_name": name,
            "job_key": req.job_key,
            "workdir": _abs_workdir(req),
            "artefact_bucket": self.artefact_bucket,
            "io_prefix": self.job_prefix(name),
            "submitted_at": time.time(),
        }
        if array is not None:
            data["array_index"] = array
        return JobHandle(backend=self.name, external_id=key, data=data)

    # ---------------------------------------------------------------- tracking

    def _foreign(self, handle: JobHandle) -> str | None:
        if handle.backend != self.name:
            return f"handle belongs to backend {handle.backend!r}"
        if handle.data.get("job_queue", self.job_queue) != self.job_queue:
            return f"job is in queue {handle.data.get('job_queue')!r}, this executor submits to {self.job_queue!r}"
        if handle.data.get("region", self.region) != self.region:
            return f"job is in region {handle.data.get('region')!r}, this executor is {self.region!r}"
        if not _JOB_ID.match(handle.external_id):
            return f"{handle.external_id!r} is not an AWS Batch job id"
        return None

    def poll_many(self, handles: Sequence[JobHandle]) -> dict[str, JobStatus]:
        """Status of every handle from the queue's shared tracker: one batched DescribeJobs
        refresh per poll interval whatever the number of callers and jobs."""
        out: dict[str, JobStatus] = {}
        ours = []
        for handle in handles:
            why = self._foreign(handle)
            if why:
                out[handle.external_id] = JobStatus(JobState.UNKNOWN, None, why)
            else:
                ours.append(handle.external_id)
        out.update(self.tracker.statuses(ours))
        return out

    def reattach(self, handle: JobHandle) -> JobStatus:
        """Take up a job submitted earlier (by another process): track it again and return its
        status now."""
        why = self._foreign(handle)
        if why:
            raise _bad(why)
        return self.tracker.statuses([handle.external_id], force=True)[handle.external_id]

    def _find(self, name: str) -> dict[str, Any] | None:
        from botocore.exceptions import BotoCoreError, ClientError

        found: list[dict[str, Any]] = []
        kwargs: dict[str, Any] = {"jobQueue": self.job_queue, "filters": [{"name": "JOB_NAME", "values": [name]}]}
        try:
            while True:
                page = self.client.list_jobs(**kwargs)
                found += [j for j in page.get("jobSummaryList") or []
                          if j.get("jobName") == name and ":" not in str(j.get("jobId"))]  # not array elements
                if not page.get("nextToken"):
                    break
                kwargs["nextToken"] = page["nextToken"]
        except (ClientError, BotoCoreError) as exc:
            raise ExecutorError("batch_unavailable", f"cannot ask AWS Batch for {name}: {_error_text(exc)}") from exc
        return max(found, key=lambda j: int(j.get("createdAt") or 0)) if found else None

    def lookup(self, req: JobRequest) -> JobHandle | None:
        """The job already submitted for ``req`` (found by its job name in the queue), if Batch
        still knows it: for a worker that died between SubmitJob and recording the job id."""
        job = self._find(job_name(req.job_key))
        if job is None:
            return None
        job_id = str(job["jobId"])
        self.tracker.track([job_id])
        return self._handle(job_id, job_id, req, array=None)

    def lookup_array(self, requests: Sequence[JobRequest]) -> list[JobHandle] | None:
        """The array job already submitted for ``requests``, as :meth:`submit_array` returned it."""
        requests = list(requests)
        if len(requests) < 2:
            handle = self.lookup(requests[0]) if requests else None
            return None if handle is None else [handle]
        job = self._find(job_name(_array_key(requests)))
        if job is None:
            return None
        array_id = str(job["jobId"])
        handles = [self._handle(f"{array_id}:{i}", array_id, req, array=i) for i, req in enumerate(requests)]
        self.tracker.track([h.external_id for h in handles])
        return handles

    # ---------------------------------------------------------------- cancel, collect

    def cancel(self, handle: JobHandle) -> None:
        """``TerminateJob`` (stops the job in any state); a finished or unknown job is no error."""
        from botocore.exceptions import BotoCoreError, ClientError

        why = self._foreign(handle)
        if why:
            raise _bad(why)
        try:
            self.client.terminate_job(jobId=handle.external_id, reason=CANCEL_REASON)
        except ClientError as exc:
            message = str(exc.response.get("Error", {}).get("Message", "")).lower()
            if "does not exist" in message or "not found" in message:
                return
            raise ExecutorError("batch_unavailable", f"cannot cancel job {handle.external_id}: "
                                                     f"{_error_text(exc)}") from exc
        except BotoCoreError as exc:
            raise ExecutorError("batch_unavailable", f"cannot cancel job {handle.external_id}: "
                                                     f"{_error_text(exc)}") from exc

    def collect(self, handle: JobHandle, req: JobRequest) -> Collected:
        """Download stdout, stderr and the declared outputs the job uploaded into the request's
        local work dir. An output the job did not upload is ``missing``. The job stops being
        tracked."""
        from botocore.exceptions import BotoCoreError, ClientError

        workdir = _abs_workdir(req)
        control = os.path.join(workdir, CONTROL_DIR)
        os.makedirs(control, mode=0o700, exist_ok=True)
        bucket = handle.data.get("artefact_bucket") or self.artefact_bucket
        prefix = handle.data.get("io_prefix") or self.job_prefix(job_name(req.job_key))

        def fetch(key: str, dest: str) -> bool:
            fd, tmp = tempfile.mkstemp(dir=os.path.dirname(dest), prefix=".fetch-")
            try:
                with os.fdopen(fd, "wb") as out:
                    self.s3.download_fileobj(bucket, key, out)
                os.replace(tmp, dest)
                return True
            except ClientError as exc:
                os.unlink(tmp)
                if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                    return False
                raise ExecutorError("staging_failed", f"cannot download {key}: {_error_text(exc)}") from exc
            except BotoCoreError as exc:
                os.unlink(tmp)
                raise ExecutorError("staging_failed", f"cannot download {key}: {_error_text(exc)}") from exc

        stdout_path, stderr_path = os.path.join(control, "stdout"), os.path.join(control, "stderr")
        for stream, path in (("stdout", stdout_path), ("stderr", stderr_path)):
            if not fetch(f"{prefix}/{stream}", path):
                open(path, "ab").close()
        outputs, missing = [], []
        for out in req.outputs:
            parts = _split_relpath(out.path, "output")
            dest = os.path.join(workdir, *parts)
            os.makedirs(os.path.dirname(dest), mode=0o700, exist_ok=True)
            if os.path.realpath(os.path.dirname(dest)) != os.path.join(os.path.realpath(workdir), *parts[:-1]):
                missing.append(out.name)  # a symlinked directory on the way: refused
                continue
            if fetch(f"{prefix}/out/{out.name}", dest):
                outputs.append(CollectedOutput(out.name, dest, out.media_type, os.path.getsize(dest)))
            else:
                missing.append(out.name)
        self.tracker.untrack([handle.external_id])
        return Collected(tuple(outputs), stdout_path, stderr_path, tuple(missing))


def _array_key(requests: Sequence[JobRequest]) -> str:
    return f"{requests[0].job_key}+{len(requests) - 1}"


def _array_tags(requests: Sequence[JobRequest]) -> dict[str, str]:
    first = requests[0]
    tags = {"gatehouse:array": str(len(requests)), "gatehouse:job-key": _tag(_array_key(requests))}
    runs = sorted({_tag(r.labels.get("run_id", "")) for r in requests} - {""})
    if len(runs) == 1:
        tags["gatehouse:run"] = runs[0]
    if "attempt" in first.labels and len({r.labels.get("attempt") for r in requests}) == 1:
        tags["gatehouse:attempt"] = _tag(first.labels["attempt"])
    return tags

