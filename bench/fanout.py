"""fanout: a 2,000-task fan-out/fan-in through the engine against the same no-op tasks sent straight
to Celery, interleaved in one run, reported as a ratio."""
from __future__ import annotations

import time
import uuid
from pathlib import Path

import yaml

from .common import Figure, machine_steal, median, steal_share, wait_for

NAME = "fanout"
TITLE = "2,000-task fan-out/fan-in: engine vs plain Celery"
TARGET_RATIO = 1.5
HOW = (
    "Engine: a workflow `root` (`true`) → N tasks (`true`, each needing root) → `join` (`true`, needing all N), "
    "submitted with `gateway.services.run_submit`; the time runs from just before `run_submit` until the Run row "
    "is seen in a terminal state (polled every 20 ms). Raw Celery: the same N no-op tasks sent straight to the same "
    "broker by the same function as `gateway.dispatch.CeleryDispatcher` sends a fan-out "
    "(`gateway.dispatch.send_many`: one producer, pipelined batches of 100 broker commands); each runs the identical command "
    "(`/bin/sh -c true`) through the same `executors.local.LocalExecutor` (submit, wait, collect in a temporary "
    "work directory, then removed) and increments a Redis counter, without the engine's database bookkeeping "
    "(claim, transitions, artefacts, dependants, run close, and the audit entry that every transition and "
    "executor submission writes in the same transaction); the time runs from just before the first message is "
    "sent until the counter reaches N (polled every 20 ms). Both use the same worker setup: ONE Celery worker "
    "process, prefork pool, concurrency 2, prefetch multiplier 4, acks late, on this machine with PostgreSQL and "
    "Redis. Rounds are interleaved (engine, raw, engine, raw, …) after an unmeasured warm-up of each; the figures "
    "are the median of the rounds, the ratio is engine median / raw median, throughput is tasks per second at the "
    "median. Every measured engine run is checked afterwards: SUCCEEDED with N+2 tasks, all SUCCEEDED, each "
    "claimed exactly once. The last two figures split a worker pool process's time per engine task, from the "
    "transition rows the workers wrote: claim → SUCCEEDED row (running the command, storing stdout/stderr, "
    "locking the row) and SUCCEEDED row → the same process's next claim (readying dependants, closing the run, "
    "commit, the removal of the work directory, which a thread of the process does meanwhile, then the claim of "
    "the next held task or, at the end of a drain, the Celery ack and next message and its claim). New PostgreSQL connections per task are "
    "PostgreSQL's own count (`pg_stat_database.sessions`) over each engine round, divided by its tasks: near 0 "
    "when the workers keep their connections, near 1 when every task connects anew. The engine runs with its "
    "default dispatch window (`GATEHOUSE_DISPATCH_WINDOW`, `GATEHOUSE_DRAIN_SECONDS`; gateway/dispatch.py): of the "
    "2,000 tasks root's end readies, the first 32 get a message and the rest are held, claimed by the workers "
    "that run the sent ones, which hand on with a message each time their drain time is up (and each message's "
    "claim sends a held task a message in its place); broker messages "
    "per engine run are Redis's count of LPUSH calls (kombu's publish) over the round; the raw side sends one "
    "message per task, as plain Celery does. CPU time stolen is the share of the machine's CPU time that "
    "/proc/stat counts as steal (the hypervisor running something else) over each round."
)


def workflow(n: int, name: str = "bench-fanout") -> str:
    fan = [f"t{i}" for i in range(n)]
    tasks = [{"id": "root", "run": "true"}]
    tasks += [{"id": key, "needs": ["root"], "run": "true"} for key in fan]
    tasks.append({"id": "join", "needs": fan, "run": "true"})
    return yaml.safe_dump({"apiVersion": "gatehouse/v1", "kind": "Workflow", "name": name, "tasks": tasks},
                          sort_keys=False, width=1 << 30)


def _raw_command(source: str) -> tuple[list[str], str | None]:
    """The argv and script the engine gives the executor for a fan-out task (gateway.worker.task_run)."""
    from gateway.services import workflow_parse

    spec = workflow_parse(source).task("t0")
    return list(spec.run.argv("{script}")), spec.run.script


def _engine_round(ctx, source: str, expected: int, timeout: float) -> tuple[float, object]:
    from gateway.models import Run
    from gateway.services import run_submit

    start = time.perf_counter()
    run = run_submit(tenant=ctx.tenant, actor=ctx.author, source=source)
    wait_for(lambda: Run.objects.filter(id=run.id).exclude(state="RUNNING").exists(),
             timeout=timeout, interval=0.02, what=f"the {expected}-task engine run to finish")
    return time.perf_counter() - start, run


def _raw_round(ctx, n: int, argv: list[str], script: str | None, timeout: float) -> float:
    import redis
    from django.conf import settings

    from bench.celery_tasks import raw_local_task
    from gateway.dispatch import send_many

    client = redis.Redis.from_url(settings.CELERY_BROKER_URL)
    key = f"bench:raw:{uuid.uuid4().hex}"
    work_root = str(Path(settings.GATEHOUSE_ENGINE["WORKDIR_ROOT"]) / "raw")
    interval = settings.GATEHOUSE_ENGINE["HEARTBEAT_SECONDS"]
    start = time.perf_counter()
    # Sent as the engine's dispatcher sends a fan-out (gateway.dispatch.CeleryDispatcher): one producer,
    # pipelined batches.
    send_many(raw_local_task, [(key, f"raw/t{i}/1", argv, script, work_root, interval) for i in range(n)])
    wait_for(lambda: int(client.get(key) or 0) >= n, timeout=timeout, interval=0.02,
             what=f"{n} raw Celery tasks to finish")
    elapsed = time.perf_counter() - start
    failed = int(client.get(key + ":failed") or 0)
    if failed:
        raise RuntimeError(f"{failed} raw tasks did not succeed")
    return elapsed


def _broker_pushes() -> int:
    """Messages the broker has received so far (kombu's Redis transport publishes with LPUSH; Redis
    counts the calls, all databases together: nothing else uses it while the bench runs)."""
    import redis
    from django.conf import settings

    stats = redis.Redis.from_url(settings.CELERY_BROKER_URL).info("commandstats")
    return int(stats.get("cmdstat_lpush", {}).get("calls", 0))


def _sessions() -> int:
    """Connections ever opened to the bench database (PostgreSQL's own count, pg_stat_database)."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_stat_clear_snapshot()")
        cursor.execute("SELECT sessions FROM pg_stat_database WHERE datname = current_database()")
        return int(cursor.fetchone()[0])


def _verify(run, expected: int) -> None:
    from gateway.models import Run, TaskInstance, TaskTransition

    run = Run.objects.get(id=run.id)
    tasks = TaskInstance.objects.filter(run_id=run.id)
    total, succeeded = tasks.count(), tasks.filter(state="SUCCEEDED").count()
    claims = TaskTransition.objects.filter(task__run_id=run.id, to_state="RUNNING").count()
    if run.state != "SUCCEEDED" or total != expected or succeeded != expected or claims != expected:
        raise RuntimeError(
            f"engine run {run.id}: {run.state} ({run.reason}), {total} tasks, {succeeded} SUCCEEDED, "
            f"{claims} claims; expected SUCCEEDED with {expected} tasks each claimed once"
        )


def _timeline(run) -> dict[str, float]:
    """Worker-side breakdown of one engine run from the transition history the workers wrote:
    per pool process (TaskInstance.worker), the time from a task's claim to its SUCCEEDED row
    (executor + artefacts + the start of the finish transaction) and the gap from that row to the
    same process's next claim (the rest of the finish transaction: dependants, run close, commit;
    the Celery ack and next message; the claim transaction up to its history row)."""
    from collections import defaultdict

    from gateway.models import TaskTransition

    rows = TaskTransition.objects.filter(task__run_id=run.id, to_state__in=["RUNNING", "SUCCEEDED"]).values_list(
        "task_id", "to_state", "at", "task__worker"
    )
    claims, done, worker_of = {}, {}, {}
    for task_id, state, at, worker in rows:
        (claims if state == "RUNNING" else done)[task_id] = at.timestamp()
        worker_of[task_id] = worker
    by_worker = defaultdict(list)
    for task_id, at in claims.items():
        if task_id in done:
            by_worker[worker_of[task_id]].append((at, done[task_id]))
    busy, gaps = [], []
    for items in by_worker.values():
        items.sort()
        busy += [end - start for start, end in items]
        gaps += [nxt[0] - cur[1] for cur, nxt in zip(items, items[1:])]
    return {"busy": median(busy), "gap": median(gaps), "processes": len(by_worker)}


def run(ctx, *, tasks: int = 2000, rounds: int = 3, timeout: float = 240.0, **_) -> list[Figure]:
    from django.conf import settings

    if rounds < 2:
        raise ValueError("--rounds must be at least 2 (interleaved engine/raw rounds)")
    source = workflow(tasks)
    expected = tasks + 2
    argv, script = _raw_command(source)
    ctx.start_worker("fanout", concurrency=2)

    ctx.say("warm-up (not measured)")
    _engine_round(ctx, workflow(20, "bench-fanout-warmup"), 22, timeout)
    _raw_round(ctx, 20, argv, script, timeout)

    engine_times, raw_times, sessions, pushes, steals = [], [], [], [], {"engine": [], "raw": []}
    for i in range(rounds):
        before, pushed, stolen = _sessions(), _broker_pushes(), machine_steal()
        elapsed, run = _engine_round(ctx, source, expected, timeout)
        steals["engine"].append(steal_share(stolen, machine_steal()))
        pushes.append(_broker_pushes() - pushed)
        time.sleep(1.0)  # backends report their statistics at most once a second
        sessions.append(_sessions() - before)
        _verify(run, expected)
        timeline = _timeline(run)
        engine_times.append(elapsed)
        ctx.say(f"round {i + 1}: engine {elapsed:.2f} s ({expected / elapsed:.0f} tasks/s, {pushes[-1]} messages)")
        stolen = machine_steal()
        elapsed = _raw_round(ctx, tasks, argv, script, timeout)
        steals["raw"].append(steal_share(stolen, machine_steal()))
        raw_times.append(elapsed)
        ctx.say(f"round {i + 1}: raw Celery {elapsed:.2f} s ({tasks / elapsed:.0f} tasks/s)")

    engine, raw = median(engine_times), median(raw_times)
    ratio = engine / raw
    figures = [
        Figure("tasks per engine run (root + fan-out + join)", expected, "tasks"),
        Figure("raw Celery tasks per round", tasks, "tasks"),
        Figure("rounds of each (interleaved)", rounds, "rounds"),
        Figure("worker concurrency (one worker process)", 2, "pool processes"),
    ]
    figures += [Figure(f"engine run, round {i + 1}", round(t, 3), "s") for i, t in enumerate(engine_times)]
    figures += [Figure(f"raw Celery, round {i + 1}", round(t, 3), "s") for i, t in enumerate(raw_times)]
    figures += [
        Figure("engine run, median", round(engine, 3), "s"),
        Figure("raw Celery, median", round(raw, 3), "s"),
        Figure("engine / raw Celery (ratio of medians)", round(ratio, 2), "×", f"≤ {TARGET_RATIO}×"),
        Figure("engine throughput", round(expected / engine, 1), "tasks/s"),
        Figure("raw Celery throughput", round(tasks / raw, 1), "tasks/s"),
        Figure("engine wall time per task (2 pool processes)", round(engine / expected * 1000, 2), "ms"),
        Figure("raw Celery wall time per task (2 pool processes)", round(raw / tasks * 1000, 2), "ms"),
        Figure("engine runs checked SUCCEEDED with all tasks claimed once", rounds, "runs", f"= {rounds}"),
        Figure("broker messages per engine run (median of rounds)", round(median(pushes)), "messages"),
        Figure("engine dispatch window (GATEHOUSE_DISPATCH_WINDOW)", settings.GATEHOUSE_ENGINE["DISPATCH_WINDOW"], "tasks"),
        Figure("engine drain time (GATEHOUSE_DRAIN_SECONDS)", settings.GATEHOUSE_ENGINE["DRAIN_SECONDS"], "s"),
    ]
    for side, label in (("engine", "engine rounds"), ("raw", "raw Celery rounds")):
        shares = [v for v in steals[side] if v is not None]
        if shares:
            figures.append(Figure(f"CPU time stolen by the hypervisor during {label}, median", round(median(shares), 1), "%"))
            figures.append(Figure(f"CPU time stolen by the hypervisor during {label}, highest", round(max(shares), 1), "%"))
    figures += [
        Figure("new PostgreSQL connections per engine task (median of rounds)",
               round(median(sessions) / expected, 2), "per task"),
        Figure("engine, last round, per pool process: claim → SUCCEEDED row, median", round(timeline["busy"] * 1000, 2), "ms"),
        Figure("engine, last round, per pool process: SUCCEEDED row → next claim, median", round(timeline["gap"] * 1000, 2), "ms"),
    ]
    return figures
