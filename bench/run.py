"""Run the benchmarks (all, or those named) and write bench/results/<name>.json and docs/benchmarks.md.

    make bench                                  # everything
    make bench BENCH_ARGS="gate_release --gates 200"
    make bench BENCH_ARGS="audit_append audit_verify"
    .venv/bin/python bench/run.py --docs-only   # regenerate the page from the results present

Needs the PostgreSQL and Redis of `make test` (deploy/test-services.sh). Everything runs in a database
of its own, `gatehouse_bench` (or GATEHOUSE_BENCH_DATABASE), and a Redis database of its own
(GATEHOUSE_BENCH_BROKER_URL to choose it): dev and test data are never touched.
"""
from __future__ import annotations

import argparse
import atexit
import os
import shutil
import signal
import sys
import time
import traceback
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.common import VAR_DIR, machine_info, now_iso, write_results  # noqa: E402

BENCHMARKS = ("gate_release", "decisions", "fanout", "spec_parse", "audit_append", "audit_verify", "live_updates",
              "portal_inbox", "remote_dispatch", "slurm_submit")
# A database of its own (GATEHOUSE_BENCH_DATABASE picks another, e.g. to run two benchmarks side by side).
BENCH_DB = os.environ.get("GATEHOUSE_BENCH_DATABASE") or "gatehouse_bench"
BENCH_REDIS_DB = 15


def _log(message: str) -> None:
    print(f"[bench] {message}", flush=True)


def _bench_database_url(base: str) -> str:
    parts = urlsplit(base)
    if parts.scheme not in {"postgres", "postgresql", "pgsql"}:
        sys.exit(f"bench: GATEHOUSE_DATABASE_URL must be a PostgreSQL URL (got scheme {parts.scheme!r}); use `make bench`")
    return urlunsplit(parts._replace(path=f"/{BENCH_DB}"))


def _bench_broker_url(base: str) -> str:
    explicit = os.environ.get("GATEHOUSE_BENCH_BROKER_URL")
    if explicit:
        return explicit
    parts = urlsplit(base)
    if parts.scheme not in {"redis", "rediss"}:
        sys.exit(f"bench: GATEHOUSE_BROKER_URL must be a Redis URL (got {base!r}); use `make bench`")
    # A Redis database of its own: the test suite's (Makefile: db 14) is flushed by tests that may run meanwhile.
    return urlunsplit(parts._replace(path=f"/{BENCH_REDIS_DB}"))


def _ensure_database(base_url: str) -> None:
    """CREATE DATABASE gatehouse_bench (owned by the connecting role) unless it exists."""
    import psycopg
    from psycopg import errors, sql

    with psycopg.connect(base_url, autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [BENCH_DB]).fetchone()
        if not exists:
            _log(f"creating database {BENCH_DB}")
            try:
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(BENCH_DB)))
            except errors.DuplicateDatabase:
                pass


def _reset_schema(bench_url: str) -> None:
    """Empty the bench database completely (a fresh `public` schema), so that `migrate` builds it
    from the migrations as they are now, even when a migration was edited in place."""
    import psycopg

    with psycopg.connect(bench_url, autocommit=True) as conn:
        conn.execute("DROP SCHEMA IF EXISTS public CASCADE")
        conn.execute("CREATE SCHEMA public")


def _configure_environment() -> dict[str, str]:
    """Point this process (and the workers it starts) at the bench database, broker and var dir.
    Must run before django.setup(): settings are read once, from the environment."""
    base_db = os.environ.get("GATEHOUSE_DATABASE_URL", "")
    base_broker = os.environ.get("GATEHOUSE_BROKER_URL", "")
    if not base_db or not base_broker:
        sys.exit("bench: GATEHOUSE_DATABASE_URL and GATEHOUSE_BROKER_URL must be set; run `make bench`")
    _ensure_database(base_db)
    bench_db = _bench_database_url(base_db)
    _log(f"emptying database {BENCH_DB}")
    _reset_schema(bench_db)
    os.environ.update(
        {
            "DJANGO_SETTINGS_MODULE": "gateway.settings",
            "GATEHOUSE_PROFILE": os.environ.get("GATEHOUSE_PROFILE") or "test",
            "GATEHOUSE_DATABASE_URL": bench_db,
            "GATEHOUSE_BROKER_URL": _bench_broker_url(base_broker),
            "GATEHOUSE_VAR_DIR": str(VAR_DIR),
            "GATEHOUSE_ARTEFACT_ROOT": str(VAR_DIR / "artefacts"),
            "GATEHOUSE_WORKDIR_ROOT": str(VAR_DIR / "work"),
            "GATEHOUSE_DEBUG": "false",  # as in production: no query log kept in memory
            "GATEHOUSE_DB_CONN_MAX_AGE": "60",
            "GATEHOUSE_DISPATCHER": "gateway.dispatch.CeleryDispatcher",
            "GATEHOUSE_KEEP_WORKDIRS": "false",
            # The audit log's signing key and its checkpoints kept outside the database: the bench's own.
            "GATEHOUSE_AUDIT_SIGNER": "file",
            "GATEHOUSE_AUDIT_KEY_FILE": str(VAR_DIR / "keys" / "audit-log.key"),
            "GATEHOUSE_AUDIT_CHECKPOINT_STORE": str(VAR_DIR / "audit-checkpoints"),
        }
    )
    os.environ.pop("GATEHOUSE_ARTEFACT_S3_BUCKET", None)
    return {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]),
        "PYTHONUNBUFFERED": "1",
    }


class Context:
    """What a benchmark gets: the bench tenant and users, and worker processes."""

    def __init__(self, procs, tenant, author, analyst):
        self.procs = procs
        self.tenant = tenant
        self.author = author
        self.analyst = analyst
        self.current = ""

    def say(self, message: str) -> None:
        _log(f"{self.current}: {message}")

    def start_worker(self, name: str, *, concurrency: int = 2) -> None:
        self.procs.worker(name, concurrency=concurrency)
        self.procs.wait_ready(name)
        self.say(f"worker {name} ready (concurrency {concurrency})")


def _versions() -> tuple[str | None, str | None]:
    import redis
    from django.conf import settings
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SHOW server_version")
        pg = cursor.fetchone()[0].split(" ")[0]
    try:
        rv = redis.Redis.from_url(settings.CELERY_BROKER_URL).info("server").get("redis_version")
    except redis.RedisError:
        rv = None
    return pg, rv


def _prepare_database() -> None:
    from django.conf import settings
    from django.core.management import call_command

    name = settings.DATABASES["default"]["NAME"]
    if name != BENCH_DB:  # never flush anything else
        raise RuntimeError(f"refusing to run against database {name!r}; expected {BENCH_DB!r}")
    _log(f"migrating database {BENCH_DB}")
    call_command("migrate", interactive=False, verbosity=0)
    for sub in ("artefacts", "work"):
        shutil.rmtree(VAR_DIR / sub, ignore_errors=True)
        (VAR_DIR / sub).mkdir(parents=True, exist_ok=True)
    # The audit log starts empty with the database: checkpoints a previous run left in the store
    # outside it would make every export refuse the log as truncated.
    audit_store = settings.GATEHOUSE_AUDIT["CHECKPOINT_STORE"]
    if not audit_store.startswith("s3://") and Path(audit_store).resolve().is_relative_to(VAR_DIR.resolve()):
        shutil.rmtree(audit_store, ignore_errors=True)


def _flush_broker() -> None:
    import redis
    from django.conf import settings

    redis.Redis.from_url(settings.CELERY_BROKER_URL).flushdb()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", metavar="BENCHMARK", help=f"any of {', '.join(BENCHMARKS)} (default: all)")
    parser.add_argument("--gates", type=int, default=300, help="gate_release: measured gates (default 300)")
    parser.add_argument("--warmup", type=int, default=10, help="gate_release: unmeasured warm-up gates (default 10)")
    parser.add_argument("--decisions", type=int, default=300,
                        help="decisions: measured decisions per signer (default 300)")
    parser.add_argument("--tasks", type=int, default=2000, help="fanout/spec_parse: fan-out width (default 2000)")
    parser.add_argument("--rounds", type=int, default=3, help="fanout: interleaved rounds of each (default 3, min 2)")
    parser.add_argument("--append-seconds", type=float, default=8.0,
                        help="audit_append: measured seconds per case (default 8)")
    parser.add_argument("--append-warmup", type=float, default=1.0,
                        help="audit_append: unmeasured warm-up seconds per case (default 1)")
    parser.add_argument("--append-rounds", type=int, default=5,
                        help="audit_append: interleaved rounds of the four cases (default 5)")
    parser.add_argument("--append-writers", type=int, default=8,
                        help="audit_append: writer processes of the concurrent cases (default 8)")
    parser.add_argument("--backlog", type=int, default=50000,
                        help="audit_append: queued entries the sequencer drains (default 50000)")
    parser.add_argument("--integration-target", type=float, default=1.0,
                        help="audit_append: target for the integration window's p99, seconds (default 1)")
    parser.add_argument("--verify-entries", type=int, default=1_000_000,
                        help="audit_verify: entries in the log and the bundle (default 1000000)")
    parser.add_argument("--sequencer-budget", type=float, default=240.0,
                        help="audit_verify: longest projected sequencer time before a synthetic bundle is built "
                             "instead (default 240 s)")
    parser.add_argument("--verify-synthetic", action="store_true",
                        help="audit_verify: build the bundle synthetically whatever the sequencer's rate")
    parser.add_argument("--live-clients", type=int, default=1000, help="live_updates: websocket clients (default 1000)")
    parser.add_argument("--live-commits", type=int, default=100, help="live_updates: measured commits (default 100)")
    parser.add_argument("--inbox-gates", type=int, default=100_000, help="portal_inbox: open gates (default 100000)")
    parser.add_argument("--chains", type=int, default=20, help="remote_dispatch: measured chains (default 20)")
    parser.add_argument("--docs-only", action="store_true", help="only regenerate docs/benchmarks.md")
    args = parser.parse_args(argv)
    unknown = [n for n in args.names if n not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown benchmark(s) {', '.join(unknown)}; known: {', '.join(BENCHMARKS)}")
    if args.rounds < 2:
        parser.error("--rounds must be at least 2 (engine and raw Celery rounds are interleaved)")
    if args.gates < 1 or args.warmup < 0 or args.tasks < 1:
        parser.error("--gates and --tasks must be positive, --warmup not negative")
    if (args.append_seconds <= 0 or args.append_warmup < 0 or args.append_rounds < 1 or args.append_writers < 2
            or args.backlog < 1 or args.integration_target <= 0 or args.verify_entries < 2
            or args.sequencer_budget <= 0):
        parser.error("audit options: --append-seconds, --backlog, --integration-target, --sequencer-budget must be "
                     "positive, --append-rounds at least 1, --append-writers and --verify-entries at least 2")
    names = [n for n in BENCHMARKS if n in args.names] if args.names else list(BENCHMARKS)

    from bench import report

    if args.docs_only:
        _log(f"wrote {report.write().relative_to(ROOT)}")
        return 0

    worker_env = _configure_environment()
    import django

    django.setup()

    from bench.processes import Processes

    procs = Processes(worker_env, VAR_DIR / "logs")

    def _stop(*_):
        raise SystemExit(130)

    signal.signal(signal.SIGTERM, _stop)
    atexit.register(procs.stop_all)

    failures = []
    started = time.perf_counter()
    try:
        _prepare_database()
        from gateway.clearances import ClearanceInput
        from gateway.tenancy import member_create, tenant_create

        tenant = tenant_create(slug="bench", name="Benchmarks")
        cleared = ClearanceInput(policy=None, max_level="TOP SECRET", compartments=[], releasability=[])
        author = member_create(tenant=tenant, username="bench-author", roles=["author"], clearance=cleared)
        analyst = member_create(tenant=tenant, username="bench-analyst", roles=["analyst"], clearance=cleared)
        ctx = Context(procs, tenant, author, analyst)
        pg_version, redis_version = _versions()
        options = {
            "gates": args.gates, "warmup": args.warmup, "decisions": args.decisions, "tasks": args.tasks,
            "rounds": args.rounds,
            "append_seconds": args.append_seconds, "append_warmup": args.append_warmup,
            "append_rounds": args.append_rounds, "append_writers": args.append_writers, "backlog": args.backlog,
            "integration_target": args.integration_target, "verify_entries": args.verify_entries,
            "sequencer_budget": args.sequencer_budget, "verify_synthetic": args.verify_synthetic,
            "live_clients": args.live_clients, "live_commits": args.live_commits, "inbox_gates": args.inbox_gates,
            "chains": args.chains,
        }
        import importlib

        for name in names:
            module = importlib.import_module(f"bench.{name}")
            ctx.current = name
            date = now_iso()
            machine = machine_info(postgresql=pg_version, redis=redis_version)
            t0 = time.perf_counter()
            _log(f"{name}: start")
            try:
                _flush_broker()
                figures = module.run(ctx, **options)
            except Exception:  # noqa: BLE001 - report, keep going with the others
                failures.append(name)
                _log(f"{name}: FAILED\n{traceback.format_exc()}")
                for proc_name in list(procs.procs):
                    _log(f"last lines of worker {proc_name}:\n{procs.log(proc_name)[-2000:]}")
            else:
                path = write_results(name, figures, date=date, machine=machine)
                _log(f"{name}: done in {time.perf_counter() - t0:.1f} s -> {path.relative_to(ROOT)}")
            finally:
                procs.stop_all()
    finally:
        procs.stop_all()
        from django.db import connections

        connections.close_all()
    _log(f"wrote {report.write().relative_to(ROOT)} ({time.perf_counter() - started:.0f} s in all)")
    if failures:
        _log(f"FAILED: {', '.join(failures)} (their results files were left as they were)")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
