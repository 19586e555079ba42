"""remote_dispatch: how long after a Slurm job ends its successor is claimed by a worker."""
from __future__ import annotations

import shutil
import subprocess
import time
from datetime import datetime

import yaml

from .common import VAR_DIR, Figure, percentile, wait_for

NAME = "remote_dispatch"
TITLE = "Slurm job end → successor dispatched"
POLL_SECONDS = 0.5
HOW = (
    "Each run is a chain of two tasks: `job` on the tenant's Slurm backend (the single-node cluster of "
    "deploy/test-slurm.sh) and `next` on the local backend, which needs it. The job's script writes the wall clock "
    "(`date +%s.%N`) to a file as its last act; t0 is that time. One Celery worker process (concurrency 2) submits "
    "the job and returns (no slot is held while it runs); one poller process (`manage.py remote_poll --loop`) polls "
    f"the cluster every {POLL_SECONDS:g} s (the Slurm tracker's interval is the same), sends a collect message when "
    "the job has ended, and the collect finishes the task and queues `next` in the same transaction. The claim time "
    "is the `at` of `next`'s TaskTransition row to RUNNING, written with the same machine clock; latency = claim − "
    "t0. The figure therefore includes Slurm's own time to report the job as ended (squeue), up to one poll "
    "interval, the collect and the dispatch. Chains run one after another; the first is a warm-up and not counted."
)


def _workflow(mark: str) -> str:
    return yaml.safe_dump({
        "apiVersion": "gatehouse/v1", "kind": "Workflow", "name": "bench-remote-dispatch",
        "tasks": [
            {"id": "job", "backend": "hpc", "run": f"echo work; date +%s.%N > {mark}"},
            {"id": "next", "needs": ["job"], "backend": "local", "run": "true"},
        ],
    }, sort_keys=False)


def _slurm_ready() -> str | None:
    for tool in ("sbatch", "squeue", "scontrol", "scancel"):
        if shutil.which(tool) is None:
            return f"the Slurm tool {tool!r} is not installed (deploy/test-slurm.sh)"
    out = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=20, check=False)
    if not any(s.rstrip("*~#") in ("idle", "mixed", "allocated") for s in out.stdout.split()):
        return f"no Slurm node is ready (sinfo: {out.stdout.strip() or out.stderr.strip()})"
    return None


def run(ctx, *, chains: int = 20, **_) -> list[Figure]:
    from executors.backends import backends_configure
    from gateway.models import Run, TaskInstance, TaskTransition
    from gateway.services import run_submit

    problem = _slurm_ready()
    if problem:
        raise RuntimeError(f"remote_dispatch needs a Slurm cluster: {problem}")
    backends = {"apiVersion": "gatehouse/v1", "kind": "Backends", "backends": [
        {"name": "hpc", "kind": "slurm", "max_classification": "TOP SECRET",
         "config": {"cluster": f"bench-{int(time.time())}", "poll_interval": POLL_SECONDS}},
        {"name": "local", "kind": "local", "max_classification": "TOP SECRET"},
    ]}
    backends_configure(tenant=ctx.tenant, actor=ctx.author, source=yaml.safe_dump(backends))
    env = {"GATEHOUSE_REMOTE_POLL_SECONDS": str(POLL_SECONDS)}
    ctx.procs.worker("remote-dispatch", concurrency=2, extra_env=env)
    ctx.procs.wait_ready("remote-dispatch")
    ctx.procs.command("remote-poller", ["remote_poll", "--loop", "--interval", str(POLL_SECONDS)], env)
    marks = VAR_DIR / "remote-dispatch"
    shutil.rmtree(marks, ignore_errors=True)
    marks.mkdir(parents=True)

    latencies, to_collect, failed = [], [], 0
    for index in range(chains + 1):
        mark = marks / f"{index}.end"
        run_row = run_submit(tenant=ctx.tenant, actor=ctx.author, source=_workflow(str(mark)))
        wait_for(lambda: Run.objects.filter(id=run_row.id).exclude(state="RUNNING").exists(),
                 timeout=120, interval=0.02, what="the chain to finish")
        state = Run.objects.get(id=run_row.id).state
        if state != "SUCCEEDED" or not mark.exists():
            failed += 1
            continue
        ended = float(mark.read_text().strip())
        job = TaskInstance.objects.get(run=run_row, key="job")
        successor = TaskInstance.objects.get(run=run_row, key="next")
        claim = TaskTransition.objects.get(task=successor, to_state="RUNNING", attempt=1).at.timestamp()
        sent = job.external.get("collect_sent_at")
        if index == 0:
            continue  # warm-up
        latencies.append((claim - ended) * 1000)
        if sent:
            to_collect.append((datetime.fromisoformat(sent).timestamp() - ended) * 1000)
        ctx.say(f"chain {index}/{chains}: {latencies[-1]:.0f} ms")

    ctx.say(f"p50 {percentile(latencies, 50):.0f} ms, p99 {percentile(latencies, 99):.0f} ms "
            f"(poll interval {POLL_SECONDS:g} s)")
    return [
        Figure("chains measured", len(latencies), "chains"),
        Figure("chains not SUCCEEDED", failed, "chains", "= 0"),
        Figure("poll interval (poller and Slurm tracker)", POLL_SECONDS, "s"),
        Figure("job end → successor claim p50", round(percentile(latencies, 50), 1), "ms"),
        Figure("job end → successor claim p99", round(percentile(latencies, 99), 1), "ms"),
        Figure("job end → successor claim max", round(max(latencies, default=float("nan")), 1), "ms"),
        Figure("job end → collect sent p50", round(percentile(to_collect, 50), 1), "ms"),
        Figure("job end → collect sent p99", round(percentile(to_collect, 99), 1), "ms"),
    ]
