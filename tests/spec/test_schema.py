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
