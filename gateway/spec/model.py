"""The validated, immutable form of a workflow.

These dataclasses are what the rest of Gatehouse works with; they never hold YAML-level
details other than the source line of each task.  ``to_dict()`` gives a JSON-serialisable
form (stored per task instance) and ``from_dict()`` rebuilds an equal object from it.

Free-form parts (``resources``, ``env``, ``container``, a gate's ``form``) are plain dicts;
they are copied on the way in and out so a frozen object never shares them with callers.
"""
from __future__ import annotations

import copy
import heapq
import math
from dataclasses import dataclass, field
from typing import Any, Mapping

__all__ = [
    "ArtefactRef",
    "GateOption",
    "GateSpec",
    "InputSpec",
    "OutputSpec",
    "RetrySpec",
    "RunSpec",
    "TaskSpec",
    "Workflow",
    "instance_id",
    "topological_order",
]

TASK = "task"
GATE = "gate"
GATE_OUTPUT = "input"  # the one artefact every gate produces: the analyst's form input (JSON)
GATE_OUTPUT_MEDIA_TYPE = "application/json"
APPROVE = "approve"
REJECT = "reject"


def instance_id(group: str, index: int) -> str:
    """The id of instance ``index`` of fan-out task ``group``: ``group[index]``.  Task ids in a
    file cannot contain brackets, so an instance id never collides with a task of the file."""
    return f"{group}[{index}]"


def _json_copy(value: Any) -> Any:
    """Deep copy of a JSON-like value (dicts/lists copied, scalars shared)."""
    return copy.deepcopy(value)


@dataclass(frozen=True)
class ArtefactRef:
    """A reference ``task/name`` to an artefact another task produces."""

    task: str
    name: str

    def __str__(self) -> str:
        return f"{self.task}/{self.name}"

    @classmethod
    def parse(cls, text: str) -> ArtefactRef:
        task, sep, name = text.partition("/")
        if not sep or not task or not name:
            raise ValueError(f"invalid artefact reference {text!r}: expected 'task/name'")
        return cls(task, name)


@dataclass(frozen=True)
class InputSpec:
    """An artefact staged into the task's working directory at ``path`` before it runs."""

    ref: ArtefactRef
    path: str


@dataclass(frozen=True)
class OutputSpec:
    """A file the task must leave at ``path``; stored as artefact ``name``."""

    name: str
    path: str
    media_type: str


@dataclass(frozen=True)
class RetrySpec:
    """How often a failed task is retried, with exponential backoff between attempts."""

    count: int = 0
    initial: float = 1.0
    factor: float = 2.0
    max: float = 300.0

    def delay(self, failures: int) -> float:
        """Seconds to wait before retry number ``failures`` (1-based): ``initial * factor**(failures-1)``,
        capped at ``max``."""
        if failures < 1:
            raise ValueError("failures is 1-based: the first retry follows failure 1")
        try:
            delay = self.initial * self.factor ** (failures - 1)
        except OverflowError:
            delay = math.inf
        return float(min(delay, self.max))

    def to_dict(self) -> dict:
        return {"count": self.count, "initial": self.initial, "factor": self.factor, "max": self.max}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> RetrySpec:
        return cls(count=int(d["count"]), initial=float(d["initial"]), factor=float(d["factor"]), max=float(d["max"]))


@dataclass(frozen=True)
class RunSpec:
    """What a task executes: exactly one of a shell string, an argv list or a script."""

    shell: str | None = None
    command: tuple[str, ...] | None = None
    script: str | None = None
    interpreter: str = "/bin/sh"

    def __post_init__(self) -> None:
        given = sum(x is not None for x in (self.shell, self.command, self.script))
        if given != 1:
            raise ValueError("RunSpec needs exactly one of shell, command or script")
        if self.command is not None and not isinstance(self.command, tuple):
            object.__setattr__(self, "command", tuple(self.command))

    def argv(self, script_path: str | None = None) -> list[str]:
        """The process to start.  For a script, ``script_path`` is where the caller wrote it."""
        if self.shell is not None:
            return ["/bin/sh", "-c", self.shell]
        if self.command is not None:
            return list(self.command)
        if script_path is None:
            raise ValueError("a script task needs the path the script was written to")
        return [self.interpreter, script_path]

    def to_dict(self) -> dict:
        if self.shell is not None:
            return {"shell": self.shell}
        if self.command is not None:
            return {"command": list(self.command)}
        return {"script": self.script, "interpreter": self.interpreter}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> RunSpec:
        if "command" in d:
            return cls(command=tuple(d["command"]))
        if "script" in d:
            return cls(script=d["script"], interpreter=d.get("interpreter", "/bin/sh"))
        return cls(shell=d["shell"])


@dataclass(frozen=True)
class GateOption:
    """A choice offered to the analyst; ``outcome`` is ``"approve"`` or ``"reject"``."""

    name: str
    label: str
    outcome: str


@dataclass(frozen=True)
class GateSpec:
    """The human-judgement part of a gate task."""

    title: str
    instructions: str
    shows: tuple[ArtefactRef, ...]
    options: tuple[GateOption, ...]
    form: dict | None = field(hash=False)
    approvers: tuple[str, ...]
    required_approvals: int
    timeout: float | None
    on_timeout: str  # "reject" | "expire" | "escalate"
    escalate_to: tuple[str, ...]
    required_rejections: int = 1  # distinct rejections that reject the gate (the first conclusive outcome wins)

    def option(self, name: str) -> GateOption | None:
        """The option called ``name``, or None."""
        return next((option for option in self.options if option.name == name), None)

    def to_dict(self) -> dict:
        return {
            "title": self.title,
            "instructions": self.instructions,
            "shows": [str(ref) for ref in self.shows],
            "options": [{"name": o.name, "label": o.label, "outcome": o.outcome} for o in self.options],
            "form": _json_copy(self.form),
            "approvers": list(self.approvers),
            "required_approvals": self.required_approvals,
            "required_rejections": self.required_rejections,
            "timeout": self.timeout,
            "on_timeout": self.on_timeout,
            "escalate_to": list(self.escalate_to),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> GateSpec:
        timeout = d.get("timeout")
        return cls(
            title=d["title"],
            instructions=d.get("instructions", ""),
            shows=tuple(ArtefactRef.parse(ref) for ref in d.get("shows", ())),
            options=tuple(GateOption(o["name"], o["label"], o["outcome"]) for o in d["options"]),
            form=_json_copy(d.get("form")),
            approvers=tuple(d.get("approvers", ("analyst",))),
            required_approvals=int(d.get("required_approvals", 1)),
            required_rejections=int(d.get("required_rejections", 1)),
            timeout=None if timeout is None else float(timeout),
            on_timeout=d.get("on_timeout", REJECT),
            escalate_to=tuple(d.get("escalate_to", ())),
        )


@dataclass(frozen=True)
class TaskSpec:
    """One node of the workflow graph: a plain task (``kind == "task"``) or a gate.

    For a gate, ``run`` is None, ``backend`` is ``""``, ``timeout`` is None (the gate's own
    deadline is ``gate.timeout``) and the only output is the analyst's input (``"input"``,
    not listed in ``outputs``).  Task defaults from the workflow are already applied.
    """

    id: str
    kind: str
    needs: tuple[str, ...] = ()
    run: RunSpec | None = None
    backend: str = "local"
    resources: dict = field(default_factory=dict, hash=False)
    env: dict = field(default_factory=dict, hash=False)
    inputs: tuple[InputSpec, ...] = ()
    outputs: tuple[OutputSpec, ...] = ()
    retries: RetrySpec = RetrySpec()
    timeout: float | None = None
    classification: str = "UNCLASSIFIED"
    container: dict | None = field(default=None, hash=False)
    gate: GateSpec | None = None
    line: int | None = None  # 1-based line of the task in the YAML source
    # {"tags": [...], "prefer": [...]} as given (task over defaults), or None; see gateway/placement.py.
    placement: dict | None = field(default=None, hash=False)
    backend_given: bool = True  # False: the file named no backend ("local" by default, or placed by tags)
    # An instance of a foreach/matrix task: {"group": id in the file, "index": i, "count": n, "item": value}
    # (a matrix item is the mapping of its combination); None for a task that does not fan out.
    fanout: dict | None = field(default=None, hash=False)

    @property
    def is_gate(self) -> bool:
        return self.kind == GATE

    @property
    def group(self) -> str:
        """The id the file gave this task: a fan-out instance's group, else its own id."""
        return self.fanout["group"] if self.fanout else self.id

    def output_names(self) -> tuple[str, ...]:
        """Names of the artefacts this task produces (a gate produces ``"input"``)."""
        return (GATE_OUTPUT,) if self.kind == GATE else tuple(o.name for o in self.outputs)

    def to_dict(self) -> dict:
        """A JSON-serialisable dict; ``TaskSpec.from_dict`` turns it back into an equal object."""
        return {
            "id": self.id,
            "kind": self.kind,
            "needs": list(self.needs),
            "run": None if self.run is None else self.run.to_dict(),
            "backend": self.backend,
            "resources": _json_copy(self.resources),
            "env": dict(self.env),
            "inputs": [{"from": str(i.ref), "path": i.path} for i in self.inputs],
            "outputs": [{"name": o.name, "path": o.path, "media_type": o.media_type} for o in self.outputs],
            "retries": self.retries.to_dict(),
            "timeout": self.timeout,
            "classification": self.classification,
            "container": _json_copy(self.container),
            "gate": None if self.gate is None else self.gate.to_dict(),
            "line": self.line,
            "placement": _json_copy(self.placement),
            "backend_given": self.backend_given,
            "fanout": _json_copy(self.fanout),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TaskSpec:
        run, gate, timeout = d.get("run"), d.get("gate"), d.get("timeout")
        retries = d.get("retries")
        return cls(
            id=d["id"],
            kind=d.get("kind", TASK),
            needs=tuple(d.get("needs", ())),
            run=None if run is None else RunSpec.from_dict(run),
            backend=d.get("backend", "local"),
            resources=_json_copy(d.get("resources") or {}),
            env=dict(d.get("env") or {}),
            inputs=tuple(InputSpec(ArtefactRef.parse(i["from"]), i["path"]) for i in d.get("inputs", ())),
            outputs=tuple(OutputSpec(o["name"], o["path"], o["media_type"]) for o in d.get("outputs", ())),
            retries=RetrySpec() if retries is None else RetrySpec.from_dict(retries),
            timeout=None if timeout is None else float(timeout),
            classification=d.get("classification", "UNCLASSIFIED"),
            container=_json_copy(d.get("container")),
            gate=None if gate is None else GateSpec.from_dict(gate),
            line=d.get("line"),
            placement=_json_copy(d.get("placement")),
            backend_given=bool(d.get("backend_given", True)),
            fanout=_json_copy(d.get("fanout")),
        )


def topological_order(ids: list[str], needs: Mapping[str, tuple[str, ...]]) -> list[str]:
    """Kahn's algorithm; among ready tasks the one listed first in the file goes first, so the
    order is deterministic.  Raises ValueError if the graph has a cycle."""
    position = {task_id: i for i, task_id in enumerate(ids)}
    waiting = {task_id: len(set(needs.get(task_id, ()))) for task_id in ids}
    dependants: dict[str, list[str]] = {task_id: [] for task_id in ids}
    for task_id in ids:
        for need in set(needs.get(task_id, ())):
            dependants[need].append(task_id)
    ready = [position[t] for t in ids if waiting[t] == 0]
    heapq.heapify(ready)
    order: list[str] = []
    while ready:
        task_id = ids[heapq.heappop(ready)]
        order.append(task_id)
        for dependant in dependants[task_id]:
            waiting[dependant] -= 1
            if waiting[dependant] == 0:
                heapq.heappush(ready, position[dependant])
    if len(order) != len(ids):
        raise ValueError("the workflow's needs form a cycle")
    return order


@dataclass(frozen=True)
class Workflow:
    """A validated workflow; ``digest`` is the SHA-256 (hex) of the exact bytes parsed."""

    api_version: str
    name: str
    description: str
    classification: str
    tasks: tuple[TaskSpec, ...]
    digest: str

    def __post_init__(self) -> None:
        # A lookup table; not a dataclass field, so it takes no part in ==, repr or to_dict.
        object.__setattr__(self, "_by_id", {task.id: task for task in self.tasks})

    def task(self, id: str) -> TaskSpec:  # noqa: A002 - the public API uses "id"
        """The task with this id; KeyError if there is none."""
        try:
            return self._by_id[id]  # type: ignore[attr-defined]
        except KeyError:
            raise KeyError(f"no task {id!r} in workflow {self.name!r}") from None

    @property
    def gates(self) -> tuple[TaskSpec, ...]:
        return tuple(task for task in self.tasks if task.kind == GATE)

    def dependants(self) -> dict[str, tuple[str, ...]]:
        """For every task id, the ids of the tasks that need it directly (in file order)."""
        result: dict[str, list[str]] = {task.id: [] for task in self.tasks}
        for task in self.tasks:
            for need in dict.fromkeys(task.needs):
                result[need].append(task.id)
        return {task_id: tuple(ids) for task_id, ids in result.items()}

    def topological_order(self) -> list[str]:
        """Task ids such that every task comes after all it needs; ties keep file order."""
        return topological_order([t.id for t in self.tasks], {t.id: t.needs for t in self.tasks})

    def to_dict(self) -> dict:
        return {
            "api_version": self.api_version,
            "name": self.name,
            "description": self.description,
            "classification": self.classification,
            "digest": self.digest,
            "tasks": [task.to_dict() for task in self.tasks],
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Workflow:
        return cls(
            api_version=d["api_version"],
            name=d["name"],
            description=d.get("description", ""),
            classification=d.get("classification", "UNCLASSIFIED"),
            tasks=tuple(TaskSpec.from_dict(t) for t in d["tasks"]),
            digest=d["digest"],
        )
