"""The ``local`` executor: run a task as a subprocess of the worker, on the worker's host.

Lifecycle of a job:

1. :meth:`LocalExecutor.submit` creates the work dir (mode 0700), copies the inputs into it,
   writes the script (if any) to ``<workdir>/.gatehouse/script`` and starts the process in a new
   session (so it leads its own process group) with a minimal, clean environment. The worker's
   own environment is never inherited: it holds secrets.
2. :meth:`LocalExecutor.wait` blocks until the process exits (noticed at once through a pidfd,
   no polling delay), calling ``heartbeat``/``should_cancel`` every ``interval`` seconds. On
   timeout or cancellation the whole process group gets SIGTERM, then SIGKILL after a grace.
3. When the group leader exits, whatever it left behind in its process group is killed too (as
   SLURM does at the end of a step), then the leader is reaped.
4. :meth:`LocalExecutor.collect` checks the declared outputs stay inside the work dir.

Safety against pid reuse: the leader is only reaped *after* its group has been signalled, so
while we own a job its pid (== its process-group id) cannot be handed to another process.
Handles of jobs started by another process (e.g. before a worker restart) carry the kernel's
boot id and the leader's start time (``/proc/<pid>/stat`` field 22); a pid whose start time
differs is someone else's and is never signalled.

Parent death: on Linux each child asks the kernel (``prctl(PR_SET_PDEATHSIG, SIGKILL)``) to be
killed when its parent dies, so a crashed worker does not leave orphaned tasks running. The
kernel fires this signal when the *thread* that forked the child exits, not the process: the
caller must submit and wait in the same long-lived thread (Celery's prefork pool does; do not
submit from a short-lived thread of a thread pool). Only the direct child is covered; its own
children are reached through the process group when the executor is still alive.

A handle whose process this executor instance did not start (after a worker restart) polls as
RUNNING while the process is alive and as LOST once it is gone: only a process's parent can
learn its exit status, so it cannot be known.

Containers: with ``req.container`` set, the command becomes ``<runtime> run --rm ... IMAGE
argv...`` (see :func:`container_argv`), runtime podman or docker. The task's environment goes
through ``--env-file``; the runtime CLI itself gets a clean environment plus a short allowlist
of runtime settings (``DOCKER_HOST``, ``XDG_RUNTIME_DIR``...). A cancelled or timed-out container
is also removed with ``<runtime> rm -f <name>``, because killing the CLI does not stop it.

This module is pure Python (no Django) and targets Linux; elsewhere it runs jobs it starts, but
cannot inspect foreign handles (they poll as UNKNOWN and cannot be cancelled).
"""

from __future__ import annotations

import ctypes
import math
import os
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .base import (
    Collected,
    Executor,
    ExecutorError,
    JobHandle,
    JobRequest,
    JobState,
    JobStatus,
    sanitize_job_key,
)
from .workdir import CONTROL_DIR, _abs_workdir, _bad, check_inputs, collect_workdir, prepare_workdir

__all__ = [
    "CONTROL_DIR",
    "SAFE_PATH",
    "LocalExecutor",
    "container_argv",
    "container_env_file",
    "container_name",
    "container_options",
    "container_rm_argv",
    "find_container_runtime",
    "resolve_argv",
    "task_env",
]

#: PATH given to tasks unless ``req.env`` sets its own.
SAFE_PATH = "/usr/local/bin:/usr/bin:/bin"
SCRIPT_PLACEHOLDER = "{script}"

#: Worker variables passed to the container runtime CLI (never to the task): they configure how
#: to reach the runtime, not the task, and hold no secrets themselves.
RUNTIME_ENV_PASSTHROUGH = (
    "HOME",
    "USER",
    "LOGNAME",
    "XDG_RUNTIME_DIR",
    "XDG_CONFIG_HOME",
    "XDG_DATA_HOME",
    "DOCKER_HOST",
    "DOCKER_CONTEXT",
    "DOCKER_CONFIG",
    "DOCKER_CERT_PATH",
    "DOCKER_TLS_VERIFY",
    "CONTAINER_HOST",
    "CONTAINER_CONNECTION",
    "CONTAINERS_CONF",
    "CONTAINERS_STORAGE_CONF",
)

_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_LABEL_TO_ENV = re.compile(r"[^A-Za-z0-9]+")
_PR_SET_PDEATHSIG = 1
_SIGKILL = int(signal.SIGKILL)
_HAVE_PROC = os.path.isdir("/proc/self")


# --------------------------------------------------------------------------- process inspection


def _load_prctl() -> Callable[..., int] | None:
    """libc's prctl, resolved once at import: the child must not load libraries after fork."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        fn = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    fn.restype = ctypes.c_int
    return fn


_PRCTL = _load_prctl()


def _read_boot_id() -> str | None:
    try:
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as fh:
            return fh.read().strip() or None
    except OSError:
        return None


_BOOT_ID = _read_boot_id()


@dataclass(frozen=True)
class _ProcInfo:
    state: str  # "R", "S", "Z"...
    pgrp: int
    start_ticks: int


def _proc_info(pid: int) -> _ProcInfo | None:
    """Parse ``/proc/<pid>/stat``; ``None`` if there is no such process (or no /proc)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            raw = fh.read()
    except OSError:
        return None
    # Field 2 (comm) is in parentheses and may itself contain spaces or ")".
    rest = raw[raw.rindex(b")") + 2 :].split()
    # rest[0] is field 3 (state), rest[2] field 5 (pgrp), rest[19] field 22 (starttime).
    return _ProcInfo(state=rest[0].decode("ascii", "replace"), pgrp=int(rest[2]), start_ticks=int(rest[19]))


def _group_has_live_members(pgid: int) -> bool:
    """Whether any non-zombie process is in process group ``pgid`` (False without /proc)."""
    if not _HAVE_PROC:
        return False
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        info = _proc_info(int(entry))
        if info is not None and info.pgrp == pgid and info.state not in ("Z", "X"):
            return True
    return False


def _killpg(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _status_from_returncode(rc: int) -> JobStatus:
    if rc == 0:
        return JobStatus(JobState.SUCCEEDED, 0, "exit code 0")
    if rc < 0:
        try:
            signame = f" ({signal.Signals(-rc).name})"
        except ValueError:
            signame = ""
        return JobStatus(JobState.FAILED, rc, f"killed by signal {-rc}{signame}")
    return JobStatus(JobState.FAILED, rc, f"exit code {rc}")


# util-linux's setpriv sets the parent-death signal and execs the task: the same guarantee as a
# preexec_fn calling prctl, without forcing subprocess to fork() the whole worker (a preexec_fn
# rules out vfork; fork copies the worker's page tables, about 7 ms a task against 2 ms here).
# One difference: setpriv does not check that its parent is still there after setting it, so a
# worker killed in the instant between submit() returning and setpriv's prctl (a loaded machine
# can stretch it to milliseconds) leaves that task running; the reconciler then starts a new
# attempt once the lease expires. The preexec_fn path checks getppid() and closes that window.
_SETPRIV = shutil.which("setpriv", path="/usr/bin:/bin:/usr/sbin:/sbin") if sys.platform.startswith("linux") else None


def _with_pdeathsig(argv: list[str], env: Mapping[str, str]) -> tuple[list[str], Callable[[], None] | None]:
    """The command and preexec_fn that make the task die with its worker (Linux only)."""
    if _SETPRIV is None:
        return argv, _make_child_setup(os.getpid())
    program = argv[0]
    if os.sep not in program:
        # setpriv would report a missing program only as an exit status; keep it a spawn error.
        found = shutil.which(program, path=env.get("PATH", SAFE_PATH))
        if found is None:
            raise FileNotFoundError(2, "No such file or directory", program)
    elif not os.access(program, os.X_OK):
        raise FileNotFoundError(2, "No such file or directory or not executable", program)
    return [_SETPRIV, "--pdeathsig", "KILL", "--", *argv], None


def _make_child_setup(parent_pid: int) -> Callable[[], None] | None:
    """preexec_fn for Popen: die with the parent (Linux only).

    Runs in the forked child before exec, so it only calls the pre-resolved prctl and getppid.
    If the parent died between fork and prctl, no signal would ever come: exit instead.
    """
    prctl = _PRCTL
    if prctl is None:
        return None

    def _setup() -> None:
        prctl(_PR_SET_PDEATHSIG, _SIGKILL, 0, 0, 0)
        if os.getppid() != parent_pid:
            os._exit(1)

    return _setup


# --------------------------------------------------------------------------- request helpers


def _script_path(workdir: str) -> str:
    return os.path.join(workdir, CONTROL_DIR, "script")


def _env_file_path(workdir: str) -> str:
    return os.path.join(workdir, CONTROL_DIR, "env")


def resolve_argv(req: JobRequest, *, allow_empty: bool = False) -> list[str]:
    """``req.argv`` with ``{script}`` replaced by the script's absolute path.

    With a script and no argv, the command defaults to ``/bin/sh {script}``.
    """
    workdir = _abs_workdir(req)
    argv = list(req.argv)
    if not all(isinstance(a, str) and "\x00" not in a for a in argv):
        raise _bad("argv items must be strings without NUL bytes")
    if req.script is None:
        if any(SCRIPT_PLACEHOLDER in a for a in argv):
            raise _bad("argv references {script} but the request has no script")
        if not argv and not allow_empty:
            raise _bad("argv is empty and there is no script")
        return argv
    if not argv:
        argv = ["/bin/sh", SCRIPT_PLACEHOLDER]
    script = _script_path(workdir)
    return [a.replace(SCRIPT_PLACEHOLDER, script) for a in argv]


def label_env(labels: Mapping[str, str]) -> dict[str, str]:
    """``{"run_id": "r1"}`` -> ``{"GATEHOUSE_RUN_ID": "r1"}``."""
    out: dict[str, str] = {}
    for key, value in labels.items():
        name = _LABEL_TO_ENV.sub("_", str(key)).strip("_").upper()
        if name:
            out[f"GATEHOUSE_{name}"] = str(value)
    return out


def _check_env(env: Mapping[str, str]) -> None:
    for key, value in env.items():
        if not isinstance(key, str) or not _ENV_NAME.match(key):
            raise _bad(f"invalid environment variable name {key!r}")
        if not isinstance(value, str) or "\x00" in value:
            raise _bad(f"environment variable {key} must be a string without NUL bytes")


def task_env(req: JobRequest, *, path: str = SAFE_PATH) -> dict[str, str]:
    """The complete environment of a host task: nothing is inherited from the worker.

    Later entries win: defaults, then ``GATEHOUSE_*`` from labels, then ``req.env``.
    """
    workdir = _abs_workdir(req)
    env = {"PATH": path, "HOME": workdir, "LANG": "C.UTF-8", "GATEHOUSE_JOB_KEY": req.job_key}
    env.update(label_env(req.labels))
    env.update(req.env)
    _check_env(env)
    return env


#: Appended to the container runtime CLI's PATH: podman's network helper (netavark) runs
#: ``iptables``/``nft`` found on PATH, and those live in the sbin directories.
RUNTIME_PATH_EXTRA = ("/usr/local/sbin", "/usr/sbin", "/sbin")


def _runtime_env(path: str) -> dict[str, str]:
    """Environment of the container runtime CLI (not of the task)."""
    dirs = path.split(os.pathsep)
    env = {"PATH": os.pathsep.join(dirs + [d for d in RUNTIME_PATH_EXTRA if d not in dirs]), "LANG": "C.UTF-8"}
    for key in RUNTIME_ENV_PASSTHROUGH:
        if key in os.environ:
            env[key] = os.environ[key]
    return env


# --------------------------------------------------------------------------- containers


def container_name(req: JobRequest) -> str:
    return f"gatehouse-{sanitize_job_key(req.job_key)}"


def _is_docker(runtime_path: str) -> bool:
    return os.path.basename(runtime_path).startswith("docker")


#: The ``container.options`` a task may give podman or docker: limits and restrictions only.
#: Whatever would widen what the container sees or may do (mounts, devices, added capabilities,
#: ``--privileged``, host namespaces, another user) is refused, as is anything not listed.
RUNTIME_OPTIONS = (
    r"--read-only",
    r"--init",
    r"--network=none",
    r"--cap-drop=[A-Za-z_]+",
    r"--security-opt=no-new-privileges(?::true)?",
    r"--memory=[0-9]+[bkmgBKMG]?",
    r"--cpus=[0-9]+(?:\.[0-9]+)?",
    r"--pids-limit=[0-9]+",
    r"--shm-size=[0-9]+[bkmgBKMG]?",
    r"--tmpfs=/[A-Za-z0-9_./-]*",
    r"--pull=(?:never|missing|newer|always)",
)


def container_options(container: Mapping[str, Any], allowed: Sequence[str], runtime: str) -> list[str]:
    """``container["options"]`` checked against ``allowed`` (full matches of these patterns), in
    order; ``bad_request`` for anything else. Each option is one ``--name=value`` item."""
    options = container.get("options") or []
    if not isinstance(options, list) or not all(isinstance(o, str) for o in options):
        raise _bad("container options must be a list of strings")
    patterns = [re.compile(p) for p in allowed]
    for option in options:
        if not any(p.fullmatch(option) for p in patterns):
            names = ", ".join(re.split(r"[(\[]", a, maxsplit=1)[0] for a in allowed)
            raise _bad(f"container option {option!r} is not allowed with {runtime} (allowed: {names})")
    return list(options)


def container_argv(req: JobRequest, runtime_path: str) -> list[str]:
    """The exact command that runs ``req`` in a container (pure: no I/O).

    ``<runtime> run --rm --name <name> [--label gatehouse.<k>=<v>]... [--user U]
    -v <workdir>:<workdir> -w <workdir> --env-file <workdir>/.gatehouse/env [options] IMAGE argv...``
    (``options``: ``container["options"]``, each allowed by :data:`RUNTIME_OPTIONS`).

    The work dir is mounted at the same path, so ``{script}`` and output paths mean the same
    inside and out. ``--name`` lets a cancel remove the container. With docker, the container
    runs as the worker's uid:gid unless ``container["user"]`` says otherwise (falsy: image
    default), so files it writes into the work dir stay the worker's; rootless podman already
    maps container root to the worker's user.
    """
    container = req.container
    if not container:
        raise _bad("the request has no container")
    image = container.get("image")
    if not isinstance(image, str) or not image.strip() or image.startswith("-"):
        raise _bad(f"container image must be a non-empty string not starting with '-', got {image!r}")
    workdir = _abs_workdir(req)
    if ":" in workdir or "," in workdir:
        raise _bad(f"workdir {workdir!r} cannot be mounted into a container (contains ':' or ',')")
    cmd = [runtime_path, "run", "--rm", "--name", container_name(req)]
    for key, value in sorted(req.labels.items()):
        cmd += ["--label", f"gatehouse.{key}={value}"]
    if "user" in container:
        user = container["user"]
    else:
        user = f"{os.getuid()}:{os.getgid()}" if _is_docker(runtime_path) else None
    if user:
        cmd += ["--user", str(user)]
    cmd += ["-v", f"{workdir}:{workdir}", "-w", workdir, "--env-file", _env_file_path(workdir)]
    cmd += container_options(container, RUNTIME_OPTIONS, os.path.basename(runtime_path))
    cmd.append(image)
    cmd += resolve_argv(req, allow_empty=True)
    return cmd


def container_env_file(req: JobRequest) -> str:
    """Contents of the ``--env-file``: the task's environment minus PATH (the image's own PATH
    applies unless ``req.env`` sets one). The format has no quoting, so newlines are refused."""
    env = task_env(req)
    if "PATH" not in req.env:
        del env["PATH"]
    lines = []
    for key, value in sorted(env.items()):
        if "\n" in value or "\r" in value:
            raise _bad(f"environment variable {key} contains a newline, which a container env file cannot carry")
        lines.append(f"{key}={value}\n")
    return "".join(lines)


def find_container_runtime(container: Mapping[str, Any]) -> str:
    """Absolute path of the runtime: ``container["runtime"]`` if given (name or path), else the
    first of podman, docker found on the worker's PATH."""
    wanted = container.get("runtime")
    candidates = [str(wanted)] if wanted else ["podman", "docker"]
    for candidate in candidates:
        found = shutil.which(candidate)
        if found:
            return os.path.abspath(found)
    raise ExecutorError(
        "no_container_runtime",
        f"this task needs a container runtime ({' or '.join(candidates)}) and none is installed on "
        f"host {socket.gethostname()}",
    )


def container_rm_argv(runtime: str, name: str) -> list[str]:
    """Stop (SIGKILL, at once) and remove a container. The task has already had SIGTERM and the
    executor's grace through the CLI; podman's ``rm -f`` would otherwise wait its 10 s stop
    timeout first, while docker's ``rm -f`` kills at once and has no ``--time``."""
    return [runtime, "rm", "-f", name] if _is_docker(runtime) else [runtime, "rm", "-f", "--time", "0", name]


def _remove_container(runtime: str, name: str, path: str) -> None:
    """Best effort: the container may already be gone (``--rm``)."""
    try:
        subprocess.run(
            container_rm_argv(runtime, name),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=_runtime_env(path),
            timeout=30,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        pass


# --------------------------------------------------------------------------- the executor


@dataclass
class _Job:
    """A process this executor instance started; reaped exactly once, by :meth:`_finalize`."""

    proc: subprocess.Popen[bytes]
    pid: int
    pgid: int
    start_ticks: int | None
    pidfd: int | None
    workdir: str
    runtime: str | None = None
    container: str | None = None
    status: JobStatus | None = None
    lock: threading.RLock = field(default_factory=threading.RLock)


class LocalExecutor(Executor):
    """Runs jobs as child processes of the current process. See the module docstring."""

    name = "local"
    synchronous = True

    def __init__(self, *, kill_grace: float = 2.0, path: str = SAFE_PATH, max_finished: int = 4096) -> None:
        self.kill_grace = float(kill_grace)
        self.path = path
        self.max_finished = int(max_finished)
        self.host = socket.gethostname()
        self._jobs: dict[str, _Job] = {}
        self._lock = threading.Lock()

    # ---------------------------------------------------------------- submit

    def submit(self, req: JobRequest) -> JobHandle:
        """Stage the work dir and start the process. Raises ExecutorError (``bad_request``,
        ``input_missing``, ``no_container_runtime``, ``staging_failed``, ``spawn_failed``).

        Everything that can be checked without side effects is checked first, so a refused
        request creates nothing.
        """
        if not isinstance(req.job_key, str) or not req.job_key:
            raise _bad("job_key must be a non-empty string")
        workdir = _abs_workdir(req)
        staged = check_inputs(req)
        if req.script is not None and not isinstance(req.script, str):
            raise _bad("script must be a string")

        runtime: str | None = None
        env_file: str | None = None
        if req.container:
            runtime = find_container_runtime(req.container)
            argv = container_argv(req, runtime)
            env_file = container_env_file(req)
            env = _runtime_env(self.path)
        else:
            argv = resolve_argv(req)
            env = task_env(req, path=self.path)

        # Side effects from here on.
        try:
            stdout_fd, stderr_fd = prepare_workdir(req, workdir, staged, env_file)
        except OSError as exc:
            raise ExecutorError("staging_failed", f"cannot prepare work dir {workdir!r}: {exc}") from exc
        try:
            spawn_argv, preexec = _with_pdeathsig(argv, env)
            proc = subprocess.Popen(
                spawn_argv,
                cwd=workdir,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=stdout_fd,
                stderr=stderr_fd,
                close_fds=True,
                start_new_session=True,  # own session and process group: killpg reaches it all
                preexec_fn=preexec,
            )
        except (OSError, subprocess.SubprocessError) as exc:
            detail = getattr(exc, "strerror", None) or str(exc)
            raise ExecutorError("spawn_failed", f"cannot start {argv[0]!r}: {detail}") from exc
        finally:
            os.close(stdout_fd)
            os.close(stderr_fd)

        started_at = time.time()
        pid = proc.pid
        info = _proc_info(pid)  # the child is not reaped yet, so this is really our process
        try:
            pidfd: int | None = os.pidfd_open(pid)  # type: ignore[attr-defined]
        except (AttributeError, OSError):
            pidfd = None
        job = _Job(
            proc=proc,
            pid=pid,
            pgid=pid,  # start_new_session: the child leads its own group
            start_ticks=info.start_ticks if info else None,
            pidfd=pidfd,
            workdir=workdir,
            runtime=runtime,
            container=container_name(req) if req.container else None,
        )
        external_id = f"{self.host}:{pid}"
        data: dict[str, Any] = {
            "pid": pid,
            "pgid": pid,
            "host": self.host,
            "boot_id": _BOOT_ID,
            "workdir": workdir,
            "started_at": started_at,
            "start_time_ticks": job.start_ticks,
            "job_key": req.job_key,
        }
        if req.container:
            data["container_name"] = job.container
            data["runtime"] = runtime
        with self._lock:
            self._jobs[external_id] = job  # replaces a finished job that had the same pid
            self._trim_locked()
        return JobHandle(backend=self.name, external_id=external_id, data=data)

    def _trim_locked(self) -> None:
        """Forget the oldest finished jobs once more than ``max_finished`` jobs are known, keeping the
        newest ``max_finished // 2`` finished ones (dicts keep insertion order); running jobs are
        never forgotten. Only a submission that takes the count over the limit reads the whole
        table, so a submission costs no more with thousands of jobs behind it than with none."""
        if len(self._jobs) <= self.max_finished:
            return
        finished = [k for k, j in self._jobs.items() if j.status is not None]
        for key in finished[: max(0, len(finished) - self.max_finished // 2)]:
            del self._jobs[key]

    # ---------------------------------------------------------------- owned processes

    def _owned(self, handle: JobHandle) -> _Job | None:
        """The job if this instance started it (same pid *and* start time: a stale handle of an
        earlier job whose pid was reused must not match)."""
        with self._lock:
            job = self._jobs.get(handle.external_id)
        if job is None:
            return None
        data = handle.data
        if data.get("pid") != job.pid or data.get("start_time_ticks") != job.start_ticks:
            return None
        return job

    def _leader_exited(self, job: _Job, timeout: float) -> bool:
        """Wait up to ``timeout`` s for the leader to exit, *without* reaping it."""
        if job.status is not None:
            return True
        if job.pidfd is not None:
            poller = select.poll()
            poller.register(job.pidfd, select.POLLIN)
            return bool(poller.poll(max(0, math.ceil(timeout * 1000))))
        deadline = time.monotonic() + timeout
        while True:  # no pidfd (old kernel, not Linux): poll waitid with WNOWAIT
            try:
                if os.waitid(os.P_PID, job.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None:
                    return True
            except ChildProcessError:
                return True
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            time.sleep(min(0.02, remaining))

    def _finalize(self, job: _Job, outcome: tuple[JobState, str] | None = None) -> JobStatus:
        """Kill what the exited leader left in its group, reap it, record the status."""
        with job.lock:
            if job.status is not None:
                return job.status
            # The leader is a zombie we have not reaped, so its pid (the pgid) cannot have been
            # reused: signalling the group only reaches the job's own processes.
            _killpg(job.pgid, signal.SIGKILL)
            rc = job.proc.wait()
            if job.pidfd is not None:
                os.close(job.pidfd)
                job.pidfd = None
            status = _status_from_returncode(rc)
            if outcome is not None:
                status = JobStatus(outcome[0], rc, outcome[1])
            job.status = status
            return status

    def _stop(self, job: _Job, state: JobState, reason: str) -> JobStatus:
        """Terminate a job we own (timeout, cancel) and return its final status."""
        with job.lock:
            if job.status is not None:
                return job.status
            if self._leader_exited(job, 0):
                return self._finalize(job)  # it finished on its own first: report that
            self._terminate_group(job.pgid, lambda t: self._leader_exited(job, t))
            if job.container and job.runtime:
                _remove_container(job.runtime, job.container, self.path)
            return self._finalize(job, (state, reason))

    def _terminate_group(self, pgid: int, leader_gone: Callable[[float], bool]) -> None:
        """SIGTERM the group; SIGKILL it after ``kill_grace`` s unless everything left first."""
        _killpg(pgid, signal.SIGTERM)
        deadline = time.monotonic() + self.kill_grace
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            if leader_gone(min(remaining, 0.05)):
                if not _group_has_live_members(pgid):
                    break
                time.sleep(min(remaining, 0.05))
        _killpg(pgid, signal.SIGKILL)

    # ---------------------------------------------------------------- foreign handles

    def _foreign_ids(self, data: Mapping[str, Any]) -> tuple[int, int, int | None]:
        try:
            pid, pgid = int(data["pid"]), int(data["pgid"])
        except (KeyError, TypeError, ValueError) as exc:
            raise _bad("handle data lacks a valid pid/pgid") from exc
        ticks = data.get("start_time_ticks")
        return pid, pgid, int(ticks) if ticks is not None else None

    def _poll_foreign(self, data: Mapping[str, Any]) -> JobStatus:
        pid, _pgid, ticks = self._foreign_ids(data)
        host = data.get("host")
        if host != self.host:
            return JobStatus(JobState.UNKNOWN, None, f"job runs on host {host!r}, this is {self.host!r}")
        if not _HAVE_PROC or ticks is None:
            return JobStatus(JobState.UNKNOWN, None, "cannot inspect processes on this system")
        if data.get("boot_id") != _BOOT_ID:
            return JobStatus(JobState.LOST, None, "the host rebooted after the job started")
        info = _proc_info(pid)
        if info is None or info.start_ticks != ticks:
            return JobStatus(
                JobState.LOST,
                None,
                f"process {pid} is gone and was started by another worker process: its exit status is unknown",
            )
        if info.state in ("Z", "X"):
            return JobStatus(
                JobState.LOST,
                None,
                f"process {pid} has exited but was started by another process: its exit status is unknown",
            )
        return JobStatus(JobState.RUNNING, None, "running")

    def _foreign_group_is_ours(self, data: Mapping[str, Any]) -> bool:
        """Whether signalling the handle's process group can only reach the job's processes."""
        pid, pgid, ticks = self._foreign_ids(data)
        if not _HAVE_PROC or ticks is None or data.get("host") != self.host or data.get("boot_id") != _BOOT_ID:
            return False
        info = _proc_info(pid)
        if info is not None:
            return info.start_ticks == ticks and info.pgrp == pgid
        # Leader gone. Linux never hands out a number still used as a process-group id, so live
        # members of group `pgid` with no process `pgid` are what the job left behind.
        return pid == pgid and _group_has_live_members(pgid)

    def _cancel_foreign(self, data: Mapping[str, Any]) -> None:
        _pid, pgid, _ticks = self._foreign_ids(data)
        if self._foreign_group_is_ours(data):
            _killpg(pgid, signal.SIGTERM)
            deadline = time.monotonic() + self.kill_grace
            while time.monotonic() < deadline:
                info = _proc_info(_pid)
                leader_gone = info is None or info.start_ticks != _ticks or info.state in ("Z", "X")
                if leader_gone and not _group_has_live_members(pgid):
                    break
                time.sleep(0.05)
            if self._foreign_group_is_ours(data):  # re-check: never SIGKILL a reused pid's group
                _killpg(pgid, signal.SIGKILL)
        name, runtime = data.get("container_name"), data.get("runtime")
        if name and runtime and data.get("host") == self.host:
            _remove_container(str(runtime), str(name), self.path)

    # ---------------------------------------------------------------- public interface

    def poll_many(self, handles: Sequence[JobHandle]) -> dict[str, JobStatus]:
        """Status of each handle. Jobs this instance started are reaped here if they exited;
        others are looked up in /proc (RUNNING while alive, LOST once gone)."""
        out: dict[str, JobStatus] = {}
        for handle in handles:
            out[handle.external_id] = self._poll_one(handle)
        return out

    def _poll_one(self, handle: JobHandle) -> JobStatus:
        if handle.backend != self.name:
            return JobStatus(JobState.UNKNOWN, None, f"handle belongs to backend {handle.backend!r}")
        job = self._owned(handle)
        if job is not None:
            if job.status is not None:
                return job.status
            if self._leader_exited(job, 0):
                return self._finalize(job)
            return JobStatus(JobState.RUNNING, None, "running")
        try:
            return self._poll_foreign(handle.data)
        except ExecutorError as exc:
            return JobStatus(JobState.UNKNOWN, None, exc.message)

    def wait(
        self,
        handle: JobHandle,
        *,
        timeout: float | None,
        should_cancel: Callable[[], bool] | None = None,
        heartbeat: Callable[[], None] | None = None,
        interval: float = 1.0,
    ) -> JobStatus:
        """Wait for a job this instance started; completion is noticed immediately.

        Call it from the thread that called :meth:`submit` (see PDEATHSIG in the module doc).
        If ``heartbeat``/``should_cancel`` raise (or the wait is interrupted, e.g. by Celery's
        soft time limit), the job is killed before the exception propagates: an unsupervised
        task must not keep running. Handles this instance did not start fall back to polling.
        """
        job = self._owned(handle)
        if job is None:
            return super().wait(
                handle, timeout=timeout, should_cancel=should_cancel, heartbeat=heartbeat, interval=interval
            )
        interval = max(float(interval), 0.01)
        deadline = None if timeout is None else time.monotonic() + max(0.0, float(timeout))
        try:
            while True:
                step = interval if deadline is None else min(interval, max(0.0, deadline - time.monotonic()))
                if self._leader_exited(job, step):
                    return self._finalize(job)
                if deadline is not None and time.monotonic() >= deadline:
                    return self._stop(job, JobState.TIMED_OUT, f"timed out after {timeout:g}s")
                if heartbeat is not None:
                    heartbeat()
                if should_cancel is not None and should_cancel():
                    return self._stop(job, JobState.CANCELLED, "cancelled")
        except BaseException as exc:
            self._stop(job, JobState.CANCELLED, f"wait aborted: {type(exc).__name__}: {exc}")
            raise

    def cancel(self, handle: JobHandle) -> None:
        """Terminate the job's process group (SIGTERM, then SIGKILL after ``kill_grace`` s).
        A no-op for finished jobs; foreign handles are only signalled after the start-time check
        proves the pid was not reused."""
        if handle.backend != self.name:
            raise _bad(f"handle belongs to backend {handle.backend!r}, not {self.name!r}")
        job = self._owned(handle)
        if job is not None:
            self._stop(job, JobState.CANCELLED, "cancelled")
            return
        self._cancel_foreign(handle.data)

    def collect(self, handle: JobHandle, req: JobRequest) -> Collected:
        """Declared outputs that exist as regular files inside the work dir, with sizes.

        Paths are resolved: a symlink is followed only if its target stays inside the work dir.
        Missing outputs are listed in ``missing``; refused ones (escaping symlink, directory,
        FIFO...) are in ``missing`` and ``rejected``. Call it once the job has finished.
        """
        return collect_workdir(handle, req)
