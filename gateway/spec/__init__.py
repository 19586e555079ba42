"""Gatehouse workflow specifications (``apiVersion: gatehouse/v1``): parsing and validation.

Pure Python (no Django).  The entry point is :func:`parse_workflow`, which turns an
untrusted YAML file into an immutable :class:`Workflow` or raises :class:`SpecError` with
every :class:`SpecIssue` found (each with a stable code, line, task id and JSON pointer).

>>> wf = parse_workflow(open("workflow.yaml", "rb").read(), filename="workflow.yaml")  # doctest: +SKIP
>>> wf.topological_order()  # doctest: +SKIP
"""
from .durations import parse_duration
from .errors import ISSUE_CODES, Limits, SpecError, SpecIssue
from .model import (
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
from .parser import parse_workflow
from .schema import load_schema

__all__ = [
    "ISSUE_CODES",
    "ArtefactRef",
    "GateOption",
    "GateSpec",
    "InputSpec",
    "Limits",
    "OutputSpec",
    "RetrySpec",
    "RunSpec",
    "SpecError",
    "SpecIssue",
    "TaskSpec",
    "Workflow",
    "load_schema",
    "parse_duration",
    "parse_workflow",
]
