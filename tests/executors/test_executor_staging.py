"""Inputs copied into the work dir, and outputs collected from it, with path-escape attempts."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from executors.base import ExecutorError, JobRequest, JobState, OutputRequest, StagedInput
from executors.local import LocalExecutor

MakeReq = Callable[..., JobRequest]


def tree(root: Path) -> set[str]:
    """Every path under root (symlinks not followed), relative to it."""
    found = set()
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            found.add(os.path.relpath(os.path.join(dirpath, name), root))
    return found


@pytest.fixture
def source(tmp_path: Path) -> Path:
    src = tmp_path / "sources" / "data.txt"
    src.parent.mkdir()
    src.write_text("original\n")
    return src


# ----------------------------------------------------------------------------- inputs


def test_inputs_are_copied_not_linked(executor: LocalExecutor, make_req: MakeReq, source: Path) -> None:
    tool = source.parent / "tool.sh"
    tool.write_text("#!/bin/sh\necho tool ran\n")
    tool.chmod(0o755)
    req = make_req(
        ["sh", "-c", "cat in/sub/data.txt; echo modified >> in/sub/data.txt; ./tool.sh"],
        inputs=(StagedInput("in/sub/data.txt", str(source)), StagedInput("./tool.sh", str(tool))),
    )
    handle = executor.submit(req)
    assert executor.wait(handle, timeout=10).state is JobState.SUCCEEDED
    staged = Path(req.workdir, "in/sub/data.txt")
    assert Path(executor.collect(handle, req).stdout_path).read_text() == "original\ntool ran\n"
    assert staged.read_text() == "original\nmodified\n"
    assert source.read_text() == "original\n"  # the task changed its copy only
    assert os.stat(staged).st_ino != os.stat(source).st_ino
    assert os.stat(source).st_nlink == 1
    assert not staged.is_symlink()


@pytest.mark.parametrize(
    "bad_path",
    ["../escape.txt", "in/../../escape.txt", "/tmp/gatehouse-escape.txt", "", ".", ".gatehouse/script"],
)
def test_escaping_input_paths_are_refused(
    executor: LocalExecutor, make_req: MakeReq, source: Path, tmp_path: Path, bad_path: str
) -> None:
    before = tree(tmp_path)
    req = make_req(["true"], inputs=(StagedInput(bad_path, str(source)),))
    with pytest.raises(ExecutorError) as info:
        executor.submit(req)
    assert info.value.code == "bad_request"
    assert tree(tmp_path) == before  # not even the work dir was created
    assert not os.path.exists("/tmp/gatehouse-escape.txt")


def test_input_through_a_symlinked_directory_is_refused(
    executor: LocalExecutor, make_req: MakeReq, source: Path, tmp_path: Path
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    req = make_req(["true"], inputs=(StagedInput("link/deeper/evil.txt", str(source)),))
    os.makedirs(req.workdir)
    os.symlink(outside, os.path.join(req.workdir, "link"))
    with pytest.raises(ExecutorError) as info:
        executor.submit(req)
    assert info.value.code == "bad_request"
    assert list(outside.iterdir()) == []
    assert not executor._jobs  # nothing was started


@pytest.mark.parametrize("kind", ["symlink", "hardlink"])
def test_input_never_writes_through_a_planted_link(
    executor: LocalExecutor, make_req: MakeReq, source: Path, tmp_path: Path, kind: str
) -> None:
    precious = tmp_path / "precious.txt"
    precious.write_text("do not touch\n")
    req = make_req(["true"], inputs=(StagedInput("victim.txt", str(source)),))
    os.makedirs(req.workdir)
    victim = os.path.join(req.workdir, "victim.txt")
    (os.symlink if kind == "symlink" else os.link)(precious, victim)
    executor.wait(executor.submit(req), timeout=10)
    assert precious.read_text() == "do not touch\n"
    assert not os.path.islink(victim)
    assert Path(victim).read_text() == "original\n"


def test_missing_and_malformed_sources(executor: LocalExecutor, make_req: MakeReq, source: Path, tmp_path: Path) -> None:
    with pytest.raises(ExecutorError) as info:
        executor.submit(make_req(["true"], inputs=(StagedInput("a.txt", str(tmp_path / "nope.txt")),)))
    assert info.value.code == "input_missing"
    with pytest.raises(ExecutorError) as info:
        executor.submit(make_req(["true"], inputs=(StagedInput("a.txt", "relative/source.txt"),)))
    assert info.value.code == "bad_request"
    with pytest.raises(ExecutorError) as info:
        executor.submit(make_req(["true"], inputs=(StagedInput("a.txt", str(source)), StagedInput("./a.txt", str(source)))))
    assert info.value.code == "bad_request"


# ----------------------------------------------------------------------------- outputs


def test_outputs_are_collected_with_sizes_and_escapes_refused(
    executor: LocalExecutor, make_req: MakeReq, tmp_path: Path
) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("worker secret\n")
    script = f"""
mkdir -p out/dir
printf hello > out/a.txt
ln -s a.txt out/alias.txt
ln -s {secret} out/leak.txt
ln -s {tmp_path} out/up
mkfifo out/fifo
"""
    req = make_req(
        [],
        script=script,
        outputs=(
            OutputRequest("a", "out/a.txt", "text/plain"),
            OutputRequest("alias", "out/alias.txt", "text/plain"),
            OutputRequest("gone", "out/never-written.txt", "text/plain"),
            OutputRequest("leak", "out/leak.txt", "text/plain"),
            OutputRequest("via_dir_link", "out/up/secret.txt", "text/plain"),
            OutputRequest("dir", "out/dir", "inode/directory"),
            OutputRequest("fifo", "out/fifo", "text/plain"),
            OutputRequest("lexical", "../secret.txt", "text/plain"),
        ),
    )
    handle = executor.submit(req)
    assert executor.wait(handle, timeout=10).state is JobState.SUCCEEDED
    collected = executor.collect(handle, req)

    real_a = os.path.realpath(os.path.join(req.workdir, "out/a.txt"))
    assert [(o.name, o.path, o.media_type, o.size) for o in collected.outputs] == [
        ("a", real_a, "text/plain", 5),
        ("alias", real_a, "text/plain", 5),  # a symlink that stays inside is fine
    ]
    assert collected.missing == ("gone", "leak", "via_dir_link", "dir", "fifo", "lexical")
    assert set(collected.rejected) == {"leak", "via_dir_link", "dir", "fifo", "lexical"}
    assert "outside the work dir" in collected.rejected["leak"]
    assert "not a regular file" in collected.rejected["dir"]


def test_collect_refuses_a_mismatched_request(executor: LocalExecutor, make_req: MakeReq) -> None:
    req = make_req(["true"])
    handle = executor.submit(req)
    executor.wait(handle, timeout=10)
    with pytest.raises(ExecutorError) as info:
        executor.collect(handle, make_req(["true"]))
    assert info.value.code == "bad_request"


def test_unusable_workdirs(executor: LocalExecutor, make_req: MakeReq, tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(ExecutorError) as info:
        executor.submit(make_req(["true"], workdir=str(blocker / "wd")))
    assert info.value.code == "staging_failed"

    (tmp_path / "real").mkdir()
    os.symlink(tmp_path / "real", tmp_path / "linked-wd")
    with pytest.raises(ExecutorError) as info:
        executor.submit(make_req(["true"], workdir=str(tmp_path / "linked-wd")))
    assert info.value.code == "bad_request"
    assert list((tmp_path / "real").iterdir()) == []
