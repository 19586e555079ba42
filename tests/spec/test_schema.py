"""The published JSON Schema stands on its own: any draft 2020-12 validator can use it."""
from __future__ import annotations

import json

import yaml
from jsonschema import Draft202012Validator

from gateway.spec import load_schema
from gateway.spec.schema import SCHEMA_PATH

from .helpers import HEADER, example_bytes


def test_schema_identity_and_meta_validity() -> None:
    schema = load_schema()
    assert schema["$id"] == "https://gatehouse.dev/schemas/workflow-v1.json"
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    Draft202012Validator.check_schema(schema)
    assert schema == json.loads(SCHEMA_PATH.read_text())


def test_load_schema_returns_a_copy() -> None:
    schema = load_schema()
    schema["properties"].clear()
    assert load_schema()["properties"]


def _errors(document: dict) -> list[str]:
    validator = Draft202012Validator(load_schema())
    return [e.message for e in validator.iter_errors(document)]


def test_example_is_valid_for_a_plain_validator() -> None:
    assert _errors(yaml.safe_load(example_bytes())) == []


def test_plain_validator_refuses_structural_errors() -> None:
    base = yaml.safe_load(HEADER + "tasks:\n  - {id: a, run: x}\n")
    gate_with_run = dict(base, tasks=[{"id": "g", "type": "gate", "title": "t", "options": ["ok"], "run": "x"}])
    task_with_options = dict(base, tasks=[{"id": "a", "run": "x", "options": ["ok"]}])
    escalate = dict(base, tasks=[{"id": "g", "type": "gate", "title": "t", "options": ["ok"], "on_timeout": "escalate"}])
    for bad in (gate_with_run, task_with_options, escalate, dict(base, tasks=[]), dict(base, apiVersion="v1")):
        assert _errors(bad), bad


# ---------------------------------------------------------------- the fast validator agrees

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from gateway.spec.schema import _fast_validator, _validator  # noqa: E402

_KEYS = sorted({*load_schema()["$defs"]["plainTask"]["properties"], *load_schema()["$defs"]["gateTask"]["properties"],
                "x-note", "unknown"})
# Strings chosen to sit on the edges of the schema's patterns and lengths: identifiers with a final
# newline (Python's "$" would take them), non-ASCII digits and spaces, durations with and without units.
_TEXT = st.sampled_from([
    "", " ", "a", "t0", "t0\n", "T-9_x", "-x", "a/b", "a/b\n", "root/out.txt", "٣", "a\u00a0b", "1h30m", "1.5",
    " 5s ", "5 s", "h", "0", "10ms", "1w2d", "SECRET", "SECRET//NATO", "local", "slurm", "confirm", "x" * 101,
]) | st.text(max_size=12)
_SCALAR = st.none() | st.booleans() | st.integers(-3, 1 << 40) | st.floats(allow_nan=False, allow_infinity=False) | _TEXT
_VALUE = st.recursive(_SCALAR, lambda inner: st.lists(inner, max_size=3)
                      | st.dictionaries(_TEXT | st.sampled_from(_KEYS), inner, max_size=3), max_leaves=8)
# Mostly a valid plain task or gate with a few keys set to a plausible value or to anything at all, so
# that both answers come up often.
_PLAUSIBLE = {
    "id": st.sampled_from(["t", "t0", "T-9_x", "t0\n", "-x"]), "needs": st.sampled_from([[], ["a"], ["a", "a"], "a"]),
    "run": st.sampled_from(["true", "", {"script": "echo"}, ["sh", "-c", "true"], []]),
    "timeout": st.sampled_from(["1h30m", "1.5", " 5s ", "5 s", "h", 30, -1]),
    "retries": st.sampled_from([0, 3, {"count": 2, "backoff": "1s"}, -1, True]),
    "classification": st.sampled_from(["SECRET", "", " ", "SECRET//NATO"]),
    "env": st.sampled_from([{}, {"A": "1"}, {"A": 1}, {"": "x"}]),
    "title": st.sampled_from(["Check", "", "x" * 501]), "options": st.sampled_from([["ok"], [], ["ok", "ok"]]),
    "foreach": st.sampled_from([[1, 2], [], "x", [[1]]]), "matrix": st.sampled_from([{"a": [1]}, {}, {"a": []}]),
    "shows": st.sampled_from([["a/b"], ["a/b", "a/b"], ["a"]]), "required_approvals": st.sampled_from([1, 0, 2.0, True]),
}
_GATE_KEYS = {"title", "options", "shows", "required_approvals"}
_PLAIN_KEYS = {"run", "timeout", "retries", "env", "foreach", "matrix"}


def _near(base: dict, keys: set[str]):
    names = sorted((set(_PLAUSIBLE) - _GATE_KEYS - _PLAIN_KEYS) | keys)
    return st.builds(
        lambda changes: {**base, **changes},
        st.dictionaries(st.sampled_from(_KEYS), _VALUE, max_size=1)
        | st.lists(st.sampled_from(names), max_size=3, unique=True).flatmap(
            lambda chosen: st.fixed_dictionaries({k: _PLAUSIBLE[k] for k in chosen})),
    )


_NEAR_VALID = _near({"id": "t", "run": "true"}, _PLAIN_KEYS) | _near(
    {"id": "g", "type": "gate", "title": "Check", "options": ["confirm", "reject"]}, _GATE_KEYS)
_TASK = _NEAR_VALID | _NEAR_VALID | _NEAR_VALID | st.dictionaries(st.sampled_from(_KEYS), _VALUE, max_size=6)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(tasks=st.lists(_TASK, max_size=2), extra=st.dictionaries(st.sampled_from(
    ["name", "description", "classification", "defaults", "x-common", "other"]), _VALUE, max_size=2))
def test_the_fast_validator_and_the_reference_agree(tasks, extra) -> None:
    document = {"apiVersion": "gatehouse/v1", "kind": "Workflow", "name": "test", "tasks": tasks, **extra}
    reference = not any(True for _ in _validator().iter_errors(document))
    assert _fast_validator().is_valid(document) is reference, document


def test_the_fast_validator_accepts_the_example_and_refuses_a_trailing_newline() -> None:
    example = yaml.safe_load(example_bytes())
    assert _fast_validator().is_valid(example)
    bad = dict(example, tasks=[dict(example["tasks"][0], id="ingest\n")])
    assert not _fast_validator().is_valid(bad)
    assert any(True for _ in _validator().iter_errors(bad))
