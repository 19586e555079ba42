"""The ``slurm`` executor: run tasks as Slurm batch jobs through Slurm's command-line tools.

Commands run on this host, or on a login node over SSH with strict host-key checking
(:class:`SshTarget`: ``BatchMode=yes``, ``StrictHostKeyChecking=yes``, a given
``UserKnownHostsFile``). The work directory must be on a filesystem that the worker and the
compute nodes share (the usual ``/scratch`` or ``/home`` of a cluster): the executor stages inputs
into it and reads outputs from it.

Lifecycle of a job:

1. :meth:`SlurmExecutor.submit` stages the work dir like the ``local`` executor (mode 0700, inputs
   copied, script in ``.gatehouse/script``), waits for a token of the cluster's submission rate
   limit, then pipes a generated batch script into ``sbatch --parsable`` and returns at once with
   the Slurm job id as :attr:`JobHandle.external_id`. The job's name and comment carry the job key
   and the run, task and attempt. :meth:`SlurmExecutor.submit_array` submits N similar requests as
   one job array (one ``sbatch``, one rate-limit token).
2. The batch script changes to the work dir, sends its output to ``.gatehouse/stdout`` and
   ``.gatehouse/stderr`` and runs the command under ``env -i`` with exactly the task's environment
   (nothing of the worker's, nor of the submitting shell's). Slurm's own messages about the job
   ("CANCELLED ... DUE TO TIME LIMIT") go to ``.gatehouse/slurm.log`` (arrays: a per-array
   directory next to the work dirs) and are appended to stderr by :meth:`collect`.
3. :meth:`poll_many` answers from the cluster's :class:`~executors.slurm_tracker.SlurmTracker`:
   one ``squeue --json`` per poll interval for every job of the process; the jobs that left the
   queue are settled by one ``sacct`` for all of them where the cluster keeps accounting, else
   by ``scontrol show job``.
4. :meth:`cancel` runs ``scancel``; :meth:`collect` checks the declared outputs as ``local`` does.

Jobs are submitted with ``--no-requeue`` unless configured otherwise: Gatehouse retries a task as
a new attempt in a new work dir, and a Slurm requeue would run the same attempt twice.

Slurm states map to :class:`JobState` (see :func:`record_status`): ``COMPLETED`` -> SUCCEEDED
(FAILED when the exit code is not 0), ``FAILED`` / ``OUT_OF_MEMORY`` / ``NODE_FAIL`` /
``BOOT_FAIL`` / ``PREEMPTED`` -> FAILED with the reason (``PREEMPTED`` marked ``interrupted``: the engine
starts a new attempt counting no failure; PENDING when ``requeue`` lets Slurm requeue it), ``TIMEOUT`` / ``DEADLINE`` -> TIMED_OUT,
``CANCELLED`` -> CANCELLED, ``REQUEUED`` and pending states -> PENDING ("requeued n times"),
``REVOKED`` -> LOST; a job Slurm no longer knows -> LOST.

Drivers: this module is the CLI driver; :mod:`executors.slurm_pyslurm` is the pyslurm driver (Slurm's
C API in the worker's process). :func:`choose_driver` picks pyslurm only when it is importable, its
major.minor matches the installed Slurm's and the configuration is one pyslurm can serve (this host's
controller: no SSH login node, no per-tenant JWT, no other ``slurm.conf``); otherwise the CLI, with
the reason logged. Both drivers take the job's fields from :func:`job_fields`, run the same
:func:`batch_script` and map states through :func:`record_status`. slurmrestd is not used.

Pure Python, no Django.
"""

from __future__ import annotations

import logging
import math
import os
import re
import shlex
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .base import (
    Collected,
    ExecutorError,
    JobHandle,
    JobRequest,
    JobState,
    JobStatus,
    sanitize_job_key,
)
from .local import RUNTIME_OPTIONS, SAFE_PATH, container_options, resolve_argv, task_env
from .remote import RemoteExecutor
from .workdir import CONTROL_DIR, _abs_workdir, _ensure_private_dir, check_inputs, collect_workdir, prepare_workdir
from .slurm_tracker import ACCOUNTING_MODES, SlurmTracker

__all__ = [
    "APPTAINER_OPTIONS",
    "DEFAULT_CONTAINER_WRAPPER",
    "SlurmCommandError",
    "SlurmCommands",
    "SlurmExecutor",
    "SshTarget",
    "TokenBucket",
    "batch_script",
    "choose_driver",
    "container_command",
    "job_comment",
    "job_fields",
    "job_name",
    "parse_sacct_text",
    "parse_scontrol_jobs",
    "parse_squeue_json",
    "record_status",
    "resource_fields",
    "sbatch_job_options",
    "sbatch_options",
]

#: ``apptainer exec`` with the work dir bound at the same path and as the current directory.
DEFAULT_CONTAINER_WRAPPER: tuple[str, ...] = ("apptainer", "exec", "--bind", "{workdir}", "--pwd", "{workdir}")
SLURM_LOG = "slurm.log"
_SAFE_VALUE = re.compile(r"^[A-Za-z0-9_.:,=+/@%-]+$")
_MEMORY = re.compile(r"^([0-9]+(?:\.[0-9]+)?)\s?(?:([KMGTP])i?B?|B)?$", re.IGNORECASE)
_DURATION_UNITS = (("w", 604_800.0), ("d", 86_400.0), ("h", 3_600.0), ("m", 60.0), ("s", 1.0), ("ms", 0.001))
_DURATION = re.compile(
    r"(?P<bare>[0-9]+(?:\.[0-9]+)?)|(?=[0-9])"
    + "".join(rf"(?:(?P<{u}_>[0-9]+(?:\.[0-9]+)?){u}\s*)?" for u, _ in _DURATION_UNITS)
)
_SLURM_TIME = re.compile(r"^(\d+-)?\d+(:\d+){0,2}$")
_TAG_VALUE = re.compile(r"[^A-Za-z0-9_.:/@+-]+")


logger = logging.getLogger(__name__)


def _bad(message: str) -> ExecutorError:
    return ExecutorError("bad_request", message)


# --------------------------------------------------------------------------- transport


class SlurmCommandError(Exception):
    """A Slurm command failed (non-zero exit, timeout, cannot be started)."""

    def __init__(self, argv: str, returncode: int | None, stderr: str) -> None:
        self.argv, self.returncode, self.stderr = argv, returncode, stderr
        status = "timed out" if returncode is None else f"exit status {returncode}"
        super().__init__(f"{argv}: {status}: {stderr.strip()[:300]}")


@dataclass(frozen=True)
class SshTarget:
    """A login node reached with OpenSSH, non-interactively and only if its host key is known.

    ``known_hosts`` is required: a host whose key is not in that file is refused
    (``StrictHostKeyChecking=yes``), never trusted on first use.
    """

    host: str
    known_hosts: str
    user: str | None = None
    port: int | None = None
    identity_file: str | None = None
    connect_timeout: int = 10
    ssh: str = "ssh"

    def __post_init__(self) -> None:
        if not self.host or self.host.startswith("-") or any(c.isspace() for c in self.host):
            raise _bad(f"invalid ssh host {self.host!r}")
        if not self.known_hosts or not os.path.isabs(self.known_hosts):
            raise _bad("ssh needs an absolute known_hosts file (strict host-key checking)")
        if self.user is not None and (not self.user or self.user.startswith("-") or "@" in self.user):
            raise _bad(f"invalid ssh user {self.user!r}")

    def argv(self, remote: Sequence[str]) -> list[str]:
        """``ssh`` options, then ``--``, the host and the remote command quoted for its shell."""
        cmd = [
            self.ssh,
            "-o", "BatchMode=yes",
            "-o", "StrictHostKeyChecking=yes",
            "-o", f"UserKnownHostsFile={self.known_hosts}",
            "-o", "GlobalKnownHostsFile=/dev/null",
            "-o", f"ConnectTimeout={int(self.connect_timeout)}",
            "-o", "ServerAliveInterval=15",
            "-o", "ServerAliveCountMax=3",
            "-T",
        ]  # fmt: skip
        if self.port is not None:
            cmd += ["-p", str(int(self.port))]
        if self.identity_file:
            cmd += ["-i", self.identity_file, "-o", "IdentitiesOnly=yes"]
        if self.user:
            cmd += ["-l", self.user]
        cmd += ["--", self.host, shlex.join(list(remote))]
        return cmd


@dataclass
class CommandResult:
    argv_display: str
    returncode: int
    stdout: str
    stderr: str


class SlurmCommands:
    """Builds and runs Slurm commands, here or over SSH. Counts every call by program name
    (:attr:`calls`), so tests and benchmarks can check how often Slurm is asked."""

    def __init__(
        self,
        *,
        ssh: SshTarget | None = None,
        bin_dir: str | None = None,
        timeout: float = 30.0,
        path: str = SAFE_PATH,
        slurm_conf: str | None = None,
    ) -> None:
        self.ssh = ssh
        self.bin_dir = bin_dir
        self.timeout = float(timeout)
        self.path = path
        self.slurm_conf = slurm_conf
        self.calls: dict[str, int] = {}
        self._calls_lock = threading.Lock()
        self.extra_env: dict[str, str] = {}

    def program(self, name: str) -> str:
        return os.path.join(self.bin_dir, name) if self.bin_dir else name

    # -- argv builders (pure) ------------------------------------------------------

    def sbatch_argv(self, options: Sequence[str]) -> list[str]:
        return [self.program("sbatch"), "--parsable", *options]

    def squeue_argv(self, job_ids: Sequence[str]) -> list[str]:
        argv = [self.program("squeue"), "--json", "--states=all"]
        if job_ids:
            argv.append("--jobs=" + ",".join(job_ids))
        return argv

    def sacct_argv(self, job_ids: Sequence[str]) -> list[str]:
        """Accounting's records of these jobs (ids or ``<array>_<index>``), allocations only, as
        ``|``-separated :data:`SACCT_FIELDS`. ``--jobs`` makes sacct look back to the epoch, not
        just since midnight. Not ``--json``: Slurm 22.05's sacct JSON reports exit code 0 for a job
        that failed with 3 (its ``--parsable2`` says ``3:0``)."""
        return [self.program("sacct"), "--allocations", "--jobs=" + ",".join(job_ids), "--noheader", "--parsable2",
                "--format=" + ",".join(SACCT_FIELDS)]

    def sacct_by_name_argv(self, name: str) -> list[str]:
        """Accounting's records of the jobs named ``name`` (a job key's own name: one job, or one
        array's elements) since ACCOUNTING_LOOKBACK ago, as :meth:`sacct_argv` gives them."""
        return [self.program("sacct"), "--allocations", "--name=" + name, "--starttime=" + ACCOUNTING_LOOKBACK,
                "--noheader", "--parsable2", "--format=" + ",".join(SACCT_FIELDS)]

    def scontrol_show_argv(self, job: str | None) -> list[str]:
        argv = [self.program("scontrol"), "show", "job", "-o"]
        return argv + [job] if job else argv

    def scancel_argv(self, job: str) -> list[str]:
        return [self.program("scancel"), job]

    def full_argv(self, argv: Sequence[str]) -> list[str]:
        """What is executed on this host: ``argv`` itself, or ssh carrying it."""
        return self.ssh.argv(argv) if self.ssh is not None else list(argv)

    def env(self) -> dict[str, str]:
        """A clean environment for the Slurm tools (and ssh): the worker's secrets stay out."""
        env = {"PATH": self.path, "LANG": "C.UTF-8"}
        if self.slurm_conf:
            env["SLURM_CONF"] = self.slurm_conf
        env.update(self.extra_env)
        if self.ssh is not None:
            for key in ("HOME", "USER", "LOGNAME", "SSH_AUTH_SOCK"):
                if key in os.environ:
                    env[key] = os.environ[key]
        return env

    # -- running ---------------------------------------------------------------------

    def run(
        self, argv: Sequence[str], *, stdin: str | None = None, check: bool = True, timeout: float | None = None
    ) -> CommandResult:
        full = self.full_argv(argv)
        display = shlex.join(list(argv))
        name = os.path.basename(argv[0])
        with self._calls_lock:
            self.calls[name] = self.calls.get(name, 0) + 1
        try:
            proc = subprocess.run(
                full,
                input=stdin if stdin is not None else "",
                capture_output=True,
                text=True,
                env=self.env(),
                timeout=self.timeout if timeout is None else timeout,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise SlurmCommandError(display, None, f"no answer within {exc.timeout:g}s") from exc
        except OSError as exc:
            raise SlurmCommandError(display, 127, f"cannot run {full[0]!r}: {exc.strerror}") from exc
        result = CommandResult(display, proc.returncode, proc.stdout, proc.stderr)
        if check and proc.returncode != 0:
            raise SlurmCommandError(display, proc.returncode, proc.stderr or proc.stdout)
        return result


# --------------------------------------------------------------------------- rate limit


class TokenBucket:
    """``rate`` tokens a second, at most ``burst`` saved up. :meth:`acquire` blocks for one."""

    def __init__(self, rate: float, burst: int = 1, *, clock: Callable[[], float] = time.monotonic) -> None:
        if rate <= 0:
            raise ValueError("rate must be positive")
        self.rate = float(rate)
        self.burst = max(1, int(burst))
        self._clock = clock
        self._tokens = float(self.burst)
        self._stamp = clock()
        self._lock = threading.Lock()

    def _take(self) -> float:
        """Take a token if there is one (returns 0), else the seconds until there will be."""
        with self._lock:
            now = self._clock()
            self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate)
            self._stamp = now
            if self._tokens >= 1:
                self._tokens -= 1
                return 0.0
            return (1 - self._tokens) / self.rate

    def acquire(self, timeout: float | None = None) -> bool:
        deadline = None if timeout is None else self._clock() + timeout
        while True:
            wait = self._take()
            if wait == 0:
                return True
            if deadline is not None and self._clock() + wait > deadline:
                return False
            time.sleep(wait)


_buckets: dict[str, TokenBucket] = {}
_buckets_lock = threading.Lock()


def _bucket_for(cluster: str, rate: float, burst: int) -> TokenBucket:
    """The process-wide bucket of a cluster: every executor instance submitting to it shares it."""
    with _buckets_lock:
        bucket = _buckets.get(cluster)
        if bucket is None or bucket.rate != rate or bucket.burst != max(1, int(burst)):
            bucket = _buckets[cluster] = TokenBucket(rate, burst)
        return bucket


# --------------------------------------------------------------------------- drivers


def _major_minor(version: str | None) -> tuple[int, int] | None:
    match = re.search(r"(\d+)\.(\d+)", version or "")
    return (int(match.group(1)), int(match.group(2))) if match else None


#: The drivers built in: the command-line tools (this module) and pyslurm (executors.slurm_pyslurm).
IMPLEMENTED_DRIVERS: frozenset[str] = frozenset({"cli", "pyslurm"})


def choose_driver(
    requested: str,
    *,
    pyslurm_version: str | None,
    slurm_version: str | None,
    implemented: frozenset[str] = IMPLEMENTED_DRIVERS,
    unsupported: str | None = None,
) -> tuple[str, str]:
    """Which driver talks to Slurm, and why.

    ``requested`` is ``auto``, ``cli`` or ``pyslurm``. pyslurm is chosen (for ``auto``) or accepted
    (when asked for) only if it is importable (``pyslurm_version`` not None), its major.minor equals
    the installed Slurm's, the configuration is one it can serve (``unsupported`` says why not) and
    a pyslurm driver is implemented. Raises ``ExecutorError("driver_unavailable")`` when the
    requested driver cannot be used.
    """
    if requested not in ("auto", "cli", "pyslurm"):
        raise _bad(f"unknown Slurm driver {requested!r} (auto, cli or pyslurm)")
    if requested == "cli":
        return "cli", "the Slurm command-line tools, as configured"
    if pyslurm_version is None:
        why = "pyslurm is not importable"
    elif _major_minor(pyslurm_version) is None or _major_minor(pyslurm_version) != _major_minor(slurm_version):
        why = f"pyslurm {pyslurm_version} does not match Slurm {slurm_version or 'unknown'}"
    elif unsupported:
        why = f"pyslurm {pyslurm_version} cannot serve this cluster's configuration: {unsupported}"
    elif "pyslurm" not in implemented:
        why = f"pyslurm {pyslurm_version} matches Slurm {slurm_version}, but no pyslurm driver is built in"
    else:
        return "pyslurm", f"pyslurm {pyslurm_version} matches Slurm {slurm_version}"
    if requested == "pyslurm":
        raise ExecutorError("driver_unavailable", f"the pyslurm driver cannot be used: {why}")
    return "cli", f"the Slurm command-line tools ({why})"


def detect_pyslurm_version() -> str | None:
    try:
        import pyslurm  # type: ignore[import-not-found]
    except Exception:  # ImportError, or a build against another libslurm failing to load
        return None
    return str(getattr(pyslurm, "__version__", "") or "") or None


def detect_slurm_version(commands: SlurmCommands) -> str | None:
    """``22.05.8`` from ``sinfo --version`` (``slurm-wlm 22.05.8``), or None."""
    try:
        result = commands.run([commands.program("sinfo"), "--version"], check=True)
    except SlurmCommandError:
        return None
    match = re.search(r"(\d+\.\d+(?:\.\d+)?)", result.stdout)
    return match.group(1) if match else None


# --------------------------------------------------------------------------- building a job


def job_name(job_key: str) -> str:
    """The Slurm job name of a task attempt (also how :meth:`SlurmExecutor.lookup` finds it)."""
    return f"gatehouse-{sanitize_job_key(job_key)}"


def _tag(value: Any) -> str:
    return _TAG_VALUE.sub("_", str(value))[:128]


def job_comment(req: JobRequest) -> str:
    """``gatehouse;run=R;task=T;attempt=N;key=K``: no spaces, so ``scontrol -o`` parses it."""
    parts = ["gatehouse"]
    for key in ("run_id", "task_id", "attempt"):
        if key in req.labels:
            parts.append(f"{key.removesuffix('_id')}={_tag(req.labels[key])}")
    parts.append(f"key={_tag(req.job_key)}")
    return ";".join(parts)


def _option_value(name: str, value: Any) -> str:
    text = str(value).strip()
    if not text or not _SAFE_VALUE.match(text):
        raise _bad(f"resource {name}={value!r} is not a valid Slurm value")
    return text


def _memory(value: Any) -> str:
    """The spec's memory (bytes, or ``512M``, ``4G``, ``1.5GiB``; units are powers of 1024 as in
    Slurm) as whole MiB, rounded up."""
    if isinstance(value, bool):
        raise _bad(f"resource memory={value!r} is not a size")
    if isinstance(value, (int, float)):
        size = float(value)
    else:
        match = _MEMORY.match(str(value).strip())
        if not match:
            raise _bad(f"resource memory={value!r} is not a size such as 512M or 4G")
        unit = (match.group(2) or "").upper()
        size = float(match.group(1)) * 1024 ** ("KMGTP".index(unit) + 1 if unit else 0)
    if size <= 0:
        raise _bad("resource memory must be positive")
    return f"{max(1, math.ceil(size / 1024**2))}M"


def _seconds(value: Any) -> float:
    """A spec duration: seconds, or ``90s``, ``5m``, ``2h``, ``1d``, ``1h30m`` (w, d, h, m, s, ms)."""
    if isinstance(value, bool):
        raise _bad(f"time limit {value!r} is not a duration")
    if isinstance(value, (int, float)):
        return float(value)
    text = str(value).strip()
    match = _DURATION.fullmatch(text)
    if not text or match is None:
        raise _bad(f"time limit {value!r} is not a duration (90, '90s', '5m', '2h', '1h30m' or Slurm's D-HH:MM:SS)")
    if match.group("bare") is not None:
        return float(match.group("bare"))
    return sum(float(match.group(unit + "_")) * factor for unit, factor in _DURATION_UNITS if match.group(unit + "_"))


def _time_limit(value: Any) -> str:
    """Slurm ``--time``: a duration rounds up to whole minutes (Slurm's unit); Slurm's own
    ``[D-]HH:MM:SS`` / ``MM:SS`` forms pass through."""
    if isinstance(value, str) and (":" in value or "-" in value) and _SLURM_TIME.match(value.strip()):
        return value.strip()
    seconds = _seconds(value)
    if seconds <= 0:
        raise _bad("time limit must be positive")
    return str(max(1, math.ceil(seconds / 60)))


#: resource name in a task spec -> sbatch option.
RESOURCE_OPTIONS = {
    "partition": "--partition",
    "account": "--account",
    "qos": "--qos",
    "cpus": "--cpus-per-task",
    "memory": "--mem",
    "gpus": "--gpus",
    "gres": "--gres",
    "constraint": "--constraint",
    "nodes": "--nodes",
}


def resource_fields(
    resources: Mapping[str, Any], timeout: float | None, *, defaults: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """A task's resources over the cluster's defaults as checked Slurm values (pure), in
    :data:`RESOURCE_OPTIONS` order then ``time``: ``memory`` in whole MiB, ``cpus``/``nodes``/``gpus``
    as counts, ``time`` in whole minutes (or Slurm's own ``[D-]HH:MM:SS`` string), the rest strings.

    ``time`` in the resources wins over the request's timeout. Unknown resource names are
    ignored (specs may carry hints for other backends). Both drivers submit these values."""
    merged = {**(defaults or {}), **{k: v for k, v in resources.items() if v is not None}}
    fields: dict[str, Any] = {}
    for name in RESOURCE_OPTIONS:
        if name not in merged:
            continue
        value = merged[name]
        if name == "memory":
            fields[name] = int(_memory(value)[:-1])
        elif name in ("cpus", "nodes", "gpus"):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise _bad(f"resource {name}={value!r} must be a positive number")
            count = math.ceil(value)  # Slurm allocates whole CPUs
            if count == 0 and name != "gpus":
                raise _bad(f"resource {name}={value!r} must be positive")
            if count:
                fields[name] = count
        else:
            fields[name] = _option_value(name, value)
    limit = merged.get("time", timeout)
    if limit is not None:
        text = _time_limit(limit)
        fields["time"] = int(text) if text.isdigit() else text
    return fields


def sbatch_options(
    resources: Mapping[str, Any], timeout: float | None, *, defaults: Mapping[str, Any] | None = None
) -> list[str]:
    """sbatch options for a task's resources over the cluster's defaults (see :func:`resource_fields`)."""
    return _resource_options(resource_fields(resources, timeout, defaults=defaults))


def _resource_options(fields: Mapping[str, Any]) -> list[str]:
    return [f"{RESOURCE_OPTIONS.get(name, '--time')}={value}{'M' if name == 'memory' else ''}"
            for name, value in fields.items()]


def job_fields(
    requests: Sequence[JobRequest],
    *,
    log_path: str,
    defaults: Mapping[str, Any] | None = None,
    requeue: bool = False,
) -> dict[str, Any]:
    """What Slurm is told about one request or an array of them (pure; both drivers submit it).

    ``name`` and ``comment`` carry the tags, ``workdir`` is the first request's work dir,
    ``output`` the file for Slurm's own messages (appended to), ``resources`` the first request's
    :func:`resource_fields` and ``array`` ``0-(N-1)`` for N > 1 requests (None otherwise)."""
    if not requests:
        raise _bad("no request to submit")
    first = requests[0]
    single = len(requests) == 1
    return {
        "name": job_name(first.job_key) if single else job_name(_array_key(requests)),
        "comment": job_comment(first) if single else _array_comment(requests),
        "workdir": _abs_workdir(first),
        "output": log_path,
        "open_mode": "append",
        "requeue": bool(requeue),
        "resources": resource_fields(first.resources, first.timeout, defaults=defaults),
        "array": None if single else f"0-{len(requests) - 1}",
    }


def sbatch_job_options(fields: Mapping[str, Any]) -> list[str]:
    """The sbatch options for :func:`job_fields` (pure), in a fixed order."""
    options = [
        f"--job-name={fields['name']}",
        f"--comment={fields['comment']}",
        f"--chdir={fields['workdir']}",
        f"--output={fields['output']}",
        f"--open-mode={fields['open_mode']}",
        "--requeue" if fields["requeue"] else "--no-requeue",
        *_resource_options(fields["resources"]),
    ]
    if fields.get("array"):
        options.append(f"--array={fields['array']}")
    return options


#: The ``container.options`` a task may give apptainer or singularity: GPU support and
#: isolation only (binds, overlays, ``--writable`` images or another user are refused).
APPTAINER_OPTIONS = (
    r"--nv",
    r"--rocm",
    r"--cleanenv",
    r"--contain",
    r"--containall",
    r"--no-home",
    r"--no-privs",
    r"--writable-tmpfs",
)


def _wrapper_options(container: Mapping[str, Any], wrapper: Sequence[str]) -> list[str]:
    """``container["options"]`` allowed for the wrapper's program: apptainer's or podman's list;
    a site's own wrapper takes none."""
    program = os.path.basename(wrapper[0]) if wrapper else ""
    if program in ("apptainer", "singularity"):
        return container_options(container, APPTAINER_OPTIONS, program)
    if program in ("podman", "docker"):
        return container_options(container, RUNTIME_OPTIONS, program)
    if container.get("options"):
        raise _bad(f"the cluster's container wrapper {program!r} takes no task options")
    return []


def container_command(req: JobRequest, wrapper: Sequence[str] = DEFAULT_CONTAINER_WRAPPER) -> list[str]:
    """The command that runs ``req`` in its container on the compute node (pure).

    ``wrapper`` (``{workdir}`` replaced), then the task's allowed ``container.options``, then the
    image, then the task's argv: ``apptainer exec --bind W --pwd W [options] IMAGE argv...``.
    """
    container = req.container or {}
    image = container.get("image")
    if not isinstance(image, str) or not image.strip() or image.startswith("-") or "\n" in image:
        raise _bad(f"container image must be a non-empty string not starting with '-', got {image!r}")
    workdir = _abs_workdir(req)
    if ":" in workdir or "," in workdir:
        raise _bad(f"workdir {workdir!r} cannot be bound into a container (contains ':' or ',')")
    return ([w.replace("{workdir}", workdir) for w in wrapper] + _wrapper_options(container, wrapper) + [image]
            + resolve_argv(req, allow_empty=True))


def _task_command(req: JobRequest, wrapper: Sequence[str]) -> list[str]:
    argv = container_command(req, wrapper) if req.container else resolve_argv(req)
    if "=" in argv[0]:
        raise _bad(f"the program {argv[0]!r} contains '=' (env would read it as a variable)")
    return argv


def _element_lines(req: JobRequest, wrapper: Sequence[str], path: str) -> list[str]:
    """Shell lines that run one request: cd, redirect, and exec under ``env -i``."""
    workdir = _abs_workdir(req)
    control = os.path.join(workdir, CONTROL_DIR)
    env = task_env(req, path=path)
    assignments = [shlex.quote(f"{k}={v}") for k, v in sorted(env.items())]
    assignments.append('"GATEHOUSE_SLURM_JOB_ID=${SLURM_JOB_ID:-}"')
    return [
        f"cd {shlex.quote(workdir)} || exit 111",
        f"exec >>{shlex.quote(control + '/stdout')} 2>>{shlex.quote(control + '/stderr')}",
        "exec env -i " + " ".join(assignments) + " " + shlex.join(_task_command(req, wrapper)),
    ]


def batch_script(
    requests: Sequence[JobRequest], *, wrapper: Sequence[str] = DEFAULT_CONTAINER_WRAPPER, path: str = SAFE_PATH
) -> str:
    """The batch script for one request, or for an array (element i runs ``requests[i]``)."""
    if not requests:
        raise _bad("no request to submit")
    head = ["#!/bin/sh", f"# Gatehouse batch job: {_tag(requests[0].job_key)}" + (
        f" and {len(requests) - 1} more" if len(requests) > 1 else "")]
    if len(requests) == 1:
        return "\n".join(head + _element_lines(requests[0], wrapper, path)) + "\n"
    lines = head + ['case "${SLURM_ARRAY_TASK_ID:-}" in']
    for index, req in enumerate(requests):
        body = _element_lines(req, wrapper, path)
        lines.append(f"{index})")
        lines += ["  " + line for line in body]
        lines.append("  ;;")
    lines += ['*) echo "gatehouse: no request for array index ${SLURM_ARRAY_TASK_ID:-none}" >&2; exit 111 ;;', "esac"]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- parsing answers


def _expand_array_string(text: str) -> list[int]:
    """``0-4``, ``1,3,5-7``, ``0-9%2``, ``0-8:2`` -> indices (the pending part of an array)."""
    text = text.split("%", 1)[0]
    out: list[int] = []
    for part in filter(None, text.split(",")):
        step = 1
        if ":" in part:
            part, step_text = part.split(":", 1)
            step = max(1, int(step_text))
        if "-" in part:
            lo, hi = part.split("-", 1)
            out.extend(range(int(lo), int(hi) + 1, step))
        else:
            out.append(int(part))
    return out


def _state_of(raw: Any) -> tuple[str, tuple[str, ...]]:
    """(base state, flags): 22.05 reports a string, later versions a list of names."""
    names = [str(x).upper() for x in raw] if isinstance(raw, list) else [str(raw or "").upper()]
    base = next((n for n in names if n in _ALL_STATES), names[0] if names else "")
    return base, tuple(n for n in names if n != base)


def _record_keys(job_id: Any, array_job_id: Any, array_task_id: Any, array_string: str) -> list[str]:
    if array_task_id not in (None, "", "N/A") and array_job_id not in (None, 0, "0", ""):
        return [f"{int(array_job_id)}_{int(array_task_id)}"]
    if array_string and array_job_id not in (None, 0, "0", ""):
        return [f"{int(array_job_id)}_{i}" for i in _expand_array_string(array_string)]
    return [str(int(job_id))]


def _num(value: Any) -> Any:
    """Slurm 23.02+ wraps numbers as ``{"set": true, "infinite": false, "number": 5}``."""
    if isinstance(value, dict):
        return value.get("number") if value.get("set", True) and not value.get("infinite") else None
    return value


def _exit_pair(raw: Any) -> tuple[int, int] | None:
    """(exit code, signal): 22.05 gives the wait status as an int; 23.02+ a mapping with
    ``return_code`` and ``signal.id``."""
    if isinstance(raw, bool) or raw is None:
        return None
    if isinstance(raw, int):
        return (raw >> 8) & 0xFF, raw & 0x7F
    if isinstance(raw, dict):
        signal = raw.get("signal")
        sig = _num(signal.get("id")) if isinstance(signal, dict) else signal
        return int(_num(raw.get("return_code")) or 0), int(sig or 0)
    return None


def parse_squeue_json(text: str) -> dict[str, dict[str, Any]]:
    """``squeue --json`` -> {job key: normalised record}. Raises SlurmCommandError if unreadable."""
    import json

    try:
        doc = json.loads(text)
        jobs = doc["jobs"]
    except (ValueError, KeyError, TypeError) as exc:
        raise SlurmCommandError("squeue --json", 0, f"unreadable answer: {exc}") from exc
    out: dict[str, dict[str, Any]] = {}
    for job in jobs:
        state, flags = _state_of(job.get("job_state"))
        exit_pair = _exit_pair(job.get("exit_code"))
        record = {
            "job_id": str(_num(job.get("job_id"))),
            "state": state,
            "flags": flags,
            "reason": str(job.get("state_reason") or ""),
            "exit": exit_pair,
            "restarts": int(_num(job.get("restart_cnt")) or 0),
            "nodes": str(job.get("nodes") or ""),
            "time_limit": _num(job.get("time_limit")),
            "name": str(job.get("name") or ""),
            "comment": str(job.get("comment") or ""),
        }
        keys = _record_keys(_num(job.get("job_id")), _num(job.get("array_job_id")), _num(job.get("array_task_id")),
                            str(job.get("array_task_string") or ""))
        for key in keys:
            out[key] = {**record, "key": key}
    return out


_KEY_START = re.compile(r"(?:^|\s)([A-Za-z][A-Za-z0-9_:/]*)=")


def _parse_oneliner(line: str) -> dict[str, str]:
    fields: dict[str, str] = {}
    matches = list(_KEY_START.finditer(line))
    for i, match in enumerate(matches):
        end = matches[i + 1].start() if i + 1 < len(matches) else len(line)
        fields[match.group(1)] = line[match.end() : end].strip()
    return fields


def parse_scontrol_jobs(text: str) -> dict[str, dict[str, Any]]:
    """``scontrol show job -o`` (one job per line) -> {job key: normalised record}."""
    out: dict[str, dict[str, Any]] = {}
    for line in text.splitlines():
        if "JobId=" not in line:
            continue
        f = _parse_oneliner(line.strip())
        exit_pair = None
        if re.match(r"^\d+:\d+$", f.get("ExitCode", "")):
            code, sig = f["ExitCode"].split(":")
            exit_pair = (int(code), int(sig))
        limit = f.get("TimeLimit", "")
        record = {
            "job_id": f.get("JobId", ""),
            "state": _state_of(f.get("JobState", ""))[0],
            "flags": (),
            "reason": f.get("Reason", ""),
            "exit": exit_pair,
            "restarts": int(f.get("Restarts", "0") or 0) if f.get("Restarts", "0").isdigit() else 0,
            "nodes": f.get("NodeList", ""),
            "time_limit": limit,
            "name": f.get("JobName", ""),
            "comment": f.get("Comment", ""),
        }
        array_task = f.get("ArrayTaskId", "")
        if array_task and not array_task.isdigit():  # the pending remainder of an array: "0-4"
            keys = [f"{f.get('ArrayJobId')}_{i}" for i in _expand_array_string(array_task)]
        else:
            keys = _record_keys(f.get("JobId"), f.get("ArrayJobId"), array_task or None, "")
        for key in keys:
            out[key] = {**record, "key": key}
    return out


#: How far back accounting is searched for a job by its name (sacct's time syntax): adoption happens
#: when a submitting worker's lease expires, minutes after the submission, never weeks.
ACCOUNTING_LOOKBACK = "now-14days"

#: ``sacct --parsable2`` columns read by :func:`parse_sacct_text` (free text last).
SACCT_FIELDS = ("JobID", "JobIDRaw", "State", "ExitCode", "NodeList", "TimelimitRaw", "Reason", "JobName", "Comment")


def parse_sacct_text(text: str) -> dict[str, dict[str, Any]]:
    """``sacct --noheader --parsable2 --format=<SACCT_FIELDS>`` -> {job key: normalised record}
    (the shape of :func:`parse_squeue_json`).
    ``CANCELLED by 1000`` is CANCELLED; ``123_[4-6]`` (elements not started) gives 123_4..123_6."""
    out: dict[str, dict[str, Any]] = {}
    width = len(SACCT_FIELDS)
    for line in text.splitlines():
        parts = line.split("|", width - 1)
        if len(parts) < width or not parts[1].isdigit():
            continue
        f = dict(zip(SACCT_FIELDS, parts))
        exit_pair = None
        if re.match(r"^\d+:\d+$", f["ExitCode"]):
            code, sig = f["ExitCode"].split(":")
            exit_pair = (int(code), int(sig))
        limit = int(f["TimelimitRaw"]) if f["TimelimitRaw"].isdigit() else f["TimelimitRaw"]  # minutes
        record = {
            "job_id": f["JobIDRaw"],
            "state": _state_of((f["State"].split() or [""])[0])[0],
            "flags": (),
            "reason": f["Reason"],
            "exit": exit_pair,
            "restarts": 0,  # sacct shows the latest run of a requeued job; it has no restart count
            "nodes": f["NodeList"],
            "time_limit": limit,
            "name": f["JobName"],
            "comment": f["Comment"],
        }
        match = re.match(r"^(\d+)_(\d+|\[([0-9,%:\-]+)\])$", f["JobID"])
        if match and match.group(3) is not None:
            keys = [f"{match.group(1)}_{i}" for i in _expand_array_string(match.group(3))]
        elif match:
            keys = [f"{match.group(1)}_{match.group(2)}"]
        else:
            keys = [f["JobIDRaw"]]
        for key in keys:
            out[key] = {**record, "key": key}
    return out


_PENDING_STATES = frozenset({"PENDING", "REQUEUED", "REQUEUE_FED", "REQUEUE_HOLD", "RESV_DEL_HOLD", "CONFIGURING",
                             "POWER_UP_NODE"})
_RUNNING_STATES = frozenset({"RUNNING", "COMPLETING", "SUSPENDED", "STOPPED", "SIGNALING", "STAGE_OUT",
                             "RESIZING", "UPDATE_DB"})
_FAILED_REASONS = {
    "FAILED": None,
    "OUT_OF_MEMORY": "out of memory",
    "NODE_FAIL": "node failure",
    "BOOT_FAIL": "node boot failure",
    "PREEMPTED": "preempted by a higher-priority job",
    "SPECIAL_EXIT": "special exit",
}
_ALL_STATES = _PENDING_STATES | _RUNNING_STATES | set(_FAILED_REASONS) | {
    "COMPLETED", "TIMEOUT", "DEADLINE", "CANCELLED", "REVOKED"}


def _exit_code(record: Mapping[str, Any]) -> int | None:
    pair = record.get("exit")
    if not pair:
        return None
    code, sig = pair
    return -sig if sig else code


def _exit_text(code: int | None) -> str:
    if code is None:
        return "exit status unknown"
    if code < 0:
        import signal

        try:
            return f"killed by signal {-code} ({signal.Signals(-code).name})"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


def record_status(record: Mapping[str, Any]) -> JobStatus:
    """Map one normalised Slurm record to a :class:`JobStatus` with a reason for humans."""
    state = record.get("state", "")
    reason = record.get("reason") or ""
    slurm_reason = f" ({reason})" if reason and reason not in ("None", "(null)") else ""
    nodes = record.get("nodes") or ""
    code = _exit_code(record)
    restarts = int(record.get("restarts") or 0)
    if state in _PENDING_STATES:
        if state.startswith("REQUEUE") or restarts:
            return JobStatus(JobState.PENDING, None, f"requeued ({restarts} time(s)), pending{slurm_reason}")
        return JobStatus(JobState.PENDING, None, f"pending in Slurm{slurm_reason}")
    if state in _RUNNING_STATES:
        note = {"SUSPENDED": "suspended", "STOPPED": "stopped", "COMPLETING": "completing"}.get(state, "running")
        return JobStatus(JobState.RUNNING, None, f"{note} on {nodes}" if nodes else note)
    if state == "COMPLETED":
        if code in (0, None):
            return JobStatus(JobState.SUCCEEDED, 0, "exit code 0")
        return JobStatus(JobState.FAILED, code, _exit_text(code))
    if state in ("TIMEOUT", "DEADLINE"):
        what = "time limit" if state == "TIMEOUT" else "deadline"
        limit = record.get("time_limit")
        detail = f" of {limit} min" if isinstance(limit, int) else f" of {limit}" if limit else ""
        return JobStatus(JobState.TIMED_OUT, code, f"killed by Slurm at its {what}{detail}")
    if state == "CANCELLED":
        return JobStatus(JobState.CANCELLED, code, f"cancelled in Slurm{slurm_reason}")
    if state in _FAILED_REASONS:
        what = _FAILED_REASONS[state]
        where = f" on {nodes}" if nodes and state in ("NODE_FAIL", "BOOT_FAIL") else ""
        text = f"{what}{where}, {_exit_text(code)}" if what else _exit_text(code)
        return JobStatus(JobState.FAILED, code, text + slurm_reason, interrupted=state == "PREEMPTED")
    if state == "REVOKED":
        return JobStatus(JobState.LOST, None, "revoked: the job ran on another cluster of the federation")
    return JobStatus(JobState.UNKNOWN, code, f"unrecognised Slurm state {state!r}{slurm_reason}")


# --------------------------------------------------------------------------- the executor


@dataclass(frozen=True)
class _Staged:
    req: JobRequest
    workdir: str
    inputs: list[tuple[tuple[str, ...], str]] = field(default_factory=list)


class SlurmExecutor(RemoteExecutor):
    """Runs tasks as Slurm batch jobs. See the module docstring.

    Configuration (all keywords, so ``get_executor("slurm", **config)`` works):

    * ``cluster``: a name for the cluster; trackers and rate limits are shared per name.
    * ``partition`` and ``defaults``: resources applied when the task does not give them.
    * ``ssh``: ``None`` (run Slurm's tools here) or a mapping for :class:`SshTarget`
      (``host``, ``known_hosts``, ``user``, ``port``, ``identity_file``).
    * ``work_root``: when set, every work dir must lie inside it (the filesystem shared with the
      compute nodes).
    * ``submit_rate`` (sbatch per second) and ``submit_burst``: the cluster's token bucket;
      ``submit_wait``: how long submit waits for a token before ``rate_limited``.
    * ``poll_interval``: seconds between the tracker's queries; ``command_timeout``: per command.
    * ``container_wrapper``: the command put before ``IMAGE argv`` for a ``container:`` task.
    * ``requeue``: let Slurm requeue jobs (off: a retry is a new Gatehouse attempt).
    * ``timeout_grace``: how long past a task's timeout :meth:`wait` trusts Slurm to enforce it.
    * ``driver``: ``auto``, ``cli`` or ``pyslurm`` (see :func:`choose_driver`).
    * ``accounting``: ``auto`` (use ``sacct`` for jobs that left the queue if the cluster keeps
      accounting, found out once), ``on`` or ``off`` (``true``/``false`` alike); see
      :class:`~executors.slurm_tracker.SlurmTracker`.
    """

    name = "slurm"
    synchronous = False

    def __init__(
        self,
        *,
        cluster: str = "default",
        partition: str | None = None,
        defaults: Mapping[str, Any] | None = None,
        ssh: Mapping[str, Any] | SshTarget | None = None,
        work_root: str | None = None,
        submit_rate: float = 5.0,
        submit_burst: int = 10,
        submit_wait: float = 60.0,
        poll_interval: float = 10.0,
        max_backoff: float = 300.0,
        command_timeout: float = 30.0,
        bin_dir: str | None = None,
        slurm_conf: str | None = None,
        path: str = SAFE_PATH,
        container_wrapper: Sequence[str] = DEFAULT_CONTAINER_WRAPPER,
        requeue: bool = False,
        timeout_grace: float = 120.0,
        driver: str = "auto",
        accounting: str | bool = "auto",
        credentials: Mapping[str, str] | None = None,
    ) -> None:
        if not cluster or any(c.isspace() for c in cluster):
            raise _bad(f"invalid cluster name {cluster!r}")
        if isinstance(accounting, bool):
            accounting = "on" if accounting else "off"
        if accounting not in ACCOUNTING_MODES:
            raise _bad(f"accounting must be auto, on or off, not {accounting!r}")
        target = SshTarget(**ssh) if isinstance(ssh, Mapping) else ssh
        self.cluster = cluster
        self.defaults = dict(defaults or {})
        if partition:
            self.defaults.setdefault("partition", partition)
        self.work_root = os.path.normpath(work_root) if work_root else None
        if self.work_root is not None and not os.path.isabs(self.work_root):
            raise _bad("work_root must be absolute")
        self.path = path
        self.container_wrapper = tuple(container_wrapper)
        self.requeue = bool(requeue)
        self.timeout_grace = float(timeout_grace)
        self.submit_wait = float(submit_wait)
        self.commands = SlurmCommands(ssh=target, bin_dir=bin_dir, timeout=command_timeout, path=path,
                                      slurm_conf=slurm_conf)
        # The tenant's credentials for this cluster (executors.credentials, read at dispatch): a
        # ``slurm_jwt`` goes to the tools' environment as SLURM_JWT (Slurm's auth/jwt), nowhere else.
        jwt = (credentials or {}).get("slurm_jwt")
        if jwt:
            self.commands.extra_env = {"SLURM_JWT": str(jwt)}
        pyslurm_version = detect_pyslurm_version() if driver != "cli" else None
        # pyslurm talks to the controller of this process's slurm.conf with this process's identity.
        unsupported = None
        if target is not None:
            unsupported = "a login node over SSH"
        elif jwt:
            unsupported = "a per-tenant Slurm JWT"
        elif slurm_conf and slurm_conf != os.environ.get("SLURM_CONF"):
            unsupported = f"another slurm.conf ({slurm_conf})"
        self.driver, self.driver_reason = choose_driver(
            driver,
            pyslurm_version=pyslurm_version,
            slurm_version=detect_slurm_version(self.commands) if pyslurm_version else None,
            unsupported=unsupported,
        )
        logger.info("Slurm cluster %r: %s driver, %s", cluster, self.driver, self.driver_reason)
        self.bucket = _bucket_for(cluster, submit_rate, submit_burst)
        self._pyslurm: Any = None
        if self.driver == "pyslurm":
            from .slurm_pyslurm import PyslurmDriver

            self._pyslurm = PyslurmDriver(cluster, self.commands, path=path, poll_interval=poll_interval,
                                          max_backoff=max_backoff, accounting=accounting)
            self.tracker: Any = self._pyslurm.tracker
        else:
            self.tracker = SlurmTracker.for_cluster(cluster, self.commands, poll_interval=poll_interval,
                                                    max_backoff=max_backoff, accounting=accounting)

    # ---------------------------------------------------------------- staging

    def _check(self, req: JobRequest) -> _Staged:
        if not isinstance(req.job_key, str) or not req.job_key:
            raise _bad("job_key must be a non-empty string")
        workdir = _abs_workdir(req)
        if self.work_root is not None and os.path.commonpath([workdir, self.work_root]) != self.work_root:
            raise _bad(f"workdir {workdir!r} is outside the cluster's shared work root {self.work_root!r}")
        if req.script is not None and not isinstance(req.script, str):
            raise _bad("script must be a string")
        inputs = check_inputs(req)
        _task_command(req, self.container_wrapper)  # refuse a bad command before any side effect
        task_env(req, path=self.path)
        return _Staged(req, workdir, inputs)

    def _stage(self, staged: _Staged) -> None:
        try:
            stdout_fd, stderr_fd = prepare_workdir(staged.req, staged.workdir, staged.inputs, None)
            os.close(stdout_fd)
            os.close(stderr_fd)
        except OSError as exc:
            raise ExecutorError("staging_failed", f"cannot prepare work dir {staged.workdir!r}: {exc}") from exc

    # ---------------------------------------------------------------- submit

    def build_sbatch(self, requests: Sequence[JobRequest], *, log_path: str) -> tuple[list[str], str]:
        """The exact ``sbatch`` argv (without ssh) and batch script for one request or an array
        (pure: no I/O). All elements of an array share the first request's resources."""
        fields = job_fields(requests, log_path=log_path, defaults=self.defaults, requeue=self.requeue)
        script = batch_script(requests, wrapper=self.container_wrapper, path=self.path)
        return self.commands.sbatch_argv(sbatch_job_options(fields)), script

    def _sbatch(self, argv: list[str], script: str, requests: Sequence[JobRequest], log_path: str) -> str:
        """One rate-limit token, then one submission through the driver: ``sbatch`` (``argv``) or
        pyslurm (the same :func:`job_fields`, the script kept next to ``log_path``)."""
        if not self.bucket.acquire(timeout=self.submit_wait):
            raise ExecutorError("rate_limited", f"no submission slot for cluster {self.cluster!r} within "
                                                f"{self.submit_wait:g}s (rate {self.bucket.rate:g}/s)")
        if self._pyslurm is not None:
            fields = job_fields(requests, log_path=log_path, defaults=self.defaults, requeue=self.requeue)
            return self._pyslurm.submit(fields, script, script_path=os.path.join(os.path.dirname(log_path),
                                                                                 "batch.sh"))
        try:
            result = self.commands.run(argv, stdin=script)
        except SlurmCommandError as exc:
            raise ExecutorError("submit_failed", f"sbatch refused the job: {exc}") from exc
        job_id = result.stdout.strip().split(";", 1)[0]
        if not job_id.isdigit():
            raise ExecutorError("submit_failed", f"sbatch answered {result.stdout.strip()!r}, not a job id")
        return job_id

    def submit(self, req: JobRequest) -> JobHandle:
        """Stage the work dir and submit one batch job; returns once Slurm has given its id."""
        staged = self._check(req)
        log_path = os.path.join(staged.workdir, CONTROL_DIR, SLURM_LOG)
        argv, script = self.build_sbatch([req], log_path=log_path)
        self._stage(staged)
        job_id = self._sbatch(argv, script, [req], log_path)
        self.tracker.track([job_id])
        return self._handle(job_id, job_id, req, log_path, array=None)

    def submit_array(self, requests: Sequence[JobRequest]) -> list[JobHandle]:
        """Submit similar requests as one job array: handle i is element i (``<id>_<i>``).

        The resources and time limit are the first request's; each element has its own work dir,
        command and environment."""
        requests = list(requests)
        if not requests:
            return []
        if len(requests) == 1:
            return [self.submit(requests[0])]
        staged = [self._check(r) for r in requests]
        if len({s.workdir for s in staged}) != len(staged):
            raise _bad("every element of an array needs its own work dir")
        log_dir = os.path.join(os.path.dirname(staged[0].workdir), f".slurm-{sanitize_job_key(_array_key(requests))}")
        argv, script = self.build_sbatch(requests, log_path=os.path.join(log_dir, "%a.log"))
        for item in staged:
            self._stage(item)
        try:
            _ensure_private_dir(log_dir, "array log directory")
        except OSError as exc:
            raise ExecutorError("staging_failed", f"cannot create {log_dir!r}: {exc}") from exc
        array_id = self._sbatch(argv, script, requests, os.path.join(log_dir, "%a.log"))
        handles = [
            self._handle(f"{array_id}_{i}", array_id, req, os.path.join(log_dir, f"{i}.log"), array=i)
            for i, req in enumerate(requests)
        ]
        self.tracker.track([h.external_id for h in handles])
        return handles

    @property
    def poll_group(self) -> str:
        """Jobs polled together by one query (the cluster's tracker)."""
        return f"slurm|{self.cluster}"

    def _handle(self, key: str, job_id: str, req: JobRequest, log_path: str, *, array: int | None) -> JobHandle:
        data: dict[str, Any] = {
            "cluster": self.cluster,
            "job_id": job_id,
            "workdir": _abs_workdir(req),
            "job_key": req.job_key,
            "job_name": job_name(req.job_key),
            "slurm_log": log_path,
            "submitted_at": time.time(),
        }
        if array is not None:
            data["array_task_id"] = array
        return JobHandle(backend=self.name, external_id=key, data=data)

    # ---------------------------------------------------------------- tracking

    def _foreign(self, handle: JobHandle) -> str | None:
        if handle.backend != self.name:
            return f"handle belongs to backend {handle.backend!r}"
        if handle.data.get("cluster", self.cluster) != self.cluster:
            return f"job runs on cluster {handle.data.get('cluster')!r}, this executor is {self.cluster!r}"
        if not re.match(r"^\d+(_\d+)?$", handle.external_id):
            return f"{handle.external_id!r} is not a Slurm job id"
        return None

    def poll_many(self, handles: Sequence[JobHandle]) -> dict[str, JobStatus]:
        """Status of every handle from the cluster's shared tracker: at most one Slurm query per
        poll interval whatever the number of callers and jobs."""
        out: dict[str, JobStatus] = {}
        ours = []
        for handle in handles:
            why = self._foreign(handle)
            if why:
                out[handle.external_id] = JobStatus(JobState.UNKNOWN, None, why)
            else:
                ours.append(handle.external_id)
        for key, status in self.tracker.statuses(ours).items():
            if status.interrupted and self.requeue:  # Slurm requeues a preempted job it may requeue
                status = JobStatus(JobState.PENDING, None, f"{status.reason}; requeued by Slurm")
            out[key] = status
        return out

    def reattach(self, handle: JobHandle) -> JobStatus:
        """Take up a job submitted earlier (by another process): track it again and return its
        status now (one query, shared with any other caller due one)."""
        why = self._foreign(handle)
        if why:
            raise _bad(why)
        return self.tracker.statuses([handle.external_id], force=True)[handle.external_id]

    def _queue_records(self, name: str) -> dict[str, dict[str, Any]]:
        """Every job the controller knows, as normalised records (one query, either driver)."""
        if self._pyslurm is not None:
            return self._pyslurm.records()
        try:
            return parse_squeue_json(self.commands.run(self.commands.squeue_argv([])).stdout)
        except SlurmCommandError as exc:
            raise ExecutorError("slurm_unavailable", f"cannot ask Slurm for {name}: {exc}") from exc

    def _accounting_records(self, name: str) -> dict[str, dict[str, Any]]:
        """The jobs named ``name`` that accounting knows, those that already left the queue among
        them; none when the cluster keeps no accounting or the backend says ``accounting: off``.
        A sacct that fails otherwise is ExecutorError (slurm_unavailable): the job may exist, so
        the caller must ask again later, never take it for absent and submit it a second time."""
        tracker = self.tracker
        if self._pyslurm is not None or tracker.accounting_available is False:
            return {}
        try:
            text = self.commands.run(self.commands.sacct_by_name_argv(name)).stdout
        except SlurmCommandError as exc:
            if tracker.found_no_accounting(exc):
                return {}
            raise ExecutorError("slurm_unavailable", f"cannot ask Slurm's accounting for {name}: {exc}") from exc
        return {key: r for key, r in parse_sacct_text(text).items() if r["name"] == name}

    def _named(self, name: str) -> list[dict[str, Any]]:
        """Records of the jobs named ``name``: the controller's, else (a job that finished and was
        purged from the controller's memory) accounting's."""
        records = [r for r in self._queue_records(name).values() if r["name"] == name]
        return records or list(self._accounting_records(name).values())

    def lookup(self, req: JobRequest) -> JobHandle | None:
        """The job already submitted for ``req`` (found by its job name), if Slurm knows it, in its
        queue or, once it has left it, in its accounting: for a worker that died between ``sbatch``
        and recording the job id."""
        name = job_name(req.job_key)
        matches = sorted(self._named(name), key=lambda r: int(r["job_id"]))
        if not matches:
            return None
        job_id = matches[-1]["job_id"]
        log_path = os.path.join(_abs_workdir(req), CONTROL_DIR, SLURM_LOG)
        self.tracker.track([job_id])
        return self._handle(job_id, job_id, req, log_path, array=None)

    def lookup_array(self, requests: Sequence[JobRequest]) -> list[JobHandle] | None:
        """The job array already submitted for ``requests`` (found by its name, in the queue or in
        accounting), as :meth:`submit_array` returned it."""
        requests = list(requests)
        if len(requests) < 2:
            handle = self.lookup(requests[0]) if requests else None
            return None if handle is None else [handle]
        name = job_name(_array_key(requests))
        ids = sorted({r["key"].split("_", 1)[0] for r in self._named(name) if "_" in r["key"]}, key=int)
        if not ids:
            return None
        log_dir = os.path.join(os.path.dirname(_abs_workdir(requests[0])), f".slurm-{sanitize_job_key(_array_key(requests))}")
        handles = [self._handle(f"{ids[-1]}_{i}", ids[-1], req, os.path.join(log_dir, f"{i}.log"), array=i)
                   for i, req in enumerate(requests)]
        self.tracker.track([h.external_id for h in handles])
        return handles

    # ---------------------------------------------------------------- cancel, collect

    def cancel(self, handle: JobHandle) -> None:
        """``scancel`` (or pyslurm); a job Slurm has finished or forgotten is not an error."""
        why = self._foreign(handle)
        if why:
            raise _bad(why)
        if self._pyslurm is not None:
            self._pyslurm.cancel(handle.external_id)
            return
        try:
            result = self.commands.run(self.commands.scancel_argv(handle.external_id), check=False)
        except SlurmCommandError as exc:
            raise ExecutorError("slurm_unavailable", f"cannot cancel job {handle.external_id}: {exc}") from exc
        gone = "Invalid job id" in result.stderr or "already completing" in result.stderr
        if result.returncode != 0 and not gone:
            raise ExecutorError("slurm_unavailable", f"scancel {handle.external_id}: {result.stderr.strip()[:300]}")

    def collect(self, handle: JobHandle, req: JobRequest) -> Collected:
        """Declared outputs as the ``local`` executor checks them; Slurm's own messages about the
        job (time limit, cancellation) are appended once to stderr. The job stops being tracked."""
        collected = collect_workdir(handle, req)
        _merge_slurm_log(handle.data.get("slurm_log"), collected.stderr_path)
        self.tracker.untrack([handle.external_id])
        return collected


def _merge_slurm_log(log_path: Any, stderr_path: str) -> None:
    if not isinstance(log_path, str) or not os.path.isfile(log_path) or os.path.islink(log_path):
        return
    try:
        if os.path.getsize(log_path):
            with open(log_path, "rb") as src, open(stderr_path, "ab") as dst:
                shutil.copyfileobj(src, dst)
        os.replace(log_path, log_path + ".merged")
    except OSError:
        pass


def _array_key(requests: Sequence[JobRequest]) -> str:
    return f"{requests[0].job_key}+{len(requests) - 1}"


def _array_comment(requests: Sequence[JobRequest]) -> str:
    first = requests[0]
    runs = sorted({_tag(r.labels.get("run_id", "")) for r in requests} - {""})
    parts = ["gatehouse", f"array={len(requests)}"]
    if len(runs) == 1:
        parts.append(f"run={runs[0]}")
    parts.append(f"key={_tag(first.job_key)}")
    return ";".join(parts)
