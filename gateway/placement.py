"""Where a task may run: the tenant's backends, filtered by classification first, then by tags,
then ordered by preference and capacity.

The rule, for each plain task of a run:

1. **Classification, a hard filter before anything else**: only an enabled backend whose ceiling
   dominates the task's effective label (gateway.labels.dominates; a ceiling names the most
   restrictive label whose readers include everyone with access to the backend) may host it. No
   preference, tag or explicit `backend:` gets past it. The built-in backend of a tenant without
   configuration caps the level only (executors.backends.Backend.level_only).
2. `backend:` named in the file: that backend, if it passes 1 and offers the task's tags.
3. Otherwise `placement.tags` narrow the rest (a backend must offer every tag), and they are
   ordered: those in the task's `placement.prefer` first (in its order), then those with room
   (open tasks below `capacity`), then the tenant's `preference` (higher first), then the most
   room, then the name.

`placement_plan` runs at submission (gateway.services.run_submit, after the labels are known): it
refuses the whole run (400 no_backend_for_label, naming each task and its label) when any task has
nowhere to go, before anything is written, and returns the backend chosen for each task (stored in
TaskInstance.backend). `placement_check` runs again at dispatch, against the tenant's configuration
as it is then (a ceiling may have been lowered, a backend disabled or removed since).

At dispatch the worker's claim statement (gateway/worker_sql.py) also reads which configuration
the tenant has now: its document's id, revision and digest (`backends_configure` bumps the
revision in the transaction that rewrites the rows), or none. `placement_check` then takes the
parsed backends from a per-process cache keyed by that (and by the label registry), so a task on
an unchanged configuration costs no query; a configuration changed before the claim has a new key
and is read again, so a lowered ceiling or a disabled backend stops the next task claimed after the
change, as before.
"""
from __future__ import annotations

import threading
from collections import Counter, OrderedDict
from dataclasses import dataclass
from functools import lru_cache

from django.conf import settings
from django.db.models import Count

from executors.backends import Backend, builtin_backends, tenant_backends
from executors.base import ExecutorError
from executors.registry import known_backends

from .choices import TaskKind, TaskState
from .clearances import label_registry
from .errors import ErrorCode, GatehouseError
from .labels import Label, LabelError, dominates, format_label, parse_label

__all__ = ["UNREAD", "PlacementRefused", "hosts", "placement_check", "placement_choose", "placement_forget",
           "placement_plan"]

_BUSY = (TaskState.QUEUED, TaskState.RUNNING)


class PlacementRefused(ExecutorError):
    """At dispatch: the task's backend may no longer host it (ceiling lowered, disabled, removed).
    Not retryable by waiting: the configuration must change."""

    retryable = False


def hosts(backend: Backend, label: Label) -> bool:
    """Whether `backend` may hold data labelled `label` (the hard filter)."""
    if not backend.enabled:
        return False
    if backend.level_only:
        return backend.ceiling.policy == label.policy and backend.ceiling.level >= label.level
    return dominates(backend.ceiling, label)


@dataclass(frozen=True)
class Choice:
    backend: Backend | None
    reason: str = ""


def placement_choose(backends: list[Backend], label: Label, *, named: str | None = None, tags=(), prefer=(),
                     load: dict[str, int] | None = None) -> Choice:
    """The backend for one task, or why there is none. Classification filters first."""
    load = load or {}
    cleared = [b for b in backends if hosts(b, label)]
    if named is not None:
        backend = next((b for b in backends if b.name == named), None)
        if backend is None:
            return Choice(None, f"the tenant has no backend {named!r}")
        if not hosts(backend, label):
            why = "is disabled" if not backend.enabled else f"hosts at most {backend.ceiling_banner}"
            return Choice(None, f"backend {named!r} {why}")
        missing = set(tags) - backend.tags
        if missing:
            return Choice(None, f"backend {named!r} does not offer the tag(s) {', '.join(sorted(missing))}")
        return Choice(backend)
    if not cleared:
        return Choice(None, "no enabled backend is cleared for this label")
    tagged = [b for b in cleared if set(tags) <= b.tags]
    if not tagged:
        return Choice(None, f"no backend cleared for this label offers the tag(s) {', '.join(sorted(tags))}")
    order = {name: i for i, name in enumerate(prefer)}

    def room(b: Backend) -> float:
        return float("inf") if b.capacity is None else b.capacity - load.get(b.name, 0)

    best = min(tagged, key=lambda b: (order.get(b.name, len(order)), room(b) <= 0, -b.preference, -room(b), b.name))
    return Choice(best)


def _open_load(tenant_id: int, names) -> Counter:
    from .models import TaskInstance

    rows = (TaskInstance.objects.filter(tenant_id=tenant_id, state__in=_BUSY, backend__in=list(names))
            .values("backend").annotate(n=Count("id")))
    return Counter({row["backend"]: row["n"] for row in rows})


def placement_plan(*, tenant, workflow, labels) -> dict[str, str]:
    """The backend of every plain task of `workflow` (task id -> backend name), or
    GatehouseError(no_backend_for_label) naming every task that has none, with its label."""
    backends, _ = tenant_backends(tenant.id)
    load = _open_load(tenant.id, [b.name for b in backends])
    chosen, refused = {}, []
    for key in workflow.topological_order():
        spec = workflow.task(key)
        if spec.kind != TaskKind.TASK:
            continue
        label = labels.tasks[key]
        placement = spec.placement or {}
        choice = placement_choose(backends, label, named=spec.backend if spec.backend_given else None,
                                  tags=placement.get("tags", ()), prefer=placement.get("prefer", ()), load=load)
        if choice.backend is None:
            refused.append({"task": key, "line": spec.line, "label": format_label(label),
                            "backend": spec.backend if spec.backend_given else None, "reason": choice.reason})
            continue
        chosen[key] = choice.backend.name
        load[choice.backend.name] += 1
    if refused:
        listed = "; ".join(f"task {r['task']!r} ({r['label']}): {r['reason']}" for r in refused)
        raise GatehouseError(ErrorCode.NO_BACKEND_FOR_LABEL,
                             f"No backend of this tenant may host {len(refused)} task(s): {listed}.", detail=refused)
    return chosen


#: `placement_check(configuration=...)` when the caller did not read the tenant's configuration key.
UNREAD = object()

_CACHE_SIZE = 256
_cache_lock = threading.Lock()
_configured: OrderedDict = OrderedDict()  # (tenant, configuration key, label registry) -> backends


def _backends_for(tenant_id: int, configuration) -> list[Backend]:
    """The tenant's backends at `configuration`, the key the claim read (None: no configuration)."""
    registry = label_registry()
    if configuration is None:
        # Settings and this process's executor registry only (no query); the key follows them.
        key = ("builtin", settings.GATEHOUSE_BACKEND_DEFAULT_CEILING, registry, known_backends())
    else:
        key = (tenant_id, configuration, registry)
    with _cache_lock:
        backends = _configured.get(key)
        if backends is not None:
            _configured.move_to_end(key)
            return backends
    if configuration is None:
        backends = builtin_backends()
    else:
        # Read now, after the claim that saw `configuration`: the rows are that revision or a later
        # one (a later one is at least as current as what the key names).
        backends, configured = tenant_backends(tenant_id)
        if not configured:  # removed since (not something the services do): nothing is cached
            return backends
    with _cache_lock:
        _configured[key] = backends
        while len(_configured) > _CACHE_SIZE:
            _configured.popitem(last=False)
    return backends


def placement_forget() -> None:
    """Drop the per-process cache of parsed configurations (tests)."""
    with _cache_lock:
        _configured.clear()


@lru_cache(maxsize=1024)
def _task_label(banner: str, registry) -> tuple[Label | None, LabelError | None]:
    """A task's stored banner parsed under `registry` (immutable; one object per policies file),
    once per process: every dispatch checks it, and a fan-out's instances share one label."""
    try:
        return parse_label(banner, registry=registry), None
    except LabelError as exc:
        return None, exc


def placement_check(task, *, configuration=UNREAD) -> Backend:
    """At dispatch, against the tenant's configuration now: the task's backend still exists, is
    enabled and may host the task's label. Returns it (kind and config for the executor), or raises
    PlacementRefused (code no_backend_for_label or backend_unavailable).

    `configuration` is the key of the tenant's configuration read by the caller in the claim's own
    statement (gateway/worker_sql.py: "<id>:<revision>:<digest>", or None when the tenant has none);
    without it the configuration is read here."""
    if configuration is UNREAD:
        backends, _ = tenant_backends(task.tenant_id)
    else:
        backends = _backends_for(task.tenant_id, configuration)
    backend = next((b for b in backends if b.name == task.backend), None)
    where = f"task {task.key!r} ({task.classification})"
    if backend is None:
        raise PlacementRefused("backend_unavailable", f"{where}: its backend {task.backend!r} is no longer configured")
    if not backend.enabled:
        raise PlacementRefused("backend_unavailable", f"{where}: its backend {task.backend!r} is disabled")
    label, error = _task_label(task.classification, label_registry())
    if error is not None:
        raise PlacementRefused(ErrorCode.NO_BACKEND_FOR_LABEL, f"{where}: the label is not readable: {error}") from error
    if not hosts(backend, label):
        raise PlacementRefused(ErrorCode.NO_BACKEND_FOR_LABEL,
                               f"{where} may not run on backend {backend.name!r}, which now hosts at most "
                               f"{backend.ceiling_banner}")
    return backend
