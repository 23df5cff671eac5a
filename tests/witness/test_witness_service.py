"""The witness's decisions, as pure code: every refusal of C2SP tlog-witness leaves the state
as it was (no update), and an accepted checkpoint carries a cosignature that verifies."""

from __future__ import annotations

import pytest
from witness_logs import ORIGIN, FakeLog

from ztb.audit.checkpoint import Checkpoint
from ztb.audit.keys import SigningKey
from ztb.audit.note import COSIGNATURE_V1, Note, NoteSignature, Verifier, open_note
from ztb.witness.service import MAX_PROOF_LINES, Answer, BadRequest, Witness, parse_request
from ztb.witness.state import Stored

LOG = FakeLog()
WITNESS_KEY = SigningKey.generate()
WITNESS = Witness("witness.test/w1", WITNESS_KEY, {ORIGIN: LOG.verifier}, lambda: 1_700_000_000.0)
WITNESS_VERIFIER = Verifier("witness.test/w1", COSIGNATURE_V1, WITNESS_KEY.public_raw)


def stored_at(size: int, log: FakeLog = LOG) -> Stored:
    note = log.note(size)
    return Stored(ORIGIN, size, Checkpoint.from_text(note.text).root, note.encode())


def judge(body: bytes, stored: Stored | None) -> Answer:
    return WITNESS.judge(parse_request(body), stored)


def test_first_checkpoint_is_cosigned_and_becomes_the_state() -> None:
    answer = judge(LOG.body(0, 10), None)
    assert answer.status == 200
    assert answer.update is not None and (answer.update.origin, answer.update.size) == (ORIGIN, 10)
    cosignature = NoteSignature.parse(answer.body.rstrip("\n"))
    cosigned = LOG.note(10).with_signatures([cosignature])
    assert open_note(cosigned, [LOG.verifier, WITNESS_VERIFIER]) == [LOG.verifier, WITNESS_VERIFIER]
    assert WITNESS_VERIFIER.timestamp(cosignature) == 1_700_000_000
    assert Note.parse(answer.update.checkpoint) == cosigned


def test_a_consistent_extension_is_cosigned() -> None:
    for old, new in [(10, 11), (10, 64), (1, 300), (10, 10)]:
        answer = judge(LOG.body(old, new), stored_at(old))
        assert answer.status == 200, (old, new, answer.body)
        assert answer.update is not None and answer.update.size == new


def test_fork_same_size_other_root_is_refused() -> None:
    forked = FakeLog(seed="b", key=LOG.key)  # the log's own key signing another history
    answer = judge(forked.body(10, 10), stored_at(10))
    assert (answer.status, answer.update) == (409, None)
    assert "fork" in answer.body


def test_fork_at_a_larger_size_fails_its_proof() -> None:
    forked = FakeLog(seed="b", key=LOG.key)
    answer = judge(forked.body(10, 20), stored_at(10))
    assert (answer.status, answer.update) == (422, None)


def test_rollback_to_a_smaller_size_is_refused() -> None:
    answer = judge(LOG.body(20, 10, proof=[]), stored_at(20))  # old above the checkpoint's size
    assert (answer.status, answer.update) == (400, None)
    answer = judge(LOG.body(10, 10), stored_at(20))  # old below the stored size
    assert (answer.status, answer.update, answer.body, answer.content_type) == (
        409,
        None,
        "20\n",
        "text/x.tlog.size",
    )


def test_wrong_consistency_proof_is_refused() -> None:
    proof = LOG.proof(10, 20)
    proof[0] = bytes(32)
    answer = judge(LOG.body(10, 20, proof=proof), stored_at(10))
    assert (answer.status, answer.update) == (422, None)
    answer = judge(LOG.body(10, 20, proof=[]), stored_at(10))
    assert (answer.status, answer.update) == (422, None)
    answer = judge(LOG.body(0, 20, proof=LOG.proof(10, 20)), None)  # size 0 needs no proof
    assert (answer.status, answer.update) == (422, None)


def test_a_checkpoint_signed_by_an_unknown_key_is_refused() -> None:
    stranger = FakeLog(key=SigningKey.generate())  # same origin, same leaves, another key
    answer = judge(stranger.body(10, 20), stored_at(10))
    assert (answer.status, answer.update) == (403, None)


def test_an_unknown_origin_is_refused() -> None:
    other = FakeLog(origin="test/broker-z")
    answer = judge(other.body(0, 5), None)
    assert (answer.status, answer.update) == (404, None)


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"old 5\n",
        b"old -1\n\nx\n",
        b"old 05\n\n" + FakeLog().note(5).encode().encode(),
        b"old 0\nnot base64!\n\n" + FakeLog().note(5).encode().encode(),
        b"old 0\n\n" + b"origin\n5\nroot\n\n",
        b"old 0\n" + b"AAAA\n" * (MAX_PROOF_LINES + 1) + b"\n" + FakeLog().note(5).encode().encode(),
        b"\xff\xfe",
    ],
)
def test_malformed_bodies_are_bad_requests(body: bytes) -> None:
    with pytest.raises(BadRequest):
        parse_request(body)
