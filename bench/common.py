"""What every benchmark shares: figures, percentiles, the machine description, results files."""
from __future__ import annotations

import json
import math
import os
import platform
import re
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = ROOT / "bench" / "results"
VAR_DIR = ROOT / "var" / "bench"


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0..100), linear interpolation between closest ranks."""
    if not values:
        return math.nan
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    position = (len(ordered) - 1) * q / 100.0
    lower = math.floor(position)
    upper = min(lower + 1, len(ordered) - 1)
    return ordered[lower] + (ordered[upper] - ordered[lower]) * (position - lower)


def median(values: list[float]) -> float:
    return percentile(values, 50)


def wait_for(predicate, *, timeout: float, interval: float, what: str):
    """Poll until predicate() is truthy; raise after `timeout` seconds."""
    deadline = time.perf_counter() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.perf_counter() > deadline:
            raise TimeoutError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(interval)


@dataclass
class Figure:
    metric: str
    value: float
    unit: str
    target: str | None = None


def now_iso() -> str:
    return datetime.now(timezone.utc).replace(microsecond=0).isoformat()


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _memory() -> str:
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemTotal:"):
                    kib = int(line.split()[1])
                    return f"{kib / 1024 / 1024:.1f} GiB"
    except (OSError, ValueError):
        pass
    return "unknown"


def machine_info(*, postgresql: str | None, redis: str | None) -> dict:
    return {
        "nproc": os.cpu_count(),
        "cpu": _cpu_model(),
        "memory": _memory(),
        "python": platform.python_version(),
        "postgresql": postgresql or "n/a",
        "redis": redis or "n/a",
        # Not a property of the machine but of the moment: other work on it skews every figure.
        "load_average_1min_at_start": _load_average(),
    }


def _load_average() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def write_results(name: str, figures: list[Figure], *, date: str, machine: dict) -> Path:
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    rows = [
        {"metric": f.metric, "value": f.value, "unit": f.unit, "target": f.target, "date": date, "machine": machine}
        for f in figures
    ]
    path = RESULTS_DIR / f"{name}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(rows, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    tmp.replace(path)
    return path


_TARGET = re.compile(r"(<=|>=|≤|≥|<|>|=)\s*([0-9][0-9,]*(?:\.[0-9]+)?)")


def target_met(value, target: str | None) -> bool | None:
    """Whether `value` meets a target written like "p99 < 100 ms" or "≤ 1.5×" (None: no target)."""
    if target is None or value is None:
        return None
    match = _TARGET.search(target)
    if match is None:
        return None
    op, bound = match.group(1), float(match.group(2).replace(",", ""))
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    if math.isnan(value):
        return False
    return {
        "<": value < bound,
        "<=": value <= bound,
        "≤": value <= bound,
        ">": value > bound,
        ">=": value >= bound,
        "≥": value >= bound,
        "=": value == bound,
    }[op]


def process_cpu_seconds(pid: int) -> float | None:
    """CPU time (user + system) a process has used so far, from /proc (any process on this machine,
    e.g. a PostgreSQL backend); None where /proc is not there."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def machine_cpu() -> tuple[float, float] | None:
    """(busy, total) CPU time of the whole machine so far, all CPUs, from /proc/stat: the
    utilisation over an interval is the difference of busy over the difference of total."""
    values = _proc_stat_cpu()
    if values is None:
        return None
    idle = values[3] + values[4]  # idle + iowait
    total = sum(values)
    return float(total - idle), float(total)


def machine_steal() -> tuple[float, float] | None:
    """(steal, total) CPU time of the whole machine so far, from /proc/stat: the time the hypervisor
    ran something else while this machine's CPUs wanted to run. Over an interval, the difference of
    steal over the difference of total is the share of CPU this machine did not get."""
    values = _proc_stat_cpu()
    return None if values is None else (float(values[7]), float(sum(values)))


def _proc_stat_cpu() -> list[int] | None:
    """The machine's CPU time so far, all CPUs, in clock ticks, from /proc/stat's `cpu` line: user,
    nice, system, idle, iowait, irq, softirq, steal. None where /proc is not there."""
    try:
        with open("/proc/stat", encoding="ascii") as fh:
            return [int(v) for v in fh.readline().split()[1:9]]
    except (OSError, ValueError):
        return None


def steal_share(before, after) -> float | None:
    """Percent of the machine's CPU time stolen between two machine_steal() readings."""
    if before is None or after is None or after[1] <= before[1]:
        return None
    return 100.0 * (after[0] - before[0]) / (after[1] - before[1])
