"""The work directory of a task attempt: request checks, staging and collection.

Shared by the backends whose jobs read and write a work dir on a filesystem the worker sees
(``local``, and ``slurm`` on the cluster's shared filesystem) and by ``batch`` for its checks and
paths. The work dir is created with mode 0700; inputs are copied (never linked) through private
files that refuse symlinks; the executor's own files live in ``<workdir>/.gatehouse/``.

Pure Python, no Django.
"""

from __future__ import annotations

import os
import shutil
import stat

from .base import Collected, CollectedOutput, ExecutorError, JobHandle, JobRequest

__all__ = ["CONTROL_DIR", "StagedInputs", "check_inputs", "collect_workdir", "prepare_workdir"]

#: Directory inside the work dir that holds the executor's files (script, logs, env file).
CONTROL_DIR = ".gatehouse"

#: Inputs as :func:`check_inputs` returns them: ``(path components, absolute source)``.
StagedInputs = list[tuple[tuple[str, ...], str]]


def _bad(message: str) -> ExecutorError:
    return ExecutorError("bad_request", message)


# --------------------------------------------------------------------------- paths


def _abs_workdir(req: JobRequest) -> str:
    wd = req.workdir
    if not isinstance(wd, str) or not wd or "\x00" in wd or not os.path.isabs(wd):
        raise _bad(f"workdir must be an absolute path, got {wd!r}")
    wd = os.path.normpath(wd)
    if wd == "/":
        raise _bad("workdir must not be the root directory")
    return wd


def _split_relpath(path: str, what: str) -> tuple[str, ...]:
    """Components of a path that must stay inside the work dir (lexical check only; symlinks
    are checked when the path is used)."""
    if not isinstance(path, str) or not path or "\x00" in path:
        raise _bad(f"{what} path must be a non-empty string, got {path!r}")
    if os.path.isabs(path):
        raise _bad(f"{what} path {path!r} must be relative to the work dir")
    parts = tuple(p for p in path.split("/") if p not in ("", "."))
    if not parts:
        raise _bad(f"{what} path {path!r} names the work dir itself")
    if ".." in parts:
        raise _bad(f"{what} path {path!r} must not contain '..'")
    return parts


def _is_within(path: str, root: str) -> bool:
    return os.path.commonpath([path, root]) == root


# --------------------------------------------------------------------------- file staging


def _ensure_private_dir(path: str, what: str) -> None:
    """mkdir 0700, or accept an existing real directory (never a symlink)."""
    try:
        os.mkdir(path, 0o700)
        return
    except FileExistsError:
        pass
    st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode):
        raise _bad(f"{what} {path!r} exists and is not a directory (or is a symlink)")


def _unlink_stale(path: str, what: str) -> None:
    """Remove a leftover file or symlink at ``path`` so we never write through it (a symlink or
    a hard link planted by an earlier attempt could point anywhere)."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(st.st_mode):
        raise _bad(f"{what} {path!r} is a directory")
    os.unlink(path)


def _create_private_file(path: str, mode: int) -> int:
    _unlink_stale(path, "file")
    try:
        return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    except OSError as exc:
        raise _bad(f"cannot create {path!r}: {exc.strerror}") from exc


def _write_private_file(path: str, content: bytes, mode: int) -> None:
    fd = _create_private_file(path, mode)
    with os.fdopen(fd, "wb") as fh:
        fh.write(content)


def _stage_input(wd_real: str, parts: tuple[str, ...], source: str) -> None:
    cur = wd_real
    # Walk down one component at a time so that a symlinked directory is refused before
    # anything is created through it.
    for part in parts[:-1]:
        cur = os.path.join(cur, part)
        _ensure_private_dir(cur, "input directory")
    dest = os.path.join(cur, parts[-1])
    _unlink_stale(dest, "input destination")
    try:
        src = open(source, "rb")
    except OSError as exc:
        raise ExecutorError("input_missing", f"cannot read input {source!r}: {exc.strerror}") from exc
    with src:
        st = os.fstat(src.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise ExecutorError("input_missing", f"input {source!r} is not a regular file")
        fd = _create_private_file(dest, 0o600)
        with os.fdopen(fd, "wb") as out:
            shutil.copyfileobj(src, out, 1 << 20)
            # Keep the execute bits of the source; the owner can always write (tasks may modify).
            os.fchmod(out.fileno(), (stat.S_IMODE(st.st_mode) & 0o777) | 0o600)


# --------------------------------------------------------------------------- checks, preparation, collection


def prepare_workdir(
    req: JobRequest, workdir: str, staged: list[tuple[tuple[str, ...], str]], env_file: str | None
) -> tuple[int, int]:
    """Create the work dir and its control dir, stage inputs and the script; return open
    file descriptors for stdout and stderr."""
    os.makedirs(os.path.dirname(workdir), exist_ok=True)
    _ensure_private_dir(workdir, "workdir")
    os.chmod(workdir, 0o700)
    wd_real = os.path.realpath(workdir)
    control = os.path.join(wd_real, CONTROL_DIR)
    _ensure_private_dir(control, "control directory")
    for parts, source in staged:
        _stage_input(wd_real, parts, source)
    if req.script is not None:
        _write_private_file(os.path.join(control, "script"), req.script.encode("utf-8"), 0o700)
    if env_file is not None:
        _write_private_file(os.path.join(control, "env"), env_file.encode("utf-8"), 0o600)
    stdout_fd = _create_private_file(os.path.join(control, "stdout"), 0o600)
    try:
        stderr_fd = _create_private_file(os.path.join(control, "stderr"), 0o600)
    except BaseException:
        os.close(stdout_fd)
        raise
    return stdout_fd, stderr_fd

def check_inputs(req: JobRequest) -> list[tuple[tuple[str, ...], str]]:
    """Check ``req.inputs`` without side effects; return ``(path components, source)`` pairs to
    stage. Raises ``bad_request`` or ``input_missing``."""
    staged: list[tuple[tuple[str, ...], str]] = []
    seen: set[tuple[str, ...]] = set()
    for item in req.inputs:
        parts = _split_relpath(item.path, "input")
        if parts[0] == CONTROL_DIR:
            raise _bad(f"input path {item.path!r} is inside the reserved {CONTROL_DIR}/ directory")
        if parts in seen:
            raise _bad(f"input path {item.path!r} is given twice")
        seen.add(parts)
        if not isinstance(item.source, str) or not os.path.isabs(item.source):
            raise _bad(f"input source must be an absolute path, got {item.source!r}")
        if not os.path.isfile(item.source):
            raise ExecutorError("input_missing", f"input {item.source!r} (for {item.path!r}) does not exist")
        staged.append((parts, item.source))
    return staged


def collect_workdir(handle: JobHandle, req: JobRequest) -> Collected:
    """Declared outputs that exist as regular files inside the work dir, with sizes.

    Paths are resolved: a symlink is followed only if its target stays inside the work dir.
    Missing outputs are listed in ``missing``; refused ones (escaping symlink, directory,
    FIFO...) are in ``missing`` and ``rejected``. Call it once the job has finished.
    """
    workdir = os.path.normpath(str(handle.data.get("workdir") or req.workdir))
    if workdir != _abs_workdir(req):
        raise _bad(f"handle work dir {workdir!r} does not match the request's {req.workdir!r}")
    wd_real = os.path.realpath(workdir)
    outputs: list[CollectedOutput] = []
    missing: list[str] = []
    rejected: dict[str, str] = {}
    for out in req.outputs:
        try:
            parts = _split_relpath(out.path, "output")
        except ExecutorError as exc:
            missing.append(out.name)
            rejected[out.name] = exc.message
            continue
        candidate = os.path.join(wd_real, *parts)
        real = os.path.realpath(candidate)
        if not _is_within(real, wd_real):
            if os.path.lexists(candidate):
                rejected[out.name] = f"{out.path!r} resolves outside the work dir"
            missing.append(out.name)
            continue
        try:
            st = os.stat(real)
        except OSError:  # absent, dangling symlink, or a parent is not a directory
            missing.append(out.name)
            continue
        if not stat.S_ISREG(st.st_mode):
            missing.append(out.name)
            rejected[out.name] = f"{out.path!r} is not a regular file"
            continue
        outputs.append(CollectedOutput(name=out.name, path=real, media_type=out.media_type, size=st.st_size))
    control = os.path.join(workdir, CONTROL_DIR)
    return Collected(
        outputs=tuple(outputs),
        stdout_path=os.path.join(control, "stdout"),
        stderr_path=os.path.join(control, "stderr"),
        missing=tuple(missing),
        rejected=rejected,
    )
