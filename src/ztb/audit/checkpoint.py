"""Checkpoints (c2sp.org/tlog-checkpoint): a log's origin, tree size and root hash as the text of
a signed note, and the notes files in which ztb keeps them.

The origin of a broker's log is `<deployment>/<broker>`; the broker signs with its dedicated
checkpoint key under the key name = origin. A notes file holds one note after another, each
followed by an empty line; it is only ever appended to. Pure code: no files, no clock, no
network (the anchor, the witness and the verifier do the I/O).
"""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass

from ztb.audit.keys import SigningKey
from ztb.audit.merkle import HASH_SIZE
from ztb.audit.note import Note, NoteError, NoteSignature, sign_note

__all__ = ["Checkpoint", "origin_of", "parse_notes", "sign_checkpoint"]

_SIZE = re.compile(r"0|[1-9][0-9]{0,18}")


def origin_of(deployment: str, broker: str) -> str:
    return f"{deployment}/{broker}"


@dataclass(frozen=True, slots=True)
class Checkpoint:
    origin: str
    size: int
    root: bytes
    extensions: tuple[str, ...] = ()  # never written by ztb; kept when read, as the spec asks

    def text(self) -> str:
        lines = [self.origin, str(self.size), base64.b64encode(self.root).decode("ascii"), *self.extensions]
        return "".join(line + "\n" for line in lines)

    @classmethod
    def from_text(cls, text: str) -> Checkpoint:
        """Parse a checkpoint note's text; NoteError naming what is wrong."""
        if not text.endswith("\n"):
            raise NoteError("a checkpoint ends with a newline")
        lines = text[:-1].split("\n")
        if len(lines) < 3 or any(not line for line in lines):
            raise NoteError("a checkpoint is at least three non-empty lines: origin, size, root hash")
        origin, size, root = lines[:3]
        if _SIZE.fullmatch(size) is None or int(size) >= 1 << 63:
            raise NoteError(f"checkpoint size {size!r} is not a decimal without leading zeros")
        try:
            raw = base64.b64decode(root, validate=True)
        except ValueError:
            raise NoteError("checkpoint root hash is not base64") from None
        if len(raw) != HASH_SIZE or base64.b64encode(raw).decode("ascii") != root:
            raise NoteError(f"checkpoint root hash is not {HASH_SIZE} bytes of canonical base64")
        return cls(origin, int(size), raw, tuple(lines[3:]))


def sign_checkpoint(checkpoint: Checkpoint, key: SigningKey) -> Note:
    """The checkpoint as a note signed by the log's checkpoint key (key name = origin)."""
    text = checkpoint.text()
    signature: NoteSignature = sign_note(text, key, checkpoint.origin)
    return Note(text, (signature,))


def parse_notes(data: bytes) -> tuple[list[Note], list[str]]:
    """The notes of a notes file, and one message per part that is not a note (skipped).

    A trailing part without its final empty line is an interrupted append: reported, skipped.
    """
    notes: list[Note] = []
    problems: list[str] = []
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return [], ["the file is not UTF-8"]
    block: list[str] = []
    in_signatures = False
    number = 0
    for number, line in enumerate(text.split("\n"), start=1):
        if line == "" and in_signatures:
            _add(notes, problems, block, number)
            block, in_signatures = [], False
            continue
        if line == "" and not block:
            continue
        if line == "":
            in_signatures = True
        block.append(line)
    if any(block):
        problems.append(f"line {number}: an unfinished note at the end of the file (interrupted append)")
    return notes, problems


def _add(notes: list[Note], problems: list[str], block: list[str], number: int) -> None:
    try:
        notes.append(Note.parse("\n".join(block) + "\n"))
    except NoteError as exc:
        problems.append(f"note ending at line {number}: {exc}")
