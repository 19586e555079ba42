"""parse_duration, and its agreement with the JSON Schema's duration pattern."""
from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.spec import load_schema, parse_duration
from gateway.spec.durations import DURATION_PATTERN, MAX_DURATION_SECONDS


@pytest.mark.parametrize(
    "value,seconds",
    [
        (0, 0.0),
        (90, 90.0),
        (1.5, 1.5),
        ("90", 90.0),
        ("2.5", 2.5),
        ("90s", 90.0),
        ("5m", 300.0),
        ("2h", 7200.0),
        ("1d", 86400.0),
        ("1w", 604800.0),
        ("250ms", 0.25),
        ("1h30m", 5400.0),
        ("1h 30m", 5400.0),
        ("1d2h3m4s5ms", 93784.005),
        ("1.5h", 5400.0),
        (" 10m ", 600.0),
    ],
)
def test_valid_durations(value, seconds: float) -> None:
    assert parse_duration(value) == pytest.approx(seconds)


@pytest.mark.parametrize(
    "value,fragment",
    [
        ("", "invalid duration ''"),
        ("5x", "'5x'"),
        ("m", "invalid duration"),
        ("5 m", "invalid duration"),
        ("-5s", "invalid duration"),
        ("30m1h", "invalid duration"),  # units largest first
        ("1h1h", "invalid duration"),
        ("1e3", "invalid duration"),
        ("1:30", "invalid duration"),
        ("5M", "invalid duration"),  # minutes are lowercase; "M" would read like months
        (-1, "negative"),
        (True, "invalid duration True"),
        (None, "invalid duration None"),
        ([5], "invalid duration"),
        (float("nan"), "invalid duration"),
        (float("inf"), "10 years"),
        (10**400, "10 years"),
        ("4000d", "10 years"),
    ],
)
def test_invalid_durations(value, fragment: str) -> None:
    with pytest.raises(ValueError) as caught:
        parse_duration(value)
    assert fragment in str(caught.value)
    assert "90s" in str(caught.value) or "negative" in str(caught.value) or "10 years" in str(caught.value)


def test_maximum_is_inclusive() -> None:
    assert parse_duration(MAX_DURATION_SECONDS) == MAX_DURATION_SECONDS


def test_schema_uses_the_same_pattern() -> None:
    assert load_schema()["$defs"]["duration"]["pattern"] == DURATION_PATTERN


SCHEMA_PATTERN = re.compile(DURATION_PATTERN[:-1] + r"\Z")  # ECMA "$": the very end


@settings(max_examples=1000, deadline=None, database=None)
@given(st.lists(st.sampled_from(list("0123456789.wdhms ") + ["ms", "1h", "30m"]), max_size=12).map("".join))
def test_schema_pattern_and_parser_agree(text: str) -> None:
    try:
        parse_duration(text)
        parsed = True
    except ValueError as exc:
        parsed = "10 years" in str(exc)  # well-formed, just too long
    assert bool(SCHEMA_PATTERN.search(text)) == parsed, text
