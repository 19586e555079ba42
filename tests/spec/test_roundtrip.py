"""``to_dict`` is JSON-serialisable and ``from_dict`` rebuilds an equal object."""
from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.spec import (
    ArtefactRef,
    GateOption,
    GateSpec,
    InputSpec,
    OutputSpec,
    RetrySpec,
    RunSpec,
    TaskSpec,
    Workflow,
)

from .helpers import example_bytes, parse


def through_json(d: dict) -> dict:
    return json.loads(json.dumps(d, allow_nan=False))


def test_example_round_trips() -> None:
    wf = parse(example_bytes())
    again = Workflow.from_dict(through_json(wf.to_dict()))
    assert again == wf
    assert again.task("validate").gate == wf.task("validate").gate
    assert again.topological_order() == wf.topological_order()
    for task in wf.tasks:
        assert TaskSpec.from_dict(through_json(task.to_dict())) == task


def test_to_dict_shape_and_copies() -> None:
    wf = parse(example_bytes())
    d = wf.task("validate").to_dict()
    assert d["kind"] == "gate" and d["run"] is None and d["needs"] == ["detect"]
    assert d["gate"]["options"][2] == {"name": "reject", "label": "Reject", "outcome": "reject"}
    assert wf.task("ingest").to_dict()["outputs"] == [
        {"name": "sensor-data", "path": "sensor.json", "media_type": "application/json"}
    ]
    assert wf.task("detect").to_dict()["inputs"] == [{"from": "ingest/sensor-data", "path": "in/sensor.json"}]
    d["gate"]["form"]["type"] = "changed"  # the dict is a copy: the frozen object is unaffected
    assert wf.task("validate").gate.form["type"] == "object"
    assert set(wf.to_dict()) == {"api_version", "name", "description", "classification", "digest", "tasks"}


def test_frozen_objects_are_hashable() -> None:
    wf = parse(example_bytes())
    assert len({task for task in wf.tasks}) == len(wf.tasks)
    assert hash(wf) == hash(Workflow.from_dict(wf.to_dict()))


# -- hypothesis: arbitrary specs, not only ones a YAML file would produce -----------------

ids = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_-]{0,10}", fullmatch=True)
names = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,10}", fullmatch=True)
text = st.text(max_size=20)
seconds = st.floats(min_value=0, max_value=1e9, allow_nan=False)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.floats(allow_nan=False, allow_infinity=False) | text,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(text, inner, max_size=3),
    max_leaves=10,
)
refs = st.builds(ArtefactRef, ids, names)
runs = st.one_of(
    st.builds(RunSpec, shell=text),
    st.builds(RunSpec, command=st.lists(text, min_size=1, max_size=4).map(tuple)),
    st.builds(RunSpec, script=text, interpreter=text),
)
retries = st.builds(RetrySpec, count=st.integers(0, 100), initial=seconds, factor=st.floats(1, 100), max=seconds)
common = dict(
    id=ids,
    needs=st.lists(ids, max_size=4).map(tuple),
    classification=text,
    line=st.none() | st.integers(1, 10**6),
)
plain_tasks = st.builds(
    TaskSpec,
    kind=st.just("task"),
    run=runs,
    backend=text,
    resources=st.dictionaries(text, json_values, max_size=4),
    env=st.dictionaries(text, text, max_size=4),
    inputs=st.lists(st.builds(InputSpec, refs, text), max_size=3).map(tuple),
    outputs=st.lists(st.builds(OutputSpec, names, text, text), max_size=3).map(tuple),
    retries=retries,
    timeout=st.none() | seconds,
    container=st.none() | st.dictionaries(text, json_values, max_size=3),
    gate=st.none(),
    **common,
)
gates = st.builds(
    GateSpec,
    title=text,
    instructions=text,
    shows=st.lists(refs, max_size=3).map(tuple),
    options=st.lists(st.builds(GateOption, names, text, st.sampled_from(["approve", "reject"])), min_size=1, max_size=4).map(tuple),
    form=st.none() | st.dictionaries(text, json_values, max_size=3),
    approvers=st.lists(text, min_size=1, max_size=3).map(tuple),
    required_approvals=st.integers(1, 10),
    timeout=st.none() | seconds,
    on_timeout=st.sampled_from(["reject", "expire", "escalate"]),
    escalate_to=st.lists(text, max_size=2).map(tuple),
)
gate_tasks = st.builds(TaskSpec, kind=st.just("gate"), run=st.none(), backend=st.just(""), gate=gates, **common)
tasks = plain_tasks | gate_tasks


@settings(max_examples=300, deadline=None, database=None)
@given(tasks)
def test_task_spec_round_trips(task: TaskSpec) -> None:
    assert TaskSpec.from_dict(through_json(task.to_dict())) == task


@settings(max_examples=100, deadline=None, database=None)
@given(st.lists(tasks, max_size=5, unique_by=lambda t: t.id), ids, text, st.from_regex(r"[0-9a-f]{64}", fullmatch=True))
def test_workflow_round_trips(task_list, name, description, digest) -> None:
    wf = Workflow("gatehouse/v1", name, description, "UNCLASSIFIED", tuple(task_list), digest)
    again = Workflow.from_dict(through_json(wf.to_dict()))
    assert again == wf
    for task in task_list:
        assert again.task(task.id) == task
