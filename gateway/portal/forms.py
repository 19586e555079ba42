"""The analyst's input form, generated from a gate's JSON Schema (`form:` in the workflow).

An object schema with `properties` becomes one field per property: string (a text box, or a text
area when long or multi-line), number, integer, boolean (a check box), enum (a choice), array of
enums (check boxes); any other property is a JSON text area. A schema that is not such an object
is one JSON text area for the whole input. The value built here is validated against the schema
by gate_decide itself (jsonschema), so this module only turns form fields into JSON.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any


@dataclass
class FormField:
    name: str
    label: str
    kind: str  # string | text | number | integer | boolean | enum | multi | json
    required: bool = False
    description: str = ""
    choices: list[tuple[str, str]] = field(default_factory=list)  # (JSON of the value, label)
    value: Any = None  # what the field shows: text, a bool, or a list of chosen JSON values
    error: str = ""

    @property
    def html_name(self) -> str:
        return f"f_{self.name}"

    @property
    def html_id(self) -> str:
        return f"field-{self.name}"


def _kind(prop: dict) -> str:
    kind = prop.get("type")
    if "enum" in prop and isinstance(prop["enum"], list):
        return "enum"
    if kind == "string":
        return "text" if prop.get("maxLength", 0) > 200 or prop.get("format") == "textarea" else "string"
    if kind in ("number", "integer", "boolean"):
        return kind
    if kind == "array" and isinstance(prop.get("items"), dict) and isinstance(prop["items"].get("enum"), list):
        return "multi"
    return "json"


def _default_text(prop: dict, kind: str) -> Any:
    if "default" not in prop:
        return [] if kind == "multi" else (False if kind == "boolean" else "")
    value = prop["default"]
    if kind == "boolean":
        return bool(value)
    if kind in ("enum", "multi"):
        return [json.dumps(v) for v in (value if isinstance(value, list) else [value])]
    if kind == "json":
        return json.dumps(value, indent=2)
    return str(value)


def form_fields(schema: dict | None) -> list[FormField] | None:
    """The fields for `schema`, or None when the input is one JSON document (or there is no form)."""
    if not isinstance(schema, dict) or schema.get("type") != "object" or not isinstance(schema.get("properties"), dict):
        return None
    required = set(schema.get("required") or [])
    fields = []
    # Required fields first (the stored schema does not keep the file's key order).
    for name, prop in sorted(schema["properties"].items(), key=lambda item: item[0] not in required):
        prop = prop if isinstance(prop, dict) else {}
        kind = _kind(prop)
        choices = []
        if kind == "enum":
            choices = [(json.dumps(v), str(v)) for v in prop["enum"]]
        elif kind == "multi":
            choices = [(json.dumps(v), str(v)) for v in prop["items"]["enum"]]
        fields.append(FormField(name=name, label=prop.get("title") or name.replace("_", " ").capitalize(), kind=kind,
                                required=name in required, description=prop.get("description", ""),
                                choices=choices, value=_default_text(prop, kind)))
    return fields


def _number(text: str, integer: bool):
    value = json.loads(text)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError("not a number")
    if integer and not (isinstance(value, int) or float(value).is_integer()):
        raise ValueError("not a whole number")
    return int(value) if integer or (isinstance(value, float) and value.is_integer() and "." not in text) else value


def form_input(schema: dict | None, post) -> tuple[Any, list[FormField] | None, str, dict]:
    """Read the submitted form: (the input value, the fields refilled for a re-render, the raw JSON
    text when the input is one document, errors by field name)."""
    fields = form_fields(schema)
    errors: dict[str, str] = {}
    if fields is None:
        raw = post.get("input", "").strip()
        if not raw:
            return None, None, raw, errors
        try:
            return json.loads(raw), None, raw, errors
        except json.JSONDecodeError as exc:
            errors["input"] = f"Not valid JSON: {exc}"
            return None, None, raw, errors
    value: dict[str, Any] = {}
    for f in fields:
        if f.kind == "boolean":
            f.value = post.get(f.html_name) == "on"
            value[f.name] = f.value
            continue
        if f.kind in ("enum", "multi"):
            chosen = post.getlist(f.html_name)
            allowed = {c for c, _ in f.choices}
            f.value = [c for c in chosen if c in allowed]
            if f.kind == "multi":
                value[f.name] = [json.loads(c) for c in f.value]
            elif f.value:
                value[f.name] = json.loads(f.value[0])
            elif f.required:
                f.error = errors[f.name] = "Choose one."
            continue
        text = post.get(f.html_name, "")
        f.value = text
        if not text.strip():
            if f.required:
                f.error = errors[f.name] = "Required."
            continue
        try:
            if f.kind in ("number", "integer"):
                value[f.name] = _number(text.strip(), f.kind == "integer")
            elif f.kind == "json":
                value[f.name] = json.loads(text)
            else:
                value[f.name] = text
        except ValueError as exc:
            f.error = errors[f.name] = ("Not valid JSON: " if f.kind == "json" else "Not a valid number: ") + str(exc)
    return value, fields, "", errors
