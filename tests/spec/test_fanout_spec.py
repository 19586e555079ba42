"""Fan-out in the workflow file: ``foreach`` and ``matrix`` expand, in the spec layer, into plain
task instances ``<id>[<i>]``; a task that needs a fan-out task needs every instance; an input
from one is staged per instance under ``<path>/<i>``. Every bad form is refused with its code,
task and line, and sizes are checked before anything is expanded."""
from __future__ import annotations

import io
import json
import time
import tracemalloc

import pytest

from gateway.spec import Limits, SpecError, TaskSpec, Workflow, load_schema, parse_workflow
from gateway.spec.cli import validate_command

from .helpers import HEADER, issues, line_of, only, parse

T = HEADER + "tasks:\n"

#: The issue codes of fan-out; tests/spec/test_errors.py counts them as tested here.
FANOUT_CODES = {"bad_fanout", "fanout_conflict", "gate_fanout", "too_many_instances", "fanout_id_too_long",
                "fanout_input_path", "too_many_edges"}

PIPELINE = T + """\
  - id: prep
    run: echo p > p.txt
    outputs: [{name: p, path: p.txt}]
  - id: score
    needs: [prep]
    foreach: [alpha, 2, {x: 1, y: [1, 2]}, null]
    env: {MODE: fast, GATEHOUSE_INDEX: "overridden"}
    run: echo "$GATEHOUSE_ITEM" > out.txt
    inputs: [{from: prep/p, path: in.txt}]
    outputs: [{name: out, path: out.txt}]
  - id: grid
    matrix: {lr: [0.1, 0.01], depth: [2, "x y"], on: [true]}
    run: echo "$GATEHOUSE_MATRIX_LR"
  - id: join
    needs: [score, grid]
    run: cat scores/*
    inputs: [{from: score/out, path: scores}, {from: prep/p, path: p.txt}]
  - id: check
    type: gate
    title: Look at the scores
    needs: [join]
    shows: [score/out]
    options: [approve, reject]
"""


def test_foreach_expands_into_instances_with_their_item():
    wf = parse(PIPELINE)
    ids = [t.id for t in wf.tasks]
    assert ids == ["prep", "score[0]", "score[1]", "score[2]", "score[3]",
                   "grid[0]", "grid[1]", "grid[2]", "grid[3]", "join", "check"]
    items = ["alpha", 2, {"x": 1, "y": [1, 2]}, None]
    for i, item in enumerate(items):
        task = wf.task(f"score[{i}]")
        assert task.fanout == {"group": "score", "index": i, "count": 4, "item": item}
        assert task.group == "score" and task.needs == ("prep",)
        assert task.env["GATEHOUSE_INDEX"] == str(i)  # the fan-out's variables win over the task's own
        assert task.env["GATEHOUSE_COUNT"] == "4" and task.env["GATEHOUSE_FANOUT"] == "score"
        assert json.loads(task.env["GATEHOUSE_ITEM"]) == item
        assert task.env["MODE"] == "fast"
        assert [str(x.ref) for x in task.inputs] == ["prep/p"] and task.line == line_of(
            PIPELINE.replace("  - id: score\n", "  - id: score  #@here\n"))
        assert [o.name for o in task.outputs] == ["out"]
    assert wf.task("prep").fanout is None and wf.task("prep").group == "prep"


def test_matrix_is_the_cartesian_product_last_name_fastest():
    wf = parse(PIPELINE)
    grid = [wf.task(f"grid[{i}]") for i in range(4)]
    assert [g.fanout["item"] for g in grid] == [
        {"lr": 0.1, "depth": 2, "on": True}, {"lr": 0.1, "depth": "x y", "on": True},
        {"lr": 0.01, "depth": 2, "on": True}, {"lr": 0.01, "depth": "x y", "on": True}]
    assert [(g.env["GATEHOUSE_MATRIX_LR"], g.env["GATEHOUSE_MATRIX_DEPTH"], g.env["GATEHOUSE_MATRIX_ON"])
            for g in grid] == [("0.1", "2", "true"), ("0.1", "x y", "true"), ("0.01", "2", "true"),
                               ("0.01", "x y", "true")]
    assert json.loads(grid[1].env["GATEHOUSE_ITEM"]) == {"lr": 0.1, "depth": "x y", "on": True}


MATRIX = T + """\
  - id: grid
    matrix:
      os: [linux, mac]
      py: [3.11, 3.12]
      exclude:
        - {os: mac, py: 3.11}
      include:
        - {os: linux, gpu: true}          # added to every linux combination
        - {os: mac, py: 3.12, note: x}    # added to that one combination
        - {os: windows, py: 3.12}         # agrees with none: a combination of its own
        - {py: 3.11, os: linux, note: y}  # an added value may be replaced; a list's never
    run: echo "$GATEHOUSE_MATRIX_OS"
  - {id: after, needs: [grid], run: x}
"""


def test_matrix_exclude_and_include_work_as_in_github_actions():
    wf = parse(MATRIX)
    grid = [t for t in wf.tasks if t.group == "grid"]
    assert [t.fanout["item"] for t in grid] == [
        {"os": "linux", "py": 3.11, "gpu": True, "note": "y"},
        {"os": "linux", "py": 3.12, "gpu": True},
        {"os": "mac", "py": 3.12, "note": "x"},
        {"os": "windows", "py": 3.12},
    ]
    assert [t.id for t in grid] == [f"grid[{i}]" for i in range(4)]
    assert {t.env["GATEHOUSE_COUNT"] for t in grid} == {"4"}
    assert grid[0].env["GATEHOUSE_MATRIX_GPU"] == "true" and grid[0].env["GATEHOUSE_MATRIX_NOTE"] == "y"
    assert "GATEHOUSE_MATRIX_GPU" not in grid[3].env and grid[3].env["GATEHOUSE_MATRIX_OS"] == "windows"
    assert wf.task("after").needs == tuple(t.id for t in grid)


def test_matrix_values_compare_as_json():
    # 1 and true (and 1 and 1.0 in Python) are different JSON values: exclude {x: true} leaves 1.
    wf = parse(T + "  - id: a\n    matrix:\n      x: [1, true]\n      exclude: [{x: true}]\n    run: x\n")
    assert [t.fanout["item"] for t in wf.tasks] == [{"x": 1}]


def test_a_matrix_of_includes_alone():
    wf = parse(T + "  - id: a\n    matrix:\n      include: [{x: 1}, {x: 2, y: b}]\n    run: x\n")
    assert [t.fanout["item"] for t in wf.tasks] == [{"x": 1}, {"x": 2, "y": "b"}]


def test_the_limit_holds_the_product_and_the_combinations_after_include():
    body = "  - id: a\n    matrix:\n      x: [1, 2, 3]\n      y: [1, 2]\n      exclude: [{x: 1}]\n    run: x\n"
    assert len(parse(T + body, Limits(max_fanout=6)).tasks) == 4  # 6 - 2
    # The product is refused before anything is expanded, whatever exclude would remove.
    assert [i.code for i in issues(T + body, Limits(max_fanout=5))] == ["too_many_instances"]
    with_include = body.replace("    run: x\n", "      include: [{x: 9}, {x: 8}, {x: 7}]\n    run: x\n")
    assert len(parse(T + with_include, Limits(max_fanout=7)).tasks) == 7  # 4 + 3 of their own
    assert [i.code for i in issues(T + with_include, Limits(max_fanout=6))] == ["too_many_instances"]


def test_fan_in_needs_every_instance_and_inputs_are_staged_per_index():
    wf = parse(PIPELINE)
    join = wf.task("join")
    assert join.needs == ("score[0]", "score[1]", "score[2]", "score[3]", "grid[0]", "grid[1]", "grid[2]", "grid[3]")
    assert [(str(i.ref), i.path) for i in join.inputs] == [
        ("score[0]/out", "scores/0"), ("score[1]/out", "scores/1"), ("score[2]/out", "scores/2"),
        ("score[3]/out", "scores/3"), ("prep/p", "p.txt")]
    assert [str(r) for r in wf.task("check").gate.shows] == [f"score[{i}]/out" for i in range(4)]
    order = wf.topological_order()
    assert order.index("join") > max(order.index(f"score[{i}]") for i in range(4))
    assert wf.dependants()["score[2]"] == ("join",)


def test_a_fan_out_needing_a_fan_out_needs_all_of_it():
    wf = parse(T + "  - {id: a, foreach: [1, 2], run: x}\n  - {id: b, needs: [a], foreach: [x, y, z], run: y}\n")
    for j in range(3):
        assert wf.task(f"b[{j}]").needs == ("a[0]", "a[1]")


def test_round_trip_of_instances():
    wf = parse(PIPELINE)
    for task in wf.tasks:
        again = TaskSpec.from_dict(json.loads(json.dumps(task.to_dict())))
        assert again == task and again.fanout == task.fanout and again.env == task.env
    assert Workflow.from_dict(json.loads(json.dumps(wf.to_dict()))) == wf


def test_instance_ids_cannot_collide_with_ids_in_the_file():
    # Brackets are not allowed in a task id, so "a[0]" written in a file is refused...
    text = T + "  - {id: a, foreach: [1], run: x}\n  - id: 'a[0]'  #@here\n    run: y\n"
    issue = only(issues(text), "schema")
    assert issue.line == line_of(text) and "invalid task id" in issue.message
    # ...and a file cannot name an instance in needs either: it names the fan-out task.
    text = T + "  - {id: a, foreach: [1], run: x}\n  - id: b\n    needs: ['a[0]']  #@here\n    run: y\n"
    issue = only(issues(text), "schema")
    assert issue.line == line_of(text) and issue.task_id == "b"


# ---------------------------------------------------------------- every bad form


BAD = [
    ("empty-foreach", "bad_fanout", "a", "  - id: a\n    foreach: []  #@here\n    run: x\n", "at least one item"),
    ("foreach-not-a-list", "bad_fanout", "a", "  - id: a\n    foreach: abc  #@here\n    run: x\n", "must be a list"),
    ("foreach-nested-list", "bad_fanout", "a", "  - id: a\n    foreach:\n      - [1, 2]  #@here\n    run: x\n",
     "not a list"),
    ("both", "fanout_conflict", "a", "  - id: a\n    foreach: [1]\n    matrix: {x: [1]}  #@here\n    run: x\n",
     "either foreach or matrix"),
    ("empty-matrix", "bad_fanout", "a", "  - id: a\n    matrix: {}  #@here\n    run: x\n", "at least one list"),
    ("matrix-list", "bad_fanout", "a", "  - id: a\n    matrix: [1, 2]  #@here\n    run: x\n", "must be a mapping"),
    ("matrix-empty-entry", "bad_fanout", "a", "  - id: a\n    matrix:\n      x: []  #@here\n    run: x\n",
     "at least one value"),
    ("matrix-scalar-entry", "bad_fanout", "a", "  - id: a\n    matrix:\n      x: 3  #@here\n    run: x\n",
     "must be a list of values"),
    ("matrix-bad-name", "bad_fanout", "a", "  - id: a\n    matrix:\n      1x: [1]  #@here\n    run: x\n",
     "invalid matrix name"),
    ("matrix-names-collide", "bad_fanout", "a",
     "  - id: a\n    matrix:\n      lr: [1]\n      LR: [2]  #@here\n    run: x\n", "GATEHOUSE_MATRIX_LR"),
    ("exclude-unknown-name", "bad_fanout", "a",
     "  - id: a\n    matrix:\n      x: [1]\n      exclude:\n        - {y: 1}  #@here\n    run: x\n",
     "exclude names 'y', which is not one of the matrix's lists"),
    ("exclude-everything", "bad_fanout", "a",
     "  - id: a\n    matrix:\n      x: [1, 2]\n      exclude: [{x: 1}, {x: 2}]  #@here\n    run: x\n",
     "removes every combination"),
    ("include-not-a-list", "bad_fanout", "a",
     "  - id: a\n    matrix:\n      x: [1]\n      include: {x: 2}  #@here\n    run: x\n",
     "include must be a list of mappings"),
    ("include-empty-entry", "bad_fanout", "a",
     "  - id: a\n    matrix:\n      x: [1]\n      include:\n        - {}  #@here\n    run: x\n",
     "at least one value"),
    ("include-names-collide", "bad_fanout", "a",
     "  - id: a\n    matrix:\n      lr: [1]\n      include:\n        - {LR: 2}  #@here\n    run: x\n",
     "GATEHOUSE_MATRIX_LR"),
    ("only-exclude", "bad_fanout", "a",
     "  - id: a\n    matrix:  #@here\n      exclude: [{x: 1}]\n    run: x\n", "at least one list"),
    ("gate-foreach", "gate_fanout", "g",
     "  - id: g\n    type: gate\n    title: t\n    options: [ok]\n    foreach: [1, 2]  #@here\n", "cannot fan out"),
    ("gate-matrix", "gate_fanout", "g",
     "  - id: g\n    type: gate\n    title: t\n    options: [ok]\n    matrix: {x: [1]}  #@here\n", "cannot fan out"),
    ("too-many-instances", "too_many_instances", "a",
     "  - id: a\n    foreach: [1, 2, 3, 4, 5, 6]  #@here\n    run: x\n", r"more than 5 instances \(6\); the limit is 5"),
    ("id-too-long", "fanout_id_too_long", "a" * 62,
     f"  - id: {'a' * 62}  #@here\n    foreach: [1, 2]\n    run: x\n", "at most 61"),
    ("input-dir-collides", "fanout_input_path", "b",
     "  - {id: a, foreach: [1], run: x, outputs: [{name: o, path: o}]}\n  - id: b\n    needs: [a]\n    run: y\n"
     "    inputs:\n      - {from: a/o, path: d}  #@here\n      - {from: a/o, path: d/0}\n", "collides"),
]


@pytest.mark.parametrize("case", BAD, ids=[c[0] for c in BAD])
def test_bad_fan_out(case):
    _, code, task, body, message = case
    text = T + body
    found = issues(text, Limits(max_fanout=5))
    issue = only(found, code)
    assert (issue.task_id, issue.line) == (task, line_of(text)), found
    assert __import__("re").search(message, issue.message), issue.message
    assert [i.code for i in found] == [code], found


def test_total_task_limit_counts_instances():
    text = T + "  - id: a\n    foreach: [1, 2, 3, 4, 5, 6]\n    run: x\n  - id: b\n    run: y\n"
    assert len(parse(text, Limits(max_tasks=7)).tasks) == 7
    found = issues(text, Limits(max_tasks=6))
    assert [i.code for i in found] == ["too_many_tasks"]
    assert "expands to 7 tasks" in found[0].message and found[0].line == 4


def test_dependencies_between_instances_are_bounded():
    text = T + ("  - {id: a, foreach: [1, 2, 3, 4], run: x}\n  - {id: b, needs: [a], foreach: [1, 2, 3, 4], run: y}\n"
                "  - {id: c, needs: [b], run: z}  #@here\n")
    assert len(parse(text, Limits(max_edges=20)).tasks) == 9  # 16 + 4 edges
    issue = only(issues(text, Limits(max_edges=19)), "too_many_edges")
    assert (issue.task_id, issue.line) == ("c", line_of(text))


def test_a_huge_matrix_is_refused_before_it_is_expanded():
    values = "[" + ", ".join(str(i) for i in range(100)) + "]"
    text = T + "  - id: big\n    matrix:\n" + "".join(f"      k{i}: {values}\n" for i in range(20)) + "    run: x\n"
    tracemalloc.start()
    started = time.monotonic()
    try:
        found = issues(text)  # 100**20 combinations
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    assert time.monotonic() - started < 5
    assert peak < 50_000_000
    assert [i.code for i in found] == ["too_many_instances"] and found[0].task_id == "big"


def test_schema_ships_foreach_and_matrix():
    schema = load_schema()
    plain = schema["$defs"]["plainTask"]["properties"]
    assert plain["foreach"] == {"$ref": "#/$defs/foreach"} and plain["matrix"] == {"$ref": "#/$defs/matrix"}
    assert "foreach" not in schema["$defs"]["gateTask"]["properties"]


def test_validate_command_exit_codes(tmp_path):
    good, bad = tmp_path / "good.yaml", tmp_path / "bad.yaml"
    good.write_text(PIPELINE)
    bad.write_text(T + "  - id: a\n    foreach: []\n    run: x\n")
    out, err = io.StringIO(), io.StringIO()
    assert validate_command(str(good), stdout=out, stderr=err) == 0
    assert out.getvalue() == f"{good}: OK (11 tasks, 1 gates)\n"
    out, err = io.StringIO(), io.StringIO()
    assert validate_command(str(bad), stdout=out, stderr=err) == 2 and out.getvalue() == ""
    assert err.getvalue() == f"{bad}:6: task 'a': foreach must list at least one item\n"


def test_spec_error_names_task_and_line():
    with pytest.raises(SpecError) as caught:
        parse_workflow(T + "  - id: a\n    foreach: [1, 2]\n    run: x\n", limits=Limits(max_fanout=1))
    assert str(caught.value) == ("<input>:6: task 'a': foreach expands to more than 1 instances (2); "
                                 "the limit is 1 per task")
