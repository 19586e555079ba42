"""audit_append: sustained audited appends (entry + queue row in the action's transaction) against
plain INSERTs of the same columns into a same-shaped table, with 1 and with N concurrent writer
processes, while the real sequencer runs; then the sequencer's integration window and its
throughput on a backlog."""
from __future__ import annotations

import json
import multiprocessing
import os
import time

from .common import Figure, machine_cpu, percentile, process_cpu_seconds, wait_for

NAME = "audit_append"
TITLE = "Audited appends vs plain INSERTs, with the sequencer running"
TARGET_RATIO = 0.8
PLAIN_TABLE = "bench_plain"
PLAIN_PREPARED = "plain prepared"  # a reference case, N writers only: not the target's comparison
EVENT = "tenant.created"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")  # the unit of /proc/stat
SHORT_DRAIN = 2.0  # seconds after the writers stop within which the queue must be empty
PLAIN_COLUMNS = ("at", "tenant_id", "actor_id", "event", "object_type", "object_id", "label", "outcome", "body")

HOW = (
    "Writers are separate OS processes (`multiprocessing`, spawn context), each calling `django.setup()` on the "
    "bench database with its own connection (kept open, as `GATEHOUSE_DB_CONN_MAX_AGE` does in the server), each "
    "doing single-entry transactions back to back. Audited: `with transaction.atomic(): audit_append(event="
    "\"tenant.created\", tenant=t, data={slug, name})`, i.e. what every action adds to its own transaction: the "
    "`AuditEntry` row and its `AuditPending` queue row, in one statement that `audit_append` prepares once per "
    "connection (server-side binding, psycopg `prepare=True`: PostgreSQL parses and plans it once, then each append "
    "sends its parameters only), one commit. Plain: the same nine columns (`at`, `tenant_id`, "
    "`actor_id`, `event`, `object_type`, `object_id`, `label`, `outcome`, and a `body` of the same shape and size "
    "as the audited entry's, JSON-encoded per row) in one raw-cursor INSERT inside `transaction.atomic()` on the "
    "same Django connection, sent as Django's cursors send every statement (values bound on the client, the "
    "statement parsed and planned by PostgreSQL on every execution, as Django sends the actions' own ORM writes), "
    "into `bench_plain`, made for the run as `CREATE TABLE bench_plain (LIKE "
    "audit_auditentry INCLUDING DEFAULTS)` with its `id` replaced by a `bigserial` primary key: no triggers, no "
    "queue and no secondary indexes (`audit_auditentry` has two secondary indexes and no foreign-key "
    "constraints; its append-only triggers fire only on UPDATE, DELETE and TRUNCATE, never on INSERT; the "
    "audited append also inserts its queue row in the same statement); dropped afterwards. Every case runs for "
    "a fixed time after an unmeasured warm-up (both stated below), all writers "
    "released together by a barrier; a transaction counts when it commits inside the measured window (each "
    "writer times itself with `time.perf_counter()`); appends/s is the total over the writers divided by the "
    "window. Cases are interleaved in every round (audited ×1, plain ×1, audited ×N, plain ×N, and a reference "
    "case, plain prepared ×N: the plain INSERT, its parameters typed as the audited statement's, prepared the way "
    "`audit_append` prepares its statement; it is not the target's comparison, it shows how much of the ratio the "
    "preparing accounts for) and the figure "
    "per case is the median over rounds; the ratio is audited / plain of those medians. Call latencies are per "
    "transaction (BEGIN to COMMIT returned), pooled over rounds. Where the time goes, over each measured window: "
    "each writer's own CPU time (`resource.getrusage`) and its PostgreSQL backend's (from `/proc/<pid>/stat`, "
    "the backend found with `pg_backend_pid()`), divided by the appends it made; the whole machine's CPU busy "
    "share (`/proc/stat`, all CPUs) and that CPU time divided by the appends made (every process: writers, "
    "backends, the sequencer and its backend, this process); the sequencer process's CPU time (from `/proc`) "
    "as a share of one CPU; and in how many sequencer batches (distinct `integrated_at`) the measured entries "
    "were placed. The real sequencer runs throughout as its own "
    "process, `manage.py audit_sequencer --loop` (the command `make run` starts, interval from settings), "
    "started after any backlog left by earlier benchmarks was placed. Kept up: the queue length is sampled "
    "every 0.25 s while the audited writers run, then polled every 20 ms from the moment the last writer "
    f"reported until it is 0; what is still queued {SHORT_DRAIN:g} s after that moment must be 0 (the next case "
    "starts only once the queue is empty). Integration "
    "window: for every entry committed in the measured windows of the audited cases (all of them, not a "
    "sample), `AuditLeaf.integrated_at − AuditEntry.at`, both taken with the wall clock of this one machine "
    "(`at` by the writer just before its INSERT, `integrated_at` by the sequencer when its batch transaction "
    "starts), so the window includes the writer's own INSERTs and commit. The target bound is "
    "`--integration-target` (1 s by default; the sequencer interval, `GATEHOUSE_AUDIT_SEQUENCER_INTERVAL`, is "
    "0.2 s). Not measured because it holds by construction: no action commits before its audit entry is "
    "durable, since `audit_append` writes the entry and its queue row in the action's own transaction, so both "
    "commit (and are fsynced with the WAL) in the same COMMIT as the action or not at all. Sequencer "
    "throughput: with the sequencer process stopped, a backlog is queued with `audit_append_many` (1,000 "
    "records per transaction, same event and tenant), then placed in this process by `audit.sequencer."
    "integrate()` called until it returns 0 (as the command drains a backlog), timed with "
    "`time.perf_counter()`; the batch is `min(SEQUENCER_BATCH, CHECKPOINT_ENTRIES)` entries and each batch "
    "also signs a checkpoint for each tree that grew and writes it to the checkpoint store (fsync)."
)


# ---------------------------------------------------------------------------------------------
# The writer processes (spawned: everything they use is imported inside)


def _writer(index: int, commands, results, barriers: dict) -> None:
    import resource

    import django

    django.setup()
    from django.db import connection, transaction
    from django.utils import timezone

    from audit import context
    from audit.services import audit_append
    from gateway.models import Tenant

    tenant = Tenant.objects.get(slug="bench")
    where = context.current().as_dict()
    insert = (f"INSERT INTO {PLAIN_TABLE} ({', '.join(PLAIN_COLUMNS)}) "
              f"VALUES ({', '.join(['%s'] * len(PLAIN_COLUMNS))})")
    # The reference case only (not the target's comparison): the same INSERT prepared, as audit_append's is.
    prepared_insert = (f"INSERT INTO {PLAIN_TABLE} ({', '.join(PLAIN_COLUMNS)}) VALUES (%s::timestamptz, "
                       "%s::bigint, %s::bigint, %s::text, %s::text, %s::text, %s::text, %s::text, %s::text::jsonb)")
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        backend = cursor.fetchone()[0]

    def cpu() -> tuple[float, float | None]:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_utime + usage.ru_stime, process_cpu_seconds(backend)

    results.put(("ready", index, None))
    serial = 0
    while True:
        command = commands.get()
        if command is None:
            break
        mode, writers, warmup, duration = command
        barriers[writers].wait()
        start = time.perf_counter()
        measure_from, end = start + warmup, start + warmup + duration
        count, first_id, last_id, latencies = 0, None, None, []
        cpu_from = None
        cursor = connection.cursor()
        if mode == PLAIN_PREPARED:
            import psycopg

            raw = connection.connection
            if raw.prepare_threshold is None:
                raw.prepare_threshold = 2**31 - 1  # as audit.services does: prepare=True works, nothing else
            server_cursor = psycopg.Cursor(raw)
        while True:
            t0 = time.perf_counter()
            if t0 >= end:
                break
            if cpu_from is None and t0 >= measure_from:
                cpu_from = cpu()
            serial += 1
            data = {"slug": f"w{index}-{serial}", "name": f"Bench writer {index}"}
            if mode == "audited":
                with transaction.atomic():
                    entry = audit_append(event=EVENT, tenant=tenant, data=data)
                entry_id = entry.id
            else:
                # The same columns and a body of the same shape and size as audit_append's, no audit.
                body = {"event": EVENT, "actor": None, "object": None, "label": None, "outcome": "success",
                        "error": None, "where": where, "data": data}
                values = [timezone.now(), tenant.id, None, EVENT, "", "", "", "success", json.dumps(body)]
                with transaction.atomic():
                    if mode == PLAIN_PREPARED:
                        server_cursor.execute(prepared_insert, values, prepare=True)
                    else:
                        cursor.execute(insert, values)
                entry_id = None
            t1 = time.perf_counter()
            if measure_from <= t1 < end:
                count += 1
                latencies.append(t1 - t0)
                if entry_id is not None:
                    first_id = entry_id if first_id is None else min(first_id, entry_id)
                    last_id = entry_id if last_id is None else max(last_id, entry_id)
        cpu_to = cpu()
        cursor.close()
        client_cpu = cpu_to[0] - cpu_from[0] if cpu_from else None
        backend_cpu = cpu_to[1] - cpu_from[1] if cpu_from and None not in (cpu_to[1], cpu_from[1]) else None
        results.put(("done", index, {"count": count, "first_id": first_id, "last_id": last_id,
                                     "latencies": latencies, "client_cpu": client_cpu, "backend_cpu": backend_cpu}))
    connection.close()


class _Writers:
    def __init__(self, n: int):
        self.mp = multiprocessing.get_context("spawn")
        self.n = n
        self.results = self.mp.Queue()
        self.barriers = {1: self.mp.Barrier(2), n: self.mp.Barrier(n + 1)}
        self.commands = [self.mp.Queue() for _ in range(n)]
        self.procs = [
            self.mp.Process(target=_writer, args=(i, self.commands[i], self.results, self.barriers),
                            name=f"bench-audit-writer-{i}", daemon=True)
            for i in range(n)
        ]

    def start(self, timeout: float = 120.0) -> None:
        for proc in self.procs:
            proc.start()
        import queue

        ready = 0
        deadline = time.perf_counter() + timeout
        while ready < self.n:
            dead = [p.name for p in self.procs if not p.is_alive()]
            if dead or time.perf_counter() > deadline:
                raise RuntimeError(f"writer processes not ready: {', '.join(dead) or 'timed out'}")
            try:
                kind, _, _ = self.results.get(timeout=0.5)
            except queue.Empty:
                continue
            if kind == "ready":
                ready += 1

    def run(self, mode: str, writers: int, warmup: float, duration: float, during=None) -> list[dict]:
        for i in range(writers):
            self.commands[i].put((mode, writers, warmup, duration))
        self.barriers[writers].wait(timeout=60)
        start = time.perf_counter()
        if during is not None:
            during(start + warmup, start + warmup + duration)
        out = []
        while len(out) < writers:
            kind, index, payload = self.results.get(timeout=warmup + duration + 60)
            if kind == "done":
                out.append(payload)
        return out

    def stop(self) -> None:
        for queue in self.commands:
            try:
                queue.put(None)
            except (OSError, ValueError):
                pass
        for proc in self.procs:
            proc.join(timeout=10)
            if proc.is_alive():
                proc.terminate()
                proc.join(timeout=5)


# ---------------------------------------------------------------------------------------------


def _pending() -> int:
    from audit.models import AuditPending

    return AuditPending.objects.count()


def _drain_here() -> int:
    from audit.sequencer import integrate

    placed = 0
    while n := integrate():
        placed += n
    return placed


def _make_plain_table() -> None:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(f"DROP TABLE IF EXISTS {PLAIN_TABLE}")
        cursor.execute(f"CREATE TABLE {PLAIN_TABLE} (LIKE audit_auditentry INCLUDING DEFAULTS)")
        cursor.execute(f"ALTER TABLE {PLAIN_TABLE} DROP COLUMN id")
        cursor.execute(f"ALTER TABLE {PLAIN_TABLE} ADD COLUMN id bigserial PRIMARY KEY")


def _drop_plain_table() -> None:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(f"DROP TABLE IF EXISTS {PLAIN_TABLE}")


def _statements_per_append(tenant) -> list[str]:
    """The SQL Django sends for one audited append inside an action's transaction (BEGIN and
    COMMIT, sent by the driver, are not in Django's log and are the same for both)."""
    from django.db import connection, transaction
    from django.test.utils import CaptureQueriesContext

    from audit.services import audit_append

    with transaction.atomic(), CaptureQueriesContext(connection) as captured:
        audit_append(event=EVENT, tenant=tenant, data={"slug": "statements", "name": "count"})
    out = []
    for query in captured.captured_queries:
        words = query["sql"].split()
        out.append(" ".join(words[:3]) if words[0].upper() == "INSERT" else words[0])
    return out


def _windows(ranges: list[tuple[int, int]]) -> tuple[list[float], int, int]:
    """integrated_at − at (seconds) of the entries with ids in the given ranges, how many of those
    entries were not placed, and in how many sequencer batches they were (one integrated_at each)."""
    from django.db import connection

    values, missing, batches = [], 0, set()
    with connection.cursor() as cursor:
        for lo, hi in ranges:
            cursor.execute(
                "SELECT EXTRACT(EPOCH FROM (l.integrated_at - e.at))::float8, l.integrated_at FROM audit_auditentry e "
                "LEFT JOIN audit_auditleaf l ON l.entry_id = e.id WHERE e.id BETWEEN %s AND %s AND e.event = %s",
                [lo, hi, EVENT],
            )
            for value, integrated_at in cursor.fetchall():
                if value is None:
                    missing += 1
                else:
                    values.append(value)
                    batches.add(integrated_at)
    return values, missing, len(batches)


def _backlog(tenant, size: int) -> float:
    from audit.services import audit_append_many

    start = time.perf_counter()
    for offset in range(0, size, 1000):
        audit_append_many([
            {"event": EVENT, "tenant_id": tenant.id, "data": {"slug": f"backlog-{i}", "name": "Backlog"}}
            for i in range(offset, min(offset + 1000, size))
        ])
    return time.perf_counter() - start


def _per_op(results: list[dict], key: str) -> float | None:
    ops = sum(x["count"] for x in results)
    values = [x[key] for x in results]
    if not ops or any(v is None for v in values):
        return None
    return sum(values) / ops


def run(ctx, *, append_seconds: float = 8.0, append_warmup: float = 1.0, append_rounds: int = 5,
        append_writers: int = 8, backlog: int = 50000, integration_target: float = 1.0, **_) -> list[Figure]:
    from django.conf import settings

    from audit.models import AuditCheckpoint

    if append_rounds < 1 or append_writers < 2 or append_seconds <= 0 or backlog < 1:
        raise ValueError("audit_append: rounds >= 1, writers >= 2, seconds > 0, backlog >= 1")
    n = append_writers
    interval = settings.GATEHOUSE_AUDIT["SEQUENCER_INTERVAL"]
    batch = min(settings.GATEHOUSE_AUDIT["SEQUENCER_BATCH"], settings.GATEHOUSE_AUDIT["CHECKPOINT_ENTRIES"])
    tenant = ctx.tenant

    before = _drain_here()
    if before:
        ctx.say(f"placed {before} entries queued by earlier benchmarks first")
    statements = _statements_per_append(tenant)
    ctx.say(f"statements per audited append inside a transaction: {statements}")
    _make_plain_table()

    sequencer = ctx.procs.command("audit-sequencer", ["audit_sequencer", "--loop"])
    writers = _Writers(n)
    cases = (("audited", 1), ("plain", 1), ("audited", n), ("plain", n), (PLAIN_PREPARED, n))
    rates: dict[tuple, list[float]] = {c: [] for c in cases}
    latencies: dict[tuple, list[float]] = {c: [] for c in cases}
    client_cpu: dict[tuple, list[float]] = {c: [] for c in cases}
    backend_cpu: dict[tuple, list[float]] = {c: [] for c in cases}
    busy: dict[tuple, list[float]] = {c: [] for c in cases}
    machine_per_op: dict[tuple, list[float]] = {c: [] for c in cases}
    sequencer_cpu: dict[int, list[float]] = {1: [], n: []}
    ranges: dict[int, list[tuple[int, int]]] = {1: [], n: []}
    max_queued: dict[int, int] = {1: 0, n: 0}
    left_after: dict[int, int] = {1: 0, n: 0}
    drain_times: dict[int, list[float]] = {1: [], n: []}
    try:
        t0 = time.perf_counter()
        writers.start()
        ctx.say(f"{n} writer processes ready in {time.perf_counter() - t0:.1f} s")
        if sequencer.poll() is not None:
            raise RuntimeError(f"the sequencer exited:\n{ctx.procs.log('audit-sequencer')[-3000:]}")
        for r in range(append_rounds):
            for mode, k in cases:
                seen: dict = {"queued": []}

                def during(measure_from: float, end: float, mode=mode, seen=seen) -> None:
                    time.sleep(max(measure_from - time.perf_counter(), 0))
                    seen["cpu0"], seen["seq0"] = machine_cpu(), process_cpu_seconds(sequencer.pid)
                    while time.perf_counter() < end:
                        if mode == "audited":
                            seen["queued"].append(_pending())
                        time.sleep(min(0.25, max(end - time.perf_counter(), 0)))
                    seen["cpu1"], seen["seq1"] = machine_cpu(), process_cpu_seconds(sequencer.pid)

                results = writers.run(mode, k, append_warmup, append_seconds, during=during)
                case = (mode, k)
                rate = sum(x["count"] for x in results) / append_seconds
                rates[case].append(rate)
                latencies[case].extend(v for x in results for v in x["latencies"])
                for key, store in (("client_cpu", client_cpu), ("backend_cpu", backend_cpu)):
                    value = _per_op(results, key)
                    if value is not None:
                        store[case].append(value)
                if seen.get("cpu0") and seen.get("cpu1") and seen["cpu1"][1] > seen["cpu0"][1]:
                    busy[case].append((seen["cpu1"][0] - seen["cpu0"][0]) / (seen["cpu1"][1] - seen["cpu0"][1]))
                    appends = sum(x["count"] for x in results)
                    if appends:
                        machine_per_op[case].append((seen["cpu1"][0] - seen["cpu0"][0]) / CLOCK_TICKS / appends)
                line = f"round {r + 1}: {mode} × {k}: {rate:.0f} appends/s"
                if mode == "audited":
                    stopped = time.perf_counter()
                    if None not in (seen.get("seq0"), seen.get("seq1")):
                        sequencer_cpu[k].append((seen["seq1"] - seen["seq0"]) / append_seconds)
                    firsts = [x["first_id"] for x in results if x["first_id"] is not None]
                    lasts = [x["last_id"] for x in results if x["last_id"] is not None]
                    if firsts:
                        ranges[k].append((min(firsts), max(lasts)))
                    max_queued[k] = max(max_queued[k], max(seen["queued"], default=0))
                    left = _pending()
                    while left and time.perf_counter() - stopped < SHORT_DRAIN:
                        time.sleep(0.02)
                        left = _pending()
                    left_after[k] = max(left_after[k], left)
                    wait_for(lambda: _pending() == 0, timeout=120, interval=0.02, what="the audit queue to drain")
                    drain_times[k].append(time.perf_counter() - stopped)
                    line += f"; queue max {max(seen['queued'], default=0)}, {left} left {SHORT_DRAIN:g} s after stop"
                ctx.say(line)
    finally:
        writers.stop()
        if "audit-sequencer" in ctx.procs.procs:
            ctx.procs.stop("audit-sequencer")

    windows = {k: _windows(ranges[k]) for k in (1, n)}
    _drop_plain_table()

    # Sequencer throughput on a backlog (the sequencer process is stopped: nothing else places it).
    leftover = _drain_here()
    queue_seconds = _backlog(tenant, backlog)
    cp_before = AuditCheckpoint.objects.count()
    start = time.perf_counter()
    placed = _drain_here()
    drain = time.perf_counter() - start
    checkpoints = AuditCheckpoint.objects.count() - cp_before
    ctx.say(f"backlog: {placed} placed in {drain:.2f} s ({placed / drain:.0f}/s), {checkpoints} checkpoints; "
            f"queued in {queue_seconds:.1f} s; {leftover} left over before")
    if placed != backlog:
        raise RuntimeError(f"the sequencer placed {placed} entries of a backlog of {backlog}")

    def med(values: list[float]) -> float:
        return percentile(values, 50)

    figures = [
        Figure("writer processes (the N of the N-writer cases)", n, "processes"),
        Figure("measured window per case (after the warm-up below)", append_seconds, "s"),
        Figure("warm-up per case (not counted)", append_warmup, "s"),
        Figure("rounds (each: audited ×1, plain ×1, audited ×N, plain ×N, plain prepared ×N)", append_rounds,
               "rounds"),
        Figure("SQL statements Django sends per audited append in the action's transaction (plain: 1)",
               len(statements), "statements"),
    ]
    for k in (1, n):
        label = "1 writer" if k == 1 else f"{k} writers"
        for mode in ("audited", "plain"):
            case = (mode, k)
            figures.append(Figure(f"{mode}, {label}: appends/s (median of rounds)", round(med(rates[case]), 1),
                                  "appends/s"))
            if len(rates[case]) > 1:
                figures.append(Figure(f"{mode}, {label}: appends/s per round",
                                      " / ".join(f"{v:.0f}" for v in rates[case]), ""))
        figures.append(Figure(f"audited / plain, {label}",
                              round(med(rates[("audited", k)]) / med(rates[("plain", k)]), 2), "×",
                              f"≥ {TARGET_RATIO}×" if k == n else None))
        for mode in ("audited", "plain"):
            case = (mode, k)
            figures += [
                Figure(f"{mode}, {label}: transaction latency p50", round(percentile(latencies[case], 50) * 1000, 2),
                       "ms"),
                Figure(f"{mode}, {label}: transaction latency p99", round(percentile(latencies[case], 99) * 1000, 2),
                       "ms"),
            ]
        for mode in ("audited", "plain"):
            case = (mode, k)
            if client_cpu[case]:
                figures.append(Figure(f"{mode}, {label}: writer process CPU per append (median of rounds)",
                                      round(med(client_cpu[case]) * 1e6), "µs"))
            if backend_cpu[case]:
                figures.append(Figure(f"{mode}, {label}: its PostgreSQL backend's CPU per append (median of rounds)",
                                      round(med(backend_cpu[case]) * 1e6), "µs"))
        for mode in ("audited", "plain"):
            if busy[(mode, k)]:
                figures.append(Figure(f"{mode}, {label}: machine CPU busy, all CPUs (median of rounds)",
                                      round(med(busy[(mode, k)]) * 100, 1), "%"))
        for mode in ("audited", "plain"):
            if machine_per_op[(mode, k)]:
                figures.append(Figure(f"{mode}, {label}: machine CPU per append, all processes (median of rounds)",
                                      round(med(machine_per_op[(mode, k)]) * 1e6), "µs"))
        if sequencer_cpu[k]:
            figures.append(Figure(f"audited, {label}: sequencer process CPU (median of rounds, share of one CPU)",
                                  round(med(sequencer_cpu[k]) * 100, 1), "%"))
        reference = (PLAIN_PREPARED, k)
        if rates.get(reference):
            figures += [
                Figure(f"reference, {label}: {PLAIN_PREPARED}: appends/s (median of rounds)",
                       round(med(rates[reference]), 1), "appends/s"),
                Figure(f"reference, {label}: {PLAIN_PREPARED}: appends/s per round",
                       " / ".join(f"{v:.0f}" for v in rates[reference]), ""),
                Figure(f"reference, {label}: audited / {PLAIN_PREPARED}",
                       round(med(rates[("audited", k)]) / med(rates[reference]), 2), "×"),
            ]
            if client_cpu[reference]:
                figures.append(Figure(f"reference, {label}: {PLAIN_PREPARED}: writer process CPU per append",
                                      round(med(client_cpu[reference]) * 1e6), "µs"))
            if backend_cpu[reference]:
                figures.append(Figure(f"reference, {label}: {PLAIN_PREPARED}: its PostgreSQL backend's CPU per "
                                      "append", round(med(backend_cpu[reference]) * 1e6), "µs"))
            if machine_per_op[reference]:
                figures.append(Figure(f"reference, {label}: {PLAIN_PREPARED}: machine CPU per append, all processes",
                                      round(med(machine_per_op[reference]) * 1e6), "µs"))
    for k in (1, n):
        label = "1 writer" if k == 1 else f"{k} writers"
        values, missing, batches = windows[k]
        figures += [
            Figure(f"sequencer kept up, {label}: queue length, max sampled while writing", max_queued[k], "entries"),
            Figure(f"sequencer kept up, {label}: still queued {SHORT_DRAIN:g} s after the writers stopped (max of "
                   f"rounds)", left_after[k], "entries", "= 0"),
            Figure(f"sequencer kept up, {label}: last writer's results in → queue seen empty (max of rounds, polled "
                   f"every 20 ms)", round(max(drain_times[k]) * 1000, 1), "ms"),
            Figure(f"integration window, {label}: entries measured (every one of the measured windows)", len(values),
                   "entries"),
            Figure(f"integration window, {label}: sequencer batches they were placed in", batches, "batches"),
            Figure(f"integration window, {label}: p50", round(percentile(values, 50) * 1000, 1), "ms"),
            Figure(f"integration window, {label}: p99", round(percentile(values, 99) * 1000, 1), "ms",
                   f"p99 ≤ {integration_target * 1000:g} ms" if k == n else None),
            Figure(f"integration window, {label}: max", round(max(values, default=float("nan")) * 1000, 1), "ms"),
        ]
        if missing:
            figures.append(Figure(f"integration window, {label}: measured entries not placed", missing, "entries",
                                  "= 0"))
    figures += [
        Figure("sequencer interval (settings)", interval, "s"),
        Figure("sequencer batch (min of SEQUENCER_BATCH, CHECKPOINT_ENTRIES)", batch, "entries"),
        Figure("backlog queued (audit_append_many, 1,000 per transaction)", backlog, "entries"),
        Figure("backlog queued in", round(queue_seconds, 2), "s"),
        Figure("sequencer throughput draining the backlog", round(placed / drain, 1), "entries/s"),
        Figure("sequencer time per batch draining the backlog", round(drain / max(placed / batch, 1) * 1000, 1),
               "ms"),
        Figure("checkpoints signed while draining the backlog", checkpoints, "checkpoints"),
    ]
    return figures
