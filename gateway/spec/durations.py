"""Durations: ``90`` (seconds), ``"90s"``, ``"5m"``, ``"2h"``, ``"1d"``, ``"1h30m"``.

Units, largest first and each at most once: ``w`` (weeks), ``d``, ``h``, ``m``, ``s``, ``ms``.
Components may be separated by spaces (``"1h 30m"``).  A bare number (or numeric string)
is seconds.  Durations are capped at :data:`MAX_DURATION_SECONDS` so that every value can be
turned into a :class:`datetime.timedelta` downstream without overflowing.
"""
from __future__ import annotations

import math
import re

__all__ = ["DURATION_PATTERN", "MAX_DURATION_SECONDS", "parse_duration"]

#: Ten years: far beyond any sensible timeout, far below ``timedelta``'s limit.
MAX_DURATION_SECONDS = 10 * 366 * 86_400

_NUM = r"[0-9]+(?:\.[0-9]+)?"
_UNITS = (("w", 604_800.0), ("d", 86_400.0), ("h", 3_600.0), ("m", 60.0), ("s", 1.0), ("ms", 0.001))

#: The same grammar as an ECMA-262 regular expression, used verbatim by the JSON Schema
#: (``$defs/duration``).  A test checks the two agree.
DURATION_PATTERN = (
    r"^\s*(?:" + _NUM + r"|(?=[0-9])" + "".join(rf"(?:{_NUM}{unit}\s*)?" for unit, _ in _UNITS) + r")\s*$"
)

# Python version with one named group per unit (``ms`` is spelled ``ms_`` as a group name).
_DURATION_RE = re.compile(
    rf"(?P<seconds>{_NUM})|(?=[0-9])"
    + "".join(rf"(?:(?P<{unit}_>{_NUM}){unit}\s*)?" for unit, _ in _UNITS)
)

_HELP = "use seconds (e.g. 90) or a string like '90s', '5m', '2h', '1d' or '1h30m'"


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def parse_duration(value: object) -> float:
    """Return ``value`` as a number of seconds.

    Raises :class:`ValueError` with a message naming the value and the accepted forms.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValueError(f"invalid duration {_short(value)}: {_HELP}")
    if isinstance(value, str):
        match = _DURATION_RE.fullmatch(value.strip())
        if match is None:
            raise ValueError(f"invalid duration {_short(value)}: {_HELP}")
        if match["seconds"] is not None:
            seconds = float(match["seconds"])
        else:
            seconds = sum(float(match[f"{unit}_"]) * factor for unit, factor in _UNITS if match[f"{unit}_"])
    else:
        try:
            seconds = float(value)
        except OverflowError:  # an int too large for a float
            seconds = math.inf
        if math.isnan(seconds):
            raise ValueError(f"invalid duration {_short(value)}: {_HELP}")
        if seconds < 0:
            raise ValueError(f"invalid duration {_short(value)}: must not be negative")
    if not seconds <= MAX_DURATION_SECONDS:  # also catches inf
        raise ValueError(f"invalid duration {_short(value)}: longer than the maximum of 10 years")
    return seconds
