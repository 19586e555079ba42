"""Artefact previews on the gate page: text, JSON as a table, images (served by the portal's own
artefact content view). Every artefact is read through the scoped selector and the store checks
its digest on read; what is too large or not readable as text is offered as a download only."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from gateway.artefacts.store import ArtefactError
from gateway.storage import get_store, tenant_key

PREVIEW_BYTES = 256 * 1024
TABLE_ROWS, TABLE_COLUMNS = 200, 12
IMAGE_TYPES = frozenset({"image/png", "image/jpeg", "image/gif", "image/webp"})  # never SVG: it can carry script


@dataclass
class Preview:
    artefact: Any
    kind: str  # image | table | json | text | binary | too_large | unavailable
    text: str = ""
    columns: list[str] = field(default_factory=list)
    rows: list[list[str]] = field(default_factory=list)
    truncated: bool = False


def _cell(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def _table(value: Any) -> tuple[list[str], list[list[str]], bool] | None:
    if isinstance(value, dict):
        items = list(value.items())
        return ["key", "value"], [[str(k), _cell(v)] for k, v in items[:TABLE_ROWS]], len(items) > TABLE_ROWS
    if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        columns: list[str] = []
        for row in value[:TABLE_ROWS]:
            columns += [str(k) for k in row if str(k) not in columns]
        columns = columns[:TABLE_COLUMNS]
        rows = [[_cell(row[c]) if c in row else "" for c in columns] for row in value[:TABLE_ROWS]]
        return columns, rows, len(value) > TABLE_ROWS
    if isinstance(value, list) and value:
        return ["value"], [[_cell(v)] for v in value[:TABLE_ROWS]], len(value) > TABLE_ROWS
    return None


def artefact_preview(artefact) -> Preview:
    media = (artefact.media_type or "").split(";")[0].strip().lower()
    if media in IMAGE_TYPES:
        return Preview(artefact, "image")
    if artefact.size > PREVIEW_BYTES:
        return Preview(artefact, "too_large")
    try:
        raw = get_store().read_bytes(tenant_key(artefact.tenant_id), artefact.digest, max_bytes=PREVIEW_BYTES)
    except (ArtefactError, OSError):
        return Preview(artefact, "unavailable")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return Preview(artefact, "binary")
    looks_json = media.endswith("json") or artefact.name.endswith(".json") or text.lstrip()[:1] in ("[", "{")
    if looks_json:
        try:
            value = json.loads(text)
        except ValueError:
            pass
        else:
            table = _table(value)
            if table is not None:
                columns, rows, truncated = table
                return Preview(artefact, "table", columns=columns, rows=rows, truncated=truncated)
            return Preview(artefact, "json", text=json.dumps(value, indent=2, ensure_ascii=False))
    return Preview(artefact, "text", text=text)
