"""Valid workflows parse into the expected dataclasses, with defaults applied."""
from __future__ import annotations

import hashlib

import pytest

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
    parse_workflow,
)

from .helpers import HEADER, example_bytes, parse


@pytest.fixture(scope="module")
def example() -> Workflow:
    return parse(example_bytes())


def test_workflow_fields(example: Workflow) -> None:
    assert example.api_version == "gatehouse/v1"
    assert example.name == "threat-validation"
    assert example.description == "Detect threats in sensor data and have an analyst validate them."
    assert example.classification == "OFFICIAL"
    assert example.digest == hashlib.sha256(example_bytes()).hexdigest()
    assert [t.id for t in example.tasks] == ["ingest", "detect", "validate", "retrain", "publish", "statistics"]
    assert [t.kind for t in example.tasks] == ["task", "task", "gate", "task", "task", "task"]
    assert [t.id for t in example.gates] == ["validate"]


def test_ingest(example: Workflow) -> None:
    ingest = example.task("ingest")
    assert ingest == TaskSpec(
        id="ingest",
        kind="task",
        needs=(),
        run=RunSpec(shell="python3 make.py > sensor.json"),
        backend="local",
        resources={"cpus": 1, "memory": "512M", "time": "10m"},
        env={"LOG_LEVEL": "info", "SOURCE": "sensor-array-7"},  # defaults merged in
        inputs=(),
        outputs=(OutputSpec("sensor-data", "sensor.json", "application/json"),),  # media type guessed
        retries=RetrySpec(count=0),
        timeout=3600.0,  # defaults.timeout: 1h
        classification="OFFICIAL",  # the workflow's classification
        container=None,
        gate=None,
        line=17,
    )
    assert ingest.run.argv() == ["/bin/sh", "-c", "python3 make.py > sensor.json"]


def test_detect(example: Workflow) -> None:
    detect = example.task("detect")
    assert detect.needs == ("ingest",)
    assert detect.inputs == (InputSpec(ArtefactRef("ingest", "sensor-data"), "in/sensor.json"),)
    assert detect.run.argv("ignored") == ["python3", "detect.py", "--input", "in/sensor.json", "--output", "detections.json"]
    assert detect.retries == RetrySpec(count=2, initial=1.0, factor=2.0, max=300.0)
    assert detect.timeout == 1800.0
    assert detect.classification == "SECRET"
    assert detect.outputs == (OutputSpec("detections", "detections.json", "application/json"),)
    assert detect.line == 25


def test_gate(example: Workflow) -> None:
    validate = example.task("validate")
    assert validate.kind == "gate" and validate.is_gate
    assert validate.run is None and validate.backend == "" and validate.outputs == () and validate.timeout is None
    assert validate.output_names() == ("input",)
    assert validate.classification == "OFFICIAL"
    gate = validate.gate
    assert isinstance(gate, GateSpec)
    assert gate.title == "Validate detected threats"
    assert gate.instructions.startswith("Check each detection")
    assert gate.shows == (ArtefactRef("detect", "detections"),)
    assert gate.options == (
        GateOption("confirm", "Confirm", "approve"),
        GateOption("correct", "Confirm with corrections", "approve"),
        GateOption("reject", "Reject", "reject"),
    )
    assert gate.option("reject").outcome == "reject"
    assert gate.option("maybe") is None
    assert gate.form["properties"]["labels"]["items"]["required"] == ["id", "label"]
    assert gate.approvers == ("analyst",)
    assert gate.required_approvals == 1
    assert gate.timeout == 86400.0
    assert gate.on_timeout == "escalate"
    assert gate.escalate_to == ("senior-analyst",)


def test_retrain_and_publish(example: Workflow) -> None:
    retrain = example.task("retrain")
    assert retrain.inputs == (InputSpec(ArtefactRef("validate", "input"), "labels.json"),)
    assert retrain.run == RunSpec(script="set -eu\npython3 train.py --labels labels.json --out model.bin\n", interpreter="/bin/bash")
    assert retrain.run.argv("/work/run.sh") == ["/bin/bash", "/work/run.sh"]
    assert retrain.resources == {"cpus": 4, "memory": "8G", "gpus": 1, "partition": "gpu"}
    assert retrain.outputs[0].media_type == "application/octet-stream"  # .bin: nothing better to guess
    publish = example.task("publish")
    assert publish.needs == ("retrain", "statistics")
    assert str(publish.inputs[2].ref) == "detect/detections"  # a transitive ancestor is fine
    assert publish.outputs[0].media_type == "text/markdown"
    assert example.task("statistics").outputs[0].media_type == "text/csv"


def test_graph_helpers(example: Workflow) -> None:
    order = example.topological_order()
    assert order == ["ingest", "detect", "validate", "retrain", "statistics", "publish"]
    assert example.dependants() == {
        "ingest": ("detect", "statistics"),
        "detect": ("validate",),
        "validate": ("retrain",),
        "retrain": ("publish",),
        "publish": (),
        "statistics": ("publish",),
    }
    with pytest.raises(KeyError, match="nope"):
        example.task("nope")


def test_text_and_bytes_parse_the_same() -> None:
    data = example_bytes()
    assert parse(data.decode()) == parse(data)
    assert parse(bytearray(data)) == parse(memoryview(data))


def test_minimal_workflow_defaults() -> None:
    wf = parse(HEADER + "tasks:\n  - id: only\n    run: echo hi\n")
    task = wf.tasks[0]
    assert wf.description == "" and wf.classification == "UNCLASSIFIED"
    assert task.backend == "local" and task.retries == RetrySpec() and task.timeout is None
    assert task.classification == "UNCLASSIFIED" and task.env == {} and task.resources == {} and task.container is None


def test_classification_falls_back_task_defaults_workflow() -> None:
    text = HEADER + (
        "classification: OFFICIAL\n"
        "defaults: {classification: RESTRICTED}\n"
        "tasks:\n"
        "  - {id: a, run: x, classification: SECRET}\n"
        "  - {id: b, run: x}\n"
        "  - {id: g, type: gate, title: t, options: [ok]}\n"
    )
    wf = parse(text)
    assert [t.classification for t in wf.tasks] == ["SECRET", "RESTRICTED", "RESTRICTED"]
    assert wf.classification == "OFFICIAL"
    no_defaults = parse(HEADER + "classification: OFFICIAL\ntasks:\n  - {id: a, run: x}\n")
    assert no_defaults.tasks[0].classification == "OFFICIAL"


def test_defaults_are_merged_into_plain_tasks() -> None:
    text = HEADER + (
        "defaults:\n"
        "  backend: slurm\n"
        "  retries: 3\n"
        "  timeout: 90\n"
        "  env: {A: '1', B: '2'}\n"
        "  resources: {cpus: 2, partition: short}\n"
        "  container: {image: 'python:3.12'}\n"
        "tasks:\n"
        "  - id: a\n"
        "    run: x\n"
        "    backend: local\n"
        "    env: {B: three}\n"
        "    resources: {cpus: 8}\n"
        "    container: {image: 'alpine:3', options: [--read-only]}\n"
        "    retries: {count: 1, backoff: {initial: 500ms, factor: 3, max: 1m}}\n"
        "    timeout: 1h30m\n"
        "  - {id: b, run: x}\n"
        "  - {id: g, type: gate, title: t, options: [ok]}\n"
    )
    a, b, g = parse(text).tasks
    assert (a.backend, b.backend) == ("local", "slurm")
    assert a.env == {"A": "1", "B": "three"} and b.env == {"A": "1", "B": "2"}
    assert a.resources == {"cpus": 8, "partition": "short"} and b.resources == {"cpus": 2, "partition": "short"}
    assert a.container == {"image": "alpine:3", "options": ["--read-only"]} and b.container == {"image": "python:3.12"}
    assert a.retries == RetrySpec(count=1, initial=0.5, factor=3.0, max=60.0) and b.retries == RetrySpec(count=3)
    assert (a.timeout, b.timeout) == (5400.0, 90.0)
    # Task defaults do not apply to gates: a gate's deadline is its own timeout.
    assert g.backend == "" and g.env == {} and g.timeout is None and g.gate.timeout is None and g.retries == RetrySpec()


def test_gate_defaults_and_option_forms() -> None:
    text = HEADER + (
        "tasks:\n"
        "  - id: g\n"
        "    type: gate\n"
        "    title: Decide\n"
        "    options: [go_ahead, deny, {name: send-back, outcome: reject}, {name: reject, label: No}]\n"
        "    approvers: lead\n"
        "    required_approvals: 2\n"
    )
    gate = parse(text).tasks[0].gate
    assert gate.options == (
        GateOption("go_ahead", "Go ahead", "approve"),
        GateOption("deny", "Deny", "reject"),
        GateOption("send-back", "Send back", "reject"),
        GateOption("reject", "No", "reject"),
    )
    assert gate.approvers == ("lead",) and gate.required_approvals == 2
    assert gate.instructions == "" and gate.shows == () and gate.form is None
    assert gate.on_timeout == "reject" and gate.escalate_to == () and gate.timeout is None
    assert parse(HEADER + "tasks:\n  - {id: g, type: gate, title: t, options: [ok]}\n").tasks[0].gate.approvers == ("analyst",)


def test_run_forms() -> None:
    text = HEADER + (
        "tasks:\n"
        "  - {id: a, run: 'echo $HOME'}\n"
        "  - {id: b, run: {command: [echo, '$HOME']}}\n"
        "  - {id: c, run: {script: \"echo 1\\necho 2\\n\"}}\n"
    )
    a, b, c = (t.run for t in parse(text).tasks)
    assert a.argv() == ["/bin/sh", "-c", "echo $HOME"]
    assert b.argv() == ["echo", "$HOME"]
    assert c.interpreter == "/bin/sh" and c.argv("s.sh") == ["/bin/sh", "s.sh"]
    with pytest.raises(ValueError):
        c.argv()
    with pytest.raises(ValueError):
        RunSpec()
    with pytest.raises(ValueError):
        RunSpec(shell="x", script="y")


def test_retry_delay() -> None:
    retry = RetrySpec(count=5, initial=2.0, factor=3.0, max=100.0)
    assert [retry.delay(n) for n in (1, 2, 3, 4, 5)] == [2.0, 6.0, 18.0, 54.0, 100.0]
    assert RetrySpec().delay(10_000) == 300.0  # no OverflowError
    assert RetrySpec(factor=1.0, initial=5.0).delay(50) == 5.0
    with pytest.raises(ValueError):
        retry.delay(0)


def test_yaml_12_scalars_stay_strings() -> None:
    # PyYAML's YAML 1.1 rules would turn these into True, 90 and a date.
    text = HEADER + "tasks:\n  - {id: a, run: x, env: {A: yes, B: '1:30', C: 2024-01-01, D: on}, classification: no}\n"
    task = parse(text).tasks[0]
    assert task.env == {"A": "yes", "B": "1:30", "C": "2024-01-01", "D": "on"}
    assert task.classification == "no"


def test_anchors_merge_keys_and_extension_keys() -> None:
    text = HEADER + (
        "x-common: &common\n"
        "  run: python3 step.py\n"
        "  resources: {cpus: 2}\n"
        "  retries: 1\n"
        "tasks:\n"
        "  - <<: *common\n"
        "    id: a\n"
        "  - <<: *common\n"
        "    id: b\n"
        "    needs: [a]\n"
        "    retries: 4\n"
    )
    a, b = parse(text).tasks
    assert a.run == b.run == RunSpec(shell="python3 step.py")
    assert a.resources == {"cpus": 2} and a.resources is not b.resources  # aliases are not shared
    assert (a.retries.count, b.retries.count) == (1, 4)


def test_media_types() -> None:
    outputs = "[" + ", ".join(f"{{name: o{i}, path: {p}}}" for i, p in enumerate(["a.json", "b.csv", "c.unknownext", "d", "e.yaml", "f.png"])) + "]"
    task = parse(HEADER + f"tasks:\n  - {{id: a, run: x, outputs: {outputs}}}\n").tasks[0]
    assert [o.media_type for o in task.outputs] == [
        "application/json",
        "text/csv",
        "application/octet-stream",
        "application/octet-stream",
        "application/yaml",
        "image/png",
    ]
    explicit = parse(HEADER + "tasks:\n  - {id: a, run: x, outputs: [{name: o, path: a.json, media_type: text/plain}]}\n")
    assert explicit.tasks[0].outputs[0].media_type == "text/plain"


def test_limits_are_configurable() -> None:
    from gateway.spec import Limits, SpecError

    text = HEADER + "tasks:\n" + "".join(f"  - {{id: t{i}, run: x}}\n" for i in range(3))
    assert len(parse(text, Limits(max_tasks=3)).tasks) == 3
    with pytest.raises(SpecError) as caught:
        parse_workflow(text, limits=Limits(max_tasks=2))
    assert caught.value.codes == ["too_many_tasks"]
