"""audit.note: C2SP signed notes and tlog checkpoints, pinned to known answers."""
from __future__ import annotations

import base64
from datetime import datetime, timezone

import pytest

from audit.note import (
    Checkpoint, Ed25519NoteSigner, NoteError, NoteVerifier, checkpoint_text, format_time, key_id, open_checkpoint,
    open_note, open_note_keys, parse_checkpoint, parse_time, sign_checkpoint, sign_note,
)

# Known answer from golang.org/x/mod/sumdb/note (the reference implementation): Ed25519 is
# deterministic, so signing the same text with the same key must give exactly this note.
GO_SKEY = "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz"
GO_VKEY = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"
GO_TEXT = b"If you think cryptography is the answer to your problem,\nthen you don't know what your problem is.\n"
GO_NOTE = GO_TEXT + "\n\u2014 PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n".encode()
# The example of the C2SP signed-note specification.
SPEC_VKEY = "example.com/foo+530d903a+AekyeRrm56hApGFkyQR4ZCbV54Id2LKaANYcrnKv3U2k"
SPEC_NOTE = (
    "This is an example message.\n\n"
    "\u2014 example.com/foo Uw2QOkn8srV1yJGh2VYRlL1Tnagv1YEq6TfXppzi2ONncAlTgK7Ztg1ERYNZXsYjOBH3mFXmRKuwHjG1Yu72IneyaQM=\n"
).encode()


def test_go_reference_signer_key_verifier_key_and_signature():
    signer = Ed25519NoteSigner.from_key_string(GO_SKEY)
    assert signer.name == "PeterNeumann" and signer.key_id == 0xC74F20A3
    assert signer.verifier_key() == GO_VKEY
    assert signer.signer_key() == GO_SKEY
    assert sign_note(GO_TEXT, [signer]) == GO_NOTE
    assert open_note(GO_NOTE, [GO_VKEY]) == (GO_TEXT, ["PeterNeumann"])


def test_spec_example_opens():
    text, names = open_note(SPEC_NOTE, {"k": NoteVerifier(SPEC_VKEY)})
    assert text == b"This is an example message.\n" and names == ["example.com/foo"]
    v = NoteVerifier(SPEC_VKEY)
    assert v.key_id == 0x530D903A == key_id("example.com/foo", v.public_key)
    assert v.key_string() == SPEC_VKEY


@pytest.mark.parametrize("bad", [
    "PeterNeumann+c74f20a4+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",   # wrong key id
    "PeterNeumann+c74f20a3+AhpczQcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",   # wrong algorithm byte
    "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10",     # short key
    "Peter Neumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",  # space in name
    "PeterNeumann+c74f2+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",      # short id
    "PeterNeumann+c74f20a3+!!!",
    "PeterNeumann",
])
def test_bad_verifier_keys_are_malformed(bad):
    with pytest.raises(NoteError) as e:
        NoteVerifier(bad)
    assert e.value.kind == "malformed"


def test_generated_signer_roundtrip_and_key_string():
    s = Ed25519NoteSigner.generate("log.example/x")
    again = Ed25519NoteSigner.from_key_string(s.signer_key())
    assert again.verifier_key() == s.verifier_key()
    v = NoteVerifier(s.verifier_key())
    assert v.verify(b"hello\n", s.sign(b"hello\n")) and not v.verify(b"hellO\n", s.sign(b"hello\n"))
    with pytest.raises(NoteError):
        Ed25519NoteSigner.generate("bad+name")


@pytest.mark.parametrize("text", [b"", b"no newline", b"blank\n\nline\n", b"\n", b"tab\there\n", b"\xff\n", b"cr\r\n"])
def test_sign_note_refuses_bad_text(text):
    with pytest.raises(NoteError) as e:
        sign_note(text, [Ed25519NoteSigner.generate("k")])
    assert e.value.kind == "malformed"


def test_open_note_semantics():
    a, b, c = (Ed25519NoteSigner.generate(n) for n in ("a", "b", "c"))
    note = sign_note(b"text\n", [a, b])
    # One known key is enough; unknown signatures are ignored.
    assert open_note(note, [a.verifier_key()]) == (b"text\n", ["a"])
    assert open_note(note, [a.verifier_key(), b.verifier_key()])[1] == ["a", "b"]
    text, keys = open_note_keys(note, [b.verifier_key(), c.verifier_key()])
    assert [k.name for k in keys] == ["b"]
    # No known key: unknown_key.
    with pytest.raises(NoteError) as e:
        open_note(note, [c.verifier_key()])
    assert e.value.kind == "unknown_key"
    # A known key whose signature fails: bad_signature, even when another known key verifies.
    forged_b = "\u2014 b " + base64.b64encode(b.key_id.to_bytes(4, "big") + c.sign(b"text\n")).decode() + "\n"
    forged = sign_note(b"text\n", [a]) + forged_b.encode()
    with pytest.raises(NoteError) as e:
        open_note(forged, [a.verifier_key(), b.verifier_key()])
    assert e.value.kind == "bad_signature"
    assert open_note(forged, [a.verifier_key()])[1] == ["a"]  # b unknown here: ignored
    # Altered text.
    with pytest.raises(NoteError) as e:
        open_note(note.replace(b"text", b"tExt"), [a.verifier_key()])
    assert e.value.kind == "bad_signature"


@pytest.mark.parametrize("note", [
    b"text\n",                                   # no signatures
    b"text\n\n",                                 # empty signature block
    b"text\n\n- a AAAAAAAA\n",                   # hyphen, not em dash
    "text\n\n\u2014 a\n".encode(),               # no signature
    "text\n\n\u2014 a !!!!\n".encode(),          # bad base64
    "text\n\n\u2014 a AAAA\n".encode(),          # too short
    "text\n\n\u2014 a AAAAAAAAAAAA".encode(),    # no final newline
    b"te\x01xt\n\n" + "\u2014 a AAAAAAAAAAAA\n".encode(),
    b"\xff\n\n" + "\u2014 a AAAAAAAAAAAA\n".encode(),
])
def test_malformed_notes(note):
    with pytest.raises(NoteError) as e:
        open_note(note, [Ed25519NoteSigner.generate("a").verifier_key()])
    assert e.value.kind == "malformed"


def test_too_many_signatures_is_malformed():
    a = Ed25519NoteSigner.generate("a")
    note = sign_note(b"t\n", [a] * 101)
    with pytest.raises(NoteError) as e:
        open_note(note, [a.verifier_key()])
    assert e.value.kind == "malformed"


ROOT = bytes(range(32))
WHEN = datetime(2025, 3, 1, 9, 30, 5, tzinfo=timezone.utc)


def test_checkpoint_text_and_parse():
    text = checkpoint_text("log.example/a", 42, ROOT, ["other ext"], time=WHEN)
    assert text == (b"log.example/a\n42\n" + base64.b64encode(ROOT) + b"\ntime 2025-03-01T09:30:05Z\nother ext\n")
    cp = parse_checkpoint(text)
    assert cp == Checkpoint("log.example/a", 42, ROOT, WHEN, ("time 2025-03-01T09:30:05Z", "other ext"))
    assert parse_checkpoint(checkpoint_text("o", 0, ROOT, [])).time is None
    micro = WHEN.replace(microsecond=1500)
    assert format_time(micro) == "2025-03-01T09:30:05.001500Z" and parse_time(format_time(micro)) == micro


def test_signed_checkpoint_roundtrip():
    s = Ed25519NoteSigner.generate("log.example")
    raw = sign_checkpoint("log.example/a", 7, ROOT, WHEN, [s])
    cp, keys = open_checkpoint(raw, [s.verifier_key()], origin="log.example/a")
    assert (cp.size, cp.root, cp.time, keys[0].label) == (7, ROOT, WHEN, f"log.example+{s.key_id:08x}")
    with pytest.raises(NoteError) as e:
        open_checkpoint(raw, [s.verifier_key()], origin="log.example/b")
    assert e.value.kind == "malformed"


B64 = base64.b64encode(ROOT).decode()


@pytest.mark.parametrize("text", [
    f"o\n042\n{B64}\n",                              # leading zero
    f"o\n+42\n{B64}\n",
    f"o\n4 2\n{B64}\n",
    f"o\n-1\n{B64}\n",
    f"o\n{2**64}\n{B64}\n",
    f"o\n42\n{base64.b64encode(ROOT[:31]).decode()}\n",  # 31-byte root
    f"o\n42\n{B64[:-1]}\n",                          # bad padding
    f"o\n42\n{B64[:-2]}B=\n",                        # non-canonical base64 (low bits set)
    f"o\n42\n{B64}",                                 # no final newline
    f"\n42\n{B64}\n",                                # empty origin
    "o\n42\n",                                       # no root
    f"o\n42\n{B64}\n\n",                             # empty extension line
    f"o\n42\n{B64}\ntime 2025-03-01 09:30:05\n",     # not RFC 3339 UTC
    f"o\n42\n{B64}\ntime 2025-03-01T09:30:05Z\ntime 2025-03-01T09:30:06Z\n",
])
def test_malformed_checkpoints(text):
    with pytest.raises(NoteError) as e:
        parse_checkpoint(text.encode())
    assert e.value.kind == "malformed"
