"""Hostile input is refused with a clear error code, without exhausting time, memory or the
stack.  No timing asserts (those belong in benchmarks): each test only has to return."""
from __future__ import annotations

import os
import sys
import tracemalloc
from contextlib import contextmanager

import pytest

from gateway.spec import Limits, parse_workflow
from gateway.spec.parser import MAX_ISSUES

from .helpers import HEADER, issues, parse

BIG = Limits(max_bytes=200_000_000, max_nodes=100_000_000, max_tasks=10_000_000, max_scalar_len=100_000_000)


def _stack_depth() -> int:
    frame, depth = sys._getframe(), 0
    while frame is not None:
        frame, depth = frame.f_back, depth + 1
    return depth


@contextmanager
def little_stack(spare: int = 60):
    """Loading must not recurse: prove it by leaving almost no stack to recurse with."""
    old = sys.getrecursionlimit()
    sys.setrecursionlimit(_stack_depth() + spare)
    try:
        yield
    finally:
        sys.setrecursionlimit(old)


def codes(text, limits=None) -> list[str]:
    return [i.code for i in issues(text, limits)]


# -- size ---------------------------------------------------------------------------------


def test_50_mb_of_bytes_is_refused_before_parsing() -> None:
    found = issues(b"a: [" * 12_500_000)  # would be very deep and very slow if parsed
    assert [i.code for i in found] == ["too_large"]
    assert "50000000 bytes" in found[0].message


@pytest.mark.parametrize("wrap", [str, bytearray, memoryview], ids=["str", "bytearray", "memoryview"])
def test_50_mb_in_other_types_is_refused(wrap) -> None:
    data = "a" * 50_000_000 if wrap is str else wrap(b"a" * 50_000_000)
    assert codes(data) == ["too_large"]


def test_size_limit_is_exact() -> None:
    base = (HEADER + "tasks:\n  - {id: a, run: x}\n").encode()
    limit = len(base) + 10
    exact = base + b"#" * 9 + b"\n"
    assert len(exact) == limit
    assert parse(exact, Limits(max_bytes=limit)).name == "test"
    assert codes(exact + b" ", Limits(max_bytes=limit)) == ["too_large"]
    # multi-byte characters count as bytes, not characters
    text = (HEADER + "description: ééééé\ntasks:\n  - {id: a, run: x}\n")
    assert codes(text, Limits(max_bytes=len(text) + 2)) == ["too_large"]


def test_wrong_type_is_a_type_error() -> None:
    with pytest.raises(TypeError):
        parse_workflow(12345)  # type: ignore[arg-type]


# -- encoding and characters --------------------------------------------------------------


@pytest.mark.parametrize(
    "data,offset",
    [
        (b"name: caf\xe9\n", 9),  # Latin-1
        (b"a: 1\nname: \xc0\xaf\n", 11),  # overlong "/"
        (b"a: 1\nb: 2\nname: \xed\xa0\x80\n", 16),  # an encoded surrogate
        (b"name: ok\n\xff", 9),
    ],
)
def test_invalid_utf8_is_refused_with_the_byte_offset(data: bytes, offset: int) -> None:
    found = issues(data)
    assert [i.code for i in found] == ["not_utf8"]
    assert f"byte offset {offset}" in found[0].message
    assert found[0].line == data[:offset].count(b"\n") + 1


def test_unpaired_surrogate_in_text_is_refused() -> None:
    assert codes("name: \ud800\n") == ["not_utf8"]


@pytest.mark.parametrize("char", ["\x00", "\x01", "\x08", "\x0b", "\x1b", "\x7f", "\ufffe"])
def test_control_characters_are_refused(char: str) -> None:
    found = issues(HEADER + f"tasks:\n  - {{id: a, run: 'x{char}'}}\n")
    assert [i.code for i in found] == ["control_character"]
    assert found[0].line == 5


def test_utf8_bom_and_unicode_text_are_fine() -> None:
    wf = parse(b"\xef\xbb\xbf" + (HEADER + "description: Überprüfung ✓ 🚀\ntasks:\n  - {id: a, run: 'echo ✓'}\n").encode())
    assert wf.description == "Überprüfung ✓ 🚀"


# -- tasks, scalars -----------------------------------------------------------------------


def _many_tasks(n: int) -> str:
    return HEADER + "tasks:\n" + "".join(f"- {{id: t{i}, run: x}}\n" for i in range(n))


def test_100k_tasks_are_refused() -> None:
    text = _many_tasks(100_000)
    assert codes(text) in (["too_large"], ["too_many_tasks"], ["too_many_nodes"])
    # with the size and node limits out of the way, the task limit stops it at task 5,001
    found = issues(text, Limits(max_bytes=BIG.max_bytes, max_nodes=BIG.max_nodes))
    assert [i.code for i in found] == ["too_many_tasks"]
    assert found[0].line == 5 + 5_000


def test_max_tasks_is_exact() -> None:
    assert len(parse(_many_tasks(50), Limits(max_tasks=50)).tasks) == 50
    assert codes(_many_tasks(51), Limits(max_tasks=50)) == ["too_many_tasks"]


def test_tasks_multiplied_by_aliases_are_counted() -> None:
    text = HEADER + "x-t: &t {id: a, run: x}\ntasks: &all [*t, *t, *t]\n"
    assert codes(text, Limits(max_tasks=2)) == ["too_many_tasks"]


def test_long_scalars_are_refused() -> None:
    limits = Limits(max_scalar_len=100)
    ok = HEADER + f"tasks:\n  - {{id: a, run: '{'x' * 100}'}}\n"
    assert parse(ok, limits).tasks[0].run.shell == "x" * 100
    assert codes(ok.replace("x" * 100, "x" * 101), limits) == ["scalar_too_long"]
    assert codes(HEADER + f"{'k' * 101}: 1\n", limits) == ["scalar_too_long"]  # keys too
    block = HEADER + "tasks:\n  - id: a\n    run: |\n" + "      echo\n" * 30
    assert codes(block, limits) == ["scalar_too_long"]


# -- nesting and alias bombs --------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "[" * 10_000 + "]" * 10_000,
        "{a: " * 10_000 + "}" * 10_000,
        "".join("  " * i + "a:\n" for i in range(2_000)),  # block style (kept under 50 MB)
        "- " * 10_000 + "x\n",
    ],
    ids=["flow-list", "flow-map", "block-map", "block-list"],
)
def test_deep_nesting_is_refused_without_recursion(text: str) -> None:
    with little_stack():
        found = issues(text, Limits(max_bytes=BIG.max_bytes))
    assert [i.code for i in found] == ["too_deep"]
    assert found[0].line is not None


def test_max_depth_is_exact() -> None:
    def nested(levels: int) -> str:  # the root mapping is level 1
        return HEADER + "tasks:\n  - {id: a, run: x}\nx-deep: " + "[" * (levels - 1) + "]" * (levels - 1) + "\n"

    assert parse(nested(40)).name == "test"
    assert codes(nested(41)) == ["too_deep"]


def test_deep_gate_form_within_the_limit_validates() -> None:
    # the form is checked by jsonschema (recursive): the default depth limit keeps that safe
    form = "{type: object, properties: {a: " * 18 + "{type: string}" + "}}" * 18
    wf = parse(HEADER + f"tasks:\n  - {{id: g, type: gate, title: t, options: [ok], form: {form}}}\n")
    assert wf.tasks[0].gate.form["type"] == "object"


def _billion_laughs(levels: int) -> str:
    lines = ["a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    for i in range(1, levels):
        lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]")
    return "\n".join(lines) + "\n"


def test_billion_laughs_is_refused_in_bounded_memory() -> None:
    text = _billion_laughs(10)  # 10**10 nodes once expanded, from 700 bytes
    tracemalloc.start()
    try:
        found = issues(text)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert [i.code for i in found] == ["too_many_nodes"]
    assert peak < 20_000_000  # loose: an expansion would need gigabytes


def test_alias_bomb_in_a_valid_place_is_refused() -> None:
    bomb = _billion_laughs(7).replace("\n", "\n  ").rstrip()
    text = HEADER + "tasks:\n  - id: a\n    run: x\n    container:\n      image: x\n      " + bomb.replace("\n  ", "\n      ") + "\n"
    assert codes(text) == ["too_many_nodes"]


def test_expanded_node_limit_is_respected_for_modest_aliases() -> None:
    text = HEADER + "x-env: &env {A: a, B: b}\ntasks:\n" + "".join(f"  - {{id: t{i}, run: x, env: *env}}\n" for i in range(50))
    assert len(parse(text).tasks) == 50
    assert codes(text, Limits(max_nodes=200)) == ["too_many_nodes"]


def test_recursive_and_undefined_aliases() -> None:
    assert codes("a: &x [1, *x]\n") == ["yaml_syntax"]
    assert codes("a: *nothing\n") == ["yaml_syntax"]


# -- YAML features that could be abused ---------------------------------------------------


def test_python_tags_never_execute(tmp_path) -> None:
    marker = tmp_path / "pwned"
    text = HEADER + f"tasks:\n  - id: a\n    run: !!python/object/apply:os.system ['touch {marker}']\n"
    assert codes(text) == ["unsupported_tag"]
    assert not os.path.exists(marker)
    assert codes("a: !!python/name:os.system\n") == ["unsupported_tag"]
    assert codes("a: !custom 1\n") == ["unsupported_tag"]
    assert codes("a: !!set {x, y}\n") == ["unsupported_tag"]


def test_only_one_document() -> None:
    text = HEADER + "tasks:\n  - {id: a, run: x}\n---\n" + HEADER + "tasks: []\n"
    found = issues(text)
    assert [i.code for i in found] == ["multiple_documents"] and found[0].line == 6


def test_duplicate_keys_at_every_level() -> None:
    text = HEADER + "name: again\ntasks:\n  - {id: a, run: x, env: {A: '1', A: '2'}}\n"
    found = issues(text)
    assert [(i.code, i.line, i.task_id) for i in found] == [("duplicate_key", 4, None), ("duplicate_key", 6, "a")]


def test_too_many_issues_are_capped() -> None:
    text = HEADER + "tasks:\n" + "".join(f"  - {{id: t{i}, run: x, needs: [missing{i}]}}\n" for i in range(MAX_ISSUES + 100))
    found = issues(text)
    assert len(found) == MAX_ISSUES + 1
    assert found[-1].code == "too_many_issues" and "100 more" in found[-1].message
    assert {i.code for i in found[:-1]} == {"unknown_need"}


def test_long_chain_and_big_cycle_do_not_recurse() -> None:
    chain = HEADER + "tasks:\n" + "".join(
        f"  - {{id: t{i}, run: x{f', needs: [t{i - 1}], inputs: [{{from: t{i - 1}/o, path: in}}]' if i else ''}, outputs: [{{name: o, path: out}}]}}\n"
        for i in range(5_000)
    )
    wf = parse(chain)
    assert wf.topological_order() == [f"t{i}" for i in range(5_000)]
    looped = chain.replace("  - {id: t0, run: x,", "  - {id: t0, run: x, needs: [t4999],")
    found = issues(looped)
    assert [i.code for i in found] == ["cycle"]
    assert found[0].message == "cycle: " + " -> ".join(["t0"] + [f"t{i}" for i in range(4_999, -1, -1)])
