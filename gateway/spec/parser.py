"""``parse_workflow``: bytes in, a validated :class:`Workflow` (or a :class:`SpecError`) out.

Stages:

1. :func:`decode_source` and :func:`load_yaml` refuse hostile input (size, encoding,
   control characters, depth, alias bombs, huge scalars, too many tasks); the first such
   problem stops everything.
2. The JSON Schema checks structure and types.
3. Semantic checks, written defensively so they run even on a structurally broken
   document: duplicate ids, unknown/self needs, cycles, artefact references and ancestry,
   duplicate outputs/inputs/options, paths, form schemas, durations.
4. Only when there are no issues at all are the dataclasses built, with defaults applied.

All issues from stages 2-3 (plus duplicate keys from stage 1) are reported together,
sorted by line.
"""
from __future__ import annotations

import copy
import difflib
import functools
import hashlib
import itertools
import json
import mimetypes
import posixpath
from dataclasses import replace
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError

from .durations import parse_duration
from .errors import Limits, SpecError, SpecIssue
from .graph import Ancestry, find_cycles
from .model import (
    APPROVE,
    GATE,
    GATE_OUTPUT,
    REJECT,
    TASK,
    ArtefactRef,
    GateOption,
    GateSpec,
    InputSpec,
    OutputSpec,
    RetrySpec,
    RunSpec,
    TaskSpec,
    Workflow,
    instance_id,
)
from .schema import location, schema_issues
from .yamlload import Fatal, LineMap, decode_source, load_yaml, pointer_join, pointer_tokens

__all__ = ["MAX_ISSUES", "parse_workflow"]

#: Reporting stops after this many issues (a final ``too_many_issues`` issue says so).
MAX_ISSUES = 1000
MAX_CYCLES = 100

DEFAULT_APPROVERS = ("analyst",)
REJECTING_NAMES = frozenset({"reject", "deny"})


def parse_workflow(data: bytes | str, *, filename: str = "<input>", limits: Limits | None = None) -> Workflow:
    """Parse and validate a workflow file.

    ``data`` is the file's bytes (preferred: the digest is of exactly these) or text.
    Raises :class:`SpecError` listing every issue found; hostile input is refused at the
    first problem, before it can cost much time or memory.
    """
    limits = limits or Limits()
    try:
        raw, text = decode_source(data, limits)
        loaded = load_yaml(text, limits)
    except Fatal as exc:
        raise SpecError([exc.issue], filename) from None
    document, lines = loaded.data, loaded.lines

    tasks = document.get("tasks")
    if isinstance(tasks, list) and len(tasks) > limits.max_tasks:  # reached through an alias
        message = f"the workflow has more than {limits.max_tasks} tasks"
        raise SpecError([SpecIssue("too_many_tasks", message, lines.line("/tasks"), None, "/tasks")], filename)

    checker = _Checker(document, lines, limits)
    issues = [replace(issue, task_id=checker.task_of(issue.path)) for issue in loaded.issues]
    issues += schema_issues(document, checker.issue)
    issues += checker.check()
    issues = _finalise(issues)
    if issues:
        raise SpecError(issues, filename)
    # Sizes first, from the lists' lengths: a fan-out too large is refused before it is expanded.
    issues = _expansion_issues(document, lines, limits)
    if issues:
        raise SpecError(issues, filename)
    return _build(document, lines, hashlib.sha256(raw).hexdigest())


#: Keys of a matrix that adjust its combinations rather than name a list of values.
MATRIX_ADJUSTMENTS = ("include", "exclude")


def _same(a: Any, b: Any) -> bool:
    """Equal as JSON values (in Python, 1 == True and 1 == 1.0)."""
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


def matrix_combinations(matrix: dict) -> list[dict]:
    """The combinations of a (schema-valid) matrix, as GitHub Actions makes them: the cartesian
    product of its lists (the last name varying fastest); less every combination that holds all
    the values of one ``exclude`` entry; then each ``include`` entry, in order, adds its values to
    every combination of the product that agrees with it on the lists' names (a list's value is
    never changed; a value added by an earlier entry may be), or, agreeing with none, is added as a
    combination of its own. Only call it on a matrix whose product was checked against the limit."""
    names = [n for n in matrix if n not in MATRIX_ADJUSTMENTS]
    product = ([dict(zip(names, values)) for values in itertools.product(*(matrix[n] for n in names))]
               if names else [])
    excluded = matrix.get("exclude") or []
    combos = [c for c in product
              if not any(all(k in c and _same(c[k], v) for k, v in e.items()) for e in excluded)]
    original = list(combos)
    for entry in matrix.get("include") or []:
        matched = False
        for combo in original:
            if all(_same(combo[k], v) for k, v in entry.items() if k in names):
                combo.update({k: v for k, v in entry.items() if k not in names})
                matched = True
        if not matched:
            combos.append(dict(entry))
    return combos


def _product_size(matrix: dict, cap: int | None) -> int:
    count = 1
    for name, values in matrix.items():
        if name in MATRIX_ADJUSTMENTS:
            continue
        count *= len(values) if isinstance(values, list) else 1
        if cap is not None and count > cap:
            return cap + 1
    return count


def fanout_size(task: Any, cap: int | None = None) -> int:
    """How many instances a (schema-valid) task expands to: 1 without foreach/matrix.  With
    ``cap``, counting stops once the product exceeds it (the result is then ``cap + 1``): a
    matrix's product, before exclude, is held to ``cap`` too. A matrix with include or exclude is
    expanded to be counted, once its product is known to be within ``cap``."""
    if not isinstance(task, dict):
        return 1
    foreach, matrix = task.get("foreach"), task.get("matrix")
    if isinstance(foreach, list):
        count = len(foreach)
    elif isinstance(matrix, dict):
        names = [n for n in matrix if n not in MATRIX_ADJUSTMENTS]
        count = _product_size(matrix, cap) if names else 0
        if cap is not None and count > cap:
            return cap + 1
        if any(isinstance(matrix.get(k), list) for k in MATRIX_ADJUSTMENTS):
            count = len(matrix_combinations(matrix))
    else:
        return 1
    return count if cap is None or count <= cap else cap + 1


def _expansion_issues(document: dict, lines: LineMap, limits: Limits) -> list[SpecIssue]:
    """The expanded workflow's size: every instance counts against ``max_tasks`` and every
    instance-to-instance dependency against ``max_edges``.  Nothing is expanded here."""
    tasks = document["tasks"]
    sizes = {task["id"]: fanout_size(task, limits.max_fanout) for task in tasks}
    total = sum(sizes.values())
    if total > limits.max_tasks:
        message = (f"the workflow expands to {total} tasks (foreach/matrix instances included); "
                   f"the limit is {limits.max_tasks}")
        return [SpecIssue("too_many_tasks", message, lines.line("/tasks"), None, "/tasks")]
    edges = 0
    for index, task in enumerate(tasks):
        edges += sizes[task["id"]] * sum(sizes[need] for need in task.get("needs", ()))
        if edges > limits.max_edges:
            message = (f"the expanded workflow has more than {limits.max_edges} dependencies between task "
                       f"instances (a fan-out that needs a fan-out depends on every instance of it)")
            return [SpecIssue("too_many_edges", message, lines.line(f"/tasks/{index}"), task["id"], f"/tasks/{index}")]
    return []


def _finalise(issues: list[SpecIssue]) -> list[SpecIssue]:
    """Drop exact repeats (schema and semantic checks may agree), sort by line, cap."""
    seen: set[tuple[str, str, str]] = set()
    unique: list[SpecIssue] = []
    for issue in issues:
        key = (issue.code, issue.path, issue.message)
        if key not in seen:
            seen.add(key)
            unique.append(issue)
    unique.sort(key=lambda i: i.line or 0)  # stable: same-line issues keep their order
    if len(unique) > MAX_ISSUES:
        extra = len(unique) - MAX_ISSUES
        unique = unique[:MAX_ISSUES] + [SpecIssue("too_many_issues", f"... and {extra} more issues not shown")]
    return unique


def _duration_problem(value: Any, *, positive: bool) -> str | None:
    """None if ``value`` is a usable duration, else the message; non-scalar values are left
    to the schema."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        return None
    try:
        seconds = parse_duration(value)
    except ValueError as exc:
        return str(exc)
    if positive and seconds <= 0:
        return "must be greater than zero"
    return None


def _path_problem(path: Any) -> str | None:
    """Why ``path`` cannot be a task-relative file path, or None."""
    if not isinstance(path, str) or not path:
        return None  # the schema reports it
    if path.startswith("/"):
        return f"path {path!r} must be relative to the task's working directory"
    if ".." in path.split("/"):
        return f"path {path!r} must not contain '..'"
    if posixpath.normpath(path) in (".", "") or path.endswith("/"):
        return f"path {path!r} must name a file"
    return None


def _option_name(option: Any) -> Any:
    return option.get("name") if isinstance(option, dict) else option


class _Checker:
    """Semantic checks.  Every check tolerates values of the wrong type (the schema has
    already reported those) so that one broken field does not hide other problems."""

    def __init__(self, document: dict, lines: LineMap, limits: Limits | None = None) -> None:
        self.document = document
        self.lines = lines
        self.limits = limits or Limits()
        tasks = document.get("tasks")
        self.tasks: list = tasks if isinstance(tasks, list) else []
        self.issues: list[SpecIssue] = []
        self.suggestions_left = 20

    # -- reporting -----------------------------------------------------------------------
    def task_of(self, pointer: str) -> str | None:
        tokens = pointer_tokens(pointer)
        if len(tokens) >= 2 and tokens[0] == "tasks" and tokens[1].isdigit():
            index = int(tokens[1])
            if index < len(self.tasks) and isinstance(self.tasks[index], dict):
                task_id = self.tasks[index].get("id")
                if isinstance(task_id, str):
                    return task_id
        return None

    def issue(self, code: str, message: str, pointer: str) -> SpecIssue:
        return SpecIssue(code, message, self.lines.line(pointer), self.task_of(pointer), pointer)

    def _suggest(self, word: str, ids: dict[str, int]) -> str:
        """A "did you mean" hint.  difflib is slow on thousands of ids, so only the first
        few misspellings get one."""
        if self.suggestions_left <= 0:
            return ""
        self.suggestions_left -= 1
        close = difflib.get_close_matches(word, list(ids), n=1)
        return f" (did you mean {close[0]!r}?)" if close else ""

    def report(self, code: str, message: str, pointer: str) -> None:
        where = location(pointer)
        if where and code == "bad_duration":  # same wording as the schema's duration errors
            message = f"{where}: {message}"
        self.issues.append(self.issue(code, message, pointer))

    # -- checks --------------------------------------------------------------------------
    def check(self) -> list[SpecIssue]:
        self._check_durations("/defaults", self.document.get("defaults"))
        ids = self._check_ids()
        deps = self._check_needs(ids)
        for cycle in find_cycles(deps, MAX_CYCLES):
            self._report_cycle(cycle, ids)
        ancestry = Ancestry(deps)
        for index, task in enumerate(self.tasks):
            if not isinstance(task, dict):
                continue
            base = f"/tasks/{index}"
            self._check_durations(base, task)
            if task.get("type") == GATE:
                self._check_gate(index, task, ids, ancestry)
            else:
                self._check_plain(index, task, ids, ancestry)
        return self.issues

    def _check_durations(self, base: str, holder: Any) -> None:
        """timeout, retries.backoff.{initial,max} and resources.time of a task or of defaults."""
        if not isinstance(holder, dict):
            return
        candidates = [("timeout", holder.get("timeout"), True)]
        resources = holder.get("resources")
        if isinstance(resources, dict):
            candidates.append(("resources/time", resources.get("time"), True))
        retries = holder.get("retries")
        if isinstance(retries, dict) and isinstance(retries.get("backoff"), dict):
            backoff = retries["backoff"]
            candidates += [("retries/backoff/initial", backoff.get("initial"), False)]
            candidates += [("retries/backoff/max", backoff.get("max"), False)]
        for relative, value, positive in candidates:
            if value is None:
                continue
            problem = _duration_problem(value, positive=positive)
            if problem is not None:
                self.report("bad_duration", problem, f"{base}/{relative}")

    def _check_ids(self) -> dict[str, int]:
        """Map each task id to the index of its first definition; report repeats."""
        ids: dict[str, int] = {}
        for index, task in enumerate(self.tasks):
            task_id = task.get("id") if isinstance(task, dict) else None
            if not isinstance(task_id, str):
                continue
            if task_id in ids:
                first_line = self.lines.line(f"/tasks/{ids[task_id]}/id")
                this_line = self.lines.line(f"/tasks/{index}/id")
                self.report(
                    "duplicate_task",
                    f"duplicate task id {task_id!r}: defined on line {first_line} and again on line {this_line}",
                    f"/tasks/{index}/id",
                )
            else:
                ids[task_id] = index
        return ids

    def _check_needs(self, ids: dict[str, int]) -> list[list[int]]:
        """Report unknown and self needs; return the dependency lists of the graph
        (indices of first definitions; repeated definitions get no edges)."""
        deps: list[list[int]] = [[] for _ in self.tasks]
        for index, task in enumerate(self.tasks):
            if not isinstance(task, dict) or not isinstance(task.get("needs"), list):
                continue
            task_id = task.get("id")
            in_graph = isinstance(task_id, str) and ids.get(task_id) == index
            for j, need in enumerate(task["needs"]):
                if not isinstance(need, str):
                    continue
                pointer = f"/tasks/{index}/needs/{j}"
                if need == task_id:
                    self.report("self_need", f"task {need!r} needs itself", pointer)
                elif need not in ids:
                    self.report("unknown_need", f"needs unknown task {need!r}{self._suggest(need, ids)}", pointer)
                elif in_graph and ids[need] not in deps[index]:
                    deps[index].append(ids[need])
        return deps

    def _report_cycle(self, cycle: tuple[int, ...], ids: dict[str, int]) -> None:
        names = [self.tasks[i]["id"] for i in cycle]
        first, second = cycle[0], names[1]
        needs = self.tasks[first].get("needs", [])
        j = needs.index(second) if second in needs else 0
        self.report("cycle", "cycle: " + " -> ".join(names), f"/tasks/{first}/needs/{j}")

    def _outputs_of(self, index: int) -> list[str]:
        task = self.tasks[index]
        if task.get("type") == GATE:
            return [GATE_OUTPUT]
        outputs = task.get("outputs")
        if not isinstance(outputs, list):
            return []
        names = (o["name"] for o in outputs if isinstance(o, dict) and isinstance(o.get("name"), str))
        return list(dict.fromkeys(names))

    def _check_ref(self, index: int, ref: Any, pointer: str, ids: dict[str, int], ancestry: Ancestry) -> None:
        """An input ``from`` or a gate ``shows`` entry: ``task/name`` of an ancestor's output."""
        if not isinstance(ref, str) or "/" not in ref:
            return  # the schema reports it
        source, _, name = ref.partition("/")
        own_id = self.tasks[index].get("id")
        if source not in ids:
            hint = self._suggest(source, ids)
            self.report("unknown_artefact", f"{ref!r} refers to unknown task {source!r}{hint}", pointer)
            return
        if source == own_id:
            self.report("not_ancestor", f"{ref!r}: a task cannot use its own artefacts", pointer)
            return
        declared = self._outputs_of(ids[source])
        if name not in declared:
            if self.tasks[ids[source]].get("type") == GATE:
                detail = f"a gate's only artefact is {GATE_OUTPUT!r}"
            elif declared:
                detail = "it declares " + ", ".join(map(repr, declared))
            else:
                detail = "it declares no outputs"
            self.report("unknown_artefact", f"{ref!r}: task {source!r} has no output {name!r} ({detail})", pointer)
        in_graph = isinstance(own_id, str) and ids.get(own_id) == index
        if in_graph and not ancestry.is_ancestor(index, ids[source]):
            self.report(
                "not_ancestor",
                f"{ref!r}: task {source!r} is not an ancestor of this task (add it to needs, directly or indirectly)",
                pointer,
            )

    def _is_fanout(self, task_id: Any, ids: dict[str, int]) -> bool:
        index = ids.get(task_id) if isinstance(task_id, str) else None
        task = self.tasks[index] if index is not None else None
        return isinstance(task, dict) and task.get("type") != GATE and ("foreach" in task or "matrix" in task)

    def _check_fanout(self, index: int, task: dict) -> None:
        """foreach/matrix: the number of instances (counted, never expanded), room for the
        instance suffix in the id, matrix names that stay distinct as variable names."""
        base = f"/tasks/{index}"
        key = "foreach" if "foreach" in task else "matrix" if "matrix" in task else None
        if key is None or ("foreach" in task and "matrix" in task):
            return  # no fan-out, or the schema reports the conflict
        value = task[key]
        if key == "matrix" and isinstance(value, dict):
            if not self._check_matrix(base, value):
                return
        if not (isinstance(value, list) and value) and not (
                isinstance(value, dict) and value and all(isinstance(v, list) and v for v in value.values())):
            return  # the schema reports it
        cap = self.limits.max_fanout
        count = fanout_size(task, cap)
        if count == 0:
            self.report("bad_fanout", "the matrix's exclude removes every combination", f"{base}/matrix/exclude")
            return
        if count > cap:
            exact = "" if key == "matrix" else f" ({len(value)})"
            self.report("too_many_instances", f"{key} expands to more than {cap} instances{exact}; the limit "
                                              f"is {cap} per task", f"{base}/{key}")
            return
        task_id = task.get("id")
        suffix = len(f"[{count - 1}]")
        if isinstance(task_id, str) and len(task_id) + suffix > 64:
            self.report("fanout_id_too_long", f"instance ids like '{task_id}[{count - 1}]' would be longer than 64 "
                                              f"characters: shorten the id to at most {64 - suffix}", f"{base}/id")

    def _check_matrix(self, base: str, matrix: dict) -> bool:
        """Names that stay distinct as variable names (the lists' and those include adds), exclude
        entries that name the matrix's lists only, and at least one list or include entry. False
        when the matrix cannot be counted (the schema, or this, reported why)."""
        lists = [n for n in matrix if n not in MATRIX_ADJUSTMENTS]
        seen: dict[str, str] = {}

        def name_of(name: Any, pointer: str) -> None:
            if not isinstance(name, str):
                return
            upper = name.upper()
            if seen.get(upper, name) != name:
                self.report("bad_fanout", f"matrix names {seen[upper]!r} and {name!r} both give the variable "
                                          f"GATEHOUSE_MATRIX_{upper}", pointer)
            seen.setdefault(upper, name)

        for name in lists:
            name_of(name, f"{base}/matrix/{name}")
        ok = True
        for adjustment in MATRIX_ADJUSTMENTS:
            entries = matrix.get(adjustment)
            if not isinstance(entries, list):
                ok = ok and adjustment not in matrix
                continue
            for j, entry in enumerate(entries):
                if not isinstance(entry, dict) or not entry:
                    ok = False
                    continue
                for name in entry:
                    pointer = f"{base}/matrix/{adjustment}/{j}/{name}"
                    if adjustment == "exclude" and lists and name not in lists:
                        self.report("bad_fanout", f"exclude names {name!r}, which is not one of the matrix's lists "
                                                  f"({', '.join(map(repr, lists)) or 'none'})", pointer)
                        ok = False
                    elif adjustment == "include":
                        name_of(name, pointer)
        if not lists and "include" not in matrix:
            if not matrix:
                return False  # the schema reports it
            self.report("bad_fanout", "matrix must name at least one list of values (or include combinations)",
                        f"{base}/matrix")
            return False
        return ok and all(isinstance(matrix[n], list) and matrix[n] for n in lists)

    def _check_fanout_inputs(self, base: str, inputs: list, ids: dict[str, int]) -> None:
        """An input from a fan-out task is a directory holding one file per instance: it must
        not be, contain or lie inside another input's path."""
        paths: list[tuple[int, str, bool]] = []
        for j, item in enumerate(inputs):
            if not isinstance(item, dict) or not isinstance(item.get("from"), str) or _path_problem(item.get("path")):
                continue
            if not isinstance(item.get("path"), str) or not item["path"]:
                continue
            source = item["from"].partition("/")[0]
            paths.append((j, posixpath.normpath(item["path"]), self._is_fanout(source, ids)))
        for j, directory, fanned in paths:
            if not fanned:
                continue
            for k, other, other_fanned in paths:
                if k != j and not (other_fanned and k < j) and (other == directory or other.startswith(directory + "/")
                               or directory.startswith(other + "/")):
                    self.report("fanout_input_path",
                                f"input {j} comes from a fan-out task and is staged as the directory "
                                f"{directory!r} (one file per instance); input {k} at {other!r} collides with it",
                                f"{base}/inputs/{j}/path")
                    break

    def _check_plain(self, index: int, task: dict, ids: dict[str, int], ancestry: Ancestry) -> None:
        base = f"/tasks/{index}"
        self._check_fanout(index, task)
        outputs = task.get("outputs")
        if isinstance(outputs, list):
            names: dict[str, int] = {}
            paths: dict[str, int] = {}
            for j, output in enumerate(outputs):
                if not isinstance(output, dict):
                    continue
                name, path = output.get("name"), output.get("path")
                if isinstance(name, str):
                    if name in names:
                        message = f"output name {name!r} is used twice"
                        self.report("duplicate_output", message, f"{base}/outputs/{j}/name")
                    names.setdefault(name, j)
                problem = _path_problem(path)
                if problem:
                    self.report("bad_path", problem, f"{base}/outputs/{j}/path")
                elif isinstance(path, str) and path:
                    normal = posixpath.normpath(path)
                    if normal in paths:
                        self.report(
                            "duplicate_output",
                            f"output path {path!r} is also the path of output {paths[normal]}",
                            f"{base}/outputs/{j}/path",
                        )
                    paths.setdefault(normal, j)
        inputs = task.get("inputs")
        if isinstance(inputs, list):
            seen: dict[str, int] = {}
            for j, item in enumerate(inputs):
                if not isinstance(item, dict):
                    continue
                self._check_ref(index, item.get("from"), f"{base}/inputs/{j}/from", ids, ancestry)
                path = item.get("path")
                problem = _path_problem(path)
                if problem:
                    self.report("bad_path", problem, f"{base}/inputs/{j}/path")
                elif isinstance(path, str) and path:
                    normal = posixpath.normpath(path)
                    if normal in seen:
                        self.report(
                            "duplicate_input_path",
                            f"two inputs are staged at {path!r} (inputs {seen[normal]} and {j})",
                            f"{base}/inputs/{j}/path",
                        )
                    seen.setdefault(normal, j)
            self._check_fanout_inputs(base, inputs, ids)

    def _check_gate(self, index: int, task: dict, ids: dict[str, int], ancestry: Ancestry) -> None:
        base = f"/tasks/{index}"
        shows = task.get("shows")
        if isinstance(shows, list):
            for j, ref in enumerate(shows):
                self._check_ref(index, ref, f"{base}/shows/{j}", ids, ancestry)
        options = task.get("options")
        if isinstance(options, list):
            seen: set[str] = set()
            for j, option in enumerate(options):
                name = _option_name(option)
                if not isinstance(name, str):
                    continue
                if name in seen:
                    self.report("duplicate_option", f"option {name!r} is listed twice", f"{base}/options/{j}")
                seen.add(name)
        form = task.get("form")
        if isinstance(form, dict):
            try:
                Draft202012Validator.check_schema(form)
            except SchemaError as exc:
                pointer = f"{base}/form"
                for token in exc.absolute_path:
                    pointer = pointer_join(pointer, token)
                text = exc.message if len(exc.message) <= 300 else exc.message[:297] + "..."
                where = location(pointer)
                self.report("invalid_form_schema", f"{where} is not a valid JSON Schema: {text}", pointer)


# -- building the dataclasses (input already validated) ---------------------------------


@functools.lru_cache(maxsize=1)
def _mime_types() -> mimetypes.MimeTypes:
    # Python's built-in table only, so guesses do not depend on the host's /etc/mime.types.
    return mimetypes.MimeTypes()


# Common data formats missing from Python's built-in table.
_EXTRA_MEDIA_TYPES = {
    ".md": "text/markdown",
    ".markdown": "text/markdown",
    ".yaml": "application/yaml",
    ".yml": "application/yaml",
    ".jsonl": "application/jsonl",
    ".ndjson": "application/x-ndjson",
    ".geojson": "application/geo+json",
    ".parquet": "application/vnd.apache.parquet",
}


def guess_media_type(path: str) -> str:
    """The media type for an output without one: from the file extension, else octet-stream."""
    extra = _EXTRA_MEDIA_TYPES.get(posixpath.splitext(path)[1].lower())
    if extra:
        return extra
    guessed, _ = _mime_types().guess_type(path, strict=False)
    return guessed or "application/octet-stream"


def _retries(value: Any) -> RetrySpec:
    if isinstance(value, dict):
        backoff = value.get("backoff") or {}
        defaults = RetrySpec()
        return RetrySpec(
            count=int(value.get("count", 0)),
            initial=parse_duration(backoff["initial"]) if "initial" in backoff else defaults.initial,
            factor=float(backoff.get("factor", defaults.factor)),
            max=parse_duration(backoff["max"]) if "max" in backoff else defaults.max,
        )
    return RetrySpec(count=int(value))


def _run(value: Any) -> RunSpec:
    if isinstance(value, str):
        return RunSpec(shell=value)
    if "command" in value:
        return RunSpec(command=tuple(value["command"]))
    return RunSpec(script=value["script"], interpreter=value.get("interpreter", "/bin/sh"))


def _principals(value: Any, default: tuple[str, ...]) -> tuple[str, ...]:
    if value is None:
        return default
    return (value,) if isinstance(value, str) else tuple(value)


def _default_label(name: str) -> str:
    text = name.replace("_", " ").replace("-", " ")
    return text[:1].upper() + text[1:]


def _option(value: Any) -> GateOption:
    if isinstance(value, str):
        value = {"name": value}
    name = value["name"]
    outcome = value.get("outcome") or (REJECT if name.lower() in REJECTING_NAMES else APPROVE)
    return GateOption(name=name, label=value.get("label") or _default_label(name), outcome=outcome)


def _timeout(value: Any) -> float | None:
    return None if value is None else parse_duration(value)


def _fanout_items(raw: dict) -> list[Any] | None:
    """The items of a foreach, or the combinations of a matrix (mappings, last name fastest);
    None for a task that does not fan out.  Sizes were checked before this is called."""
    if "foreach" in raw:
        return list(raw["foreach"])
    if "matrix" in raw:
        return matrix_combinations(raw["matrix"])
    return None


def _env_text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True, separators=(",", ":"))


def fanout_env(group: str, index: int, count: int, item: Any, *, matrix: bool) -> dict[str, str]:
    """The variables an instance receives (over the task's own ``env``)."""
    env = {
        "GATEHOUSE_FANOUT": group,
        "GATEHOUSE_INDEX": str(index),
        "GATEHOUSE_COUNT": str(count),
        "GATEHOUSE_ITEM": json.dumps(item, sort_keys=True, separators=(",", ":")),
    }
    if matrix:
        env.update({f"GATEHOUSE_MATRIX_{name.upper()}": _env_text(value) for name, value in item.items()})
    return env


def _expand_refs(refs: Any, instances: dict[str, list[str]]) -> list[tuple[ArtefactRef, int | None]]:
    """Each ``task/name`` as is, or one reference per instance (with its index) for a fan-out task."""
    out: list[tuple[ArtefactRef, int | None]] = []
    for text in refs:
        ref = ArtefactRef.parse(text)
        group = instances.get(ref.task)
        if group is None:
            out.append((ref, None))
        else:
            out += [(ArtefactRef(task_id, ref.name), i) for i, task_id in enumerate(group)]
    return out


def _build(document: dict, lines: LineMap, digest: str) -> Workflow:
    defaults = document.get("defaults") or {}
    classification = document.get("classification") or "UNCLASSIFIED"
    task_classification = defaults.get("classification") or classification
    items = {raw["id"]: _fanout_items(raw) for raw in document["tasks"]}
    # The instance ids of every fan-out task; a need of one is a need of all of them (fan-in).
    instances = {task_id: [instance_id(task_id, i) for i in range(len(values))]
                 for task_id, values in items.items() if values is not None}
    tasks = []
    for index, raw in enumerate(document["tasks"]):
        needs = []
        for need in raw.get("needs", ()):
            needs += instances.get(need, [need])
        common = dict(
            id=raw["id"],
            needs=tuple(needs),
            classification=raw.get("classification", task_classification),
            line=lines.line(f"/tasks/{index}"),
        )
        if raw.get("type") == GATE:
            gate = GateSpec(
                title=raw["title"],
                instructions=raw.get("instructions", ""),
                shows=tuple(ref for ref, _ in _expand_refs(raw.get("shows", ()), instances)),
                options=tuple(_option(option) for option in raw["options"]),
                form=copy.deepcopy(raw.get("form")),
                approvers=_principals(raw.get("approvers"), DEFAULT_APPROVERS),
                required_approvals=int(raw.get("required_approvals", 1)),
                required_rejections=int(raw.get("required_rejections", 1)),
                timeout=_timeout(raw.get("timeout")),
                on_timeout=raw.get("on_timeout", REJECT),
                escalate_to=_principals(raw.get("escalate_to"), ()),
            )
            tasks.append(TaskSpec(kind=GATE, run=None, backend="", gate=gate, **common))
            continue
        container = raw.get("container", defaults.get("container"))
        backend = raw.get("backend", defaults.get("backend"))
        placement = {**defaults.get("placement", {}), **raw.get("placement", {})}
        inputs = []
        for item in raw.get("inputs", ()):
            for ref, i in _expand_refs([item["from"]], instances):
                inputs.append(InputSpec(ref, item["path"] if i is None else posixpath.join(item["path"], str(i))))
        spec = (
            TaskSpec(
                kind=TASK,
                run=_run(raw["run"]),
                backend=backend or "local",
                backend_given=backend is not None,
                placement={key: list(placement[key]) for key in ("tags", "prefer") if key in placement} or None,
                resources=copy.deepcopy({**defaults.get("resources", {}), **raw.get("resources", {})}),
                env={**defaults.get("env", {}), **raw.get("env", {})},
                inputs=tuple(inputs),
                outputs=tuple(
                    OutputSpec(o["name"], o["path"], o.get("media_type") or guess_media_type(o["path"]))
                    for o in raw.get("outputs", ())
                ),
                retries=_retries(raw.get("retries", defaults.get("retries", 0))),
                timeout=_timeout(raw.get("timeout", defaults.get("timeout"))),
                container=copy.deepcopy(container),
                gate=None,
                **common,
            )
        )
        values = items[raw["id"]]
        if values is None:
            tasks.append(spec)
            continue
        group, count, matrix = raw["id"], len(values), "matrix" in raw
        for i, (task_id, value) in enumerate(zip(instances[group], values)):
            tasks.append(replace(
                spec,
                id=task_id,
                env={**spec.env, **fanout_env(group, i, count, value, matrix=matrix)},
                fanout={"group": group, "index": i, "count": count, "item": copy.deepcopy(value)},
            ))
    return Workflow(
        api_version=document["apiVersion"],
        name=document["name"],
        description=document.get("description", ""),
        classification=classification,
        tasks=tuple(tasks),
        digest=digest,
    )
