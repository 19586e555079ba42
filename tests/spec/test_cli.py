"""validate_command: the body of ``gatehouse workflow validate FILE``."""
from __future__ import annotations

import io
import os
from pathlib import Path

import pytest

from gateway.spec import Limits
from gateway.spec.cli import main, validate_command

from .helpers import EXAMPLE, HEADER


def run(path, limits=None) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = validate_command(str(path), limits=limits, stdout=out, stderr=err)
    return code, out.getvalue(), err.getvalue()


def test_valid_file() -> None:
    code, out, err = run(EXAMPLE)
    assert (code, out, err) == (0, f"{EXAMPLE}: OK (6 tasks, 1 gates)\n", "")


def test_invalid_file_lists_every_issue(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(HEADER + "tasks:\n  - {id: a, run: x, needs: [b]}\n  - {id: a, run: y}\n")
    code, out, err = run(path)
    assert code == 2 and out == ""
    assert err.splitlines() == [
        f"{path}:5: task 'a': needs unknown task 'b'",
        f"{path}:6: task 'a': duplicate task id 'a': defined on line 5 and again on line 6",
    ]


def test_missing_file(tmp_path: Path) -> None:
    code, out, err = run(tmp_path / "nope.yaml")
    assert code == 2 and out == "" and err == f"{tmp_path / 'nope.yaml'}: no such file\n"


def test_directory(tmp_path: Path) -> None:
    code, _, err = run(tmp_path)
    assert code == 2 and "not a regular file" in err


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    code, _, err = run(fifo)
    assert code == 2 and "not a regular file" in err


@pytest.mark.skipif(os.geteuid() == 0, reason="needs a non-root user: root reads a file whatever its mode, so an unreadable file cannot be made")
def test_unreadable_file(tmp_path: Path) -> None:
    path = tmp_path / "secret.yaml"
    path.write_text("a: 1\n")
    path.chmod(0)
    code, _, err = run(path)
    assert code == 2 and "cannot read" in err


def test_oversize_file_is_refused_by_stat(tmp_path: Path) -> None:
    path = tmp_path / "big.yaml"
    path.write_bytes(b"#" * 1000)
    code, out, err = run(path, Limits(max_bytes=999))
    assert code == 2 and out == ""
    assert err == f"{path}: the file is 1000 bytes, over the limit of 999 bytes\n"


def test_main(tmp_path: Path, capsys) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("- a\n")
    assert main([str(EXAMPLE)]) == 0
    assert main([str(EXAMPLE), str(bad)]) == 2
    assert main([]) == 2
    captured = capsys.readouterr()
    assert "OK (6 tasks, 1 gates)" in captured.out and "top level must be a mapping" in captured.err
