"""The auditor's check of audit logs: every line, every link, and the first place a log breaks.

Owns the judgement of a whole log (SPEC section 4): canonical form, known key, hash and
signature, `seq` continuity from 0, `prev_hash` links, one version and one broker per log, and
the category of the first break. With `Anchors` (SPEC section 7) it also reads the log's
checkpoints (beside the log and in any notes files the auditor adds), checks each one's
signature under the trusted checkpoint key and its cosignatures under the trusted witness keys,
recomputes the Merkle root at every checkpointed size, and calls the log `truncated` when it is
shorter than an anchored size. Needs only the log files, the notes and the public keys the
auditor trusts. It must never trust a key the auditor did not pass, never repair a log, and
never call a log tampered for what a crash explains (a torn tail, an unsealed end, an allowed
call without a result): those are warnings.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from ztb.audit.anchor import CHECKPOINTS_DIR
from ztb.audit.checkpoint import Checkpoint, parse_notes
from ztb.audit.entry import VERSION, ZERO_HASH, check_seal
from ztb.audit.jcs import canonicalize
from ztb.audit.merkle import CompactRange
from ztb.audit.note import Note, NoteError, Verifier
from ztb.audit.reader import Line, TornTail, parse_line, read_lines

__all__ = ["Anchors", "Break", "Category", "LogReport", "VerifyReport", "verify_logs"]

Category = Literal[
    "modified",
    "non_canonical",
    "unknown_key",
    "deleted",
    "inserted",
    "reordered",
    "forked",
    "truncated",
    "root_mismatch",
    "bad_checkpoint_signature",
    "bad_cosignature",
]


@dataclass(frozen=True, slots=True)
class Anchors:
    """The auditor's trust for checkpoints: the logs' checkpoint keys (key name = origin,
    `<deployment>/<broker>`), the witnesses whose cosignatures are required, and notes files kept
    elsewhere (a `file:` sink's file, a witness's state files) read besides each log's own."""

    checkpoint_keys: tuple[Verifier, ...]
    witness_keys: tuple[Verifier, ...] = ()
    notes_files: tuple[Path, ...] = ()


@dataclass(frozen=True, slots=True)
class AnchorReport:
    """What the checkpoints of one log showed."""

    checked: int = 0  # checkpoints of this log with a valid signature
    largest: int = 0  # the largest anchored size
    cosigned: dict[str, int] = field(default_factory=dict)  # witness -> largest size it cosigned
    warnings: tuple[str, ...] = ()

    def to_json(self) -> dict[str, object]:
        return {
            "checked": self.checked,
            "largest_size": self.largest,
            "cosigned": dict(sorted(self.cosigned.items())),
            "warnings": list(self.warnings),
        }


@dataclass(frozen=True, slots=True)
class Break:
    """The first entry of a log that does not hold, and why."""

    seq: int  # the seq the entry at this place should have had
    segment: Path
    line: int  # 1-based within the segment
    category: Category
    detail: str

    def to_json(self) -> dict[str, object]:
        return {
            "seq": self.seq,
            "segment": str(self.segment),
            "line": self.line,
            "category": self.category,
            "detail": self.detail,
        }


@dataclass(frozen=True, slots=True)
class LogReport:
    """What the verifier found in one broker's log."""

    broker: str
    segments: tuple[Path, ...]
    entries: int  # whole lines read, torn tail excluded
    first_break: Break | None
    torn_tail: TornTail | None
    # Of the entries verified before any break (all of them when the log is intact):
    kinds: dict[str, int]
    sealed: bool  # the last one is a `stop`
    unknown_outcome: tuple[tuple[int, str], ...]  # (seq, call_id) of allowed calls without a result
    anchors: AnchorReport | None = None  # None when checkpoints were not checked

    @property
    def ok(self) -> bool:
        return self.first_break is None

    def to_json(self) -> dict[str, object]:
        torn = self.torn_tail
        return {
            "broker": self.broker,
            "ok": self.ok,
            "segments": [str(segment) for segment in self.segments],
            "entries": self.entries,
            "kinds": dict(sorted(self.kinds.items())),
            "first_break": None if self.first_break is None else self.first_break.to_json(),
            "sealed": self.sealed,
            "torn_tail": None
            if torn is None
            else {"segment": str(torn.segment), "line": torn.number, "bytes": torn.size},
            "unknown_outcome": [{"seq": seq, "call_id": call_id} for seq, call_id in self.unknown_outcome],
            "anchors": None if self.anchors is None else self.anchors.to_json(),
        }

    def to_text(self) -> str:
        noun = "segment" if len(self.segments) == 1 else "segments"
        lines = [
            f"{self.broker}: {self.entries} entries in {len(self.segments)} {noun}: "
            + ("ok" if self.ok else "BROKEN")
        ]
        if self.first_break is not None:
            hit = self.first_break
            lines.append(
                f"  first break: seq {hit.seq} ({hit.segment.name}:{hit.line}): {hit.category} — {hit.detail}"
            )
        if self.torn_tail is not None:
            torn = self.torn_tail
            lines.append(
                f"  warning: torn tail ({torn.segment.name}:{torn.number}, {torn.size} bytes): "
                "an interrupted write, set aside by the broker on restart"
            )
        if self.anchors is not None:
            found = self.anchors
            cosigned = "".join(
                f"; cosigned by {name} up to size {size}" for name, size in sorted(found.cosigned.items())
            )
            lines.append(
                f"  checkpoints: {found.checked} checked, anchored up to size {found.largest}{cosigned}"
            )
            lines.extend(f"  warning: {warning}" for warning in found.warnings)
        if self.ok:  # the end and open calls of a broken log are not trustworthy
            lines.append(
                "  sealed (ends with stop)" if self.sealed else "  warning: tail not sealed (no stop)"
            )
            lines.extend(
                f"  warning: outcome unknown for call {call_id} (seq {seq}): allowed, no result entry"
                for seq, call_id in self.unknown_outcome
            )
        return "\n".join(lines)


@dataclass(frozen=True, slots=True)
class VerifyReport:
    """The verdict over every log; ok only when there is at least one log and none is broken."""

    logs: tuple[LogReport, ...]

    @property
    def ok(self) -> bool:
        return bool(self.logs) and all(log.ok for log in self.logs)

    def to_json(self) -> dict[str, object]:
        return {"ok": self.ok, "logs": [log.to_json() for log in self.logs]}

    def to_text(self) -> str:
        verdict = "intact" if self.ok else "BROKEN"
        return "\n".join([log.to_text() for log in self.logs] + [f"audit log {verdict}"])


def verify_logs(
    logs: dict[str, list[Path]], trusted_keys: dict[str, bytes], anchors: Anchors | None = None
) -> VerifyReport:
    """Check every log (broker id -> ordered segments) against the trusted keys (kid -> raw key),
    and, given `anchors`, against its checkpoints."""
    return VerifyReport(
        tuple(_verify_log(broker, segments, trusted_keys, anchors) for broker, segments in logs.items())
    )


class _LogCheck:
    """One log's lines checked in order against the verified prefix (the chain so far)."""

    def __init__(self, lines: list[Line], trusted_keys: dict[str, bytes]) -> None:
        self.lines = lines
        self.entries = [parse_line(line.data) for line in lines]
        self.trusted_keys = trusted_keys
        self.hashes: list[str] = []  # of the verified entries; index = seq
        self.broker: object = None
        self.kinds: Counter[str] = Counter()
        self.open_calls: dict[str, int] = {}  # call_id -> seq of an allowed call without result
        self.last_kind: object = None

    def first_break(self) -> Break | None:
        for index in range(len(self.lines)):
            found = self._check(index)
            if found is not None:
                return found
        return None

    def _check(self, index: int) -> Break | None:
        line, entry = self.lines[index], self.entries[index]
        expected = len(self.hashes)

        def broken(category: Category, detail: str) -> Break:
            return Break(expected, line.segment, line.number, category, detail)

        if entry is None:
            return broken("modified", "not a JSON object")
        try:
            canonical = canonicalize(entry)
        except ValueError as exc:
            return broken("non_canonical", f"has no canonical form: {exc}")
        if canonical != line.data:
            return broken("non_canonical", "line is not the canonical (RFC 8785) form of its entry")
        if not line.terminated:
            return broken("non_canonical", "line lacks its newline at the end of a segment")
        if entry.get("v") != VERSION:
            return broken("modified", f"v is {entry.get('v')!r}, not {VERSION!r}")
        kid = entry.get("kid")
        if not isinstance(kid, str):
            return broken("modified", "kid missing or not a string")
        public_raw = self.trusted_keys.get(kid)
        if public_raw is None:
            return broken("unknown_key", f"signed with kid {kid}, not a trusted key")
        problem = check_seal(entry, public_raw)
        if problem is not None:
            return broken("modified", problem)
        seq, entry_hash = entry.get("seq"), str(entry["hash"])
        if not isinstance(seq, int) or isinstance(seq, bool):
            return broken("modified", "seq missing or not an integer")
        if seq != expected:
            return broken(*self._misplaced(index, seq, entry_hash))
        if entry.get("prev_hash") != (self.hashes[-1] if self.hashes else ZERO_HASH):
            return broken("forked", "prev_hash does not link to the previous entry's hash")
        kind = entry.get("kind")
        if seq == 0 and kind != "start":
            return broken("modified", f"the first entry is of kind {kind!r}, not 'start'")
        if self.hashes and entry.get("broker") != self.broker:
            return broken(
                "inserted", f"entry of broker {entry.get('broker')!r} in the log of {self.broker!r}"
            )
        self._extend(entry, entry_hash)
        return None

    def _misplaced(self, index: int, seq: int, entry_hash: str) -> tuple[Category, str]:
        """Why a well-signed entry carries another seq than the one expected at its place."""
        expected = len(self.hashes)
        if 0 <= seq < expected:
            if self.hashes[seq] == entry_hash:
                return "inserted", f"a second copy of seq {seq}"
            return "forked", f"a different entry with seq {seq}, already seen"
        if any(entry is not None and entry.get("seq") == expected for entry in self.entries[index + 1 :]):
            copies = sum(
                1
                for entry in self.entries
                if entry is not None and entry.get("seq") == seq and entry.get("hash") == entry_hash
            )
            if copies > 1:
                return "inserted", f"a copy of seq {seq} before seq {expected}"
            return "reordered", f"seq {seq} found where seq {expected} belongs; seq {expected} comes later"
        if expected == 0:
            return "truncated", f"the log starts at seq {seq}: its beginning is missing"
        missing = f"seq {expected} to {seq - 1}" if seq > expected + 1 else f"seq {expected}"
        return "deleted", f"{missing} missing"

    def _extend(self, entry: dict[str, object], entry_hash: str) -> None:
        if not self.hashes:
            self.broker = entry.get("broker")
        self.hashes.append(entry_hash)
        kind = entry.get("kind")
        self.kinds[str(kind)] += 1
        self.last_kind = kind
        call_id = entry.get("call_id")
        if isinstance(call_id, str):
            if kind == "call" and entry.get("decision") == "ALLOW":
                self.open_calls[call_id] = len(self.hashes) - 1
            elif kind == "result":
                self.open_calls.pop(call_id, None)


def _verify_log(
    broker: str, segments: list[Path], trusted_keys: dict[str, bytes], anchors: Anchors | None
) -> LogReport:
    lines, torn = read_lines(segments)
    check = _LogCheck(lines, trusted_keys)
    first_break = check.first_break()
    if not lines:
        where = segments[-1] if segments else Path(broker)
        first_break = Break(0, where, 1, "truncated", "the log holds no entries")
    anchor_report: AnchorReport | None = None
    if anchors is not None:
        # The log's broker is the one its entries name (a copied folder may be named otherwise).
        named = check.broker if isinstance(check.broker, str) else broker
        anchor_break, anchor_report = _check_anchors(named, segments, lines, check.hashes, anchors)
        first_break = first_break or anchor_break
    return LogReport(
        anchors=anchor_report,
        broker=broker,
        segments=tuple(segments),
        entries=len(lines),
        kinds=dict(check.kinds),
        first_break=first_break,
        sealed=check.last_kind == "stop",
        torn_tail=torn,
        unknown_outcome=tuple(sorted((seq, call_id) for call_id, seq in check.open_calls.items())),
    )


# -- checkpoints (SPEC section 7) -------------------------------------------------------------------


def _read_notes_file(path: Path) -> tuple[list[Note], list[str]]:
    """The notes of a notes file, or the checkpoint of a witness's state file (JSON)."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        return [], [f"{path}: cannot read: {exc.strerror or exc}"]
    if path.suffix == ".json":
        try:
            state = json.loads(data)
            return [Note.parse(str(state["checkpoint"]))], []
        except (ValueError, KeyError, TypeError) as exc:
            return [], [f"{path}: not a witness state file: {exc}"]
    notes, problems = parse_notes(data)
    return notes, [f"{path}: {problem}" for problem in problems]


@dataclass(frozen=True, slots=True)
class _Anchored:
    checkpoint: Checkpoint
    witnesses: frozenset[str]
    where: Path


def _check_anchors(
    broker: str, segments: list[Path], lines: list[Line], hashes: list[str], anchors: Anchors
) -> tuple[Break | None, AnchorReport]:
    log_key = next((key for key in anchors.checkpoint_keys if key.name.endswith("/" + broker)), None)
    if log_key is None:
        detail = f"no trusted checkpoint key for the origin */{broker}: its checkpoints cannot be checked"
        return _break_at(lines, len(hashes), "bad_checkpoint_signature", detail), AnchorReport()
    log_dir = segments[0].parent if segments else Path(broker)
    files = [*sorted((log_dir / CHECKPOINTS_DIR).glob("*.notes")), *anchors.notes_files]
    warnings: list[str] = []
    anchored: list[_Anchored] = []
    bad_signature: str | None = None
    bad_cosignature: str | None = None
    for path in files:
        notes, problems = _read_notes_file(path)
        warnings.extend(problems)
        for note in notes:
            try:
                checkpoint = Checkpoint.from_text(note.text)
            except NoteError as exc:
                warnings.append(f"{path}: a note that is not a checkpoint: {exc}")
                continue
            if checkpoint.origin != log_key.name:
                continue  # another log's
            if not _signed_by(note, log_key):
                bad_signature = (
                    bad_signature
                    or f"{path}: checkpoint of size {checkpoint.size} without a valid signature of {log_key.name}"
                )
                continue
            witnesses = set()
            for witness in anchors.witness_keys:
                matching = [sig for sig in note.signatures if witness.matches(sig)]
                if any(not witness.verify(note.text, sig) for sig in matching):
                    bad_cosignature = (
                        bad_cosignature
                        or f"{path}: a cosignature of {witness.name} on size {checkpoint.size} does not verify"
                    )
                elif matching:
                    witnesses.add(witness.name)
            anchored.append(_Anchored(checkpoint, frozenset(witnesses), path))
    cosigned = {
        witness.name: max((a.checkpoint.size for a in anchored if witness.name in a.witnesses), default=0)
        for witness in anchors.witness_keys
    }
    report = AnchorReport(
        checked=len(anchored),
        largest=max((a.checkpoint.size for a in anchored), default=0),
        cosigned={name: size for name, size in cosigned.items() if size},
        warnings=tuple(warnings),
    )
    uncosigned = [name for name, size in cosigned.items() if size == 0]
    if uncosigned and bad_cosignature is None:
        bad_cosignature = f"no checkpoint of this log carries a cosignature of {', '.join(uncosigned)}"
    found = _compare_roots(lines, hashes, anchored)
    if found is None and bad_signature is not None:
        found = _break_at(lines, len(hashes), "bad_checkpoint_signature", bad_signature)
    if found is None and bad_cosignature is not None:
        found = _break_at(lines, len(hashes), "bad_cosignature", bad_cosignature)
    return found, report


def _signed_by(note: Note, key: Verifier) -> bool:
    matching = [sig for sig in note.signatures if key.matches(sig)]
    return bool(matching) and all(key.verify(note.text, sig) for sig in matching)


def _compare_roots(lines: list[Line], hashes: list[str], anchored: Sequence[_Anchored]) -> Break | None:
    """Recompute the root at every anchored size the log reaches; the first mismatch, or the
    largest anchored size beyond the log's end."""
    by_size = sorted(anchored, key=lambda a: a.checkpoint.size)
    tree = CompactRange()
    matched = 0  # the largest size whose root matched an anchor
    for item in by_size:
        size = item.checkpoint.size
        if size > len(hashes):
            break
        while tree.size < size:
            tree.append(bytes.fromhex(hashes[tree.size].removeprefix("sha256:")))
        if tree.root() != item.checkpoint.root:
            witnessed = f", cosigned by {', '.join(sorted(item.witnesses))}" if item.witnesses else ""
            return _break_at(
                lines,
                matched,
                "root_mismatch",
                f"the root of the first {size} entries is not the one anchored ({item.where.name}{witnessed}): "
                f"entries {matched} to {size - 1} differ from what was anchored",
            )
        matched = size
    beyond = [a for a in by_size if a.checkpoint.size > len(hashes)]
    if beyond:
        # The most authoritative: the largest cosigned size, else the largest size.
        top = max(beyond, key=lambda a: (bool(a.witnesses), a.checkpoint.size))
        witnessed = f", cosigned by {', '.join(sorted(top.witnesses))}" if top.witnesses else ""
        return _break_at(
            lines,
            len(hashes),
            "truncated",
            f"the log ends after {len(hashes)} entries but size {top.checkpoint.size} was anchored "
            f"({top.where.name}{witnessed}): entries {len(hashes)} to {top.checkpoint.size - 1} are missing",
        )
    return None


def _break_at(lines: list[Line], seq: int, category: Category, detail: str) -> Break:
    if seq < len(lines):
        return Break(seq, lines[seq].segment, lines[seq].number, category, detail)
    last = lines[-1] if lines else None
    segment = last.segment if last is not None else Path("-")
    return Break(seq, segment, (last.number + 1) if last is not None else 1, category, detail)
