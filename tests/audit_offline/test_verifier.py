"""verify_bundle on valid bundles and on one tamper case per test, each asserting the exact kind and
position reported.

Most tamper tests call :func:`reseal`: they re-sign the manifest after the change, as an attacker
holding the export key could, so that the check under test (and not the manifest digest) has to
catch it. ``test_*_without_resealing`` show what the manifest alone catches.
"""
from __future__ import annotations

import base64
import hashlib
import json
from datetime import timedelta
from pathlib import Path

import pytest

from audit import merkle
from audit import verifier as verifier_module
from audit.note import Ed25519NoteSigner, checkpoint_text, format_time, parse_time, sign_checkpoint, sign_note
from audit.verifier import KINDS, Report, verify_bundle

from .logfactory import (
    KEY_NAME, LAG, ORIGIN, SyntheticLog, edit_entry, edit_proofs, flip_b64, honest_range, leaf_hex, manifest,
    read_lines, rechain, reseal, sign_manifest, write_lines,
)


def fails(report: Report, kind: str, position: int | None = None) -> None:
    assert kind in KINDS
    assert not report.ok, "the bundle verified but should not have"
    assert (report.kind, report.position) == (kind, position), report.result_line()


def label(signer: Ed25519NoteSigner) -> str:
    return f"{signer.name}+{signer.key_id:08x}"


def first_checkpoint_after(log: SyntheticLog, tree: str, position: int) -> int:
    return min(c.size for c in log.tree(tree).checkpoints if c.size > position)


# ----------------------------------------------------------------------------------------------
# Valid bundles


def test_valid_global_bundle(log, tmp_path):
    d = log.export(tmp_path / "b")
    r = verify_bundle(d)
    assert r.ok, r.result_line()
    assert r.counts == {"entries": 100, "checkpoints": 13, "consistency_proofs": 12, "keys": 2}
    assert r.root == log.global_tree.mtree.root(100)
    assert set(r.signed_by) == {label(log.key1), label(log.key2)}
    assert r.keys_from_bundle and sorted(r.trusted_keys) == sorted(log.verifier_keys)
    r = verify_bundle(d, trusted_keys=log.verifier_keys, trusted_checkpoint=log.checkpoint("global", 40).note)
    assert r.ok and not r.keys_from_bundle and r.trusted_checkpoint_size == 40, r.result_line()


@pytest.mark.parametrize("tenant", ["acme", "globex", "initech"])
def test_valid_tenant_bundle(log, tmp_path, tenant):
    d = log.export(tmp_path / "b", tree=tenant)
    r = verify_bundle(d, trusted_keys=log.verifier_keys)
    assert r.ok, r.result_line()
    assert r.tree == "tenant" and r.tenant == tenant
    assert r.counts["entries"] == len(log.tree(tenant).lines) > 10
    assert r.root == log.tree(tenant).mtree.root()


def test_valid_mid_range_bundle(log, tmp_path):
    d = log.export(tmp_path / "b", begin=37, end=70, size=96)
    r = verify_bundle(d, trusted_keys=log.verifier_keys)
    assert r.ok, r.result_line()
    assert (r.begin, r.end, r.checkpoint_size, r.counts["entries"]) == (37, 70, 96, 33)
    assert r.root == log.global_tree.mtree.root(96)


def test_valid_mid_range_bundle_with_a_trusted_checkpoint_older_than_the_range(log, tmp_path):
    d = log.export(tmp_path / "b", begin=50, include_older=False, extra_consistency=[(16, 100)])
    r = verify_bundle(d, trusted_keys=log.verifier_keys, trusted_checkpoint=log.checkpoint("global", 16).note)
    assert r.ok, r.result_line()
    assert r.counts["checkpoints"] == 7  # 56, 64, ..., 96, 100


def test_valid_empty_range(log, tmp_path):
    d = log.export(tmp_path / "b", begin=40, end=40, size=48)
    r = verify_bundle(d)
    assert r.ok and r.counts["entries"] == 0, r.result_line()


# ----------------------------------------------------------------------------------------------
# Entries


def test_modified_entry_in_the_middle(log, tmp_path):
    d = log.export(tmp_path / "b")
    lines = read_lines(d)
    lines[41] = edit_entry(lines[41], outcome="failure")
    write_lines(d, lines)
    reseal(d, log.key2)
    r = verify_bundle(d)
    fails(r, "entry_modified", 41)
    assert "link from entry 42" in r.message


def test_modified_entry_without_resealing_is_a_manifest_mismatch(log, tmp_path):
    d = log.export(tmp_path / "b")
    lines = read_lines(d)
    lines[41] = edit_entry(lines[41], outcome="failure")
    write_lines(d, lines)
    fails(verify_bundle(d), "manifest_mismatch")


def test_modified_last_entry_is_a_root_mismatch(log, tmp_path):
    d = log.export(tmp_path / "b")
    lines = read_lines(d)
    lines[-1] = edit_entry(lines[-1], outcome="failure")
    write_lines(d, lines)
    reseal(d, log.key2)
    fails(verify_bundle(d), "root_mismatch", 100)


def test_modified_last_entry_of_a_range_ending_between_checkpoints(log, tmp_path):
    d = log.export(tmp_path / "b", begin=37, end=70, size=96)
    lines = read_lines(d)
    lines[-1] = edit_entry(lines[-1], outcome="failure")
    write_lines(d, lines)
    reseal(d, log.key2)
    fails(verify_bundle(d), "root_mismatch", 96)


def test_deleted_entry_in_the_middle(log, tmp_path):
    d = log.export(tmp_path / "b")
    lines = read_lines(d)
    del lines[50]
    write_lines(d, lines)
    honest_range(d, log)
    reseal(d, log.key2)
    r = verify_bundle(d)
    fails(r, "entry_missing", 50)
    assert "next entry is 51" in r.message


def test_deleted_tail_without_resealing_is_a_manifest_mismatch(log, tmp_path):
    d = log.export(tmp_path / "b")
    write_lines(d, read_lines(d)[:95])
    r = verify_bundle(d)
    fails(r, "manifest_mismatch")
    assert "entries.jsonl" in r.message


def test_deleted_tail_resealed_leaves_a_range_proof_that_does_not_fit(log, tmp_path):
    d = log.export(tmp_path / "b")
    write_lines(d, read_lines(d)[:95])
    reseal(d, log.key2)
    fails(verify_bundle(d), "proof_invalid")


def test_a_bundle_that_honestly_ends_earlier_is_a_valid_sub_range(log, tmp_path):
    # Not an attack by itself: only a checkpoint the auditor already holds can show that the log
    # itself lost its tail (next test).
    d = log.export(tmp_path / "b")
    write_lines(d, read_lines(d)[:95])
    honest_range(d, log)
    reseal(d, log.key2)
    assert verify_bundle(d).ok


def test_deleted_tail_with_a_trusted_checkpoint_from_an_earlier_export_is_truncated(log, tmp_path):
    earlier = log.export(tmp_path / "earlier")
    assert verify_bundle(earlier).ok
    trusted = (earlier / "checkpoints" / "100.note").read_bytes()
    # The server later rolled the log back to 80 entries and signs it as if nothing happened.
    rolled_back = SyntheticLog(80, key1=log.key1, key2=log.key2, rotate_at=log.rotate_at)
    assert rolled_back.global_tree.lines == log.global_tree.lines[:80]
    d = rolled_back.export(tmp_path / "later")
    assert verify_bundle(d, trusted_keys=log.verifier_keys).ok
    r = verify_bundle(d, trusted_keys=log.verifier_keys, trusted_checkpoint=trusted)
    fails(r, "truncated")


def test_reordered_pair(log, tmp_path):
    d = log.export(tmp_path / "b")
    lines = read_lines(d)
    lines[30], lines[31] = lines[31], lines[30]
    write_lines(d, lines)
    reseal(d, log.key2)
    fails(verify_bundle(d), "entry_order", 30)


def test_inserted_entry(log, tmp_path):
    d = log.export(tmp_path / "b", end=70, size=96)
    lines = read_lines(d)
    forged = edit_entry(lines[60], prev=leaf_hex(lines[59]), event="member.deleted")
    lines.insert(60, forged)
    write_lines(d, lines)
    honest_range(d, log)
    reseal(d, log.key2)
    fails(verify_bundle(d), "entry_order", 61)  # the real entry 60 now sits at 61


def test_inserted_entry_with_renumbered_and_rechained_successors(log, tmp_path):
    d = log.export(tmp_path / "b", end=70, size=96)
    lines = read_lines(d)
    lines.insert(60, edit_entry(lines[60], event="member.deleted"))
    lines[60:] = rechain(lines[60:], leaf_hex(lines[59]), renumber_from=60)
    write_lines(d, lines)
    honest_range(d, log)
    reseal(d, log.key2)
    fails(verify_bundle(d), "root_mismatch", 64)


def test_changed_at_with_recomputed_chain_is_a_root_mismatch(log, tmp_path):
    d = log.export(tmp_path / "b")
    lines = read_lines(d)
    at = parse_time(json.loads(lines[45])["at"])
    lines[45] = edit_entry(lines[45], at=format_time(at - timedelta(seconds=1)))  # still within the lag
    lines[45:] = rechain(lines[45:], leaf_hex(lines[44]))
    write_lines(d, lines)
    reseal(d, log.key2)
    fails(verify_bundle(d), "root_mismatch", 48)


def _shift_at(seconds: float):
    def edit(entry):
        entry["at"] = format_time(parse_time(entry["integrated_at"]) + timedelta(seconds=seconds))
    return edit


def test_backdated_entry_in_a_freshly_signed_log(tmp_path):
    log = SyntheticLog(60, overrides={33: _shift_at(-(LAG + 1))})
    fails(verify_bundle(log.export(tmp_path / "b")), "backdated", 33)


def test_entry_dated_after_its_integration_is_backdated(tmp_path):
    log = SyntheticLog(60, overrides={33: _shift_at(6)})
    fails(verify_bundle(log.export(tmp_path / "b")), "backdated", 33)


def test_lag_and_skew_at_their_limits_are_accepted(tmp_path):
    log = SyntheticLog(60, overrides={20: _shift_at(-LAG), 33: _shift_at(5)})
    assert verify_bundle(log.export(tmp_path / "b")).ok


def test_integrated_at_going_backwards(tmp_path):
    def back(entry):
        t = format_time(parse_time(entry["integrated_at"]) - timedelta(seconds=30))
        entry["integrated_at"] = entry["at"] = t
    log = SyntheticLog(60, overrides={30: back})
    fails(verify_bundle(log.export(tmp_path / "b")), "timestamp_backwards", 30)


def test_checkpoint_dated_before_its_last_entry_was_integrated(tmp_path):
    log = SyntheticLog(60, checkpoint_every=20)
    last = parse_time(json.loads(log.global_tree.lines[39])["integrated_at"])
    early = last - timedelta(seconds=6)
    assert early > log.checkpoint("global", 20).time  # so it is not a shrinking log
    extra = sign_checkpoint(ORIGIN, 40, log.global_tree.mtree.root(40), early, [log.key2])
    d = log.export(tmp_path / "b", extra_checkpoints=[(40, extra)])
    fails(verify_bundle(d), "timestamp_backwards", 39)


@pytest.mark.parametrize("index,edit", [
    (20, {"v": 2}),
    (20, {"v": True}),
    (1, {"seq": True}),
    (20, lambda e: e.pop("event")),
    (20, {"event": 5}),
    (20, {"integrated_at": "2025-03-01"}),
    (20, {"integrated_at": None}),
    (20, {"at": "yesterday"}),
    (20, {"tenant": "acme", "tenant_seq": 1.5, "tenant_prev": "0" * 64}),
    (20, {"tenant": None, "tenant_seq": 3, "tenant_prev": "0" * 64}),
    (20, {"prev": 7}),
], ids=["v2", "v-true", "seq-true", "no-event", "event-int", "naive-time", "null-time", "bad-at", "float-tenant-seq",
        "half-tenant", "prev-int"])
def test_malformed_entry_in_a_freshly_signed_log(tmp_path, index, edit):
    log = SyntheticLog(40, overrides={index: edit})
    fails(verify_bundle(log.export(tmp_path / "b")), "malformed", index)


@pytest.mark.parametrize("line", [b"not json", b"[1, 2]", b'{"v": 1}', b"{}"])
def test_unparseable_entry_line(log, tmp_path, line):
    d = log.export(tmp_path / "b")
    lines = read_lines(d)
    lines[20] = line
    write_lines(d, lines)
    reseal(d, log.key2)
    fails(verify_bundle(d), "malformed", 20)


def test_last_line_without_newline(log, tmp_path):
    d = log.export(tmp_path / "b")
    (d / "entries.jsonl").write_bytes((d / "entries.jsonl").read_bytes()[:-1])
    honest_range(d, log)
    reseal(d, log.key2)
    fails(verify_bundle(d), "malformed", 99)


# ----------------------------------------------------------------------------------------------
# Checkpoints


def _replace_checkpoint(d: Path, size: int, raw: bytes) -> None:
    (d / "checkpoints" / f"{size}.note").write_bytes(raw)


def test_forged_checkpoint(log, tmp_path):
    d = log.export(tmp_path / "b")
    cp = log.checkpoint("global", 64)
    text = checkpoint_text(ORIGIN, 64, hashlib.sha256(b"another tree").digest(), time=cp.time)
    attacker = Ed25519NoteSigner.generate(KEY_NAME)
    blob = cp.signer.key_id.to_bytes(4, "big") + attacker.sign(text)  # claims to be the log key
    _replace_checkpoint(d, 64, text + "\n\u2014 {} {}\n".format(KEY_NAME, base64.b64encode(blob).decode()).encode())
    reseal(d, log.key2)
    fails(verify_bundle(d), "checkpoint_signature")


def test_altered_checkpoint_root(log, tmp_path):
    d = log.export(tmp_path / "b")
    raw = log.checkpoint("global", 64).note.split(b"\n")
    raw[2] = base64.b64encode(hashlib.sha256(b"another tree").digest())
    _replace_checkpoint(d, 64, b"\n".join(raw))
    reseal(d, log.key2)
    fails(verify_bundle(d), "checkpoint_signature")


def test_missing_checkpoint_file(log, tmp_path):
    d = log.export(tmp_path / "b")
    (d / "checkpoints" / "64.note").unlink()
    r = verify_bundle(d)
    fails(r, "file_missing")
    assert "checkpoints/64.note" in r.message


def test_dropped_checkpoint_resealed_leaves_a_gap_in_the_consistency_proofs(log, tmp_path):
    d = log.export(tmp_path / "b")
    (d / "checkpoints" / "64.note").unlink()
    reseal(d, log.key2)
    fails(verify_bundle(d), "proof_missing")


def test_unlisted_checkpoint_file(log, tmp_path):
    d = log.export(tmp_path / "b")
    (d / "checkpoints" / "7.note").write_bytes(log.checkpoint("global", 8).note)
    fails(verify_bundle(d), "manifest_mismatch")


def test_checkpoint_signed_by_an_unknown_key(log, tmp_path):
    d = log.export(tmp_path / "b")
    cp = log.checkpoint("global", 64)
    stranger = Ed25519NoteSigner.generate(KEY_NAME)
    _replace_checkpoint(d, 64, sign_checkpoint(ORIGIN, 64, cp.root, cp.time, [stranger]))
    reseal(d, log.key2)
    r = verify_bundle(d)
    fails(r, "unknown_key")
    assert "checkpoints/64.note" in r.message


def test_extra_signature_by_an_unknown_key_is_ignored(log, tmp_path):
    d = log.export(tmp_path / "b")
    cp = log.checkpoint("global", 64)
    witness = Ed25519NoteSigner.generate("witness.example")
    _replace_checkpoint(d, 64, sign_checkpoint(ORIGIN, 64, cp.root, cp.time, [cp.signer, witness]))
    reseal(d, log.key2)
    assert verify_bundle(d).ok


def test_checkpoint_of_another_origin(log, tmp_path):
    d = log.export(tmp_path / "b")
    cp = log.checkpoint("global", 64)
    _replace_checkpoint(d, 64, sign_checkpoint("audit.gatehouse.test/other", 64, cp.root, cp.time, [cp.signer]))
    reseal(d, log.key2)
    fails(verify_bundle(d), "malformed")


def test_fork_two_checkpoints_of_one_size_with_different_roots(log, tmp_path):
    cp = log.checkpoint("global", 64)
    other = sign_checkpoint(ORIGIN, 64, hashlib.sha256(b"another tree").digest(), cp.time + timedelta(seconds=1), [log.key2])
    d = log.export(tmp_path / "b", extra_checkpoints=[(64, other)])
    r = verify_bundle(d)
    fails(r, "fork")
    assert "size 64" in r.message


def test_same_size_and_root_signed_twice_is_fine(log, tmp_path):
    cp = log.checkpoint("global", 64)
    later = cp.time + timedelta(seconds=1)  # a heartbeat: re-signed before the log grew again
    assert later < log.checkpoint("global", 72).time
    again = sign_checkpoint(ORIGIN, 64, cp.root, later, [log.key2])
    d = log.export(tmp_path / "b", extra_checkpoints=[(64, again)])
    r = verify_bundle(d)
    assert r.ok and r.counts["checkpoints"] == 14, r.result_line()


def test_fork_shrinking_log(log, tmp_path):
    # Signed after checkpoint 100, yet it shows only 40 entries: the log went back.
    later = log.checkpoint("global", 100).time + timedelta(minutes=1)
    shrunk = sign_checkpoint(ORIGIN, 40, log.global_tree.mtree.root(40), later, [log.key2])
    d = log.export(tmp_path / "b", extra_checkpoints=[(40, shrunk)])
    r = verify_bundle(d)
    fails(r, "fork")
    assert "shrinking" in r.message


# ----------------------------------------------------------------------------------------------
# Proofs


def test_wrong_consistency_proof(log, tmp_path):
    d = log.export(tmp_path / "b")
    edit_proofs(d, lambda p: p["consistency"][3]["proof"].__setitem__(0, flip_b64(p["consistency"][3]["proof"][0], 5)))
    reseal(d, log.key2)
    r = verify_bundle(d)
    fails(r, "proof_invalid")
    assert "from checkpoint 32 to checkpoint 40" in r.message


def test_missing_consistency_proof(log, tmp_path):
    d = log.export(tmp_path / "b")
    edit_proofs(d, lambda p: p["consistency"].pop(3))
    reseal(d, log.key2)
    fails(verify_bundle(d), "proof_missing")


def _flip_range(side: str, index: int = 0):
    def edit(p):
        p["range"][side][index] = flip_b64(p["range"][side][index], 7)
    return edit


def test_wrong_range_proof_left_is_a_root_mismatch_at_the_first_checkpoint(log, tmp_path):
    d = log.export(tmp_path / "b", begin=37, end=70, size=96)
    edit_proofs(d, _flip_range("left"))
    reseal(d, log.key2)
    fails(verify_bundle(d), "root_mismatch", 40)


def test_wrong_range_proof_left_at_a_checkpoint_is_proof_invalid(log, tmp_path):
    d = log.export(tmp_path / "b", begin=40, end=70, size=96)
    edit_proofs(d, _flip_range("left", 1))
    reseal(d, log.key2)
    fails(verify_bundle(d), "proof_invalid")


def test_wrong_range_proof_right_after_a_checkpoint_is_proof_invalid(log, tmp_path):
    d = log.export(tmp_path / "b", begin=37, end=64, size=96)
    edit_proofs(d, _flip_range("right"))
    reseal(d, log.key2)
    r = verify_bundle(d)
    fails(r, "proof_invalid")
    assert "right" in r.message


def test_wrong_range_proof_right_between_checkpoints_is_a_root_mismatch(log, tmp_path):
    d = log.export(tmp_path / "b", begin=37, end=70, size=96)
    edit_proofs(d, _flip_range("right"))
    reseal(d, log.key2)
    fails(verify_bundle(d), "root_mismatch", 96)


def test_range_proof_of_the_wrong_length(log, tmp_path):
    d = log.export(tmp_path / "b", begin=37, end=70, size=96)
    edit_proofs(d, lambda p: p["range"]["right"].pop())
    reseal(d, log.key2)
    fails(verify_bundle(d), "proof_invalid")


@pytest.mark.parametrize("edit", [
    lambda p: p["consistency"][2]["proof"].__setitem__(0, "not*base64"),
    lambda p: p["consistency"][2]["proof"].__setitem__(0, base64.b64encode(b"x" * 31).decode()),
    lambda p: p["range"]["left"].__setitem__(0, base64.b64encode(b"x" * 33).decode()),
    lambda p: p["consistency"][2].pop("to"),
    lambda p: p.pop("range"),
    lambda p: p["consistency"].append(dict(p["consistency"][0])),
], ids=["bad-base64", "short-hash", "long-hash", "no-to", "no-range", "duplicate"])
def test_malformed_proofs(log, tmp_path, edit):
    d = log.export(tmp_path / "b", begin=37, end=70, size=96)
    edit_proofs(d, edit)
    reseal(d, log.key2)
    fails(verify_bundle(d), "malformed")


def test_proofs_json_not_json(log, tmp_path):
    d = log.export(tmp_path / "b")
    (d / "proofs.json").write_bytes(b"{")
    reseal(d, log.key2)
    fails(verify_bundle(d), "malformed")


# ----------------------------------------------------------------------------------------------
# Whole-log rewrites


def test_rewrite_signed_by_other_keys_fails_against_the_trusted_keys(log, tmp_path):
    forger = SyntheticLog(100, seed=2)
    d = forger.export(tmp_path / "b")
    # Trusting whatever keys.txt says, a rewrite by other keys verifies: hence --trusted-key, and
    # the CLI printing the keys it trusted.
    r = verify_bundle(d)
    assert r.ok and sorted(r.trusted_keys) == sorted(forger.verifier_keys)
    r = verify_bundle(d, trusted_keys=log.verifier_keys)
    fails(r, "unknown_key")
    assert "manifest.sig" in r.message


def test_rewrite_signed_by_the_log_key_is_a_fork_against_the_trusted_checkpoint(log, tmp_path):
    insider = SyntheticLog(100, seed=2, key1=log.key1, key2=log.key2, rotate_at=log.rotate_at)
    d = insider.export(tmp_path / "b")
    assert verify_bundle(d, trusted_keys=log.verifier_keys).ok
    trusted = log.checkpoint("global", 64).note
    fails(verify_bundle(d, trusted_keys=log.verifier_keys, trusted_checkpoint=trusted), "fork")


def test_rewrite_claiming_a_key_rotation_is_a_fork_against_the_trusted_checkpoint(log, tmp_path):
    forger = SyntheticLog(100, seed=2)
    d = forger.export(tmp_path / "b", keys=[*log.verifier_keys, *forger.verifier_keys])
    fails(verify_bundle(d, trusted_checkpoint=log.checkpoint("global", 64).note), "fork")


def test_rewrite_of_a_range_after_the_trusted_checkpoint(log, tmp_path):
    insider = SyntheticLog(100, seed=2, key1=log.key1, key2=log.key2, rotate_at=log.rotate_at)
    trusted = log.checkpoint("global", 16).note
    d = insider.export(tmp_path / "b1", begin=50, include_older=False, extra_consistency=[(16, 100)])
    fails(verify_bundle(d, trusted_keys=log.verifier_keys, trusted_checkpoint=trusted), "fork")
    d = insider.export(tmp_path / "b2", begin=50, include_older=False)
    fails(verify_bundle(d, trusted_keys=log.verifier_keys, trusted_checkpoint=trusted), "proof_missing")


def test_trusted_checkpoint_must_be_signed_by_a_trusted_key(log, tmp_path):
    d = log.export(tmp_path / "b")
    cp = log.checkpoint("global", 64)
    stranger = Ed25519NoteSigner.generate(KEY_NAME)
    fails(verify_bundle(d, trusted_checkpoint=sign_checkpoint(ORIGIN, 64, cp.root, cp.time, [stranger])), "unknown_key")
    tampered = cp.note.replace(base64.b64encode(cp.root), base64.b64encode(hashlib.sha256(b"x").digest()))
    fails(verify_bundle(d, trusted_checkpoint=tampered), "checkpoint_signature")


def test_trusted_checkpoint_dated_after_a_larger_bundle_checkpoint_is_a_fork(log, tmp_path):
    d = log.export(tmp_path / "b")
    late = sign_checkpoint(ORIGIN, 40, log.global_tree.mtree.root(40),
                           log.checkpoint("global", 100).time + timedelta(hours=1), [log.key2])
    r = verify_bundle(d, trusted_checkpoint=late)
    fails(r, "fork")
    assert "shrinking" in r.message


# ----------------------------------------------------------------------------------------------
# Tenant exports


def _acme_case(log: SyntheticLog) -> int:
    """A tenant position with a tenant checkpoint after it and before the end of the tree."""
    cps = [c.size for c in log.tree("acme").checkpoints]
    k = 5
    assert any(k < s < len(log.tree("acme").lines) - 1 for s in cps)
    return k


def test_tenant_export_with_an_entry_left_out(log, tmp_path):
    k = _acme_case(log)
    d = log.export(tmp_path / "b", tree="acme")
    lines = read_lines(d)
    del lines[k]
    write_lines(d, lines)
    honest_range(d, log, "acme")
    reseal(d, log.key2)
    fails(verify_bundle(d), "entry_missing", k)


def test_tenant_export_with_an_entry_left_out_and_the_rest_renumbered(log, tmp_path):
    k = _acme_case(log)
    d = log.export(tmp_path / "b", tree="acme")
    lines = read_lines(d)
    del lines[k]
    lines[k:] = [edit_entry(line, tenant_seq=k + i) for i, line in enumerate(lines[k:])]
    write_lines(d, lines)
    honest_range(d, log, "acme")
    reseal(d, log.key2)
    r = verify_bundle(d)
    fails(r, "entry_modified", k - 1)  # the chain: entry k still links to the entry left out


def test_tenant_export_with_an_entry_left_out_renumbered_and_rechained(log, tmp_path):
    k = _acme_case(log)
    d = log.export(tmp_path / "b", tree="acme")
    lines = read_lines(d)
    del lines[k]
    lines[k:] = rechain(lines[k:], leaf_hex(lines[k - 1]), "tenant_seq", "tenant_prev", renumber_from=k)
    write_lines(d, lines)
    honest_range(d, log, "acme")
    reseal(d, log.key2)
    fails(verify_bundle(d), "root_mismatch", first_checkpoint_after(log, "acme", k))


def test_tenant_export_holding_another_tenants_entry(log, tmp_path):
    d = log.export(tmp_path / "b", tree="acme")
    lines = read_lines(d)
    lines[4] = edit_entry(lines[4], tenant="globex")
    write_lines(d, lines)
    reseal(d, log.key2)
    fails(verify_bundle(d), "malformed", 4)


# ----------------------------------------------------------------------------------------------
# Manifest and keys


def test_manifest_edited(log, tmp_path):
    d = log.export(tmp_path / "b")
    m = manifest(d)
    m["exported_by"] = "someone else"
    (d / "manifest.json").write_bytes(json.dumps(m, sort_keys=True, separators=(",", ":")).encode())
    r = verify_bundle(d)
    fails(r, "manifest_signature")
    assert "SHA-256 of manifest.json" in r.message


def test_manifest_reformatted(log, tmp_path):
    d = log.export(tmp_path / "b")
    (d / "manifest.json").write_bytes(json.dumps(manifest(d), indent=2).encode())
    fails(verify_bundle(d), "manifest_signature")


def test_manifest_signature_missing(log, tmp_path):
    d = log.export(tmp_path / "b")
    (d / "manifest.sig").unlink()
    fails(verify_bundle(d), "file_missing")


def test_manifest_signature_by_a_known_key_over_another_digest(log, tmp_path):
    d = log.export(tmp_path / "b")
    (d / "manifest.sig").write_bytes(sign_note(f"gatehouse-audit-bundle/1\n{'ab' * 32}\n", [log.key2]))
    fails(verify_bundle(d), "manifest_signature")


def test_manifest_signature_forged(log, tmp_path):
    d = log.export(tmp_path / "b")
    sig = (d / "manifest.sig").read_bytes()
    body, _, sigline = sig.rpartition(b" ")
    raw = bytearray(base64.b64decode(sigline))
    raw[10] ^= 1
    (d / "manifest.sig").write_bytes(body + b" " + base64.b64encode(bytes(raw)) + b"\n")
    fails(verify_bundle(d), "manifest_signature")


@pytest.mark.parametrize("change", [
    {"format": "gatehouse-audit-bundle/2"},
    {"tree": "tenant"},
    {"start_prev": "1" * 64},
    {"seq_field": "tenant_seq"},
    {"checkpoint_size": 99},
    {"files": {}},
])
def test_malformed_manifest(log, tmp_path, change):
    d = log.export(tmp_path / "b")
    reseal(d, log.key2, **change)
    fails(verify_bundle(d), "malformed")


def test_manifest_path_outside_the_bundle_is_malformed(log, tmp_path):
    d = log.export(tmp_path / "b")
    m = manifest(d)
    m["files"]["../secret"] = {"sha256": "0" * 64, "size": 0}
    (d / "manifest.json").write_bytes(json.dumps(m, sort_keys=True, separators=(",", ":")).encode())
    sign_manifest(d, log.key2)
    r = verify_bundle(d)
    fails(r, "malformed")
    assert "../secret" in r.message


def test_keys_replaced_without_resealing(log, tmp_path):
    d = log.export(tmp_path / "b")
    (d / "keys.txt").write_text(Ed25519NoteSigner.generate(KEY_NAME).verifier_key() + "\n")
    fails(verify_bundle(d), "manifest_mismatch")


def test_keys_file_malformed(log, tmp_path):
    d = log.export(tmp_path / "b")
    (d / "keys.txt").write_text("not a key\n")
    reseal(d, log.key2)
    fails(verify_bundle(d), "malformed")


def test_rotated_key_only_trusts_part_of_the_bundle(log, tmp_path):
    d = log.export(tmp_path / "b")
    fails(verify_bundle(d, trusted_keys=[log.key1.verifier_key()]), "unknown_key")  # manifest.sig by key2
    d2 = log.export(tmp_path / "b2", signer=log.key1)
    r = verify_bundle(d2, trusted_keys=[log.key1.verifier_key()])
    fails(r, "unknown_key")  # checkpoints after the rotation are signed by key2
    assert "checkpoints/56.note" in r.message


def test_invalid_trusted_key_argument_raises(log, tmp_path):
    d = log.export(tmp_path / "b")
    with pytest.raises(ValueError):
        verify_bundle(d, trusted_keys=["not a key"])


def test_not_a_directory(tmp_path):
    fails(verify_bundle(tmp_path / "nope"), "file_missing")


def test_progress_is_reported(log, tmp_path):
    d = log.export(tmp_path / "b")
    seen = []
    assert verify_bundle(d, progress=lambda done, total: seen.append((done, total))).ok
    assert seen and seen[-1] == (100, 100)


def test_every_kind_is_exercised_somewhere():
    source = Path(__file__).read_text()
    missing = [k for k in KINDS if f'"{k}"' not in source]
    assert not missing, missing


def test_range_root_helper_agrees_with_the_verifier(log):
    t = log.global_tree.mtree
    left, right = t.range_proof(37, 70, 96)
    leaves = [merkle.leaf_hash(line) for line in log.global_tree.lines[37:70]]
    assert merkle.root_from_range(left, leaves, right, 37, 70, 96) == t.root(96)


@pytest.mark.parametrize("chunk", [1, 7, 64, 4096])
def test_lines_spanning_read_chunks(log, tmp_path, monkeypatch, chunk):
    # Entries hold multi-byte UTF-8, so small chunks also split characters.
    monkeypatch.setattr(verifier_module, "_CHUNK", chunk)
    d = log.export(tmp_path / "b", tree="acme")
    assert verify_bundle(d).ok
    lines = read_lines(d)
    lines[7] = edit_entry(lines[7], outcome="failure")
    write_lines(d, lines)
    reseal(d, log.key2)
    fails(verify_bundle(d), "entry_modified", 7)


def test_overlong_line_is_malformed_with_bounded_memory(log, tmp_path, monkeypatch):
    monkeypatch.setattr(verifier_module, "_CHUNK", 64)
    monkeypatch.setattr(verifier_module, "MAX_LINE_BYTES", 100)
    d = log.export(tmp_path / "b")
    r = verify_bundle(d)
    fails(r, "malformed", 0)
    assert "longer than 100 bytes" in r.message
