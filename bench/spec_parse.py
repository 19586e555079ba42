"""spec_parse: parsing and validating a large workflow file, and refusing hostile ones (in-process)."""
from __future__ import annotations

import time

from .common import Figure, median
from .fanout import workflow

NAME = "spec_parse"
TITLE = "Workflow parsing and hostile-file refusal"
REPEATS = 5
HOW = (
    "In the bench process, no server involved: `gateway.spec.parse_workflow` with the gateway's configured limits "
    "(`gateway.services.spec_limits()`), timed with `time.perf_counter()`, median of 5 calls each. The valid file "
    "is the fan-out benchmark's workflow (root → 2,000 tasks → join, 2,002 tasks); it must parse into 2,002 tasks. "
    "The hostile inputs, already in memory, must be refused with the expected issue code: 50 MB of `a: [` "
    "(too_large, refused before any YAML is parsed) and a ten-level billion-laughs alias bomb of under 1 KB that "
    "would expand to 10^10 nodes (too_many_nodes, refused while loading, in bounded memory)."
)


def _billion_laughs(levels: int = 10) -> str:
    lines = ["a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    for i in range(1, levels):
        lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]")
    return "\n".join(lines) + "\n"


def _timed(fn) -> list[float]:
    times = []
    for _ in range(REPEATS):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def run(ctx, *, tasks: int = 2000, **_) -> list[Figure]:
    from gateway.services import spec_limits
    from gateway.spec import SpecError, parse_workflow

    limits = spec_limits()
    valid = workflow(tasks).encode("utf-8")
    huge = b"a: [" * 12_500_000
    bomb = _billion_laughs(10).encode("utf-8")

    def parse_valid():
        wf = parse_workflow(valid, filename="fanout.yaml", limits=limits)
        if len(wf.tasks) != tasks + 2:
            raise RuntimeError(f"parsed {len(wf.tasks)} tasks, expected {tasks + 2}")

    def refused(data, code):
        def call():
            try:
                parse_workflow(data, filename="hostile.yaml", limits=limits)
            except SpecError as exc:
                codes = [i.code for i in exc.issues]
                if codes != [code]:
                    raise RuntimeError(f"refused with {codes}, expected [{code!r}]") from None
                return
            raise RuntimeError(f"a hostile file was accepted (expected {code})")
        return call

    valid_s = median(_timed(parse_valid))
    huge_s = median(_timed(refused(huge, "too_large")))
    bomb_s = median(_timed(refused(bomb, "too_many_nodes")))
    ctx.say(f"valid {valid_s * 1000:.0f} ms, 50 MB {huge_s * 1000:.2f} ms, bomb {bomb_s * 1000:.2f} ms")
    return [
        Figure(f"parse + validate {tasks + 2:,}-task workflow ({len(valid) / 1024:.0f} KiB), median of {REPEATS}",
               round(valid_s * 1000, 2), "ms"),
        Figure("per task (parse + validate)", round(valid_s / (tasks + 2) * 1e6, 1), "µs"),
        Figure(f"refuse 50 MB file (too_large), median of {REPEATS}", round(huge_s * 1000, 3), "ms"),
        Figure(f"refuse billion-laughs file ({len(bomb)} bytes, too_many_nodes), median of {REPEATS}",
               round(bomb_s * 1000, 3), "ms"),
    ]
