"""gate_release: how long after an analyst's decision the task behind the gate is claimed by a worker."""
from __future__ import annotations

import time

import yaml

from .common import Figure, percentile, wait_for

NAME = "gate_release"
TITLE = "Gate decision → dependant dispatched"
TARGET_P99_MS = 100
HOW = (
    "Each run is a two-node workflow: a gate `g` (options confirm/reject) and a task `after` (`run: \"true\"`) that "
    "needs it. All runs are submitted first, so every gate is open and nothing is queued; then one Celery worker "
    "process (prefork, concurrency 2, PostgreSQL and Redis on the same machine) is started and the bench process "
    "decides the gates one after another with `approvals.services.gate_decide` (option confirm). t0 is the wall "
    "clock (`time.time()`) just before the call; the claim time is the `at` of the dependant's TaskTransition row "
    "to RUNNING, written by the worker with the same machine clock; latency = claim − t0. The decision's dispatch "
    "message is sent on commit, inside the call, so the decide duration (`time.perf_counter()`) includes it. "
    "Decisions are paced: the next one is made only once the previous run has finished (bounded wait), so the "
    "figures are latencies, not queueing. The first gates warm the worker's pool and connections and are not "
    "counted. Percentiles interpolate linearly between closest ranks."
)


def _workflow() -> str:
    return yaml.safe_dump(
        {
            "apiVersion": "gatehouse/v1",
            "kind": "Workflow",
            "name": "bench-gate-release",
            "tasks": [
                {"id": "g", "type": "gate", "title": "Bench gate", "options": ["confirm", "reject"],
                 "approvers": ["analyst"]},
                {"id": "after", "needs": ["g"], "run": "true"},
            ],
        },
        sort_keys=False,
    )


def run(ctx, *, gates: int = 300, warmup: int = 10, **_) -> list[Figure]:
    from approvals.models import Gate
    from approvals.services import gate_decide
    from gateway.models import Run, TaskInstance, TaskTransition
    from gateway.services import run_submit

    if gates < 1:
        raise ValueError("--gates must be at least 1")
    source = _workflow()
    total = gates + warmup
    ctx.say(f"submitting {total} runs ({warmup} warm-up)")
    runs = [run_submit(tenant=ctx.tenant, actor=ctx.author, source=source) for _ in range(total)]
    gates_by_run = {g.run_id: g for g in Gate.objects.filter(run_id__in=[r.id for r in runs])}
    after_by_run = dict(
        TaskInstance.objects.filter(run_id__in=[r.id for r in runs], key="after").values_list("run_id", "id")
    )
    assert len(gates_by_run) == total and all(g.state == "OPEN" for g in gates_by_run.values())

    ctx.start_worker("gate-release", concurrency=2)

    latencies, decide_ms, missed = [], [], 0
    for index, run_row in enumerate(runs):
        gate = gates_by_run[run_row.id]
        t0 = time.time()
        p0 = time.perf_counter()
        gate_decide(gate=gate, actor=ctx.analyst, option="confirm")
        p1 = time.perf_counter()
        try:
            # Pace: the next decision waits until this run has finished (worker idle again).
            wait_for(lambda: Run.objects.filter(id=run_row.id).exclude(state="RUNNING").exists(),
                     timeout=10, interval=0.005, what="the run to finish")
        except TimeoutError:
            pass
        claim = (
            TaskTransition.objects.filter(task_id=after_by_run[run_row.id], to_state="RUNNING")
            .values_list("at", flat=True).first()
        )
        if index < warmup:
            continue
        decide_ms.append((p1 - p0) * 1000)
        if claim is None:
            missed += 1
            continue
        latencies.append((claim.timestamp() - t0) * 1000)
        if (index - warmup + 1) % 100 == 0:
            ctx.say(f"{index - warmup + 1}/{gates} gates decided")

    failed = Run.objects.filter(id__in=[r.id for r in runs[warmup:]]).exclude(state="SUCCEEDED").count()
    ctx.say(f"p50 {percentile(latencies, 50):.1f} ms, p99 {percentile(latencies, 99):.1f} ms")
    return [
        Figure("gates decided (measured)", gates, "gates"),
        Figure("warm-up gates (not counted)", warmup, "gates"),
        Figure("dependants not claimed within 10 s", missed, "gates", "= 0"),
        Figure("runs not SUCCEEDED", failed, "runs", "= 0"),
        Figure("decision → claim latency p50", round(percentile(latencies, 50), 2), "ms"),
        Figure("decision → claim latency p95", round(percentile(latencies, 95), 2), "ms"),
        Figure("decision → claim latency p99", round(percentile(latencies, 99), 2), "ms", f"p99 < {TARGET_P99_MS} ms"),
        Figure("decision → claim latency max", round(max(latencies, default=float("nan")), 2), "ms"),
        Figure("gate_decide call p50", round(percentile(decide_ms, 50), 2), "ms"),
        Figure("gate_decide call p99", round(percentile(decide_ms, 99), 2), "ms"),
    ]
