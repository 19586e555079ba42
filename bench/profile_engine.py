"""Where a worker's time goes per engine task (not part of `make bench`).

    make bench-style environment, then:  .venv/bin/python bench/profile_engine.py [--tasks 300]

Against the bench database (`gatehouse_bench`, emptied and migrated first: do not run it while
`make bench` runs), with the recording dispatcher so no
worker or broker is involved: a fan-out run root → N tasks → join is submitted, then its messages
are executed in this process, single-threaded. The first half of the fan-out is timed phase by phase
(claim / run / finish, as `gateway.worker.task_execute` does them) with every SQL query captured; the
second half runs `task_execute` under cProfile.
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
    parser.add_argument("--tasks", type=int, default=300)
    parser.add_argument("--top", type=int, default=30)
    args = parser.parse_args()

    from bench.run import _configure_environment

    _configure_environment()
    os.environ["GATEHOUSE_DISPATCHER"] = "gateway.dispatch.RecordingDispatcher"
    import django

    django.setup()
    from django.conf import settings
    from django.core.management import call_command
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from bench.fanout import workflow
    from gateway.dispatch import RecordingDispatcher
    from gateway.models import Run
    from gateway.services import run_submit
    from gateway.tenancy import member_create, tenant_create
    from gateway.worker import task_claim, task_execute, task_finish, task_run

    assert settings.DATABASES["default"]["NAME"] == "gatehouse_bench"
    call_command("migrate", interactive=False, verbosity=0)
    tag = uuid.uuid4().hex[:8]
    tenant = tenant_create(slug=f"profile-{tag}", name="Engine profile")
    author = member_create(tenant=tenant, username=f"profile-author-{tag}", roles=["author"])

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
    half = len(fan) // 2

    phases = {"claim": [], "run": [], "finish": []}
    sql_ms = {"claim": [], "run": [], "finish": []}
    per_task_queries = []
    kinds: Counter[str] = Counter()
    kinds_ms: defaultdict[str, float] = defaultdict(float)
    for task_id, attempt in fan[:half]:
        count = 0
        with CaptureQueriesContext(connection) as q:
            t0 = time.perf_counter()
            task = task_claim(task_id, attempt)
        t1 = time.perf_counter()
        phases["claim"].append(t1 - t0)
        sql_ms["claim"].append(sum(float(x["time"]) for x in q.captured_queries))
        captured = list(q.captured_queries)
        with CaptureQueriesContext(connection) as q:
            t1 = time.perf_counter()
            outcome = task_run(task, attempt)
        t2 = time.perf_counter()
        phases["run"].append(t2 - t1)
        sql_ms["run"].append(sum(float(x["time"]) for x in q.captured_queries))
        captured += q.captured_queries
        with CaptureQueriesContext(connection) as q:
            t2 = time.perf_counter()
            result = task_finish(task_id, attempt, outcome)
        t3 = time.perf_counter()
        assert result == "succeeded", result
        phases["finish"].append(t3 - t2)
        sql_ms["finish"].append(sum(float(x["time"]) for x in q.captured_queries))
        captured += q.captured_queries
        per_task_queries.append(len(captured))
        for query in captured:
            kinds[_kind(query["sql"])] += 1
            kinds_ms[_kind(query["sql"])] += float(query["time"])

    profiler = cProfile.Profile()
    start = time.perf_counter()
    profiler.enable()
    for task_id, attempt in fan[half:]:
        task_execute(task_id, attempt)
    profiler.disable()
    profiled_ms = (time.perf_counter() - start) * 1000 / (len(fan) - half)
    (join,) = pop()
    task_execute(*join)
    run.refresh_from_db()

    n = len(fan[:half])
    total = [sum(x) for x in zip(*phases.values())]
    print(f"\n== engine per task, in-process, single-threaded, {n} fan-out tasks timed ({run.state}) ==")
    print(f"run_submit of the {args.tasks + 2}-task run: {submit_ms:.0f} ms, {len(submit_q.captured_queries)} queries")
    print(f"whole task: median {median(total) * 1000:.2f} ms, p90 {percentile(total, 90) * 1000:.2f} ms")
    for name, values in phases.items():
        print(f"  {name:<7} median {median(values) * 1000:6.2f} ms   of which SQL {median(sql_ms[name]) * 1000:6.2f} ms")
    print(f"SQL queries per task: median {median(per_task_queries):.0f} (min {min(per_task_queries)}, max {max(per_task_queries)})")
    print("queries per task by kind (count, SQL time per task):")
    for kind, count in kinds.most_common():
        print(f"  {count / n:5.1f}  {kinds_ms[kind] / n * 1000:6.2f} ms  {kind}")
    print(f"fsync of a small file here: median {_fsync_ms():.2f} ms")
    print(f"\n== cProfile of task_execute over {len(fan) - half} tasks ({profiled_ms:.2f} ms per task under the profiler) ==")
    for key in ("cumulative", "tottime"):
        buf = io.StringIO()
        pstats.Stats(profiler, stream=buf).sort_stats(key).print_stats(args.top)
        print(buf.getvalue())
    return 0


if __name__ == "__main__":
    sys.exit(main())
