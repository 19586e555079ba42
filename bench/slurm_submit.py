"""slurm_submit: submissions per second to the local Slurm cluster, and Slurm queries per poll
interval while 500 jobs are tracked (in-process, no Django).

Runs against the single-node cluster of deploy/test-slurm.sh (cluster `gatehouse-test`, partition
`debug`). Every job it submits is cancelled before it returns, even on failure.

    .venv/bin/python -m bench.slurm_submit     # alone: writes bench/results/slurm_submit.json and
                                                # docs/benchmarks.md, touches no database
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from .common import VAR_DIR, Figure, median

NAME = "slurm_submit"
TITLE = "Slurm submissions and status queries"
CLUSTER = "gatehouse-test"  # deploy/test-slurm.sh
PARTITION = "debug"
SINGLE_JOBS = 100
ARRAYS, ARRAY_SIZE = 10, 50
TRACKED = 500
CALLERS = 50
POLL_INTERVAL = 1.0
POLL_INTERVALS = 10
DEFAULT_RATE, DEFAULT_BURST = 5.0, 10  # SlurmExecutor's defaults
HOW = (
    "In the bench process, against the single-node Slurm 22.05 cluster of `deploy/test-slurm.sh` (cluster "
    "`gatehouse-test`, partition `debug`), timed with `time.perf_counter()`. Single jobs: "
    f"{SINGLE_JOBS} calls of `SlurmExecutor.submit` (work dir staged, batch script generated, piped to "
    "`sbatch --parsable`, job id parsed, registered with the tracker) of a trivial job, one after another, once "
    f"through the executor's default rate limit (token bucket {DEFAULT_RATE:g}/s, burst {DEFAULT_BURST}: the "
    "figure is the limiter's) and once with the limit raised to 10,000/s (what `sbatch` and our code allow). "
    f"Arrays: {ARRAYS} calls of `submit_array` with {ARRAY_SIZE} requests each, default rate limit. The jobs of "
    "each phase are cancelled with one `scancel` right after it. Tracking: "
    f"{TRACKED} held jobs (`sbatch --hold`, so they take no CPU from anything else on the cluster) polled by "
    f"{CALLERS} threads of one process, each calling `poll_many` on its {TRACKED // CALLERS} handles every "
    f"50 ms for {POLL_INTERVALS} poll intervals of {POLL_INTERVAL:g} s; the figure counts the real Slurm "
    "commands run (`squeue`, `scontrol`, `sacct`: `SlurmCommands.calls`, incremented where each process is "
    "started) in each interval, and checks every caller got every job's status (PENDING). "
    "Each phase runs twice; the table gives the median and both runs."
)


def _cancel(ids: list[str]) -> None:
    for start in range(0, len(ids), 200):
        subprocess.run(["scancel", *ids[start:start + 200]], capture_output=True, timeout=60, check=False)


def _requests(root: Path, prefix: str, n: int):
    from executors.base import JobRequest

    return [
        JobRequest(job_key=f"bench-{prefix}/t{i}/1", argv=("/bin/true",), env={}, workdir=str(root / f"{prefix}-{i}"),
                   labels={"run_id": f"bench-{prefix}", "task_id": f"t{i}", "attempt": "1"}, timeout=60)
        for i in range(n)
    ]


def _executor(cluster: str, **config):
    from executors.slurm import SlurmExecutor
    from executors.slurm_tracker import SlurmTracker

    SlurmTracker._registry.pop(cluster, None)
    return SlurmExecutor(cluster=cluster, partition=PARTITION, command_timeout=60, **config)


def _single(root: Path, tag: str, *, rate: float, burst: int) -> tuple[float, float]:
    """(submissions/s, mean seconds per submit)."""
    ex = _executor(f"{CLUSTER}-{tag}", submit_rate=rate, submit_burst=burst, submit_wait=600)
    reqs = _requests(root, tag, SINGLE_JOBS)
    ids: list[str] = []
    try:
        start = time.perf_counter()
        for req in reqs:
            ids.append(ex.submit(req).external_id)
        elapsed = time.perf_counter() - start
    finally:
        _cancel(ids)
    if len(set(ids)) != SINGLE_JOBS or ex.commands.calls.get("sbatch") != SINGLE_JOBS:
        raise RuntimeError(f"{len(set(ids))} job ids for {SINGLE_JOBS} submissions ({ex.commands.calls})")
    return SINGLE_JOBS / elapsed, elapsed / SINGLE_JOBS


def _arrays(root: Path, tag: str) -> tuple[float, float]:
    """(array submissions/s, jobs/s)."""
    ex = _executor(f"{CLUSTER}-{tag}", submit_rate=DEFAULT_RATE, submit_burst=DEFAULT_BURST, submit_wait=600)
    batches = [_requests(root, f"{tag}-a{a}", ARRAY_SIZE) for a in range(ARRAYS)]
    ids: list[str] = []
    try:
        start = time.perf_counter()
        for batch in batches:
            handles = ex.submit_array(batch)
            ids.append(handles[0].data["job_id"])
            if len(handles) != ARRAY_SIZE:
                raise RuntimeError(f"{len(handles)} handles for an array of {ARRAY_SIZE}")
        elapsed = time.perf_counter() - start
    finally:
        _cancel(ids)
    if ex.commands.calls.get("sbatch") != ARRAYS:
        raise RuntimeError(f"{ex.commands.calls.get('sbatch')} sbatch calls for {ARRAYS} arrays")
    return ARRAYS / elapsed, ARRAYS * ARRAY_SIZE / elapsed


def _tracking(tag: str) -> tuple[int, float, int]:
    """(most Slurm commands in one poll interval, mean per interval, poll_many calls)."""
    from executors.base import JobHandle, JobState

    ex = _executor(CLUSTER, poll_interval=POLL_INTERVAL)
    ids: list[str] = []
    try:
        for i in range(TRACKED):
            out = ex.commands.run(["sbatch", "--parsable", "--hold", f"--partition={PARTITION}",
                                   f"--job-name=gatehouse-bench-held-{tag}", "--output=/dev/null", "--wrap", "true"])
            ids.append(out.stdout.strip().split(";", 1)[0])
        handles = [JobHandle(backend="slurm", external_id=job_id, data={"cluster": ex.cluster, "job_id": job_id})
                   for job_id in ids]
        ex.tracker.track(ids)
        per_caller = TRACKED // CALLERS
        stop = threading.Event()
        polls = [0] * CALLERS
        errors: list[str] = []

        def caller(index: int) -> None:
            mine = handles[index * per_caller:(index + 1) * per_caller]
            while not stop.is_set():
                statuses = ex.poll_many(mine)
                polls[index] += 1
                bad = [k for k, s in statuses.items() if s.state is not JobState.PENDING]
                if bad:
                    errors.append(f"{bad[0]}: {statuses[bad[0]]}")
                    return
                time.sleep(0.05)

        def slurm_calls() -> int:
            calls = ex.commands.calls
            return sum(calls.get(p, 0) for p in ("squeue", "scontrol", "sacct"))

        threads = [threading.Thread(target=caller, args=(i,), daemon=True) for i in range(CALLERS)]
        before = slurm_calls()
        counts = []
        start = time.perf_counter()
        for thread in threads:
            thread.start()
        last = before
        for n in range(1, POLL_INTERVALS + 1):
            time.sleep(max(0.0, start + n * POLL_INTERVAL - time.perf_counter()))
            now = slurm_calls()
            counts.append(now - last)
            last = now
        stop.set()
        for thread in threads:
            thread.join(timeout=60)
        if errors:
            raise RuntimeError(f"a caller saw a held job not PENDING: {errors[0]}")
        final = ex.poll_many(handles)
        if any(s.state is not JobState.PENDING for s in final.values()):
            raise RuntimeError("not every tracked job was reported PENDING")
        return max(counts), sum(counts) / len(counts), sum(polls)
    finally:
        _cancel(ids)


def run(ctx=None, **_) -> list[Figure]:
    say = ctx.say if ctx is not None else (lambda m: print(f"[bench] {NAME}: {m}", flush=True))
    if shutil.which("sbatch") is None:
        raise RuntimeError("no Slurm here: run deploy/test-slurm.sh first")
    VAR_DIR.mkdir(parents=True, exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix="slurm-", dir=VAR_DIR))  # on the node's disk: the work dirs
    limited, unlimited, arrays, tracking = [], [], [], []
    try:
        for r in range(2):
            limited.append(_single(root, f"limited{r}", rate=DEFAULT_RATE, burst=DEFAULT_BURST))
            unlimited.append(_single(root, f"unlimited{r}", rate=10_000.0, burst=10_000))
            arrays.append(_arrays(root, f"arrays{r}"))
            tracking.append(_tracking(f"r{r}"))
            say(f"round {r + 1}: single {limited[-1][0]:.1f}/s limited, {unlimited[-1][0]:.1f}/s unlimited; "
                f"arrays {arrays[-1][0]:.1f}/s ({arrays[-1][1]:.0f} jobs/s); "
                f"tracking: at most {tracking[-1][0]} Slurm commands per interval, {tracking[-1][2]} poll_many calls")
    finally:
        shutil.rmtree(root, ignore_errors=True)

    def runs(values, fmt="{:.1f}") -> str:
        return " and ".join(fmt.format(v) for v in values)

    return [
        Figure(f"single jobs, default rate limit ({DEFAULT_RATE:g}/s, burst {DEFAULT_BURST}), {SINGLE_JOBS} submits "
               f"(runs: {runs(v[0] for v in limited)})", round(median([v[0] for v in limited]), 1), "submissions/s"),
        Figure(f"single jobs, rate limit raised, {SINGLE_JOBS} submits (runs: {runs(v[0] for v in unlimited)})",
               round(median([v[0] for v in unlimited]), 1), "submissions/s"),
        Figure(f"one submit without the limit, mean (runs: {runs((v[1] * 1000 for v in unlimited), '{:.1f}')} ms)",
               round(median([v[1] * 1000 for v in unlimited]), 1), "ms"),
        Figure(f"arrays of {ARRAY_SIZE}, {ARRAYS} submit_array calls (runs: {runs(v[0] for v in arrays)})",
               round(median([v[0] for v in arrays]), 1), "submissions/s"),
        Figure(f"array elements submitted (runs: {runs((v[1] for v in arrays), '{:.0f}')})",
               round(median([v[1] for v in arrays])), "jobs/s"),
        Figure(f"Slurm commands in the busiest poll interval, {TRACKED} jobs tracked by {CALLERS} callers "
               f"(runs: {runs((v[0] for v in tracking), '{}')})", max(v[0] for v in tracking), "per interval",
               "≤ 1 per cluster"),
        Figure(f"Slurm commands per poll interval, mean over {POLL_INTERVALS} (runs: "
               f"{runs((v[1] for v in tracking), '{:.2f}')})", round(median([v[1] for v in tracking]), 2),
               "per interval"),
        Figure(f"poll_many calls answered in those {POLL_INTERVALS} intervals "
               f"(runs: {runs((v[2] for v in tracking), '{}')})",
               round(median([v[2] for v in tracking])), "calls"),
    ]


def main() -> int:
    root = Path(__file__).resolve().parents[1]
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    from bench import report
    from bench.common import machine_info, now_iso, write_results

    date = now_iso()
    machine = machine_info(postgresql=None, redis=None)
    path = write_results(NAME, run(), date=date, machine=machine)
    print(f"[bench] {NAME}: wrote {path.relative_to(root)} and {report.write().relative_to(root)}", flush=True)
    return 0


if __name__ == "__main__":
    os.chdir(Path(__file__).resolve().parents[1])
    sys.exit(main())
