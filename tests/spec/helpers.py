"""Helpers for the workflow specification tests (plain pytest, no Django).

Expected error lines are marked in the YAML itself with a ``#@name`` comment, so a test
never hard-codes a line number that silently drifts when the YAML is edited.
"""
from __future__ import annotations

from pathlib import Path

import pytest

from gateway.spec import Limits, SpecError, SpecIssue, Workflow, parse_workflow

FILES = Path(__file__).parent / "files"
EXAMPLE = FILES / "threat-validation.yaml"
HEADER = "apiVersion: gatehouse/v1\nkind: Workflow\nname: test\n"


def example_bytes() -> bytes:
    return EXAMPLE.read_bytes()


def parse(text: str | bytes, limits: Limits | None = None) -> Workflow:
    return parse_workflow(text, filename="test.yaml", limits=limits)


def issues(text: str | bytes, limits: Limits | None = None) -> list[SpecIssue]:
    """The issues a (necessarily invalid) document produces."""
    with pytest.raises(SpecError) as caught:
        parse_workflow(text, filename="test.yaml", limits=limits)
    assert caught.value.issues, "SpecError without issues"
    return caught.value.issues


def line_of(text: str, name: str = "here") -> int:
    """The 1-based line carrying the marker comment ``#@name``."""
    marker = f"#@{name}"
    found = [n for n, line in enumerate(text.splitlines(), 1) if line.rstrip().endswith(marker)]
    assert len(found) == 1, f"marker {marker} must appear exactly once"
    return found[0]


def only(found: list[SpecIssue], code: str) -> SpecIssue:
    """The single issue with ``code`` (fails if there are none or several)."""
    matching = [i for i in found if i.code == code]
    assert len(matching) == 1, f"expected one {code!r} issue, got {found}"
    return matching[0]
