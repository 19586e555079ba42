"""Jobs that left Slurm's queue, settled by accounting (``sacct``) on the real test cluster.

deploy/test-slurm.sh runs slurmdbd on MariaDB and keeps finished jobs in slurmctld's memory for
MinJobAge=30 s only. The module submits a few short jobs once, waits until slurmctld has purged
them (``scontrol show job`` answers "Invalid job id"), then asks new executors, as a worker that
was not polling meanwhile would: with accounting they get each job's real final state from ONE
``sacct`` call; without, Slurm no longer knows them. The parsers and the option's checks need no
cluster.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from executors.base import ExecutorError, JobHandle, JobRequest, JobState, JobStatus
from executors.slurm import SlurmCommands, SlurmExecutor, parse_sacct_text, record_status
from executors.slurm_tracker import SlurmTracker

from .conftest import REPO_ROOT

pytestmark = pytest.mark.slurm

SLURM_CONF = "/etc/slurm/slurm.conf"
DBD_PID = "/run/slurmdbd.pid"
#: The cluster name of the jobs below: each test asks with a fresh tracker, as a new worker would.
CLUSTER = "test-acct"


# --------------------------------------------------------------------------- no cluster needed


def test_sacct_argv_is_one_call_for_all_ids() -> None:
    cmds = SlurmCommands(bin_dir="/opt/slurm/bin")
    assert cmds.sacct_argv(["12", "15_2"]) == [
        "/opt/slurm/bin/sacct", "--allocations", "--jobs=12,15_2", "--noheader", "--parsable2",
        "--format=JobID,JobIDRaw,State,ExitCode,NodeList,TimelimitRaw,Reason,JobName,Comment"]


def test_sacct_by_name_looks_back_two_weeks_for_one_name() -> None:
    cmds = SlurmCommands(bin_dir="/opt/slurm/bin")
    assert cmds.sacct_by_name_argv("gatehouse-run-x-a-1-0123456789") == [
        "/opt/slurm/bin/sacct", "--allocations", "--name=gatehouse-run-x-a-1-0123456789", "--starttime=now-14days",
        "--noheader", "--parsable2", "--format=JobID,JobIDRaw,State,ExitCode,NodeList,TimelimitRaw,Reason,JobName,Comment"]


def test_parse_sacct_text() -> None:
    # As sacct printed it on this cluster (Slurm 22.05.8), plus a pending remainder and a cancellation.
    text = ("178|178|FAILED|3:0|vm|2|None|gatehouse-run-acct-fails-1-07e46c2a13|gatehouse;task=fails;key=a\n"
            "179_1|182|FAILED|4:0|vm|2|None|gatehouse-run-acct-el0-1-2-bcac50f9fd|gatehouse;array=3\n"
            "179_[3-4]|179|PENDING|0:0|None assigned|2|BeginTime|gatehouse-arr|\n"
            "180|180|CANCELLED by 0|0:15|vm|UNLIMITED|None|gatehouse-b|x|y\n")
    records = parse_sacct_text(text)
    assert set(records) == {"178", "179_1", "179_3", "179_4", "180"}
    assert records["178"]["state"] == "FAILED" and records["178"]["exit"] == (3, 0)
    assert records["178"]["time_limit"] == 2 and records["178"]["comment"] == "gatehouse;task=fails;key=a"
    assert records["179_1"]["job_id"] == "182" and records["179_1"]["exit"] == (4, 0)
    assert records["179_3"]["state"] == "PENDING"
    assert records["180"]["state"] == "CANCELLED" and records["180"]["comment"] == "x|y"
    assert records["180"]["time_limit"] == "UNLIMITED"
    assert record_status(records["178"]) == JobStatus(JobState.FAILED, 3, "exit code 3")


def test_the_accounting_option_is_checked(tmp_path: Path) -> None:
    with pytest.raises(ExecutorError) as err:
        SlurmExecutor(cluster="test-acct-bad", accounting="sometimes", driver="cli")
    assert err.value.code == "bad_request" and "accounting" in str(err.value)
    assert "test-acct-bad" not in SlurmTracker._registry  # refused before anything was set up
    ex = SlurmExecutor(cluster="test-acct-bool", accounting=False, driver="cli")
    try:
        assert ex.tracker.accounting == "off" and ex.tracker.accounting_available is False
    finally:
        SlurmTracker._registry.pop("test-acct-bool", None)


def test_the_backend_schema_takes_the_accounting_option() -> None:
    from jsonschema import Draft202012Validator

    schema = json.loads((REPO_ROOT / "executors" / "schemas" / "backends-v1.json").read_text())
    validator = Draft202012Validator(schema)

    def errors(kind: str, value: object) -> list[str]:
        doc = {"apiVersion": "gatehouse/v1", "kind": "Backends", "backends": [
            {"name": "hpc", "kind": kind, "max_classification": "SECRET", "config": {"accounting": value}}]}
        return [e.message for e in validator.iter_errors(doc)]

    assert errors("slurm", "auto") == [] and errors("slurm", "off") == [] and errors("slurm", True) == []
    assert errors("slurm", "sometimes") and "sometimes" in errors("slurm", "sometimes")[0]


# --------------------------------------------------------------------------- live


def _accounting_problem() -> str | None:
    out = subprocess.run(["sacct", "--jobs=1"], capture_output=True, text=True, timeout=30, check=False)
    if out.returncode != 0:
        return f"sacct does not answer here ({(out.stderr or out.stdout).strip()[:200]})"
    return None


def _purged(job_id: str) -> bool:
    out = subprocess.run(["scontrol", "show", "job", "-o", job_id], capture_output=True, text=True, timeout=30,
                         check=False)
    return out.returncode != 0 and "Invalid job id" in out.stderr


def _in_accounting(job_ids: list[str]) -> set[str]:
    out = subprocess.run(SlurmCommands().sacct_argv(job_ids), capture_output=True, text=True, timeout=30, check=True)
    return {k for k, r in parse_sacct_text(out.stdout).items() if r["state"] not in ("PENDING", "RUNNING")}


#: job key suffix -> (script, state, exit code) of the jobs the module submits.
JOBS = {
    "ok": ("echo fine", JobState.SUCCEEDED, 0),
    "fails": ("echo failing >&2; exit 3", JobState.FAILED, 3),
}
ARRAY = [("exit 0", JobState.SUCCEEDED, 0), ("exit 4", JobState.FAILED, 4), ("sleep 1", JobState.SUCCEEDED, 0)]


@pytest.fixture(scope="module")
def purged(slurm_cluster: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """Jobs that finished (one cancelled) and that slurmctld has since forgotten, with what each
    really became."""
    problem = _accounting_problem()
    if problem is not None:
        pytest.skip(f"no Slurm accounting: {problem} (deploy/test-slurm.sh sets up slurmdbd)")
    root = tmp_path_factory.mktemp("acct")
    ex = SlurmExecutor(cluster=CLUSTER, poll_interval=0.3, command_timeout=15, submit_rate=100,
                       submit_burst=100, driver="cli")

    def req(key: str, script: str) -> JobRequest:
        return JobRequest(job_key=f"run-acct/{key}/1", argv=("/bin/sh", "{script}"), env={},
                          workdir=str(root / key), script=script, timeout=120,
                          labels={"run_id": "run-acct", "task_id": key, "attempt": "1"})

    expected: dict[str, tuple[JobState, int | None]] = {}
    handles: list[JobHandle] = []
    requests: dict[str, JobRequest] = {}
    for key, (script, state, code) in JOBS.items():
        requests[key] = req(key, script)
        handle = ex.submit(requests[key])
        handles.append(handle)
        expected[handle.external_id] = (state, code)
    array_requests = [req(f"el{i}", s[0]) for i, s in enumerate(ARRAY)]
    for handle, (_, state, code) in zip(ex.submit_array(array_requests), ARRAY):
        handles.append(handle)
        expected[handle.external_id] = (state, code)
    cancelled = ex.submit(req("cancelled", "sleep 300"))
    handles.append(cancelled)
    expected[cancelled.external_id] = (JobState.CANCELLED, None)
    try:
        time.sleep(1)
        ex.cancel(cancelled)
        ids = sorted({h.data["job_id"] for h in handles}, key=int)
        # MinJobAge (30 s) after the end, at slurmctld's next purge (it purges about once a minute).
        deadline = time.monotonic() + 240
        while not all(_purged(i) for i in ids):
            assert time.monotonic() < deadline, f"slurmctld still knows some of {ids} after 240 s"
            time.sleep(2)
        assert _in_accounting(ids) >= set(expected)  # every job's end is in accounting
    finally:
        SlurmTracker._registry.pop(CLUSTER, None)  # nobody polls them any more
    yield {"handles": handles, "expected": expected, "requests": requests, "array_requests": array_requests,
           "root": root}


def fresh() -> str:
    """The jobs' cluster name, with no tracker yet in this process."""
    SlurmTracker._registry.pop(CLUSTER, None)
    return CLUSTER


def test_purged_jobs_get_their_real_final_state_from_one_sacct(purged: dict) -> None:
    ex = SlurmExecutor(cluster=fresh(), poll_interval=0.3, command_timeout=15, driver="cli")
    try:
        statuses = ex.poll_many(purged["handles"])
        for key, (state, code) in purged["expected"].items():
            status = statuses[key]
            assert status.state == state, (key, status)
            if code is not None:
                assert status.exit_code == code, (key, status)
        assert "exit code 3" in statuses[purged["handles"][1].external_id].reason
        # One squeue for all, then ONE sacct for the six vanished jobs; no scontrol at all.
        assert ex.commands.calls == {"squeue": 1, "sacct": 1}
        assert ex.tracker.queries == 1 and ex.tracker.accounting_queries == 1 and ex.tracker.confirmations == 0
        assert ex.tracker.accounting_available is True
        # Final states are kept: the next round asks Slurm nothing.
        time.sleep(0.35)
        again = ex.poll_many(purged["handles"])
        assert again == statuses and ex.commands.calls == {"squeue": 1, "sacct": 1}
    finally:
        SlurmTracker._registry.pop(ex.cluster, None)


def test_jobs_still_in_the_queue_never_ask_accounting(purged: dict, tmp_path: Path) -> None:
    ex = SlurmExecutor(cluster=fresh(), poll_interval=0.3, command_timeout=15, driver="cli")
    running = ex.submit(JobRequest(job_key="run-acct/q/1", argv=("/bin/sh", "{script}"), env={},
                                   workdir=str(tmp_path / "q"), script="sleep 30", timeout=120))
    try:
        deadline = time.monotonic() + 60
        while ex.poll_many([running])[running.external_id].state != JobState.RUNNING:
            assert time.monotonic() < deadline
            time.sleep(0.35)
        rounds = ex.tracker.queries
        time.sleep(0.35)  # the next round
        statuses = ex.poll_many([running, purged["handles"][0]])
        assert statuses[running.external_id].state == JobState.RUNNING
        assert statuses[purged["handles"][0].external_id].state == JobState.SUCCEEDED
        assert ex.tracker.queries == rounds + 1 and ex.commands.calls["sacct"] == 1  # for the vanished one only
    finally:
        ex.cancel(running)
        SlurmTracker._registry.pop(ex.cluster, None)


def test_with_accounting_off_slurm_no_longer_knows_them(purged: dict) -> None:
    ex = SlurmExecutor(cluster=fresh(), poll_interval=0.3, command_timeout=15, driver="cli",
                       accounting="off")
    try:
        statuses = ex.poll_many(purged["handles"])
        for key, (state, _) in purged["expected"].items():
            assert statuses[key].state == JobState.LOST and statuses[key].state != state
            assert "no longer knows" in statuses[key].reason and statuses[key].exit_code is None
        assert "sacct" not in ex.commands.calls  # accounting was not asked
        assert ex.tracker.confirmations == len(purged["expected"]) and ex.tracker.accounting_queries == 0
    finally:
        SlurmTracker._registry.pop(ex.cluster, None)


def test_auto_finds_out_once_that_a_cluster_keeps_no_accounting(purged: dict, tmp_path: Path) -> None:
    # The same controller, named through a slurm.conf without accounting storage: sacct says so.
    lines = [line for line in Path(SLURM_CONF).read_text().splitlines() if not line.startswith("Accounting")]
    conf = tmp_path / "slurm.conf"
    conf.write_text("\n".join(lines) + "\n")
    ex = SlurmExecutor(cluster=fresh(), poll_interval=0.3, command_timeout=15, driver="cli",
                       slurm_conf=str(conf))
    try:
        first, second = purged["handles"][0], purged["handles"][1]
        assert ex.poll_many([first])[first.external_id].state == JobState.LOST
        assert ex.tracker.accounting_available is False and ex.commands.calls["sacct"] == 1
        time.sleep(0.35)
        assert ex.poll_many([first, second])[second.external_id].state == JobState.LOST
        assert ex.commands.calls["sacct"] == 1  # found out once, not asked again
        assert ex.tracker.confirmations == 2
    finally:
        SlurmTracker._registry.pop(ex.cluster, None)


def test_a_sacct_that_times_out_leaves_the_jobs_unknown(purged: dict) -> None:
    """slurmdbd stopped (SIGSTOP): sacct connects and waits for an answer that does not come."""
    pid = int(Path(DBD_PID).read_text().strip())
    ex = SlurmExecutor(cluster=fresh(), poll_interval=0.3, max_backoff=2, command_timeout=3,
                       driver="cli", accounting="on")
    os.kill(pid, signal.SIGSTOP)
    try:
        statuses = ex.poll_many(purged["handles"])
        for key in purged["expected"]:
            assert statuses[key].state == JobState.UNKNOWN, statuses[key]
            assert "accounting failed" in statuses[key].reason and "no answer within 3s" in statuses[key].reason
        # Never guessed from scontrol's "Invalid job id" (that would read as LOST).
        assert "scontrol" not in ex.commands.calls and ex.tracker.confirmations == 0
        assert ex.commands.calls == {"squeue": 1, "sacct": 1}
        # Within the back-off (2 s) the next round asks squeue, not sacct again.
        time.sleep(0.35)
        later = ex.poll_many(purged["handles"])
        assert {s.state for s in later.values()} == {JobState.UNKNOWN}
        assert "next try in" in next(iter(later.values())).reason
        assert ex.commands.calls == {"squeue": 2, "sacct": 1}
    finally:
        os.kill(pid, signal.SIGCONT)
    try:
        time.sleep(2.1)  # the back-off is over: the next round asks accounting again
        settled = ex.poll_many(purged["handles"])
        assert {k: s.state for k, s in settled.items()} == {k: v[0] for k, v in purged["expected"].items()}
        assert ex.tracker.accounting_failures == 0
    finally:
        SlurmTracker._registry.pop(ex.cluster, None)


# --------------------------------------------------------------------------- lookup by name


def test_lookup_finds_jobs_that_left_the_queue_in_accounting(purged: dict) -> None:
    """A worker that died between sbatch and recording the job id, found by the reconciler after
    the job already ran and left the queue: adopted from accounting, not submitted again."""
    ex = SlurmExecutor(cluster=fresh(), poll_interval=0.3, command_timeout=15, driver="cli")
    try:
        found = ex.lookup(purged["requests"]["fails"])
        assert found is not None and found.external_id == purged["handles"][1].external_id
        array = ex.lookup_array(purged["array_requests"])
        assert array is not None
        assert [h.external_id for h in array] == [h.external_id for h in purged["handles"][2:5]]
        assert [h.data["array_task_id"] for h in array] == [0, 1, 2]
        assert "sbatch" not in ex.commands.calls and ex.commands.calls["sacct"] == 2  # one by name each
        # Adopted jobs settle as any other: their real ends, from accounting.
        statuses = ex.poll_many([found, *array])
        assert (statuses[found.external_id].state, statuses[found.external_id].exit_code) == (JobState.FAILED, 3)
        assert [statuses[h.external_id].exit_code for h in array] == [0, 4, 0]
        # Never submitted: absent in the queue and in accounting alike.
        never = JobRequest(job_key="run-acct/never/1", argv=("/bin/sh", "{script}"), env={},
                           workdir=str(purged["root"] / "never"), script="true")
        assert ex.lookup(never) is None
        assert ex.lookup_array([never, purged["requests"]["ok"]]) is None
    finally:
        SlurmTracker._registry.pop(ex.cluster, None)


def test_lookup_with_accounting_off_does_not_see_them(purged: dict) -> None:
    ex = SlurmExecutor(cluster=fresh(), poll_interval=0.3, command_timeout=15, driver="cli", accounting="off")
    try:
        assert ex.lookup(purged["requests"]["ok"]) is None
        assert ex.lookup_array(purged["array_requests"]) is None
        assert "sacct" not in ex.commands.calls
    finally:
        SlurmTracker._registry.pop(ex.cluster, None)


def test_a_lookup_accounting_cannot_answer_is_an_error_not_absent(purged: dict) -> None:
    """slurmdbd stopped: the job may exist, so the caller is told to ask again later (the engine
    extends the lease), never that there is no job (it would start the attempt a second time)."""
    pid = int(Path(DBD_PID).read_text().strip())
    ex = SlurmExecutor(cluster=fresh(), poll_interval=0.3, command_timeout=3, driver="cli", accounting="on")
    os.kill(pid, signal.SIGSTOP)
    try:
        for look in (lambda: ex.lookup(purged["requests"]["ok"]), lambda: ex.lookup_array(purged["array_requests"])):
            with pytest.raises(ExecutorError) as err:
                look()
            assert err.value.code == "slurm_unavailable" and "accounting" in str(err.value)
        assert "sbatch" not in ex.commands.calls
    finally:
        os.kill(pid, signal.SIGCONT)
        SlurmTracker._registry.pop(ex.cluster, None)
