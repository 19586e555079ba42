"""``gatehouse workflow validate FILE``: check a workflow file without a server.

:func:`validate_command` is wired into the console command elsewhere; running this module
(``python -m gateway.spec.cli FILE...``) does the same for quick local checks.
"""
from __future__ import annotations

import errno
import os
import stat
import sys
from typing import TextIO

from .errors import Limits, SpecError, SpecIssue
from .parser import parse_workflow

__all__ = ["main", "validate_command"]

EXIT_OK = 0
EXIT_INVALID = 2


def _read(path: str, limits: Limits) -> bytes:
    """The file's bytes.  Size and type are checked with stat() before opening, so an
    over-size file is never read and a FIFO or device never blocks or streams forever.

    Raises SpecError (too_large) or OSError.
    """
    info = os.stat(path)
    if not stat.S_ISREG(info.st_mode):
        raise OSError(errno.EINVAL, "not a regular file")
    if info.st_size > limits.max_bytes:
        issue = SpecIssue("too_large", f"the file is {info.st_size} bytes, over the limit of {limits.max_bytes} bytes")
        raise SpecError([issue], path)
    with open(path, "rb") as f:
        # At most one byte past the limit, in case the file grew since stat(): parse_workflow
        # then refuses it as too large.
        return f.read(limits.max_bytes + 1)


def validate_command(
    path: str, *, limits: Limits | None = None, stdout: TextIO | None = None, stderr: TextIO | None = None
) -> int:
    """Validate one workflow file.

    Prints ``FILE: OK (N tasks, M gates)`` to ``stdout`` and returns 0 when valid (N counts
    every task, gates included); prints each issue as ``FILE:LINE: task 'x': message`` to
    ``stderr`` and returns 2 when invalid or unreadable.
    """
    stdout = sys.stdout if stdout is None else stdout
    stderr = sys.stderr if stderr is None else stderr
    limits = limits or Limits()
    try:
        data = _read(path, limits)
        workflow = parse_workflow(data, filename=path, limits=limits)
    except SpecError as exc:
        for issue in exc.issues:
            print(issue.format(path), file=stderr)
        return EXIT_INVALID
    except FileNotFoundError:
        print(f"{path}: no such file", file=stderr)
        return EXIT_INVALID
    except OSError as exc:
        print(f"{path}: cannot read the file: {exc.strerror or exc}", file=stderr)
        return EXIT_INVALID
    gates = len(workflow.gates)
    print(f"{path}: OK ({len(workflow.tasks)} tasks, {gates} gates)", file=stdout)
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    """Validate each file named on the command line; the exit status is the worst result."""
    paths = sys.argv[1:] if argv is None else argv
    if not paths:
        print("usage: python -m gateway.spec.cli FILE [FILE...]", file=sys.stderr)
        return EXIT_INVALID
    return max(validate_command(path) for path in paths)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
