"""Signed notes, cosignatures and checkpoints against the examples published with the C2SP
specifications and golang.org/x/mod/sumdb/note, then the refusals the format asks for."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ztb.audit.checkpoint import Checkpoint, parse_notes, sign_checkpoint
from ztb.audit.keys import SigningKey
from ztb.audit.note import (
    COSIGNATURE_V1,
    ED25519,
    EM_DASH,
    Note,
    NoteError,
    NoteSignature,
    Verifier,
    cosign,
    open_note,
    sign_note,
)

VECTORS = json.loads((Path(__file__).parent / "vectors" / "signed-note" / "vectors.json").read_text("utf-8"))


def test_the_signed_note_spec_example_verifies() -> None:
    case = VECTORS["spec_example"]
    verifier = Verifier.parse(case["vkey"])
    assert verifier.vkey() == case["vkey"]
    note = Note.parse(case["note"].encode())
    assert note.text == case["text"]
    assert note.encode() == case["note"]
    assert open_note(note, [verifier]) == [verifier]
    tampered = Note.parse(case["note"].replace("example message", "example massage"))
    with pytest.raises(NoteError, match="does not verify"):
        open_note(tampered, [verifier])


def test_the_go_sumdb_note_example_is_reproduced_byte_for_byte() -> None:
    case = VECTORS["go_sumdb_note"]
    material = base64.b64decode(case["skey"].split("+", 4)[4])
    assert material[0] == ED25519
    key = SigningKey(Ed25519PrivateKey.from_private_bytes(material[1:]))
    verifier = Verifier.parse(case["vkey"])
    assert verifier.public_raw == key.public_raw
    signed = Note(case["text"], (sign_note(case["text"], key, "PeterNeumann"),))
    assert signed.encode() == case["note"]  # Ed25519 is deterministic
    assert open_note(Note.parse(case["note"]), [verifier]) == [verifier]


def test_the_intro_example_parses_with_its_blank_line_inside_the_text() -> None:
    case = VECTORS["spec_intro_example"]
    note = Note.parse(case["note"])
    assert note.text == case["text"]
    (signature,) = note.signatures
    assert signature.name == case["key_name"]
    assert signature.key_id.hex() == case["key_id"]
    assert len(signature.signature) == 64


def test_the_cosignature_spec_example_parses() -> None:
    case = VECTORS["cosignature_spec_example"]
    note = Note.parse(case["note"])
    checkpoint = Checkpoint.from_text(note.text)
    assert (checkpoint.origin, checkpoint.size) == (case["origin"], case["size"])
    assert base64.b64encode(checkpoint.root).decode() == case["root"]
    assert checkpoint.text() == note.text
    log_sig, witness_sig = note.signatures
    assert len(log_sig.signature) == 64 and len(witness_sig.signature) == 72
    stand_in = Verifier(witness_sig.name, COSIGNATURE_V1, bytes(32))
    assert stand_in.timestamp(witness_sig) == case["cosignature_timestamp"]


def test_cosignature_round_trip_and_domain_separation() -> None:
    log_key, witness_key = SigningKey.generate(), SigningKey.generate()
    note = sign_checkpoint(Checkpoint("dev/broker-a", 5, bytes(range(32))), log_key)
    cosignature = cosign(note.text, witness_key, "witness.example/w1", 1_700_000_000)
    witness = Verifier("witness.example/w1", COSIGNATURE_V1, witness_key.public_raw)
    log = Verifier("dev/broker-a", ED25519, log_key.public_raw)
    cosigned = Note.parse(note.with_signatures([cosignature]).encode())
    assert open_note(cosigned, [log, witness]) == [log, witness]
    assert witness.timestamp(cosigned.signatures[1]) == 1_700_000_000
    # The same key read as a plain Ed25519 note key has another key ID: the line is ignored.
    plain = Verifier("witness.example/w1", ED25519, witness_key.public_raw)
    with pytest.raises(NoteError, match="no signature from a trusted key"):
        open_note(cosigned, [plain])
    # A cosignature moved to another checkpoint does not verify.
    other = sign_checkpoint(Checkpoint("dev/broker-a", 6, bytes(range(32))), log_key)
    with pytest.raises(NoteError, match="does not verify"):
        open_note(other.with_signatures([cosignature]), [witness])


def test_unknown_keys_are_ignored_and_a_note_needs_one_known() -> None:
    key = SigningKey.generate()
    stranger = SigningKey.generate()
    note = Note("hello\n", (sign_note("hello\n", stranger, "someone"), sign_note("hello\n", key, "me")))
    me = Verifier("me", ED25519, key.public_raw)
    assert open_note(note, [me]) == [me]
    with pytest.raises(NoteError):
        open_note(note, [Verifier("other", ED25519, key.public_raw)])


@pytest.mark.parametrize(
    "data",
    [
        b"no signatures\n",
        b"text\n\n",
        b"text\n\n- name AAAAAAA=\n",
        "text\n\n\u2014 name notbase64!\n".encode(),
        "text\n\n\u2014 na+me AAAAAAA=\n".encode(),
        "text\n\n\u2014 name AAAA\n".encode(),  # a key ID and nothing else
        "text\n\n\u2014 name AAAAAAA=".encode(),  # no final newline
        "te\x01xt\n\n\u2014 name AAAAAAA=\n".encode(),
        b"\xff\xfe\n\n",
    ],
)
def test_malformed_notes_are_refused(data: bytes) -> None:
    with pytest.raises(NoteError):
        Note.parse(data)


@pytest.mark.parametrize(
    "vkey",
    [
        "example.com/foo+530d903b+AekyeRrm56hApGFkyQR4ZCbV54Id2LKaANYcrnKv3U2k",  # wrong key ID
        "example.com/foo+530d903a",
        "example.com/foo+530d903a+AekyeRrm56hApGFkyQR4ZCbV54Id2LKaANYcrnKv3U2",
        "example.com/foo+530d903a+BekyeRrm56hApGFkyQR4ZCbV54Id2LKaANYcrnKv3U2k",  # type 0x05
    ],
)
def test_bad_verifier_keys_are_refused(vkey: str) -> None:
    with pytest.raises(NoteError):
        Verifier.parse(vkey)


@pytest.mark.parametrize(
    "text",
    [
        "origin\n5\n",
        "origin\n05\nAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n",
        "origin\n5\nAAAA\n",
        "origin\n5\nAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
        "\n5\nAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n",
    ],
)
def test_bad_checkpoint_texts_are_refused(text: str) -> None:
    with pytest.raises(NoteError):
        Checkpoint.from_text(text)


def test_notes_files_keep_notes_and_report_an_interrupted_append() -> None:
    key = SigningKey.generate()
    notes = [sign_checkpoint(Checkpoint("dev/b", size, bytes(32)), key) for size in (1, 2, 3)]
    data = "".join(note.encode() + "\n" for note in notes)
    parsed, problems = parse_notes(data.encode())
    assert parsed == notes and problems == []
    cut = data[: -len(notes[-1].encode()) - 1 + 20]
    parsed, problems = parse_notes(cut.encode())
    assert parsed == notes[:2]
    assert len(problems) == 1 and "interrupted" in problems[0]


def test_signature_line_shape() -> None:
    line = NoteSignature("n", b"\x00\x01\x02\x03", b"\xff").line()
    assert line == f"{EM_DASH} n AAECA/8=\n"
    assert NoteSignature.parse(line[:-1]) == NoteSignature("n", b"\x00\x01\x02\x03", b"\xff")
