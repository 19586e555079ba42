"""One test per error kind: the issue code, the task it names and the line it points at.

Each case is a small workflow with the offending line marked ``#@here``; unless a case says
otherwise the document must produce exactly that one issue, so no check hides behind noise.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import pytest

from gateway.spec import ISSUE_CODES, SpecError, SpecIssue, parse_workflow

from .helpers import HEADER, issues, line_of, only


@dataclass
class Case:
    id: str
    code: str
    task: str | None
    yaml: str
    message: str = ""  # a regex the message must match
    alone: bool = True  # the only issue of the document


T = HEADER + "tasks:\n"

CASES = [
    # ---- structure (JSON Schema) -------------------------------------------------------
    Case("unknown-task-key", "schema", "a", T + "  - id: a\n    run: x\n    neeeds: [b]  #@here\n", r"unknown key 'neeeds' \(did you mean 'needs'\?\)"),
    Case("unknown-top-key", "schema", None, T + "  - {id: a, run: x}\nowner: bob  #@here\n", r"unknown key 'owner'"),
    Case("plain-task-without-run", "schema", "a", T + "  - id: a  #@here\n    needs: []\n", r"missing required key 'run'"),
    Case("wrong-type", "schema", "a", T + "  - id: a\n    run: x\n    needs: a  #@here\n", r"needs: must be a list, not a string"),
    Case("env-not-string", "schema", "a", T + "  - id: a\n    run: x\n    env:\n      DEBUG: true  #@here\n", r"env\.DEBUG: must be a string.*quotes"),
    Case("env-bad-name", "schema", "a", T + "  - id: a\n    run: x\n    env:\n      1BAD: x  #@here\n", r"invalid environment variable name"),
    Case("bad-task-id", "schema", "-a", T + "  - id: -a  #@here\n    run: x\n", r"invalid task id '-a'"),
    Case("bad-workflow-name", "schema", None, "apiVersion: gatehouse/v1\nkind: Workflow\nname: Threat Validation  #@here\ntasks:\n  - {id: a, run: x}\n", r"invalid workflow name"),
    Case("run-command-and-script", "schema", "a", T + "  - id: a\n    run: {command: [ls], script: ls}  #@here\n", r"exactly one of 'command' or 'script'"),
    Case("bad-memory", "schema", "a", T + "  - id: a\n    run: x\n    resources:\n      memory: lots  #@here\n", r"invalid memory size 'lots'"),
    Case("gate-bad-on-timeout", "schema", "g", T + "  - id: g\n    type: gate\n    title: t\n    options: [ok]\n    on_timeout: approve  #@here\n", r"never approves"),
    Case("escalate-to-without-escalate", "schema", "g", T + "  - id: g\n    type: gate\n    title: t\n    options: [ok]\n    escalate_to: [boss]  #@here\n", r"only used with on_timeout: escalate"),
    Case("gate-without-title", "schema", "g", T + "  - id: g  #@here\n    type: gate\n    options: [ok]\n", r"missing required key 'title'"),
    Case("gate-only-key-on-task", "gate_only_key", "a", T + "  - id: a\n    run: x\n    options: [ok]  #@here\n", r"only allowed on gates"),
    Case("run-on-gate", "not_allowed_on_gate", "g", T + "  - id: g\n    type: gate\n    title: t\n    options: [ok]\n    run: echo  #@here\n", r"a gate must not have 'run'"),
    Case("backend-on-gate", "not_allowed_on_gate", "g", T + "  - id: g\n    type: gate\n    title: t\n    options: [ok]\n    backend: local  #@here\n", r"'backend'"),
    Case("outputs-on-gate", "not_allowed_on_gate", "g", T + "  - id: g\n    type: gate\n    title: t\n    options: [ok]\n    outputs: [{name: o, path: o}]  #@here\n", r"'outputs'"),
    Case("container-on-gate", "not_allowed_on_gate", "g", T + "  - id: g\n    type: gate\n    title: t\n    options: [ok]\n    container: {image: x}  #@here\n", r"'container'"),
    Case("bad-api-version", "bad_api_version", None, "apiVersion: gatehouse/v2  #@here\nkind: Workflow\nname: t\ntasks:\n  - {id: a, run: x}\n", r"'gatehouse/v1'.*'gatehouse/v2'"),
    Case("missing-api-version", "bad_api_version", None, "kind: Workflow  #@here\nname: t\ntasks:\n  - {id: a, run: x}\n", r"missing apiVersion"),
    Case("bad-kind", "bad_kind", None, "apiVersion: gatehouse/v1\nkind: Pipeline  #@here\nname: t\ntasks:\n  - {id: a, run: x}\n", r"'Workflow'"),
    Case("missing-kind", "bad_kind", None, "apiVersion: gatehouse/v1  #@here\nname: t\ntasks:\n  - {id: a, run: x}\n", r"missing kind"),
    Case("empty-task-list", "no_tasks", None, HEADER + "tasks: []  #@here\n", r"no tasks"),
    Case("missing-task-list", "no_tasks", None, "apiVersion: gatehouse/v1  #@here\nkind: Workflow\nname: t\n", r"no tasks"),
    # ---- durations ---------------------------------------------------------------------
    Case("bad-task-timeout", "bad_duration", "a", T + "  - id: a\n    run: x\n    timeout: 5 minutes  #@here\n", r"timeout: invalid duration '5 minutes'"),
    Case("zero-timeout", "bad_duration", "a", T + "  - id: a\n    run: x\n    timeout: 0s  #@here\n", r"greater than zero"),
    Case("negative-timeout", "bad_duration", "a", T + "  - id: a\n    run: x\n    timeout: -5  #@here\n", r"negative"),
    Case("bad-gate-timeout", "bad_duration", "g", T + "  - id: g\n    type: gate\n    title: t\n    options: [ok]\n    timeout: 1y  #@here\n", r"invalid duration '1y'"),
    Case("bad-backoff", "bad_duration", "a", T + "  - id: a\n    run: x\n    retries: {count: 1, backoff: {initial: soon}}  #@here\n", r"retries\.backoff\.initial"),
    Case("bad-resources-time", "bad_duration", "a", T + "  - id: a\n    run: x\n    resources:\n      time: 1:30  #@here\n", r"resources\.time"),
    Case("bad-default-timeout", "bad_duration", None, HEADER + "defaults:\n  timeout: forever  #@here\ntasks:\n  - {id: a, run: x}\n", r"defaults\.timeout"),
    Case("duration-too-long", "bad_duration", "a", T + "  - id: a\n    run: x\n    timeout: 5000d  #@here\n", r"10 years"),
    # ---- the task graph ----------------------------------------------------------------
    Case("duplicate-task", "duplicate_task", "a", T + "  - id: a\n    run: x\n  - id: a  #@here\n    run: y\n", r"defined on line 5 and again on line 7"),
    Case("unknown-need", "unknown_need", "b", T + "  - id: ingest\n    run: x\n  - id: b\n    run: x\n    needs:\n      - ingest\n      - ingset  #@here\n", r"unknown task 'ingset' \(did you mean 'ingest'\?\)"),
    Case("self-need", "self_need", "a", T + "  - id: a\n    run: x\n    needs: [a]  #@here\n", r"needs itself"),
    Case(
        "cycle",
        "cycle",
        "a",
        T + "  - id: a\n    run: x\n    needs: [c]  #@here\n  - id: b\n    run: x\n    needs: [a]\n  - id: c\n    run: x\n    needs: [b]\n",
        r"^cycle: a -> c -> b -> a$",
    ),
    # ---- artefact references -----------------------------------------------------------
    Case("input-from-unknown-task", "unknown_artefact", "b", T + "  - {id: a, run: x, outputs: [{name: o, path: o}]}\n  - id: b\n    run: x\n    needs: [a]\n    inputs:\n      - {from: aa/o, path: i}  #@here\n", r"unknown task 'aa'"),
    Case("input-undeclared-output", "unknown_artefact", "b", T + "  - {id: a, run: x, outputs: [{name: o, path: o}]}\n  - id: b\n    run: x\n    needs: [a]\n    inputs:\n      - {from: a/p, path: i}  #@here\n", r"task 'a' has no output 'p' \(it declares 'o'\)"),
    Case("input-gate-artefact-not-input", "unknown_artefact", "b", T + "  - {id: g, type: gate, title: t, options: [ok]}\n  - id: b\n    run: x\n    needs: [g]\n    inputs:\n      - {from: g/labels, path: i}  #@here\n", r"only artefact is 'input'"),
    Case("shows-undeclared-output", "unknown_artefact", "g", T + "  - {id: a, run: x}\n  - id: g\n    type: gate\n    needs: [a]\n    title: t\n    options: [ok]\n    shows: [a/report]  #@here\n", r"declares no outputs"),
    Case("input-not-ancestor", "not_ancestor", "c", T + "  - {id: a, run: x, outputs: [{name: o, path: o}]}\n  - {id: b, run: x}\n  - id: c\n    run: x\n    needs: [b]\n    inputs:\n      - {from: a/o, path: i}  #@here\n", r"'a' is not an ancestor"),
    Case("shows-not-ancestor", "not_ancestor", "g", T + "  - {id: a, run: x, outputs: [{name: o, path: o}]}\n  - id: g\n    type: gate\n    title: t\n    options: [ok]\n    shows: [a/o]  #@here\n", r"not an ancestor"),
    Case("input-own-artefact", "not_ancestor", "a", T + "  - id: a\n    run: x\n    outputs: [{name: o, path: o}]\n    inputs: [{from: a/o, path: i}]  #@here\n", r"its own artefacts"),
    Case("duplicate-output-name", "duplicate_output", "a", T + "  - id: a\n    run: x\n    outputs:\n      - {name: o, path: one}\n      - {name: o, path: two}  #@here\n", r"output name 'o'"),
    Case("duplicate-output-path", "duplicate_output", "a", T + "  - id: a\n    run: x\n    outputs:\n      - {name: o, path: out/x.json}\n      - {name: p, path: ./out//x.json}  #@here\n", r"output path"),
    Case("duplicate-input-path", "duplicate_input_path", "c", T + "  - {id: a, run: x, outputs: [{name: o, path: o}, {name: p, path: p}]}\n  - id: c\n    run: x\n    needs: [a]\n    inputs:\n      - {from: a/o, path: in.json}\n      - {from: a/p, path: in.json}  #@here\n", r"'in.json'"),
    Case("absolute-path", "bad_path", "a", T + "  - id: a\n    run: x\n    outputs:\n      - {name: o, path: /etc/passwd}  #@here\n", r"must be relative"),
    Case("dotdot-path", "bad_path", "b", T + "  - {id: a, run: x, outputs: [{name: o, path: o}]}\n  - id: b\n    run: x\n    needs: [a]\n    inputs:\n      - {from: a/o, path: ../../escape}  #@here\n", r"'\.\.'"),
    # ---- gates -------------------------------------------------------------------------
    Case("gate-without-options", "gate_no_options", "g", T + "  - id: g  #@here\n    type: gate\n    title: t\n", r"needs options"),
    Case("gate-empty-options", "gate_no_options", "g", T + "  - id: g\n    type: gate\n    title: t\n    options: []  #@here\n", r"at least one option"),
    Case("duplicate-option", "duplicate_option", "g", T + "  - id: g\n    type: gate\n    title: t\n    options:\n      - approve\n      - {name: approve, label: Approve again}  #@here\n", r"'approve' is listed twice"),
    Case("escalate-without-escalate-to", "missing_escalate_to", "g", T + "  - id: g\n    type: gate\n    title: t\n    options: [ok]\n    timeout: 1h\n    on_timeout: escalate  #@here\n", r"needs escalate_to"),
    Case("invalid-form", "invalid_form_schema", "g", T + "  - id: g\n    type: gate\n    title: t\n    options: [ok]\n    form:\n      type: object\n      properties:\n        n: {type: integer, minimum: ten}  #@here\n", r"form\.properties\.n\.minimum is not a valid JSON Schema"),
    # ---- YAML level --------------------------------------------------------------------
    Case("duplicate-key", "duplicate_key", "a", T + "  - id: a\n    run: x\n    run: y  #@here\n", r"duplicate key 'run' \(first on line 6\)"),
    Case("non-finite-number", "non_finite_number", "a", T + "  - id: a\n    run: x\n    resources: {cpus: .inf}  #@here\n", r"not a finite number"),
    Case("yaml-syntax", "yaml_syntax", None, T + "  - id: a\n    run: [x\n  - id: b  #@here\n", r"invalid YAML"),
    Case("unsupported-tag", "unsupported_tag", None, T + "  - id: a\n    run: !!python/object/apply:os.system [true]  #@here\n", r"unsupported YAML tag"),
    Case("multiple-documents", "multiple_documents", None, T + "  - {id: a, run: x}\n---  #@here\nname: other\n", r"only one YAML document"),
    Case("top-level-list", "not_mapping", None, "- id: a  #@here\n  run: x\n", r"top level must be a mapping"),
    Case("control-character", "control_character", None, T + "  - id: a\n    run: \"x\x00\"  #@here\n", r"U\+0000 at line 6, column 12"),
    Case("tab-escape", "control_character", None, T + "  - id: a\n    run: \x1b[31m  #@here\n", r"U\+001B"),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_error_kind(case: Case) -> None:
    found = issues(case.yaml)
    issue = only(found, case.code)
    assert issue.task_id == case.task, found
    assert issue.line == line_of(case.yaml), found
    assert re.search(case.message, issue.message), issue.message
    if case.alone:
        assert [i.code for i in found] == [case.code], found


# Codes exercised elsewhere (hostile input, limits); see test_hostile.py.
HOSTILE_CODES = {"too_large", "not_utf8", "too_deep", "too_many_nodes", "too_many_tasks", "scalar_too_long", "too_many_issues"}


def test_every_documented_code_is_tested() -> None:
    from .test_fanout_spec import FANOUT_CODES  # foreach/matrix codes, tested there

    tested = {case.code for case in CASES} | HOSTILE_CODES | FANOUT_CODES
    assert set(ISSUE_CODES) == tested


def test_issue_paths_are_json_pointers() -> None:
    found = issues(CASES[0].yaml)
    assert found[0].path == "/tasks/0/neeeds"
    cycle = next(c for c in CASES if c.code == "cycle")
    assert only(issues(cycle.yaml), "cycle").path == "/tasks/0/needs/0"


def test_all_issues_are_reported_together() -> None:
    text = (
        "apiVersion: gatehouse/v9\n"  # bad_api_version
        "kind: Workflow\n"
        "name: t\n"
        "tasks:\n"
        "  - {id: a, run: x, timeout: 5q}\n"  # bad_duration
        "  - {id: b, run: x, needs: [nope]}\n"  # unknown_need
        "  - {id: c, run: x, needs: [d]}\n"  # cycle c -> d -> c
        "  - {id: d, run: x, needs: [c]}\n"
        "  - {id: g, type: gate, title: t, options: [ok, ok]}\n"  # duplicate_option
        "  - {id: b, run: y}\n"  # duplicate_task
    )
    found = issues(text)
    assert [(i.code, i.line) for i in found] == [
        ("bad_api_version", 1),
        ("bad_duration", 5),
        ("unknown_need", 6),
        ("cycle", 7),
        ("duplicate_option", 9),
        ("duplicate_task", 10),
    ]


def test_every_cycle_is_reported_once() -> None:
    text = T + (
        "  - {id: a, run: x, needs: [b]}\n"
        "  - {id: b, run: x, needs: [a, c]}\n"
        "  - {id: c, run: x, needs: [b]}\n"
        "  - {id: d, run: x, needs: [e]}\n"
        "  - {id: e, run: x, needs: [d]}\n"
    )
    messages = sorted(i.message for i in issues(text) if i.code == "cycle")
    assert messages == ["cycle: a -> b -> a", "cycle: b -> c -> b", "cycle: d -> e -> d"]


def test_format_and_str() -> None:
    issue = SpecIssue("unknown_need", "needs unknown task 'x'", 7, "b", "/tasks/1/needs/0")
    assert issue.format("wf.yaml") == "wf.yaml:7: task 'b': needs unknown task 'x'"
    assert SpecIssue("too_large", "too big").format("wf.yaml") == "wf.yaml: too big"
    assert SpecIssue("schema", "bad", line=3).format("f") == "f:3: bad"
    assert SpecIssue("schema", "bad", task_id="t").format("f") == "f: task 't': bad"
    error = SpecError([issue, SpecIssue("cycle", "cycle: a -> a", 9, "a")], "wf.yaml")
    assert str(error).splitlines() == ["wf.yaml:7: task 'b': needs unknown task 'x'", "wf.yaml:9: task 'a': cycle: a -> a"]
    assert isinstance(error, ValueError)
    assert error.codes == ["unknown_need", "cycle"]


def test_spec_error_uses_the_filename() -> None:
    with pytest.raises(SpecError) as caught:
        parse_workflow(T + "  - {id: a}\n", filename="flows/x.yaml")
    assert str(caught.value).startswith("flows/x.yaml:5: task 'a': ")


def test_spec_error_pickles() -> None:
    import pickle

    error = SpecError([SpecIssue("cycle", "cycle: a -> a", 3, "a", "/tasks/0/needs/0")], "f.yaml")
    clone = pickle.loads(pickle.dumps(error))
    assert clone.issues == error.issues and str(clone) == str(error)
