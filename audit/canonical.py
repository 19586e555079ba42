"""Canonical JSON of audit leaves: sorted keys, no spaces, UTF-8, no floats. For the data the
log holds (strings, integers, booleans, null, arrays, objects) this is RFC 8785 (JCS)."""
from __future__ import annotations

import json
from datetime import datetime, timezone


def canonical(value) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode("utf-8")


def rfc3339(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
