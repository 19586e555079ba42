"""Where a worker's time goes per engine task (not part of `make bench`).

    make bench-style environment, then:  .venv/bin/python bench/profile_engine.py [--tasks 300]

Against the bench database (`gatehouse_bench`, emptied and migrated first: do not run it while
`make bench` runs), with the recording dispatcher so no
worker or broker is involved: a fan-out run root → N tasks → join is submitted, then its messages
are executed in this process, single-threaded. A quarter of the fan-out is timed phase by phase
(claim / run / finish, as `gateway.worker.task_execute` does them) with every SQL query captured; a
quarter runs `task_execute` between gateway.celery's prerun and postrun handlers, as a worker does
(CPU of this process and of its PostgreSQL backend measured, Django's health checks counted); a
quarter also with the database connection closed before and after each task, as Celery's Django
fixup does without CELERY_DB_REUSE_MAX; the last quarter under cProfile.
"""
from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import re
import sys
import time
import uuid
from collections import Counter, defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.common import VAR_DIR, median, percentile  # noqa: E402

_TABLE = re.compile(r'(?:FROM|INTO|UPDATE)\s+"([a-z_]+)"', re.I)


def _kind(sql: str) -> str:
    words = sql.split(None, 1)
    verb = words[0].upper() if words else "?"
    if verb in {"SAVEPOINT", "RELEASE", "ROLLBACK"}:
        return "SAVEPOINT/RELEASE"
    table = _TABLE.search(sql)
    suffix = " FOR UPDATE" if verb == "SELECT" and "FOR UPDATE" in sql.upper() else ""
    if verb == "SELECT" and sql.upper().startswith("SELECT 1 AS"):
        suffix += " (exists)"
    return f"{verb}{suffix} {table.group(1) if table else ''}".strip()


def _fsync_ms(samples: int = 20) -> float:
    path = VAR_DIR / "fsync-probe"
    VAR_DIR.mkdir(parents=True, exist_ok=True)
    times = []
    with open(path, "wb") as fh:
        for _ in range(samples):
            fh.write(b"x" * 64)
            fh.flush()
            start = time.perf_counter()
            os.fsync(fh.fileno())
            times.append(time.perf_counter() - start)
    path.unlink()
    return median(times) * 1000


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=400)
    parser.add_argument("--top", type=int, default=30)
    args = parser.parse_args()

    from bench import run as bench_run

    bench_run._configure_environment()
    os.environ["GATEHOUSE_DISPATCHER"] = "gateway.dispatch.RecordingDispatcher"
    # Every task its own message, so that each is profiled as a message's task (no held tasks,
    # which task_execute would claim after the first one: gateway/dispatch.py, the window).
    os.environ["GATEHOUSE_DISPATCH_WINDOW"] = "0"
    import django

    django.setup()
    from django.conf import settings
    from django.core.management import call_command
    from django.db import DEFAULT_DB_ALIAS, connection, connections
    from django.test.utils import CaptureQueriesContext

    from bench.fanout import workflow
    from gateway.dispatch import RecordingDispatcher
    from gateway.services import run_submit
    from gateway.clearances import ClearanceInput
    from gateway.tenancy import member_create, tenant_create

    BENCH_CLEARANCE = ClearanceInput(policy=None, max_level="TOP SECRET", compartments=[], releasability=[])
    from gateway.worker import task_claim, task_execute, task_finish, task_run

    assert settings.DATABASES["default"]["NAME"] == bench_run.BENCH_DB
    call_command("migrate", interactive=False, verbosity=0)
    tag = uuid.uuid4().hex[:8]
    tenant = tenant_create(slug=f"profile-{tag}", name="Engine profile")
    author = member_create(tenant=tenant, username=f"profile-author-{tag}", roles=["author"],
                           clearance=BENCH_CLEARANCE)

    def pop() -> list[tuple[int, int]]:
        with RecordingDispatcher.lock:
            messages = list(RecordingDispatcher.sent)
            RecordingDispatcher.sent.clear()
        return messages

    RecordingDispatcher.reset()
    source = workflow(args.tasks, "bench-profile")
    start = time.perf_counter()
    with CaptureQueriesContext(connection) as submit_q:
        run = run_submit(tenant=tenant, actor=author, source=source)
    submit_ms = (time.perf_counter() - start) * 1000
    (root,) = pop()
    task_execute(*root)  # readies the fan-out
    fan = pop()
    assert len(fan) == args.tasks, len(fan)
    quarter = len(fan) // 4
    timed, plain, reconnect, profiled = (fan[:quarter], fan[quarter:2 * quarter], fan[2 * quarter:3 * quarter],
                                         fan[3 * quarter:])

    class Timer:
        """Precise time of every statement (Django's captured "time" is rounded to the millisecond).
        COMMIT is not a statement: it is timed around the transaction's end by the phase timer."""

        def __init__(self):
            self.items: list[tuple[str, float]] = []

        def __call__(self, execute, sql, params, many, context):
            start = time.perf_counter()
            try:
                return execute(sql, params, many, context)
            finally:
                self.items.append((sql, time.perf_counter() - start))

    phases = {"claim": [], "run": [], "finish": []}
    per_task_queries = []
    sql_total = []
    kinds: Counter[str] = Counter()
    kinds_ms: defaultdict[str, float] = defaultdict(float)
    for task_id, attempt in timed:
        timer = Timer()
        with connection.execute_wrapper(timer):
            with CaptureQueriesContext(connection) as q:
                t0 = time.perf_counter()
                task = task_claim(task_id, attempt)
                t1 = time.perf_counter()
                outcome = task_run(task, attempt)
                t2 = time.perf_counter()
                result = task_finish(task_id, attempt, outcome)
                t3 = time.perf_counter()
        assert result == "succeeded", result
        phases["claim"].append(t1 - t0)
        phases["run"].append(t2 - t1)
        phases["finish"].append(t3 - t2)
        for sql, duration in timer.items:
            kinds[_kind(sql)] += 1
            kinds_ms[_kind(sql)] += duration
        sql_total.append(sum(d for _, d in timer.items))
        per_task_queries.append(len(q.captured_queries))
        for query in q.captured_queries:
            if query["sql"] in ("BEGIN", "COMMIT"):  # the only ones that bypass execute wrappers
                kinds[_kind(query["sql"])] += 1
                kinds_ms[_kind(query["sql"])] += float(query["time"])

    from gateway.celery import _after_task, _before_task

    def backend_cpu() -> float:
        """CPU seconds used so far by this connection's PostgreSQL backend (same machine)."""
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_backend_pid()")
            pid = cursor.fetchone()[0]
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    health_checks = [0]

    def counting(execute):
        def wrapper(*args, **kwargs):
            health_checks[0] += 1  # Django's health check: `SELECT 1`, a round trip
            return execute(*args, **kwargs)
        return wrapper

    def whole(messages, *, close: bool) -> tuple[list[float], float, float, int]:
        """task_execute as a Celery worker runs it: gateway.celery's prerun and postrun handlers
        around it (close_old_connections, which keeps the connection and re-arms its health check);
        with `close`, the connection is also closed before and after, as Celery's Django fixup
        does without CELERY_DB_REUSE_MAX. Returns the times, this process's CPU per task (every
        thread: the live-update sender's work is counted), the kept backend's CPU per task (not
        measured with `close`) and Django's health checks (a round trip each)."""
        times = []
        db = connections[DEFAULT_DB_ALIAS]
        db.is_usable = counting(db.is_usable)
        checks_before = health_checks[0]
        cpu0, backend0 = time.process_time(), (None if close else backend_cpu())
        for task_id, attempt in messages:
            start = time.perf_counter()
            if close:  # what celery.fixups.django does before and after every task (Celery 5.5+)
                connection.close()
            _before_task(task_id=f"profile-{task_id}")
            task_execute(task_id, attempt)
            _after_task()
            if close:
                connection.close()
            times.append(time.perf_counter() - start)
        cpu = (time.process_time() - cpu0) / len(messages)
        backend = None if close else (backend_cpu() - backend0) / len(messages)
        del db.is_usable
        return times, cpu, backend, health_checks[0] - checks_before

    persistent_times, persistent_cpu, persistent_backend, persistent_checks = whole(plain, close=False)
    reconnect_times, reconnect_cpu, _, _ = whole(reconnect, close=True)

    profiler = cProfile.Profile()
    start = time.perf_counter()
    profiler.enable()
    for task_id, attempt in profiled:
        task_execute(task_id, attempt)
    profiler.disable()
    profiled_ms = (time.perf_counter() - start) * 1000 / len(profiled)
    (join,) = pop()
    task_execute(*join)
    run.refresh_from_db()

    n = len(timed)
    total = [sum(x) for x in zip(*phases.values())]
    print(f"\n== engine per task, in-process, single-threaded, fan-out of {len(fan)} ({run.state}) ==")
    print(f"run_submit of the {args.tasks + 2}-task run: {submit_ms:.0f} ms, {len(submit_q.captured_queries)} queries")
    print(f"task_execute, {len(plain)} tasks, connection kept (gateway.celery's prerun/postrun around each): "
          f"median {median(persistent_times) * 1000:.2f} ms; CPU per task: this process "
          f"{persistent_cpu * 1000:.2f} ms, its PostgreSQL backend {persistent_backend * 1000:.2f} ms; "
          f"Django health checks (SELECT 1, a round trip each) per task: {persistent_checks / len(plain):.2f}")
    print(f"task_execute, {len(reconnect)} tasks, connection closed before and after each (as Celery's Django "
          f"fixup does): median {median(reconnect_times) * 1000:.2f} ms; CPU per task: this process "
          f"{reconnect_cpu * 1000:.2f} ms")
    print(f"{n} tasks timed phase by phase (queries captured): median {median(total) * 1000:.2f} ms, "
          f"p90 {percentile(total, 90) * 1000:.2f} ms")
    for name, values in phases.items():
        print(f"  {name:<7} median {median(values) * 1000:6.2f} ms")
    print(f"time inside SQL statements (excluding BEGIN/COMMIT): median {median(sql_total) * 1000:.2f} ms per task")
    print(f"SQL statements per task (with BEGIN/COMMIT/SAVEPOINT): median {median(per_task_queries):.0f} "
          f"(min {min(per_task_queries)}, max {max(per_task_queries)}); not counted: the health check above")
    print("statements per task by kind (count, time per task; BEGIN/COMMIT/SAVEPOINT times are Django's, to 1 ms):")
    for kind, count in kinds.most_common():
        print(f"  {count / n:5.1f}  {kinds_ms[kind] / n * 1000:6.2f} ms  {kind}")
    print(f"fsync of a small file here: median {_fsync_ms():.2f} ms")
    print(f"\n== cProfile of task_execute over {len(profiled)} tasks ({profiled_ms:.2f} ms per task under the profiler) ==")
    project = re.escape(str(ROOT)) + r"/(gateway|executors|approvals|audit)/|subprocess|fsync"
    for key, restriction in (("cumulative", project),
                             ("cumulative", ""), ("tottime", "")):
        buf = io.StringIO()
        stats = pstats.Stats(profiler, stream=buf).sort_stats(key)
        if restriction:
            stats.print_stats(restriction, args.top)
        else:
            stats.print_stats(args.top)
        print(buf.getvalue())
    buf = io.StringIO()
    pstats.Stats(profiler, stream=buf).sort_stats("cumulative").print_callees(r"worker.py:\d+\((task_claim|task_finish)\)")
    print(buf.getvalue())
    return 0


if __name__ == "__main__":
    sys.exit(main())
