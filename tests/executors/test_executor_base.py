"""The interface's value types and the base class's polling ``wait``."""

from __future__ import annotations

import json
from collections.abc import Sequence

import pytest

from executors.base import (
    FINISHED_STATES,
    Collected,
    Executor,
    ExecutorError,
    JobHandle,
    JobRequest,
    JobState,
    JobStatus,
    StagedInput,
    sanitize_job_key,
)


def test_job_request_normalises_and_copies() -> None:
    env = {"A": "1"}
    labels = {"run_id": "r1"}
    req = JobRequest(
        job_key="r1/t/1",
        argv=["echo", "hi"],  # type: ignore[arg-type]
        env=env,
        workdir="/w",
        inputs=[StagedInput("a", "/src/a")],  # type: ignore[arg-type]
        labels=labels,
    )
    env["A"] = "changed"
    labels["run_id"] = "changed"
    assert req.argv == ("echo", "hi")
    assert req.inputs == (StagedInput("a", "/src/a"),)
    assert req.env == {"A": "1"}
    assert req.labels == {"run_id": "r1"}
    assert req.timeout is None and req.script is None and req.container is None


def test_job_handle_survives_a_json_round_trip() -> None:
    handle = JobHandle("local", "host:42", {"pid": 42, "start_time_ticks": 7, "workdir": "/w"})
    again = JobHandle.from_dict(json.loads(json.dumps(handle.to_dict())))
    assert again == handle


@pytest.mark.parametrize("state", list(JobState))
def test_finished_follows_state(state: JobState) -> None:
    expected = state in {JobState.SUCCEEDED, JobState.FAILED, JobState.TIMED_OUT, JobState.CANCELLED, JobState.LOST}
    assert JobStatus(state).finished is expected
    assert (state in FINISHED_STATES) is expected


def test_job_state_is_a_string() -> None:
    assert JobState.TIMED_OUT == "timed_out"
    assert JobState("lost") is JobState.LOST


def test_executor_error_carries_a_code() -> None:
    err = ExecutorError("input_missing", "no such file")
    assert err.code == "input_missing" and err.message == "no such file" and str(err) == "no such file"
    assert ExecutorError(code="unknown_backend").message == "unknown_backend"


def test_sanitize_job_key() -> None:
    key = sanitize_job_key("run1/task/1")
    assert key.startswith("run1-task-1-")
    assert all(c.isalnum() or c in "-_." for c in key)
    # keys differing only in unsafe characters stay distinct
    assert sanitize_job_key("a/b") != sanitize_job_key("a-b")
    assert len(sanitize_job_key("x" * 500)) <= 64
    assert sanitize_job_key("../..").startswith("job-")


class ScriptedExecutor(Executor):
    """Reports the given states in order, then repeats the last one."""

    name = "scripted"

    def __init__(self, states: Sequence[JobState]) -> None:
        self.states = list(states)
        self.polls: list[list[str]] = []
        self.cancelled: list[str] = []

    def submit(self, req: JobRequest) -> JobHandle:
        return JobHandle(self.name, "job-1", {})

    def poll_many(self, handles: Sequence[JobHandle]) -> dict[str, JobStatus]:
        self.polls.append([h.external_id for h in handles])
        state = self.states.pop(0) if len(self.states) > 1 else self.states[0]
        return {h.external_id: JobStatus(state, 0 if state is JobState.SUCCEEDED else None, "") for h in handles}

    def cancel(self, handle: JobHandle) -> None:
        self.cancelled.append(handle.external_id)

    def collect(self, handle: JobHandle, req: JobRequest) -> Collected:  # pragma: no cover - unused
        raise NotImplementedError


HANDLE = JobHandle("scripted", "job-1", {})


def test_base_wait_polls_until_finished_with_heartbeats() -> None:
    ex = ScriptedExecutor([JobState.PENDING, JobState.RUNNING, JobState.UNKNOWN, JobState.SUCCEEDED])
    beats: list[int] = []
    status = ex.wait(HANDLE, timeout=10, heartbeat=lambda: beats.append(1), should_cancel=lambda: False, interval=0.01)
    assert status.state is JobState.SUCCEEDED and status.exit_code == 0
    assert ex.polls == [["job-1"]] * 4
    assert len(beats) == 3
    assert ex.cancelled == []


def test_base_wait_cancels_when_asked() -> None:
    ex = ScriptedExecutor([JobState.RUNNING])
    asked: list[int] = []

    def should_cancel() -> bool:
        asked.append(1)
        return len(asked) >= 2

    status = ex.wait(HANDLE, timeout=10, should_cancel=should_cancel, interval=0.01)
    assert status.state is JobState.CANCELLED
    assert ex.cancelled == ["job-1"]
    assert len(ex.polls) == 2


def test_base_wait_times_out_and_cancels() -> None:
    ex = ScriptedExecutor([JobState.RUNNING])
    status = ex.wait(HANDLE, timeout=0.1, interval=0.02)
    assert status.state is JobState.TIMED_OUT
    assert status.reason == "timed out after 0.1s"
    assert ex.cancelled == ["job-1"]
