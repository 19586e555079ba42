"""The `gatehouse` console script: local validation, and the API client against a live server."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.models import Run, TaskInstance
from gateway.worker import task_execute
from tests.engine.driver import workflow

GATEHOUSE = str(Path(sys.executable).parent / "gatehouse")
DEMO = Path(__file__).resolve().parents[2] / "deploy" / "examples" / "threat-validation.yaml"


def cli(*args, token=None, url=None, stdin=None, home=None):
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEHOUSE_")}
    env["HOME"] = str(home or "/nonexistent")
    if token:
        env["GATEHOUSE_TOKEN"] = token
    if url:
        env["GATEHOUSE_URL"] = url
    return subprocess.run([GATEHOUSE, *args], capture_output=True, text=True, env=env, input=stdin, timeout=60)


def test_validate_a_good_file_exits_0():
    result = cli("workflow", "validate", str(DEMO))
    assert result.returncode == 0, result.stderr
    assert "OK" in result.stdout and "6 tasks" in result.stdout


def test_validate_a_bad_file_exits_2_with_each_error_at_its_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "apiVersion: gatehouse/v1\nkind: Workflow\nname: bad\ntasks:\n"
        "  - id: a\n    run: 'true'\n    needs: [c]\n"
        "  - id: b\n    run: 'true'\n    needs: [a]\n"
        "  - id: c\n    run: 'true'\n    needs: [b]\n"
        "  - id: g\n    type: gate\n    title: x\n"
    )
    result = cli("workflow", "validate", str(bad))
    assert result.returncode == 2
    assert result.stdout == ""
    assert "a -> b -> c -> a" in result.stderr or "a -> c" in result.stderr or "cycle" in result.stderr
    assert f"{bad}:14: task 'g'" in result.stderr  # the gate without options, at its line


def test_validate_refuses_non_utf8_and_a_missing_file(tmp_path):
    blob = tmp_path / "latin1.yaml"
    blob.write_bytes("name: caf\xe9\n".encode("latin-1"))
    result = cli("workflow", "validate", str(blob))
    assert result.returncode == 2 and "UTF-8" in result.stderr
    missing = cli("workflow", "validate", str(tmp_path / "nope.yaml"))
    assert missing.returncode == 2 and "nope.yaml" in missing.stderr


def test_client_commands_need_a_token():
    result = cli("run", "list")
    assert result.returncode == 2 and "no API token" in result.stderr


@pytest.mark.django_db(transaction=True)
def test_the_client_submits_watches_decides_and_cancels(recording, live_server, author, analyst, tmp_path):
    from rest_framework.authtoken.models import Token

    author_token = Token.objects.create(user=author).key
    analyst_token = Token.objects.create(user=analyst).key
    url = live_server.url
    wf = tmp_path / "wf.yaml"
    wf.write_text(workflow({"id": "a"}, {"id": "g", "type": "gate", "needs": ["a"],
                                         "form": {"type": "object", "properties": {"ok": {"type": "boolean"}}}},
                           {"id": "b", "needs": ["g"]}, name="cli-run"))
    submitted = cli("run", "submit", str(wf), token=author_token, url=url)
    assert submitted.returncode == 0, submitted.stderr
    run_id = submitted.stdout.strip()
    run = Run.objects.get(id=run_id)
    a = TaskInstance.objects.get(run=run, key="a")
    assert task_execute(a.id, a.attempt) == "succeeded"

    status = cli("run", "status", run_id, token=author_token, url=url)
    assert status.returncode == 0
    assert "AWAITING_DECISION" in status.stdout and "cli-run" in status.stdout

    listed = cli("gate", "list", "--json", token=analyst_token, url=url)
    gates = json.loads(listed.stdout)
    assert [g["task"] for g in gates] == ["g"]
    bad_input = tmp_path / "bad.json"
    bad_input.write_text('{"ok": "yes"}')
    refused = cli("gate", "decide", gates[0]["id"], "--option", "confirm", "--input", str(bad_input), token=analyst_token, url=url)
    assert refused.returncode == 1 and "gate_input_invalid" in refused.stderr
    shown = cli("gate", "document", gates[0]["id"], "--option", "confirm", "--input", "-", stdin='{"ok": true}',
                token=analyst_token, url=url)
    assert shown.returncode == 0, shown.stderr
    document = json.loads(shown.stdout)
    assert (document["gate"], document["option"]) == (gates[0]["id"], "confirm") and "sha256" in shown.stderr
    undecided = cli("gate", "receipt", gates[0]["id"], token=analyst_token, url=url)
    assert undecided.returncode == 1 and "gate_not_decided" in undecided.stderr
    decided = cli("gate", "decide", gates[0]["id"], "--option", "confirm", "--input", "-", stdin='{"ok": true}',
                  token=analyst_token, url=url)
    assert decided.returncode == 0, decided.stderr
    assert TaskInstance.objects.get(run=run, key="b").state == "QUEUED"
    receipt = tmp_path / "receipt.json"
    fetched = cli("gate", "receipt", gates[0]["id"], "--out", str(receipt), token=analyst_token, url=url)
    assert fetched.returncode == 0, fetched.stderr
    verified = cli("approval", "verify", str(receipt))
    assert verified.returncode == 0, verified.stderr
    forged = json.loads(receipt.read_text())
    forged["outcome"]["state"] = "REJECTED"
    receipt.write_text(json.dumps(forged))
    assert cli("approval", "verify", str(receipt)).returncode == 1

    cancelled = cli("run", "cancel", run_id, token=author_token, url=url)
    assert cancelled.returncode == 0 and "CANCELLED" in cancelled.stdout
    again = cli("run", "cancel", run_id, token=author_token, url=url)
    assert again.returncode == 1 and "run_finished" in again.stderr

    invalid = tmp_path / "invalid.yaml"
    invalid.write_text("apiVersion: gatehouse/v1\nkind: Workflow\nname: x\ntasks:\n  - id: a\n    needs: [zz]\n    run: 'true'\n")
    refused = cli("run", "submit", str(invalid), token=author_token, url=url)
    assert refused.returncode == 1 and "spec_invalid" in refused.stderr and "line 6" in refused.stderr
    assert Run.objects.count() == 1

    wrong = cli("run", "list", token="not-a-token", url=url)
    assert wrong.returncode == 1 and "401" in wrong.stderr


def test_the_client_reads_its_config_file(tmp_path, live_server, db):
    config = tmp_path / ".config" / "gatehouse"
    config.mkdir(parents=True)
    (config / "config.ini").write_text(f"[gatehouse]\nurl = {live_server.url}\ntoken = wrong-token\n")
    result = cli("gate", "list", home=tmp_path)
    assert result.returncode == 1 and "error 401" in result.stderr  # it used the file's URL and token


def test_the_token_type_can_be_given(live_server, author, tmp_path):
    from rest_framework.authtoken.models import Token

    key = Token.objects.create(user=author).key
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEHOUSE_")}
    env.update(HOME=str(tmp_path), GATEHOUSE_URL=live_server.url, GATEHOUSE_TOKEN=key)

    def run(**extra):
        return subprocess.run([GATEHOUSE, "run", "list"], capture_output=True, text=True, env={**env, **extra},
                              timeout=60)

    assert run().returncode == 0  # a dev API token, not a JWT: sent as `Token`
    as_bearer = run(GATEHOUSE_TOKEN_TYPE="bearer")  # dev mode checks no bearer tokens
    assert as_bearer.returncode == 1 and "error 401" in as_bearer.stderr
    wrong = run(GATEHOUSE_TOKEN_TYPE="basic")
    assert wrong.returncode == 2 and "bearer or token" in wrong.stderr


def test_a_jwt_is_recognised_by_its_shape():
    from gateway.cli import looks_like_jwt

    assert looks_like_jwt("eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln")  # {"alg":"RS256"}.{"sub":"x"}.sig
    assert not looks_like_jwt("0123456789abcdef0123456789abcdef01234567")
    assert not looks_like_jwt("a.b.c") and not looks_like_jwt("eyJzdWIiOiJ4In0.e30.x")  # no alg in the header
