"""The workflow JSON Schema and the translation of its errors into :class:`SpecIssue`.

The schema (``gateway/schemas/workflow-v1.json``) checks structure and types.  Two
annotations steer error reporting and are ignored by other validators:

``x-error-code``
    the issue code for errors raised by that subschema (a string, or ``{keyword: code}``);
    default ``"schema"``.
``x-error-message``
    a friendlier message, likewise a string or ``{keyword: message}``; ``{value}`` is
    replaced with a short repr of the offending value.
``x-error-at``
    report the error on this key of the instance (when present) rather than on the object.
"""
from __future__ import annotations

import copy
import difflib
import functools
import json
import re
from pathlib import Path
from typing import Any, Callable, Iterator

from jsonschema import Draft202012Validator, ValidationError, validators

from .durations import parse_duration
from .errors import SpecIssue
from .yamlload import pointer_join, pointer_tokens

__all__ = ["SCHEMA_ID", "SCHEMA_PATH", "load_schema", "schema_issues"]

SCHEMA_PATH = Path(__file__).resolve().parent.parent / "schemas" / "workflow-v1.json"
SCHEMA_ID = "https://gatehouse.dev/schemas/workflow-v1.json"

# Keys that belong to one kind of task only, for clearer messages than "unexpected key".
GATE_ONLY_KEYS = frozenset(
    {
        "title", "instructions", "shows", "options", "form", "approvers", "required_approvals", "required_rejections", "on_timeout",
        "escalate_to",
    }
)
PLAIN_ONLY_KEYS = frozenset({"run", "backend", "placement", "resources", "env", "inputs", "outputs", "retries",
                             "container", "foreach", "matrix"})
FANOUT_KEYS = frozenset({"foreach", "matrix"})


@functools.lru_cache(maxsize=1)
def _schema() -> dict:
    with SCHEMA_PATH.open("rb") as f:
        return json.load(f)


def load_schema() -> dict:
    """The workflow JSON Schema (draft 2020-12), as a fresh copy the caller may modify."""
    return copy.deepcopy(_schema())


@functools.lru_cache(maxsize=512)
def _compiled(pattern: str) -> re.Pattern[str]:
    # JSON Schema patterns are ECMA-262, where "$" (no multiline flag) matches only at the
    # very end; Python's "$" also matches before a final "\n", which would let "abc\n" pass
    # as an identifier.  Anchor at the true end instead.
    if pattern.endswith("$") and not pattern.endswith("\\$"):
        pattern = pattern[:-1] + r"\Z"
    return re.compile(pattern)


def _pattern(validator: Any, pattern: str, instance: Any, schema: dict) -> Iterator[ValidationError]:
    if validator.is_type(instance, "string") and not _compiled(pattern).search(instance):
        yield ValidationError(f"{_short(instance)} does not match {pattern!r}")


_Validator = validators.extend(Draft202012Validator, {"pattern": _pattern})


def _inline_refs(schema: dict) -> dict:
    """A copy of ``schema`` with every local ``{"$ref": "#/$defs/x"}`` replaced by the
    definition itself.  The schema is not recursive, and resolving references is about a
    third of jsonschema's time on a 5,000-task file."""
    defs = schema.get("$defs", {})

    def walk(node: Any) -> Any:
        if isinstance(node, list):
            return [walk(item) for item in node]
        if not isinstance(node, dict):
            return node
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/$defs/") and len(node) == 1:
            return walk(defs[ref[len("#/$defs/"):]])
        return {key: walk(value) for key, value in node.items() if key != "$defs"}

    return walk(schema)


@functools.lru_cache(maxsize=1)
def _validator() -> Any:
    schema = _schema()
    Draft202012Validator.check_schema(schema)
    return _Validator(_inline_refs(schema))


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _annotation(schema: Any, name: str, keyword: str) -> str | None:
    if not isinstance(schema, dict):
        return None
    value = schema.get(name)
    if isinstance(value, dict):
        return value.get(keyword)
    return value


_TYPE_NAMES = {
    "string": "a string",
    "integer": "an integer",
    "number": "a number",
    "object": "a mapping",
    "array": "a list",
    "boolean": "true or false",
    "null": "null",
}


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return type(value).__name__


def location(pointer: str) -> str:
    """A readable location for messages; inside a task it is relative to the task
    (``inputs[0].from``), elsewhere absolute (``defaults.timeout``)."""
    tokens = pointer_tokens(pointer)
    if len(tokens) >= 2 and tokens[0] == "tasks":
        tokens = tokens[2:]
    out = ""
    for token in tokens:
        if token.isdigit():
            out += f"[{token}]"
        else:
            out += f".{token}" if out else token
    return out


def _message(error: ValidationError) -> str:
    """A short message for one schema error (without the location prefix)."""
    v, instance = error.validator, error.instance
    if v == "type":
        wanted = error.validator_value if isinstance(error.validator_value, list) else [error.validator_value]
        names = " or ".join(_TYPE_NAMES.get(w, w) for w in wanted)
        hint = ""
        if "string" in wanted and isinstance(instance, (bool, int, float)):
            hint = " (put quotes around it to make it a string)"
        return f"must be {names}, not {_json_type(instance)}{hint}"
    if v == "required":
        missing = [key for key in error.validator_value if key not in instance]
        return f"missing required key {missing[0]!r}" if missing else error.message
    if v == "enum":
        return f"{_short(instance)} is not one of {', '.join(map(repr, error.validator_value))}"
    if v == "const":
        return f"must be {error.validator_value!r}, not {_short(instance)}"
    if v == "minItems":
        return "must not be empty" if error.validator_value == 1 else f"needs at least {error.validator_value} items"
    if v == "minLength":
        if error.validator_value == 1:
            return "must not be empty"
        return f"must be at least {error.validator_value} characters"
    if v == "maxLength":
        return f"must be at most {error.validator_value} characters"
    if v == "minimum":
        return f"must be at least {error.validator_value}, not {_short(instance)}"
    if v == "exclusiveMinimum":
        return f"must be greater than {error.validator_value}, not {_short(instance)}"
    if v == "maximum":
        return f"must be at most {error.validator_value}, not {_short(instance)}"
    if v == "dependentRequired":
        pairs = [(k, need) for k, needs in error.validator_value.items() if k in instance for need in needs]
        missing = [(k, need) for k, need in pairs if need not in instance]
        if missing:
            return f"{missing[0][0]!r} is only used together with {missing[0][1]!r}"
    if v == "uniqueItems":
        return "must not contain the same item twice"
    if v == "false":  # a `false` subschema
        return "is not allowed here"
    text = error.message
    return text if len(text) <= 300 else text[:297] + "..."


IssueFactory = Callable[[str, str, str], SpecIssue]


@functools.lru_cache(maxsize=1)
def _fast_validator() -> Any:
    """The same schema compiled by jsonschema-rs (a draft 2020-12 validator in Rust), which says
    whether a document is valid in about a hundredth of the time (2,002 tasks: under 2 ms against
    about 250 ms): the common case, a valid file, is decided by it alone. Its patterns are ECMA-262
    regular expressions, as the schema's are; ``_compiled`` gives the reference validator the same
    reading of "$". Both are held to the same answers by tests/spec/test_schema.py."""
    import jsonschema_rs

    return jsonschema_rs.Draft202012Validator(_inline_refs(_schema()))


def schema_issues(document: dict, make_issue: IssueFactory, limit: int = 2000) -> list[SpecIssue]:
    """Validate ``document`` against the schema; one issue per error.

    ``make_issue(code, message, pointer)`` attaches the line and task id. A document the fast
    validator finds valid has none; any other is validated again by the reference validator
    (jsonschema), whose errors make the issues, each with its own code and message.
    """
    if _fast_validator().is_valid(document):
        return []
    issues: list[SpecIssue] = []
    for error in _validator().iter_errors(document):
        issues.extend(_translate(error, make_issue))
        if len(issues) > limit:  # the report is capped anyway; stop validating
            break
    return issues


def _translate(error: ValidationError, make_issue: IssueFactory) -> Iterator[SpecIssue]:
    pointer = ""
    for token in error.absolute_path:
        pointer = pointer_join(pointer, token)
    keyword = error.validator
    instance = error.instance

    if keyword == "additionalProperties" and isinstance(instance, dict):
        # One issue per unexpected key, on the key's own line.
        allowed = set(error.schema.get("properties", {}))
        patterns = [re.compile(p) for p in error.schema.get("patternProperties", {})]
        is_task = len(error.absolute_path) == 2 and error.absolute_path[0] == "tasks"
        is_gate = is_task and instance.get("type") == "gate"
        for key in instance:
            if key in allowed or any(p.search(key) for p in patterns):
                continue
            key_pointer = pointer_join(pointer, key)
            if is_task and is_gate and key in FANOUT_KEYS:
                yield make_issue("gate_fanout", f"a gate cannot fan out ({key!r} is only for plain tasks; "
                                                "make the gate need the fan-out task instead)", key_pointer)
            elif is_task and is_gate and key in PLAIN_ONLY_KEYS:
                yield make_issue("not_allowed_on_gate", f"a gate must not have {key!r}", key_pointer)
            elif is_task and not is_gate and key in GATE_ONLY_KEYS:
                yield make_issue(
                    "gate_only_key", f"{key!r} is only allowed on gates (add 'type: gate')", key_pointer
                )
            else:
                close = difflib.get_close_matches(str(key), sorted(allowed), n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                where = location(pointer)
                yield make_issue(
                    "schema", f"unknown key {key!r}{' in ' + where if where else ''}{hint}", key_pointer
                )
        return

    if "propertyNames" in error.relative_schema_path or "propertyNames" in error.absolute_schema_path:
        pointer = pointer_join(pointer, instance)  # the offending key itself

    at = _annotation(error.schema, "x-error-at", keyword)
    if at is not None and isinstance(instance, dict) and at in instance:
        pointer = pointer_join(pointer, at)  # report on the key that causes the problem
    code = _annotation(error.schema, "x-error-code", keyword) or "schema"
    custom = _annotation(error.schema, "x-error-message", keyword)
    if code == "bad_duration" and not isinstance(instance, bool):
        try:
            parse_duration(instance)
        except ValueError as exc:
            custom = str(exc)  # same wording as the semantic check, so the two deduplicate
    if custom is not None:
        message = custom.replace("{value}", _short(instance))
    else:
        message = _message(error)
    where = location(pointer)
    if where and not message.startswith(where):
        message = f"{where}: {message}"
    yield make_issue(code, message, pointer)
