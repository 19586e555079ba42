"""Helpers shared by the executor tests (not a test module)."""

from __future__ import annotations

import time
from collections.abc import Callable


def proc_stat(pid: int) -> tuple[str, int] | None:
    """(state, start_ticks) of a process from /proc, or None if it does not exist."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            raw = fh.read()
    except OSError:
        return None
    rest = raw[raw.rindex(b")") + 2 :].split()
    return rest[0].decode(), int(rest[19])


def proc_alive(pid: int, start_ticks: int | None = None) -> bool:
    """True if the process exists and is not a zombie (and, if given, has that start time, so a
    reused pid does not count). Zombies count as dead: in a container, PID 1 may never reap."""
    info = proc_stat(pid)
    if info is None or info[0] in ("Z", "X"):
        return False
    return start_ticks is None or info[1] == start_ticks


def wait_for(predicate: Callable[[], bool], timeout: float = 5.0, step: float = 0.02) -> bool:
    """Poll ``predicate`` until it is true or ``timeout`` seconds pass; return its last value."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(step)
