"""The verifier's command line (exit codes 0/1/2 and output), and that it runs outside the project:
copied alone with merkle.py and note.py, under ``python -I``, without Django."""
from __future__ import annotations

import ast
import base64
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import audit
from audit.bundle import BundleWriter
from audit.note import Ed25519NoteSigner
from audit.verifier import main

from .logfactory import read_lines, reseal, write_lines, edit_entry

AUDIT_DIR = Path(audit.__file__).parent
REPO = AUDIT_DIR.parent
STANDALONE = ("verifier.py", "merkle.py", "note.py")


@pytest.fixture
def bundle(log, tmp_path) -> Path:
    return log.export(tmp_path / "bundle")


def test_ok_prints_the_result_and_the_keys_it_trusted(log, bundle, capsys):
    assert main([str(bundle)]) == 0
    out, err = capsys.readouterr()
    root = base64.b64encode(log.global_tree.mtree.root(100)).decode()
    k1, k2 = (f"{k.name}+{k.key_id:08x}" for k in (log.key1, log.key2))
    assert out.splitlines()[-1] == (
        f"OK: 100 entries [0, 100) of audit.gatehouse.test/global, 13 checkpoints verified, "
        f"root at 100 = {root}, signed by {k2}, {k1}"
    )
    assert "No --trusted-key given" in out
    for k in log.verifier_keys:
        assert f"  {k}" in out
    assert err == ""


def test_trusted_keys_as_strings_and_as_a_file(log, bundle, tmp_path, capsys):
    assert main([str(bundle), "--trusted-key", log.key1.verifier_key(), "--trusted-key", log.key2.verifier_key()]) == 0
    out, _ = capsys.readouterr()
    assert "No --trusted-key given" not in out and out.startswith("OK: ")
    keyfile = tmp_path / "keys"
    keyfile.write_text("# the log's keys\n" + "\n".join(log.verifier_keys) + "\n")
    assert main([str(bundle), "--trusted-key", str(keyfile)]) == 0


def test_trusted_checkpoint_file(log, bundle, tmp_path, capsys):
    cp = tmp_path / "seen.note"
    cp.write_bytes(log.checkpoint("global", 40).note)
    assert main([str(bundle), "--trusted-checkpoint", str(cp)]) == 0
    assert "Trusted checkpoint of size 40 is consistent" in capsys.readouterr().out


def test_quiet_prints_only_the_result(bundle, capsys):
    assert main([str(bundle), "--quiet"]) == 0
    out, err = capsys.readouterr()
    assert out.count("\n") == 1 and out.startswith("OK: ") and err == ""


def test_failure_at_an_entry(log, bundle, capsys):
    lines = read_lines(bundle)
    lines[41] = edit_entry(lines[41], outcome="failure")
    write_lines(bundle, lines)
    reseal(bundle, log.key2)
    assert main([str(bundle), "--quiet"]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith("FAILED at entry 41: entry_modified: ")


def test_failure_not_tied_to_an_entry(bundle, capsys):
    stranger = Ed25519NoteSigner.generate("audit.gatehouse.test")
    assert main([str(bundle), "--trusted-key", stranger.verifier_key()]) == 1
    err = capsys.readouterr().err
    assert err.startswith("FAILED: unknown_key: manifest.sig: ")


@pytest.mark.parametrize("args", [
    [],
    ["/nonexistent/bundle"],
    ["{bundle}", "--trusted-key", "not-a-key"],
    ["{bundle}", "--trusted-checkpoint", "/nonexistent/cp.note"],
    ["{bundle}", "--no-such-option"],
    ["{bundle}", "{bundle}"],
])
def test_usage_errors_exit_2(bundle, capsys, args):
    assert main([a.format(bundle=bundle) for a in args]) == 2
    assert capsys.readouterr().err


def test_python_dash_m(bundle):
    p = subprocess.run([sys.executable, "-m", "audit.verifier", str(bundle), "--quiet"],
                       cwd=REPO, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert p.stdout.startswith("OK: 100 entries")


def test_standalone_copy_under_isolated_mode(log, bundle, tmp_path):
    """What an outside auditor does: three files, python -I, no project, no Django."""
    alone = tmp_path / "alone"
    alone.mkdir()
    for name in STANDALONE:
        shutil.copy(AUDIT_DIR / name, alone / name)
    p = subprocess.run([sys.executable, "-I", "verifier.py", str(bundle), "--trusted-key", log.key2.verifier_key(),
                        "--trusted-key", log.key1.verifier_key()],
                       cwd=alone, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert p.stdout.startswith("OK: 100 entries [0, 100)")
    # Exit 1 on a tampered bundle, also standalone.
    lines = read_lines(bundle)
    lines[10] = edit_entry(lines[10], event="x")
    write_lines(bundle, lines)
    p = subprocess.run([sys.executable, "-I", "verifier.py", str(bundle)], cwd=alone, capture_output=True,
                       text=True, timeout=120)
    assert p.returncode == 1 and p.stderr.startswith("FAILED: manifest_mismatch: ")
    # And nothing of the project or Django was imported on the way.
    probe = (
        "import sys; sys.argv = ['verifier.py', sys.argv[1], '--quiet']\n"
        "sys.path.insert(0, '.')\n"
        "import verifier\n"
        "code = verifier.main(sys.argv[1:])\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in "
        "('django', 'rest_framework', 'gateway', 'approvals', 'executors', 'audit'))\n"
        "print(code, bad)\n"
    )
    p = subprocess.run([sys.executable, "-I", "-c", probe, str(bundle)], cwd=alone, capture_output=True, text=True,
                       timeout=120)
    assert p.stdout.strip().splitlines()[-1] == "1 []", p.stderr


def test_importing_the_package_modules_does_not_import_django():
    probe = (
        "import sys\n"
        "import audit.verifier, audit.bundle, audit.merkle, audit.note\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('django', 'rest_framework', 'gateway')))\n"
    )
    p = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == "[]"


@pytest.mark.parametrize("name", ["verifier.py", "merkle.py", "note.py", "bundle.py"])
def test_modules_import_only_the_standard_library_cryptography_and_each_other(name):
    tree = ast.parse((AUDIT_DIR / name).read_text())
    allowed = set(sys.stdlib_module_names) | {"cryptography", "merkle", "note", "verifier", "__future__"}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots = [a.name.split(".")[0] for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: only siblings among the offline modules
                assert node.module in (None, "verifier", "merkle", "note"), ast.dump(node)
                if node.module is None:
                    assert {a.name for a in node.names} <= {"merkle", "note"}
                continue
            roots = [node.module.split(".")[0]]
        else:
            continue
        assert set(roots) <= allowed, (name, roots)


def test_writer_refuses_a_non_empty_directory(tmp_path):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "file").write_text("hi")
    kw = dict(origin="o", tree="global", tenant=None, begin=0, seq_field="seq", prev_field="prev",
              start_prev="0" * 64, max_integration_lag_seconds=60, exported_by="me")
    with pytest.raises(FileExistsError):
        BundleWriter(tmp_path / "x", **kw)
    with pytest.raises(ValueError):
        BundleWriter(tmp_path / "y", **{**kw, "tree": "tenant"})  # tenant bundle without a tenant
    w = BundleWriter(tmp_path / "z", **kw)
    with pytest.raises(ValueError):
        w.write_entry(b"two\nlines")
    with pytest.raises(ValueError):
        w.close(Ed25519NoteSigner.generate("k"))  # no range proof, no checkpoint
