"""audit_verify: a 1,000,000-entry audit log placed by the real sequencer, exported with the real
`audit_export`, then checked by the offline verifier in a fresh process.

    python -m bench.audit_verify --measure -- CMD...   (internal: run CMD, print its time and peak RSS)
    python -m bench.audit_verify --export DIR          (internal: audit_export to DIR, print time and RSS)
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from .common import ROOT, VAR_DIR, Figure

NAME = "audit_verify"
TITLE = "1,000,000-entry audit bundle: build, export, offline verification"
TARGET_SECONDS = 10
EVENT = "tenant.created"
COPY_BATCH = 10_000
SLUG = "@@slug@@"
COLUMNS = ("at", "tenant_id", "actor_id", "event", "object_type", "object_id", "label", "outcome", "body")

HOW = (
    "Build: the entries are written straight into the audit tables through Django's connection, not one ORM call "
    "each: PostgreSQL `COPY audit_auditentry (...) FROM STDIN` in batches of 10,000 rows, each batch in one "
    "transaction with its queue rows (`INSERT INTO audit_auditpending SELECT id ...`), as `audit_append` would "
    "leave them; the body of every row is the one `audit.services._entry` builds for "
    "`tenant.created` (bench tenant, no actor), with a different `data.slug` per row. The log is topped up so "
    "that it holds exactly the stated number of entries, counting the entries earlier benchmarks of the run "
    "left. Then the real sequencer places them: `audit.sequencer.integrate()` called until it returns 0, in "
    "this process, after each 100,000 rows copied (the first 100,000 are the probe: when the rate they give "
    "projects the whole log past the sequencer budget, the log stays at that size and the 1M-entry bundle is "
    "made synthetically, see below; the figures say which was done). Export: the real `audit.export."
    "audit_export` of the global log to a directory under `var/bench/`, in a fresh process (`django.setup()` "
    "on the bench database) started by the small helper process described below, timed inside it with "
    "`time.perf_counter()` around the `audit_export` call alone; its peak RSS is `resource.getrusage"
    "(RUSAGE_SELF).ru_maxrss` read in that process after `django.setup()` and again after the export, so what "
    "the export adds is seen apart from Django's own footprint and from the bench process's. MB are 10^6 bytes "
    "of the bundle directory. Verify: "
    "`python -m audit.verifier DIR --quiet` (all checks, keys from the bundle) in a fresh process started by a "
    "small helper process that times it with `time.perf_counter()` (interpreter start and imports included: "
    "what an auditor waits for) and reads its peak RSS with `resource.getrusage(RUSAGE_CHILDREN)` (the helper "
    "has no other child); it must exit 0 with `OK: N entries`. The bundle is deleted afterwards. Synthetic "
    "bundle (only when the sequencer is too slow for the budget, or with `--verify-synthetic`): N correctly "
    "chained entries of the same shape written with `audit.bundle.BundleWriter`, checkpoints every "
    "`CHECKPOINT_ENTRIES` entries signed with the log's key, consistency and range proofs from `audit.merkle."
    "MemoryTree`; the export rate is then that of the real export of the smaller, real log."
)


# ---------------------------------------------------------------------------------------------
# Helper process: time a command and read its peak RSS (this helper's only child).


def _measure_main(argv: list[str]) -> int:
    import resource

    start = time.perf_counter()
    proc = subprocess.run(argv, capture_output=True)
    seconds = time.perf_counter() - start
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    print(json.dumps({
        "returncode": proc.returncode, "seconds": seconds, "maxrss_kib": usage.ru_maxrss,
        "stdout": proc.stdout.decode(errors="replace")[-2000:], "stderr": proc.stderr.decode(errors="replace")[-2000:],
    }))
    return 0


def _measured(argv: list[str], env: dict) -> dict:
    helper = [sys.executable, "-m", "bench.audit_verify", "--measure", "--", *argv]
    out = subprocess.run(helper, cwd=ROOT, env=env, capture_output=True, check=True)
    return json.loads(out.stdout)


# ---------------------------------------------------------------------------------------------
# Export in a fresh process


def _export_main(directory: str) -> int:
    """`python -m bench.audit_verify --export DIR`: the real audit_export of the global log, timed
    here, with this process's peak RSS before and after (started by the small helper process, so
    no larger parent's memory is counted: ru_maxrss is carried across fork and exec)."""
    import resource

    import django

    django.setup()
    from audit.export import audit_export

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    summary = audit_export(directory)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"seconds": seconds, "maxrss_before_kib": before, "maxrss_kib": peak, "summary": summary}))
    return 0


def _export(directory: Path, env: dict) -> dict:
    measured = _measured([sys.executable, "-m", "bench.audit_verify", "--export", str(directory)], env)
    if measured["returncode"] != 0:
        raise RuntimeError(f"the export failed:\n{measured['stderr']}")
    result = json.loads(measured["stdout"].strip().splitlines()[-1])
    result["process_seconds"] = measured["seconds"]
    return result


def _dir_bytes(directory: Path) -> int:
    return sum(p.stat().st_size for p in directory.rglob("*") if p.is_file())


# ---------------------------------------------------------------------------------------------
# Building the log


def _body_template(tenant) -> str:
    from audit.services import _entry

    entry = _entry(event=EVENT, tenant_id=tenant.id, actor=None, object_type="", object_id="", label="",
                   outcome="success", error_code="", data={"slug": SLUG, "name": "Bulk tenant"}, secrets=None)
    text = json.dumps(entry.body)
    assert text.count(SLUG) == 1
    return text


def _copy_entries(tenant, template: str, start: int, count: int) -> None:
    """`count` entries and their queue rows, COPY in batches of COPY_BATCH, one transaction each."""
    from django.db import connection, transaction
    from django.utils import timezone

    head, tail = template.split(SLUG)
    sql = f"COPY audit_auditentry ({', '.join(COLUMNS)}) FROM STDIN"
    for offset in range(start, start + count, COPY_BATCH):
        n = min(COPY_BATCH, start + count - offset)
        at = timezone.now()
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute("SELECT COALESCE(MAX(id), 0) FROM audit_auditentry")
            last = cursor.fetchone()[0]
            with cursor.copy(sql) as copy:
                for i in range(offset, offset + n):
                    copy.write_row((at, tenant.id, None, EVENT, "", "", "", "success", f"{head}bulk-{i}{tail}"))
            cursor.execute("INSERT INTO audit_auditpending (entry_id) SELECT id FROM audit_auditentry WHERE id > %s",
                           [last])
            if cursor.rowcount != n:
                raise RuntimeError(f"queued {cursor.rowcount} entries, copied {n}")


def _integrate_all() -> int:
    from audit.sequencer import integrate

    placed = 0
    while n := integrate():
        placed += n
    return placed


# ---------------------------------------------------------------------------------------------
# The synthetic bundle (fallback)


def _synthetic_bundle(directory: Path, size: int, template: str) -> float:
    """A `size`-entry global bundle of correctly chained entries of the real shape, signed with the
    log's key. Returns the seconds it took to write."""
    from datetime import timedelta

    from django.conf import settings
    from django.utils import timezone

    from audit import merkle
    from audit.bundle import BundleWriter
    from audit.canonical import canonical, rfc3339
    from audit.keys import get_signer
    from audit.note import sign_checkpoint
    from audit.sequencer import GLOBAL, ZERO, origin_of

    start = time.perf_counter()
    config = settings.GATEHOUSE_AUDIT
    every = config["CHECKPOINT_ENTRIES"]
    signer = get_signer()
    origin = origin_of(GLOBAL, None)
    body = json.loads(template.replace(SLUG, "x"))
    tree = merkle.MemoryTree()
    base = timezone.now() - timedelta(seconds=60)
    prev, tenant_prev = ZERO, ZERO
    writer = BundleWriter(directory, origin=origin, tree="global", tenant=None, begin=0, seq_field="seq",
                          prev_field="prev", start_prev=ZERO,
                          max_integration_lag_seconds=config["MAX_INTEGRATION_LAG_SECONDS"], exported_by="bench")
    sizes = []
    for i in range(size):
        batch_time = base + timedelta(microseconds=(i // every) * 1000)
        stamp = rfc3339(batch_time)
        body["data"]["slug"] = f"bulk-{i}"
        record = {"v": 1, "seq": i, "prev": prev, "at": stamp, "integrated_at": stamp, "tenant": "bench",
                  "tenant_seq": i, "tenant_prev": tenant_prev, **body}
        data = canonical(record)
        writer.write_entry(data)
        digest = merkle.leaf_hash(data)
        tree.append_hash(digest)
        prev = tenant_prev = digest.hex()
        if (i + 1) % every == 0 or i + 1 == size:
            s = i + 1
            writer.add_checkpoint(s, sign_checkpoint(origin, s, tree.root(s), batch_time, [signer]))
            sizes.append(s)
    for m, n in zip(sizes, sizes[1:]):
        writer.add_consistency(m, n, tree.consistency_proof(m, n))
    left, right = tree.range_proof(0, size, size)
    writer.set_range_proof(size, left, right)
    writer.add_keys([signer.verifier_key()])
    writer.close(signer)
    return time.perf_counter() - start


# ---------------------------------------------------------------------------------------------


def run(ctx, *, verify_entries: int = 1_000_000, sequencer_budget: float = 240.0, verify_synthetic: bool = False,
        **_) -> list[Figure]:
    import resource

    from audit.models import AuditEntry, AuditHead, AuditPending
    from audit.sequencer import GLOBAL

    probe_size = 100_000
    total = verify_entries
    env = ctx.procs.env
    figures: list[Figure] = []

    placed_before = _integrate_all()
    existing = AuditEntry.objects.count()
    need = total - existing
    if need < 1:
        raise RuntimeError(f"the log already holds {existing} entries; ask for more than that")
    ctx.say(f"{existing} entries already in the log ({placed_before} placed first); adding {need}")
    template = _body_template(ctx.tenant)

    copy_seconds = integrate_seconds = 0.0
    chunk_rates: list[tuple[int, float]] = []
    added = 0
    synthetic = verify_synthetic
    while added < need:
        n = min(probe_size, need - added)
        t0 = time.perf_counter()
        _copy_entries(ctx.tenant, template, added, n)
        t1 = time.perf_counter()
        placed = _integrate_all()
        t2 = time.perf_counter()
        if placed != n:
            raise RuntimeError(f"the sequencer placed {placed} entries, {n} were queued")
        copy_seconds += t1 - t0
        integrate_seconds += t2 - t1
        added += n
        chunk_rates.append((n, n / (t2 - t1)))
        ctx.say(f"{existing + added:,} entries: copied {n:,} in {t1 - t0:.1f} s, placed in {t2 - t1:.1f} s "
                f"({n / (t2 - t1):.0f}/s)")
        if len(chunk_rates) == 1 and not synthetic:
            projected = total / chunk_rates[0][1]
            if projected > sequencer_budget:
                ctx.say(f"the sequencer would take {projected:.0f} s for {total:,} entries (budget "
                        f"{sequencer_budget:.0f} s): building the {total:,}-entry bundle synthetically")
                synthetic = True
        if synthetic:
            break

    head = AuditHead.objects.get(tree=GLOBAL)
    log_size = head.size
    if AuditPending.objects.exists():
        raise RuntimeError("entries still queued after the build")
    figures += [
        Figure(f"{total:,}-entry bundle built by", "synthetic entries written with BundleWriter (sequencer too slow "
               "for the budget)" if synthetic and not verify_synthetic else "synthetic entries written with "
               "BundleWriter (--verify-synthetic)" if synthetic else "the real sequencer and audit_export", ""),
        Figure("entries in the real log (placed by the sequencer)", log_size, "entries"),
        Figure("entries added by COPY (10,000-row transactions, with queue rows)", added, "entries"),
        Figure("COPY rate (entries + queue rows)", round(added / copy_seconds, 1), "entries/s"),
        Figure("sequencer: time to place the added entries", round(integrate_seconds, 1), "s"),
        Figure("sequencer rate (integrate() in a loop, over all added entries)", round(added / integrate_seconds, 1),
               "entries/s"),
    ]
    if len(chunk_rates) > 1:
        figures += [
            Figure(f"sequencer rate, first {chunk_rates[0][0]:,} added", round(chunk_rates[0][1], 1), "entries/s"),
            Figure(f"sequencer rate, last {chunk_rates[-1][0]:,} added", round(chunk_rates[-1][1], 1), "entries/s"),
        ]
    figures += [
        Figure(f"sequencer time for {total:,} entries, projected from the first {chunk_rates[0][0]:,}",
               round(total / chunk_rates[0][1], 1), "s"),
        Figure("sequencer budget for building the log through it (--sequencer-budget)", sequencer_budget, "s"),
    ]

    root = VAR_DIR / f"audit-bundles-{os.getpid()}"
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    try:
        exported = root / "export"
        result = _export(exported, env)
        summary = result["summary"]
        size = _dir_bytes(exported)
        entries_bytes = (exported / "entries.jsonl").stat().st_size
        ctx.say(f"export: {summary['entries']:,} entries in {result['seconds']:.1f} s, {size / 1e6:.0f} MB, "
                f"peak RSS {result['maxrss_kib'] / 1024:.0f} MiB (before: {result['maxrss_before_kib'] / 1024:.0f})")
        if summary["entries"] != log_size or summary["begin"] != 0:
            raise RuntimeError(f"the export holds [{summary['begin']}, {summary['end']}), the log {log_size}")
        figures += [
            Figure("export: entries (real audit_export, global log)", summary["entries"], "entries"),
            Figure("export: checkpoints in the bundle", summary["checkpoints"], "checkpoints"),
            Figure("export: time", round(result["seconds"], 2), "s"),
            Figure("export: rate", round(summary["entries"] / result["seconds"], 1), "entries/s"),
            Figure("export: bundle size", round(size / 1e6, 1), "MB"),
            Figure("export: entries.jsonl", round(entries_bytes / 1e6, 1), "MB"),
            Figure("export: write rate", round(size / 1e6 / result["seconds"], 1), "MB/s"),
            Figure("export process: peak RSS after django.setup(), before the export",
                   round(result["maxrss_before_kib"] / 1024, 1), "MiB"),
            Figure("export process: peak RSS after the export", round(result["maxrss_kib"] / 1024, 1), "MiB"),
        ]
        if synthetic:
            target_dir = root / "synthetic"
            seconds = _synthetic_bundle(target_dir, total, template)
            ctx.say(f"synthetic {total:,}-entry bundle written in {seconds:.1f} s")
            figures.append(Figure("synthetic bundle: time to write (not the export)", round(seconds, 1), "s"))
            shutil.rmtree(exported)
            expected = total
        else:
            target_dir = exported
            expected = log_size
        bundle_bytes = _dir_bytes(target_dir)
        verified = _measured([sys.executable, "-m", "audit.verifier", str(target_dir), "--quiet"], env)
        line = (verified["stdout"] or verified["stderr"]).strip().splitlines()[-1:] or [""]
        ctx.say(f"verifier: exit {verified['returncode']} in {verified['seconds']:.2f} s, "
                f"peak RSS {verified['maxrss_kib'] / 1024:.0f} MiB: {line[0][:160]}")
        ok = verified["returncode"] == 0 and line[0].startswith(f"OK: {expected} entries")
        if not ok:
            raise RuntimeError(f"the verifier did not accept the bundle: {verified}")
        figures += [
            Figure("verified bundle: entries", expected, "entries"),
            Figure("verified bundle: size", round(bundle_bytes / 1e6, 1), "MB"),
            Figure("verifier exit status (0: OK)", verified["returncode"], "", "= 0"),
            Figure("offline verifier, fresh process (python -m audit.verifier --quiet)",
                   round(verified["seconds"], 2), "s", f"< {TARGET_SECONDS} s"),
            Figure("verifier rate", round(expected / verified["seconds"], 1), "entries/s"),
            Figure("verifier process: peak RSS", round(verified["maxrss_kib"] / 1024, 1), "MiB"),
        ]
    finally:
        shutil.rmtree(root, ignore_errors=True)
    figures.append(Figure("bench process: peak RSS (whole run so far" +
                          (", with the synthetic bundle's Merkle tree in memory)" if synthetic else ")"),
                          round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1), "MiB"))
    return figures


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--measure" and sys.argv[2] == "--":
        sys.exit(_measure_main(sys.argv[3:]))
    if len(sys.argv) == 3 and sys.argv[1] == "--export":
        sys.exit(_export_main(sys.argv[2]))
    sys.exit(__doc__)
