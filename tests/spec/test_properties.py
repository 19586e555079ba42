"""Property-based tests: random DAGs, random cycles, and fuzzed input that must only ever
produce a Workflow or a SpecError."""
from __future__ import annotations

import copy
import graphlib
import json
import os

import pytest
import yaml
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from gateway.spec import SpecError, Workflow, parse_workflow

from .helpers import HEADER, example_bytes

# GATEHOUSE_FUZZ_EXAMPLES=5000 runs a much longer search; no example database is written.
SCALE = max(1, int(os.environ.get("GATEHOUSE_FUZZ_EXAMPLES", "300"))) / 300
SETTINGS = settings(
    max_examples=int(150 * SCALE), deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
)


def fuzz(examples: int) -> settings:
    return settings(max_examples=int(examples * SCALE), deadline=None, database=None)


@st.composite
def dags(draw, max_tasks: int = 25):
    """``(needs, file_order, gates)``: task i needs only tasks with smaller indices; the
    tasks are written to the file in a random order so needs also point forwards in it."""
    n = draw(st.integers(1, max_tasks))
    needs = [sorted(draw(st.sets(st.integers(0, i - 1), max_size=min(i, 4)))) if i else [] for i in range(n)]
    order = draw(st.permutations(range(n)))
    gates = draw(st.sets(st.integers(0, n - 1), max_size=n // 3))
    return needs, order, gates


def render(needs: list[list[int]], order: list[int], gates: set[int]) -> tuple[str, dict[int, int], dict[int, int]]:
    """The workflow YAML, the line of each task and the line of each task's needs."""
    lines = HEADER.splitlines() + ["tasks:"]
    task_line: dict[int, int] = {}
    needs_line: dict[int, int] = {}
    for i in order:
        task_line[i] = len(lines) + 1
        lines.append(f"  - id: t{i}")
        if needs[i]:
            needs_line[i] = len(lines) + 1
            lines.append("    needs: [" + ", ".join(f"t{j}" for j in needs[i]) + "]")
        source = needs[i][0] if needs[i] else None
        artefact = None if source is None else f"t{source}/{'input' if source in gates else 'out'}"
        if i in gates:
            lines += ["    type: gate", f"    title: Check {i}", "    options: [approve, reject]"]
            if artefact and source not in gates:
                lines.append(f"    shows: [{artefact}]")
        else:
            lines += [f"    run: echo {i} > out.txt", "    outputs: [{name: out, path: out.txt}]"]
            if artefact:
                lines.append(f"    inputs: [{{from: {artefact}, path: in/{source}}}]")
    return "\n".join(lines) + "\n", task_line, needs_line


@SETTINGS
@given(dags())
def test_random_dags_parse_and_order_respects_needs(dag) -> None:
    needs, order, gates = dag
    text, task_line, _ = render(needs, order, gates)
    wf = parse_workflow(text)
    assert [t.id for t in wf.tasks] == [f"t{i}" for i in order]
    position = {task_id: p for p, task_id in enumerate(wf.topological_order())}
    assert sorted(position) == sorted(f"t{i}" for i in order)
    for i, deps in enumerate(needs):
        task = wf.task(f"t{i}")
        assert task.needs == tuple(f"t{j}" for j in deps)
        assert task.kind == ("gate" if i in gates else "task")
        assert task.line == task_line[i]
        for j in deps:
            assert position[f"t{j}"] < position[f"t{i}"]
            assert f"t{i}" in wf.dependants()[f"t{j}"]
    assert Workflow.from_dict(json.loads(json.dumps(wf.to_dict(), allow_nan=False))) == wf


def _ancestors(needs: list[list[int]], i: int) -> set[int]:
    seen, todo = set(), list(needs[i])
    while todo:
        j = todo.pop()
        if j not in seen:
            seen.add(j)
            todo.extend(needs[j])
    return seen


def _check_cycle_issues(found, needs: list[list[int]], needs_line: dict[int, int]) -> None:
    """Every cycle issue names a real cycle and points at the needs entry that starts it."""
    cycles = [i for i in found if i.code == "cycle"]
    assert cycles
    messages = [i.message for i in cycles]
    assert len(messages) == len(set(messages)), "a cycle was reported twice"
    for issue in cycles:
        assert issue.message.startswith("cycle: ")
        names = issue.message[len("cycle: "):].split(" -> ")
        assert len(names) >= 3 and names[0] == names[-1]
        assert len(set(names[:-1])) == len(names) - 1, "a cycle path must not repeat a task"
        for a, b in zip(names, names[1:]):
            assert int(b[1:]) in needs[int(a[1:])], f"{a} does not need {b}"
        assert issue.task_id == names[0]
        assert issue.line == needs_line[int(names[0][1:])]


@SETTINGS
@given(dags(), st.data())
def test_a_back_edge_to_a_descendant_is_reported_as_a_real_cycle(dag, data) -> None:
    needs, order, gates = dag
    candidates = [j for j in range(len(needs)) if _ancestors(needs, j)]
    assume(candidates)
    j = data.draw(st.sampled_from(candidates))
    i = data.draw(st.sampled_from(sorted(_ancestors(needs, j))))
    needs = copy.deepcopy(needs)
    needs[i].append(j)  # j already depends on i, so i needing j closes a cycle
    text, _, needs_line = render(needs, order, gates)
    with pytest.raises(SpecError) as caught:
        parse_workflow(text)
    assert {issue.code for issue in caught.value.issues} == {"cycle"}
    _check_cycle_issues(caught.value.issues, needs, needs_line)


@SETTINGS
@given(dags(), st.lists(st.tuples(st.integers(0, 24), st.integers(0, 24)), min_size=1, max_size=4))
def test_random_extra_needs_agree_with_graphlib(dag, extra) -> None:
    needs, order, gates = dag
    n = len(needs)
    needs = copy.deepcopy(needs)
    for a, b in extra:
        a, b = a % n, b % n
        if a != b and b not in needs[a]:
            needs[a].append(b)
    text, _, needs_line = render(needs, order, gates)
    try:
        graphlib.TopologicalSorter({i: needs[i] for i in range(n)}).prepare()
        cyclic = False
    except graphlib.CycleError:
        cyclic = True
    if not cyclic:
        # the inputs/shows in render() point at a direct need, so they stay valid
        wf = parse_workflow(text)
        assert len(wf.topological_order()) == n
        return
    with pytest.raises(SpecError) as caught:
        parse_workflow(text)
    _check_cycle_issues(caught.value.issues, needs, needs_line)


# -- fuzzing: nothing but Workflow or SpecError may come out ------------------------------


def _parse_or_spec_error(data) -> None:
    try:
        parse_workflow(data)
    except SpecError as exc:
        assert exc.issues
        for issue in exc.issues:
            assert issue.code and issue.message
            assert issue.line is None or issue.line >= 1


@fuzz(300)
@given(st.binary(max_size=400))
def test_random_bytes(data: bytes) -> None:
    _parse_or_spec_error(data)


@fuzz(300)
@given(st.lists(st.sampled_from(list("ab:-[]{},&*!|>'\"#\n ?~0.%@`") + ["\t", "<<", "id", "tasks", "\n  ", "---"]), max_size=80).map("".join))
def test_random_yaml_like_text(text: str) -> None:
    _parse_or_spec_error(HEADER + text)
    _parse_or_spec_error(text)


EXAMPLE_LINES = example_bytes().decode().splitlines()


@fuzz(200)
@given(st.lists(st.tuples(st.integers(0, len(EXAMPLE_LINES) - 1), st.sampled_from(["delete", "duplicate", "swap", "truncate"])), min_size=1, max_size=3))
def test_mutated_example(edits) -> None:
    lines = list(EXAMPLE_LINES)
    for index, edit in edits:
        index %= len(lines)
        if edit == "delete":
            del lines[index]
        elif edit == "duplicate":
            lines.insert(index, lines[index])
        elif edit == "swap" and index + 1 < len(lines):
            lines[index], lines[index + 1] = lines[index + 1], lines[index]
        else:
            lines[index] = lines[index][: len(lines[index]) // 2]
        if not lines:
            break
    _parse_or_spec_error("\n".join(lines) + "\n")


JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(10**12), 10**12) | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=12),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3),
    max_leaves=8,
)
TASK_KEYS = [
    "id", "type", "needs", "run", "backend", "resources", "env", "inputs", "outputs", "retries", "timeout",
    "classification", "container", "title", "instructions", "shows", "options", "form", "approvers",
    "required_approvals", "on_timeout", "escalate_to", "description",
]  # fmt: skip
DOCUMENT = yaml.safe_load(example_bytes())


@fuzz(300)
@given(st.integers(0, 5), st.sampled_from(TASK_KEYS), JSON, st.booleans())
def test_random_values_in_known_places(task_index: int, key: str, value, nested: bool) -> None:
    """Every semantic check must cope with values of any type the schema already refused."""
    document = copy.deepcopy(DOCUMENT)
    task = document["tasks"][task_index]
    if nested and isinstance(task.get(key), list) and task[key]:
        task[key][0] = value  # e.g. one needs entry, one input, one option
    elif nested and isinstance(task.get(key), dict) and task[key]:
        task[key][next(iter(task[key]))] = value
    else:
        task[key] = value
    _parse_or_spec_error(yaml.safe_dump(document, sort_keys=False))


@fuzz(100)
@given(st.sampled_from(["apiVersion", "kind", "name", "description", "classification", "defaults", "tasks"]), JSON)
def test_random_values_at_top_level(key: str, value) -> None:
    document = copy.deepcopy(DOCUMENT)
    document[key] = value
    _parse_or_spec_error(yaml.safe_dump(document, sort_keys=False))
