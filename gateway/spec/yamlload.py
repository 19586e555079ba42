"""Bounded, line-aware YAML loading for untrusted workflow files.

The document is built straight from PyYAML's *event* stream (libyaml's C parser when it is
available) by an iterative loop, instead of PyYAML's recursive composer and constructor.
That one pass

* refuses nesting deeper than ``Limits.max_depth`` the moment it is reached, so deep input
  never reaches recursive code;
* counts nodes with every alias *expanded* (an alias costs the size of its anchor), so an
  alias bomb ("billion laughs") is refused after a few events instead of exhausting memory.
  The loaded value shares aliased objects, so memory stays proportional to the input;
* refuses scalars over ``Limits.max_scalar_len`` and tasks over ``Limits.max_tasks``;
* reports duplicate mapping keys (PyYAML silently keeps the last one);
* records the 1-based source line of every mapping key and collection, keyed by JSON pointer.

Scalars are resolved with the YAML 1.2 *core* schema (``true``/``false``, ``null``/``~``,
decimal/``0o``/``0x`` integers, floats) rather than PyYAML's YAML 1.1 rules, so ``yes``,
``on``, ``1:30`` or ``2024-01-01`` stay strings.  Merge keys (``<<: *defaults``) are
supported.  Only the core tags are accepted; anything else (``!!python/...``, ``!!set``,
custom tags) is refused.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

import yaml
from yaml.events import (
    AliasEvent,
    DocumentStartEvent,
    MappingEndEvent,
    MappingStartEvent,
    ScalarEvent,
    SequenceEndEvent,
    SequenceStartEvent,
)

from .errors import Limits, SpecIssue

__all__ = ["Fatal", "LineMap", "Loaded", "decode_source", "load_yaml", "pointer_join", "pointer_tokens"]

# libyaml's parser is C and streams events; the pure-Python one is the fallback.
_Loader = getattr(yaml, "CSafeLoader", None) or yaml.SafeLoader

# Characters YAML does not allow in a stream (same set PyYAML's reader refuses).
_NON_PRINTABLE = re.compile("[^\x09\x0a\x0d\x20-\x7e\x85\xa0-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")

_TAG = "tag:yaml.org,2002:"
_NULLS = frozenset({"", "~", "null", "Null", "NULL"})
_TRUES = frozenset({"true", "True", "TRUE"})
_FALSES = frozenset({"false", "False", "FALSE"})
_INT = re.compile(r"[-+]?[0-9]+")
_OCT = re.compile(r"0o[0-7]+")
_HEX = re.compile(r"0x[0-9a-fA-F]+")
_FLOAT = re.compile(r"[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?")
_INF = re.compile(r"[-+]?\.(?:inf|Inf|INF)")
_NAN = re.compile(r"\.(?:nan|NaN|NAN)")

# Explicit core tags allowed on scalars, with the check the resolved value must pass.
_EXPLICIT = {
    _TAG + "int": lambda v: isinstance(v, int) and not isinstance(v, bool),
    _TAG + "float": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    _TAG + "bool": lambda v: isinstance(v, bool),
    _TAG + "null": lambda v: v is None,
}


class Fatal(Exception):
    """Loading cannot continue; carries the one issue that stopped it."""

    def __init__(self, issue: SpecIssue) -> None:
        super().__init__(issue.message)
        self.issue = issue


def pointer_join(base: str, token: str | int) -> str:
    """Append one reference token to a JSON pointer (RFC 6901 escaping)."""
    return f"{base}/{str(token).replace('~', '~0').replace('/', '~1')}"


def pointer_tokens(pointer: str) -> list[str]:
    """Split a JSON pointer into unescaped tokens."""
    if not pointer:
        return []
    return [t.replace("~1", "/").replace("~0", "~") for t in pointer[1:].split("/")]


@dataclass
class LineMap:
    """Source lines by JSON pointer: the key's line for mapping members, otherwise the node's."""

    keys: dict[str, int] = field(default_factory=dict)
    nodes: dict[str, int] = field(default_factory=dict)

    def line(self, pointer: str) -> int | None:
        """The line of ``pointer`` or, if it has none (e.g. inside an alias), of its nearest ancestor."""
        while True:
            found = self.keys.get(pointer) or self.nodes.get(pointer)
            if found is not None:
                return found
            if not pointer:
                return None
            pointer = pointer.rsplit("/", 1)[0]


@dataclass
class Loaded:
    data: dict
    lines: LineMap
    issues: list[SpecIssue]  # non-fatal problems (duplicate keys, non-finite numbers)


def _fatal(code: str, message: str, line: int | None = None) -> Fatal:
    return Fatal(SpecIssue(code=code, message=message, line=line))


def decode_source(data: bytes | bytearray | memoryview | str, limits: Limits) -> tuple[bytes, str]:
    """Check size, encoding and characters; return the raw bytes and the text to parse.

    Size is checked before anything else touches the content.
    """
    if isinstance(data, str):
        if len(data) > limits.max_bytes:  # every character is at least one byte
            raise _fatal("too_large", f"the file is larger than the limit of {limits.max_bytes} bytes")
        try:
            raw = data.encode("utf-8")
        except UnicodeEncodeError as exc:
            line = data.count("\n", 0, exc.start) + 1
            raise _fatal("not_utf8", f"not valid UTF-8: unpaired surrogate at character {exc.start}", line) from None
    elif isinstance(data, (bytes, bytearray, memoryview)):
        size = data.nbytes if isinstance(data, memoryview) else len(data)
        if size > limits.max_bytes:
            raise _fatal("too_large", f"the file is {size} bytes, over the limit of {limits.max_bytes} bytes")
        raw = bytes(data)
    else:
        raise TypeError(f"workflow source must be bytes or str, not {type(data).__name__}")
    if len(raw) > limits.max_bytes:
        raise _fatal("too_large", f"the file is {len(raw)} bytes, over the limit of {limits.max_bytes} bytes")
    try:
        text = raw.decode("utf-8")  # strict
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise _fatal(
            "not_utf8", f"not valid UTF-8: byte 0x{raw[exc.start]:02x} at byte offset {exc.start} ({exc.reason})", line
        ) from None
    if text.startswith("\ufeff"):
        text = text[1:]
    bad = _NON_PRINTABLE.search(text)
    if bad is not None:
        pos = bad.start()
        line = text.count("\n", 0, pos) + 1
        column = pos - (text.rfind("\n", 0, pos) + 1) + 1
        raise _fatal(
            "control_character",
            f"control character U+{ord(bad.group()):04X} at line {line}, column {column} is not allowed in YAML",
            line,
        )
    return raw, text


def _resolve_plain(text: str) -> Any:
    """YAML 1.2 core schema resolution of an untagged plain scalar."""
    if text in _NULLS:
        return None
    if text in _TRUES:
        return True
    if text in _FALSES:
        return False
    first = text[0]
    if not (first.isdigit() or first in "+-."):
        return text  # fast path: most scalars are words
    try:
        if _INT.fullmatch(text):
            return int(text)
        if _OCT.fullmatch(text):
            return int(text[2:], 8)
        if _HEX.fullmatch(text):
            return int(text[2:], 16)
    except ValueError:  # more digits than int() accepts: keep the text
        return text
    if _FLOAT.fullmatch(text):
        return float(text)
    if _INF.fullmatch(text):
        return -math.inf if text[0] == "-" else math.inf
    if _NAN.fullmatch(text):
        return math.nan
    return text


class _Frame:
    """An open mapping or sequence while its events are being read."""

    __slots__ = (
        "value", "pointer", "anchor", "line", "size", "is_map", "key", "has_key", "key_is_merge", "seen", "merges",
    )

    def __init__(self, value: dict | list, pointer: str, anchor: str | None, line: int) -> None:
        self.value = value
        self.pointer = pointer
        self.anchor = anchor
        self.line = line
        self.size = 1  # nodes in this subtree, aliases expanded, itself included
        self.is_map = isinstance(value, dict)
        self.key: str = ""
        self.has_key = False  # a key was read and its value is awaited
        self.key_is_merge = False  # the pending key is a "<<" merge key
        self.seen: dict[str, int] = {}  # key -> line of first occurrence
        self.merges: list[tuple[Any, int]] = []  # values of "<<" keys


class _Builder:
    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.stack: list[_Frame] = []
        self.anchors: dict[str, tuple[Any, int]] = {}  # name -> (value, expanded size)
        self.open_anchors: set[str] = set()
        self.total = 0
        self.documents = 0
        self.root: Any = None
        self.root_line: int | None = None
        self.has_root = False
        self.lines = LineMap()
        self.issues: list[SpecIssue] = []

    # -- helpers -------------------------------------------------------------------------
    def _count(self, size: int, line: int) -> None:
        self.total += size
        if self.total > self.limits.max_nodes:
            raise _fatal(
                "too_many_nodes",
                f"the document has more than {self.limits.max_nodes} nodes once aliases are expanded",
                line,
            )

    def _child_pointer(self, parent: _Frame | None) -> str:
        if parent is None:
            return ""
        if parent.is_map:
            return pointer_join(parent.pointer, parent.key)
        return pointer_join(parent.pointer, len(parent.value))

    def _attach(self, parent: _Frame | None, value: Any, size: int, line: int) -> None:
        if parent is None:
            self.root, self.root_line, self.has_root = value, line, True
            return
        parent.size += size
        if parent.is_map:
            if parent.key_is_merge:
                parent.merges.append((value, line))
            else:
                parent.value[parent.key] = value  # type: ignore[index]
            parent.has_key = False
            return
        parent.value.append(value)  # type: ignore[union-attr]
        if parent.pointer == "/tasks" and len(parent.value) > self.limits.max_tasks:
            raise _fatal("too_many_tasks", f"the workflow has more than {self.limits.max_tasks} tasks", line)

    def _scalar_value(self, event: ScalarEvent, line: int) -> Any:
        tag, text = event.tag, event.value
        if tag is None:
            value = _resolve_plain(text) if event.implicit[0] else text  # quoted: always a string
        elif tag == "!" or tag == _TAG + "str":
            value = text
        elif tag in _EXPLICIT:
            value = _resolve_plain(text)
            if not _EXPLICIT[tag](value):
                raise _fatal("yaml_syntax", f"{text!r} is not a valid !!{tag[len(_TAG):]}", line)
            if tag == _TAG + "float":
                value = float(value)
        else:
            raise _fatal("unsupported_tag", f"unsupported YAML tag {tag!r} (only plain values are allowed)", line)
        if isinstance(value, float) and not math.isfinite(value):
            self.issues.append(
                SpecIssue("non_finite_number", f"{text!r} is not a finite number", line, None, self._pending_pointer())
            )
        return value

    def _pending_pointer(self) -> str:
        return self._child_pointer(self.stack[-1] if self.stack else None)

    def _set_key(self, parent: _Frame, key: str, line: int, plain: bool) -> None:
        parent.key, parent.has_key = key, True
        parent.key_is_merge = key == "<<" and plain
        pointer = pointer_join(parent.pointer, key)
        first = parent.seen.get(key)
        if first is not None:
            self.issues.append(
                SpecIssue("duplicate_key", f"duplicate key {key!r} (first on line {first})", line, None, pointer)
            )
        else:
            parent.seen[key] = line
        self.lines.keys[pointer] = line

    # -- events --------------------------------------------------------------------------
    def scalar(self, event: ScalarEvent) -> None:
        line = event.start_mark.line + 1
        if len(event.value) > self.limits.max_scalar_len:
            raise _fatal(
                "scalar_too_long",
                f"a value of {len(event.value)} characters is longer than the limit of {self.limits.max_scalar_len}",
                line,
            )
        self._count(1, line)
        parent = self.stack[-1] if self.stack else None
        if parent is not None and parent.is_map and not parent.has_key:
            # Keys are taken as written: "on", "yes", "1" are string keys, as in JSON.
            self._set_key(parent, event.value, line, plain=event.implicit[0])
            if event.anchor is not None:
                self.anchors[event.anchor] = (event.value, 1)
            return
        value = self._scalar_value(event, line)
        if event.anchor is not None:
            self.anchors[event.anchor] = (value, 1)
        if parent is None or not parent.is_map:  # map values use their key's line
            self.lines.nodes[self._child_pointer(parent)] = line
        self._attach(parent, value, 1, line)

    def alias(self, event: AliasEvent) -> None:
        line = event.start_mark.line + 1
        name = event.anchor
        if name in self.open_anchors:
            raise _fatal("yaml_syntax", f"recursive alias *{name} (refers to a node that contains it)", line)
        if name not in self.anchors:
            raise _fatal("yaml_syntax", f"undefined alias *{name}", line)
        value, size = self.anchors[name]
        self._count(size, line)
        parent = self.stack[-1] if self.stack else None
        if parent is not None and parent.is_map and not parent.has_key:
            if not isinstance(value, str):
                raise _fatal("yaml_syntax", "a mapping key must be a plain value, not a list or mapping", line)
            self._set_key(parent, value, line, plain=False)
            return
        self.lines.nodes[self._child_pointer(parent)] = line
        self._attach(parent, value, size, line)

    def start(self, event: MappingStartEvent | SequenceStartEvent, is_map: bool) -> None:
        line = event.start_mark.line + 1
        expected = _TAG + ("map" if is_map else "seq")
        if event.tag not in (None, "!", expected):
            raise _fatal("unsupported_tag", f"unsupported YAML tag {event.tag!r}", line)
        self._count(1, line)
        parent = self.stack[-1] if self.stack else None
        if parent is not None and parent.is_map and not parent.has_key:
            raise _fatal("yaml_syntax", "a mapping key must be a plain value, not a list or mapping", line)
        if len(self.stack) >= self.limits.max_depth:
            raise _fatal("too_deep", f"the document is nested deeper than {self.limits.max_depth} levels", line)
        pointer = self._child_pointer(parent)
        self.lines.nodes[pointer] = line
        frame = _Frame({} if is_map else [], pointer, event.anchor, line)
        if event.anchor is not None:
            self.open_anchors.add(event.anchor)
        self.stack.append(frame)

    def end(self) -> None:
        frame = self.stack.pop()
        value = self._merged(frame) if frame.merges else frame.value
        if frame.anchor is not None:
            self.open_anchors.discard(frame.anchor)
            self.anchors[frame.anchor] = (value, frame.size)
        self._attach(self.stack[-1] if self.stack else None, value, frame.size, frame.line)

    def _merged(self, frame: _Frame) -> dict:
        """Apply ``<<`` merge keys: explicit keys win, then earlier merge sources."""
        sources: list[dict] = []
        for value, line in frame.merges:
            if isinstance(value, dict):
                sources.append(value)
            elif isinstance(value, list) and all(isinstance(item, dict) for item in value):
                sources.extend(value)
            else:
                raise _fatal("yaml_syntax", "a merge key '<<' needs a mapping or a list of mappings", line)
        merged: dict = {}
        for source in reversed(sources):
            merged.update(source)
        merged.update(frame.value)  # type: ignore[arg-type]
        return merged

    # -- driver --------------------------------------------------------------------------
    def run(self, text: str) -> Loaded:
        loader = _Loader(text)
        try:
            while loader.check_event():
                event = loader.get_event()
                kind = type(event)
                if kind is ScalarEvent:
                    self.scalar(event)
                elif kind is MappingStartEvent:
                    self.start(event, True)
                elif kind is SequenceStartEvent:
                    self.start(event, False)
                elif kind is MappingEndEvent or kind is SequenceEndEvent:
                    self.end()
                elif kind is AliasEvent:
                    self.alias(event)
                elif kind is DocumentStartEvent:
                    self.documents += 1
                    if self.documents > 1:
                        raise _fatal(
                            "multiple_documents",
                            "only one YAML document is allowed (found a second '---')",
                            event.start_mark.line + 1,
                        )
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark or exc.context_mark
            problem = exc.problem or "invalid YAML"
            message = f"{exc.context}: {problem}" if exc.context else problem
            raise _fatal("yaml_syntax", f"invalid YAML: {message}", None if mark is None else mark.line + 1) from None
        except yaml.YAMLError as exc:
            raise _fatal("yaml_syntax", f"invalid YAML: {exc}") from None
        finally:
            loader.dispose()
        if not self.has_root or self.root is None:
            raise _fatal(
                "not_mapping", "the file is empty: a workflow is a mapping with apiVersion, kind, name and tasks", 1
            )
        if not isinstance(self.root, dict):
            raise _fatal(
                "not_mapping",
                f"the top level must be a mapping (apiVersion, kind, name, tasks), not a {_yaml_type(self.root)}",
                self.root_line,
            )
        return Loaded(self.root, self.lines, self.issues)


def _yaml_type(value: Any) -> str:
    if isinstance(value, list):
        return "list"
    if isinstance(value, str):
        return "string"
    return type(value).__name__


def load_yaml(text: str, limits: Limits) -> Loaded:
    """Load the single YAML document in ``text`` as JSON-like data with a line map.

    Raises :class:`Fatal` for anything that stops loading (syntax, limits, several documents,
    a non-mapping top level).  Duplicate keys are returned in ``Loaded.issues``.
    """
    return _Builder(limits).run(text)
