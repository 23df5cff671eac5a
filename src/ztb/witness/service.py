"""What the witness answers to `POST /add-checkpoint` (C2SP tlog-witness), as pure code.

`parse_request` reads the body (old size line, consistency proof lines, an empty line, the
checkpoint note); `Witness.judge` compares it with the stored state and decides, in the order
and with the status codes of the spec: 400 malformed or old size above the checkpoint's, 404
unknown origin, 403 no valid signature from the log's key, 409 old size not the stored size
(body: the stored size, text/x.tlog.size) or same size with another root (a fork), 422 a
consistency proof that fails, else 200 with a cosignature/v1 line and the new state to store.
Nothing here touches a socket or a file; the clock is passed in.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Callable
from dataclasses import dataclass

from ztb.audit.checkpoint import Checkpoint
from ztb.audit.keys import SigningKey
from ztb.audit.merkle import ProofError, verify_consistency
from ztb.audit.note import Note, NoteError, Verifier, cosign, open_note
from ztb.witness.state import Stored

__all__ = ["MAX_PROOF_LINES", "Answer", "BadRequest", "Request", "Witness", "parse_request"]

MAX_PROOF_LINES = 63
SIZE_CONTENT_TYPE = "text/x.tlog.size"
_OLD = re.compile(r"old (0|[1-9][0-9]{0,18})")


class BadRequest(ValueError):
    """A body that is not an add-checkpoint request; str() says why."""


@dataclass(frozen=True, slots=True)
class Request:
    old: int
    proof: tuple[bytes, ...]
    note: Note
    checkpoint: Checkpoint


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    body: str
    content_type: str = "text/plain; charset=utf-8"
    update: Stored | None = None  # the state to store before answering (200 only)


def parse_request(body: bytes) -> Request:
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise BadRequest("the body is not UTF-8") from None
    head, blank, rest = text.partition("\n\n")
    if not blank:
        raise BadRequest("no empty line between the proof and the checkpoint")
    lines = head.split("\n")
    old = _OLD.fullmatch(lines[0])
    if old is None:
        raise BadRequest("the first line must be 'old <size>'")
    if len(lines) - 1 > MAX_PROOF_LINES:
        raise BadRequest(f"more than {MAX_PROOF_LINES} consistency proof lines")
    proof: list[bytes] = []
    for line in lines[1:]:
        try:
            proof.append(base64.b64decode(line, validate=True))
        except (binascii.Error, ValueError):
            raise BadRequest("a consistency proof line is not base64") from None
    try:
        note = Note.parse(rest.encode("utf-8"))
        checkpoint = Checkpoint.from_text(note.text)
    except NoteError as exc:
        raise BadRequest(f"the checkpoint is malformed: {exc}") from None
    return Request(int(old[1]), tuple(proof), note, checkpoint)


class Witness:
    def __init__(
        self, name: str, key: SigningKey, logs: dict[str, Verifier], clock: Callable[[], float]
    ) -> None:
        self.name = name
        self._key = key
        self.logs = logs
        self._clock = clock

    def judge(self, request: Request, stored: Stored | None) -> Answer:
        checkpoint = request.checkpoint
        log_key = self.logs.get(checkpoint.origin)
        if log_key is None:
            return Answer(404, f"unknown log origin {checkpoint.origin}\n")
        try:
            open_note(request.note, [log_key])
        except NoteError as exc:
            return Answer(403, f"checkpoint not signed by the log's key: {exc}\n")
        if request.old > checkpoint.size:
            return Answer(400, f"old size {request.old} is larger than the checkpoint's {checkpoint.size}\n")
        stored_size = 0 if stored is None else stored.size
        if request.old != stored_size:
            return Answer(409, f"{stored_size}\n", SIZE_CONTENT_TYPE)
        if stored is None:
            if request.proof:
                return Answer(422, "a checkpoint after size 0 needs an empty proof\n")
        elif stored.size == checkpoint.size:
            if request.proof:
                return Answer(422, "equal sizes need an empty proof\n")
            if stored.root != checkpoint.root:
                return Answer(409, f"fork: another root for size {checkpoint.size} was cosigned\n")
        else:
            try:
                verify_consistency(stored.size, checkpoint.size, stored.root, checkpoint.root, request.proof)
            except ProofError as exc:
                return Answer(422, f"consistency proof from {stored.size} fails: {exc}\n")
        cosignature = cosign(request.note.text, self._key, self.name, int(self._clock()))
        cosigned = request.note.with_signatures([cosignature]).encode()
        update = Stored(checkpoint.origin, checkpoint.size, checkpoint.root, cosigned)
        return Answer(200, cosignature.line(), update=update)
