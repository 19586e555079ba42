"""Limits and error reporting for workflow specifications.

Every problem found in a workflow file is a :class:`SpecIssue` with a stable ``code``
(documented in :data:`ISSUE_CODES`), a human message, the 1-based YAML line, the task it
belongs to and a JSON pointer into the document.  :class:`SpecError` carries all of them.
"""
from __future__ import annotations

from dataclasses import dataclass

__all__ = ["ISSUE_CODES", "Limits", "SpecError", "SpecIssue"]


@dataclass(frozen=True)
class Limits:
    """Resource limits applied while loading an untrusted workflow file.

    ``max_nodes`` counts YAML nodes *after* alias expansion, so an alias bomb is refused
    even though the parser itself would share the aliased nodes.  ``max_depth`` also bounds
    the recursion of later stages (JSON Schema checks of a gate's ``form``, copying), so
    keep it well below 100.
    """

    max_bytes: int = 2_000_000
    max_tasks: int = 5_000
    max_depth: int = 40
    max_nodes: int = 500_000
    max_scalar_len: int = 200_000
    #: Instances one ``foreach``/``matrix`` task may expand to (``max_tasks`` counts every instance).
    max_fanout: int = 1_000
    #: Dependency edges of the expanded graph (a fan-out needing a fan-out has one per pair).
    max_edges: int = 500_000


#: Stable issue codes and what they mean.  Callers may rely on these strings.
ISSUE_CODES: dict[str, str] = {
    # hostile or malformed input (loading stops at the first of these)
    "too_large": "the file is larger than Limits.max_bytes",
    "not_utf8": "the file is not valid UTF-8",
    "control_character": "the file contains a control character YAML does not allow (e.g. NUL)",
    "yaml_syntax": "the YAML could not be parsed",
    "unsupported_tag": "a YAML tag other than the core str/int/float/bool/null/map/seq tags",
    "too_deep": "nesting deeper than Limits.max_depth",
    "too_many_nodes": "more YAML nodes (aliases expanded) than Limits.max_nodes",
    "too_many_tasks": "more tasks than Limits.max_tasks",
    "scalar_too_long": "a scalar longer than Limits.max_scalar_len characters",
    "multiple_documents": "more than one YAML document in the stream",
    "not_mapping": "the top level of the document is not a mapping",
    # reported together with everything else
    "duplicate_key": "a mapping key appears twice",
    "non_finite_number": "a .inf/.nan (or overflowing) number, which JSON cannot represent",
    "schema": "the document does not match the workflow JSON Schema",
    "bad_api_version": "apiVersion is missing or not 'gatehouse/v1'",
    "bad_kind": "kind is missing or not 'Workflow'",
    "no_tasks": "the workflow has no tasks",
    "bad_duration": "a duration that cannot be parsed (or a non-positive timeout)",
    "bad_path": "an input/output path that is absolute, empty or contains '..'",
    "gate_only_key": "a gate-only key (title, options, ...) on a plain task",
    "not_allowed_on_gate": "a plain-task key (run, backend, outputs, ...) on a gate",
    "duplicate_task": "two tasks with the same id",
    "unknown_need": "needs names a task that does not exist",
    "self_need": "a task needs itself",
    "cycle": "the needs form a cycle (the message gives the full path)",
    "unknown_artefact": "an input/shows reference to an unknown task or undeclared output",
    "not_ancestor": "an input/shows reference to a task that is not an ancestor",
    "duplicate_output": "two outputs of one task share a name or a path",
    "duplicate_input_path": "two inputs of one task are staged at the same path",
    "gate_no_options": "a gate without options",
    "duplicate_option": "two options of one gate share a name",
    "missing_escalate_to": "on_timeout: escalate without escalate_to",
    "invalid_form_schema": "a gate's form is not a valid JSON Schema",
    "bad_fanout": "a foreach/matrix that is not a non-empty list (or mapping of lists) of values",
    "fanout_conflict": "a task with both foreach and matrix",
    "gate_fanout": "foreach/matrix on a gate (gates do not fan out)",
    "too_many_instances": "a foreach/matrix expanding to more than Limits.max_fanout instances",
    "fanout_id_too_long": "a fan-out task's id leaves no room for the instance suffix '[N]' (64 characters in all)",
    "fanout_input_path": "an input from a fan-out task whose per-instance directory collides with another input",
    "too_many_edges": "the expanded graph has more dependencies than Limits.max_edges",
    "too_many_issues": "reporting stopped after this many issues",
}


@dataclass(frozen=True)
class SpecIssue:
    """One problem in a workflow file."""

    code: str
    message: str
    line: int | None = None
    task_id: str | None = None
    path: str = ""  # JSON pointer into the document, e.g. "/tasks/3/needs/0"

    def format(self, filename: str) -> str:
        """Render as ``FILE:LINE: task 'x': message``, leaving out the parts that are unknown."""
        head = filename if self.line is None else f"{filename}:{self.line}"
        task = "" if self.task_id is None else f"task {self.task_id!r}: "
        return f"{head}: {task}{self.message}"

    def to_dict(self) -> dict:
        """JSON form, handy for API responses."""
        return {"code": self.code, "message": self.message, "line": self.line, "task": self.task_id, "path": self.path}


class SpecError(ValueError):
    """A workflow file was refused; ``issues`` lists every problem found."""

    def __init__(self, issues: list[SpecIssue], filename: str = "<input>") -> None:
        self.issues: list[SpecIssue] = list(issues)
        self.filename = filename
        super().__init__(str(self))

    def __str__(self) -> str:
        return "\n".join(issue.format(self.filename) for issue in self.issues)

    def __reduce__(self):  # keep the exception picklable (Celery, multiprocessing)
        return (type(self), (self.issues, self.filename))

    @property
    def codes(self) -> list[str]:
        """The issue codes, in report order (convenient in tests and logs)."""
        return [issue.code for issue in self.issues]
