"""Benchmark of the offline verifier (not a test; pytest does not collect it).

    .venv/bin/python tests/audit_offline/bench_verifier.py [--entries 1000000] [--dir DIR] [--runs 3]

Builds a global bundle of realistic entries (about 480 bytes each, three tenants, a checkpoint every
10,000 entries) with BundleWriter, then times verify_bundle in this process and ``python -m
audit.verifier`` as a subprocess. The budget is 10 s for 1,000,000 entries on one core.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from audit import merkle, note  # noqa: E402
from audit.bundle import BundleWriter  # noqa: E402
from audit.verifier import verify_bundle  # noqa: E402

ORIGIN = "audit.gatehouse.bench/global"


class LevelTree:
    """All node hashes by level: perfect(start, size) is a list lookup."""

    def __init__(self, leaves: list[bytes]) -> None:
        self.levels = [leaves]
        while len(self.levels[-1]) > 1:
            prev = self.levels[-1]
            self.levels.append([merkle.node_hash(prev[i], prev[i + 1]) for i in range(0, len(prev) - 1, 2)])

    def perfect(self, start: int, size: int) -> bytes:
        level = size.bit_length() - 1
        return self.levels[level][start >> level]


def build(directory: Path, n: int, every: int) -> None:
    signer = note.Ed25519NoteSigner.generate("audit.gatehouse.bench")
    t0 = datetime(2025, 1, 1, tzinfo=timezone.utc)
    tenants = ["acme", "globex", "initech"]
    tenant_state = {t: [0, "0" * 64] for t in tenants}
    prev = "0" * 64
    leaves: list[bytes] = []
    lines_path = directory.with_suffix(".lines")
    with open(lines_path, "wb") as f:
        for i in range(n):
            integrated = t0 + timedelta(microseconds=i * 250_000)
            slug = None if i % 5 == 4 else tenants[i % 3]
            entry = {
                "v": 1, "seq": i, "prev": prev, "tenant": slug, "tenant_seq": None, "tenant_prev": None,
                "at": note.format_time(integrated - timedelta(milliseconds=120)),
                "integrated_at": note.format_time(integrated),
                "event": "gate.decided",
                "actor": {"id": 42, "username": "analyst-acme"},
                "object": {"type": "gate", "id": f"8f14e45f-ceea-467f-a0f0-{i:012d}"},
                "outcome": "success",
                "where": {"ip": "10.1.2.3", "user_agent": "gatehouse-cli/0.1"},
                "data": {"option": "correct", "run": f"run-{i // 7}", "comment": "validated after review"},
            }
            if slug is not None:
                st = tenant_state[slug]
                entry["tenant_seq"], entry["tenant_prev"] = st
            line = json.dumps(entry, sort_keys=True, separators=(",", ":")).encode()
            h = merkle.leaf_hash(line)
            if slug is not None:
                tenant_state[slug] = [tenant_state[slug][0] + 1, h.hex()]
            prev = h.hex()
            leaves.append(h)
            f.write(line + b"\n")
    tree = LevelTree(leaves)
    sizes = sorted({*range(every, n + 1, every), n})
    w = BundleWriter(directory, origin=ORIGIN, tree="global", tenant=None, begin=0, seq_field="seq",
                     prev_field="prev", start_prev="0" * 64, max_integration_lag_seconds=60, exported_by="bench")
    with open(lines_path, "rb") as f:
        for line in f:
            w.write_entry(line)
    lines_path.unlink()
    for s in sizes:
        when = t0 + timedelta(microseconds=(s - 1) * 250_000, seconds=1)
        w.add_checkpoint(s, note.sign_checkpoint(ORIGIN, s, merkle.subtree_root(0, s, tree.perfect), when, [signer]))
    for m, k in zip(sizes, sizes[1:]):
        w.add_consistency(m, k, merkle.consistency_proof(m, k, tree.perfect))
    w.set_range_proof(n, [], [])
    w.close(signer)


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--entries", type=int, default=1_000_000)
    p.add_argument("--every", type=int, default=10_000)
    p.add_argument("--dir", type=Path)
    p.add_argument("--runs", type=int, default=3)
    args = p.parse_args()
    base = args.dir or Path(tempfile.mkdtemp(prefix="audit-bench-"))
    directory = base / f"bundle-{args.entries}"
    if not (directory / "manifest.sig").exists():
        t = time.perf_counter()
        build(directory, args.entries, args.every)
        print(f"built {args.entries} entries in {time.perf_counter() - t:.1f} s at {directory}")
    size = (directory / "entries.jsonl").stat().st_size
    print(f"entries.jsonl: {size / 1e6:.0f} MB, {size / args.entries:.0f} bytes per entry")
    for _ in range(args.runs):
        t = time.perf_counter()
        r = verify_bundle(directory)
        elapsed = time.perf_counter() - t
        assert r.ok, r.result_line()
        print(f"verify_bundle: {elapsed:.2f} s ({elapsed / args.entries * 1e6:.2f} us/entry)")
    t = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "audit.verifier", str(directory), "--quiet"],
                         cwd=Path(__file__).resolve().parents[2], capture_output=True, text=True)
    print(f"python -m audit.verifier: {time.perf_counter() - t:.2f} s, exit {out.returncode}: {out.stdout.strip()[:90]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
