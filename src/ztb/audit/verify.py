"""The auditor's check of audit logs: every line, every link, and the first place a log breaks.

Owns the judgement of a whole log (SPEC section 4): canonical form, known key, hash and
signature, `seq` continuity from 0, `prev_hash` links, one version and one broker per log, and
the category of the first break. Each line's own checks (canonical form, key, hash, signature)
depend on nothing else, so a large log has them done on every core; the chain is then judged in
order, by the same code for every log size. With `Anchors` (SPEC section 7) it also reads the
log's checkpoints (beside the log and in any notes files the auditor adds), checks each one's
signature under the trusted checkpoint key and its cosignatures under the trusted witness keys,
recomputes the Merkle root at every checkpointed size, and calls the log `truncated` when it is
shorter than an anchored size. Needs only the log files, the notes and the public keys the
auditor trusts. It must never trust a key the auditor did not pass, never repair a log, and
never call a log tampered for what a crash explains (a torn tail, an unsealed end, an allowed
call without a result): those are warnings.
"""

from __future__ import annotations

import bisect
import itertools
import json
import multiprocessing
import os
from collections import Counter, deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Literal, NamedTuple

import orjson

from ztb.audit.anchor import CHECKPOINTS_DIR
from ztb.audit.checkpoint import Checkpoint, parse_notes
from ztb.audit.entry import VERSION, ZERO_HASH, body_of, check_seal
from ztb.audit.jcs import canonicalize
from ztb.audit.merkle import CompactRange
from ztb.audit.note import Note, NoteError, Verifier
from ztb.audit.reader import LogReadError, TornTail, iter_lines, parse_line

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
    crash_restarts: tuple[int, ...] = ()  # seq of each `start` that follows no `stop`: a crash
    last_seq: int = -1  # of the last entry verified
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
            "crash_restarts": list(self.crash_restarts),
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
                "  sealed (ends with stop)"
                if self.sealed
                else f"  warning: tail not sealed: the log ends at seq {self.last_seq} without a stop "
                "(a crash, or entries cut from the end: only an anchor can tell)"
            )
            lines.extend(
                f"  note: restart at seq {seq} after a crash (the previous instance wrote no stop)"
                for seq in self.crash_restarts
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
    logs: dict[str, list[Path]],
    trusted_keys: dict[str, bytes],
    anchors: Anchors | None = None,
    *,
    workers: int | None = None,
) -> VerifyReport:
    """Check every log (broker id -> ordered segments) against the trusted keys (kid -> raw key),
    and, given `anchors`, against its checkpoints.

    Logs of at least PARALLEL_FROM_BYTES have their lines' own checks done on `workers`
    processes (default: every core); the chain is always judged in order, in this process.
    """
    count = workers if workers is not None else os.cpu_count() or 1
    with _Workers(count) as pool:
        return VerifyReport(
            tuple(
                _verify_log(broker, segments, trusted_keys, pool, anchors)
                for broker, segments in logs.items()
            )
        )


# -- one line: its seal, and the facts the chain check needs ---------------------------------

Verdict = tuple[Category, str]


class _Facts(NamedTuple):
    """What the chain check needs of one line; `verdict` says why its seal fails, if it does.
    A tuple, because workers send a million of them (a tenth of a dataclass's pickling cost)."""

    verdict: Verdict | None
    seq: object = None
    hash: object = None
    prev_hash: object = None
    kind: object = None
    broker: object = None
    call_id: object = None
    decision: object = None


_SORTED = orjson.OPT_SORT_KEYS | orjson.OPT_STRICT_INTEGER  # integers beyond ±(2**53-1) refused


def _quick_canonical(data: bytes) -> tuple[dict[str, object], bytes] | None:
    """(entry, canonical body) when the line is canonical by a quick test, else None (then the
    full RFC 8785 check decides). Exact where it answers: for printable ASCII without escapes,
    integers within ±(2**53-1) and no floats, orjson's sorted compact form is the JCS form."""
    if not data.isascii() or b"\\" in data:
        return None
    # Without escapes every '"' opens or closes a string; outside them a float needs . e or E.
    skeleton = b"".join(data.split(b'"')[::2]).replace(b"true", b"").replace(b"false", b"")
    if b"." in skeleton or b"e" in skeleton or b"E" in skeleton:
        return None
    try:
        entry = orjson.loads(data)
        if not isinstance(entry, dict) or orjson.dumps(entry, option=_SORTED) != data:
            return None
        return entry, orjson.dumps(body_of(entry), option=_SORTED)
    except (orjson.JSONDecodeError, orjson.JSONEncodeError):
        return None


def _line_facts(data: bytes, terminated: bool, trusted_keys: dict[str, bytes]) -> _Facts:
    quick = _quick_canonical(data)
    if quick is not None:
        entry, canonical_body = quick
        verdict = _seal_verdict(entry, terminated, trusted_keys, canonical_body)
    else:
        parsed = parse_line(data)
        if parsed is None:
            return _Facts(("modified", "not a JSON object"))
        entry = parsed
        verdict = _full_verdict(entry, data, terminated, trusted_keys)
    return _Facts(
        verdict,
        entry.get("seq"),
        entry.get("hash"),
        entry.get("prev_hash"),
        entry.get("kind"),
        entry.get("broker"),
        entry.get("call_id"),
        entry.get("decision"),
    )


def _full_verdict(
    entry: dict[str, object], data: bytes, terminated: bool, trusted_keys: dict[str, bytes]
) -> Verdict | None:
    try:
        canonical = canonicalize(entry)
    except ValueError as exc:
        return "non_canonical", f"has no canonical form: {exc}"
    if canonical != data:
        return "non_canonical", "line is not the canonical (RFC 8785) form of its entry"
    return _seal_verdict(entry, terminated, trusted_keys, None)


def _seal_verdict(
    entry: dict[str, object], terminated: bool, trusted_keys: dict[str, bytes], canonical_body: bytes | None
) -> Verdict | None:
    if not terminated:
        return "non_canonical", "line lacks its newline at the end of a segment"
    if entry.get("v") != VERSION:
        return "modified", f"v is {entry.get('v')!r}, not {VERSION!r}"
    kid = entry.get("kid")
    if not isinstance(kid, str):
        return "modified", "kid missing or not a string"
    public_raw = trusted_keys.get(kid)
    if public_raw is None:
        return "unknown_key", f"signed with kid {kid}, not a trusted key"
    problem = check_seal(entry, public_raw, canonical_body)
    if problem is not None:
        return "modified", problem
    return None


# -- the chain, in order ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Placed:
    segment: Path
    number: int
    facts: _Facts


class _Hashes:
    """The hashes of the verified entries, index = seq: 32 bytes each (a list of their strings
    took ~120), so a log of a hundred million entries fits in 3.2 GB."""

    def __init__(self) -> None:
        self._data = bytearray()
        self._last = ZERO_HASH

    def __len__(self) -> int:
        return len(self._data) // 32

    def __bool__(self) -> bool:
        return bool(self._data)

    def append(self, entry_hash: str) -> None:
        digest = bytes.fromhex(entry_hash.removeprefix("sha256:"))
        if len(digest) != 32 or "sha256:" + digest.hex() != entry_hash:
            raise ValueError(f"not a canonical entry hash: {entry_hash!r}")
        self._data += digest
        self._last = entry_hash

    @property
    def last(self) -> str:
        """The last entry's hash; ZERO_HASH before any."""
        return self._last

    def digest(self, seq: int) -> bytes:
        return bytes(self._data[seq * 32 : seq * 32 + 32])

    def __getitem__(self, seq: int) -> str:
        if not 0 <= seq < len(self):
            raise IndexError(seq)
        return "sha256:" + self.digest(seq).hex()


class _Places:
    """Where each verified entry stands (segment, line), index = seq, kept as runs of
    consecutive lines: one run per segment of an intact log."""

    def __init__(self) -> None:
        self._starts: list[int] = []  # the seq each run begins with
        self._runs: list[tuple[Path, int]] = []  # its segment and first line
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def append(self, place: tuple[Path, int]) -> None:
        if self._runs:
            segment, line = self._runs[-1]
            if segment == place[0] and line + (self._count - self._starts[-1]) == place[1]:
                self._count += 1
                return
        self._starts.append(self._count)
        self._runs.append(place)
        self._count += 1

    def __getitem__(self, seq: int) -> tuple[Path, int]:
        if not -self._count <= seq < self._count:
            raise IndexError(seq)
        seq %= self._count
        run = bisect.bisect_right(self._starts, seq) - 1
        segment, line = self._runs[run]
        return segment, line + seq - self._starts[run]


class _LogCheck:
    """One log's lines checked in order against the verified prefix (the chain so far)."""

    def __init__(self, placed: Iterator[_Placed]) -> None:
        self._placed = placed
        self._later: list[_Placed] = []  # the rest of the log, read only to explain a break
        self.lines = 0
        self.hashes = _Hashes()  # of the verified entries; index = seq
        self.places = _Places()  # (segment, line) of the verified entries; index = seq
        self.broker: object = None
        self.kinds: Counter[str] = Counter()
        self.open_calls: dict[str, int] = {}  # call_id -> seq of an allowed call without result
        self.last_kind: object = None
        self.crash_restarts: list[int] = []  # seq of each `start` not preceded by a `stop`
        self.last: _Placed | None = None

    def first_break(self) -> Break | None:
        for placed in self._placed:
            self.lines += 1
            self.last = placed
            found = self._check(placed)
            if found is not None:
                self._later = list(self._placed)  # also counts the remaining lines
                self.lines += len(self._later)
                return found
        return None

    def _check(self, placed: _Placed) -> Break | None:
        facts = placed.facts
        expected = len(self.hashes)

        def broken(category: Category, detail: str) -> Break:
            return Break(expected, placed.segment, placed.number, category, detail)

        if facts.verdict is not None:
            return broken(*facts.verdict)
        seq, entry_hash = facts.seq, str(facts.hash)
        if not isinstance(seq, int) or isinstance(seq, bool):
            return broken("modified", "seq missing or not an integer")
        if seq != expected:
            return broken(*self._misplaced(seq, entry_hash))
        if facts.prev_hash != self.hashes.last:
            return broken("forked", "prev_hash does not link to the previous entry's hash")
        kind = facts.kind
        if seq == 0 and kind != "start":
            return broken("modified", f"the first entry is of kind {kind!r}, not 'start'")
        if self.hashes and facts.broker != self.broker:
            return broken("inserted", f"entry of broker {facts.broker!r} in the log of {self.broker!r}")
        self._extend(facts, entry_hash)
        self.places.append((placed.segment, placed.number))
        return None

    def _misplaced(self, seq: int, entry_hash: str) -> tuple[Category, str]:
        """Why a well-signed entry carries another seq than the one expected at its place."""
        expected = len(self.hashes)
        if 0 <= seq < expected:
            if self.hashes[seq] == entry_hash:
                return "inserted", f"a second copy of seq {seq}"
            return "forked", f"a different entry with seq {seq}, already seen"
        self._later = list(self._placed)
        self.lines += len(self._later)
        if any(later.facts.seq == expected for later in self._later):
            copies = 1 + sum(
                1 for later in self._later if later.facts.seq == seq and later.facts.hash == entry_hash
            )
            if copies > 1:
                return "inserted", f"a copy of seq {seq} before seq {expected}"
            return "reordered", f"seq {seq} found where seq {expected} belongs; seq {expected} comes later"
        if expected == 0:
            return "truncated", f"the log starts at seq {seq}: its beginning is missing"
        missing = f"seq {expected} to {seq - 1}" if seq > expected + 1 else f"seq {expected}"
        return "deleted", f"{missing} missing"

    def _extend(self, facts: _Facts, entry_hash: str) -> None:
        if not self.hashes:
            self.broker = facts.broker
        elif facts.kind == "start" and self.last_kind != "stop":
            self.crash_restarts.append(len(self.hashes))
        self.hashes.append(entry_hash)
        kind = facts.kind
        self.kinds[str(kind)] += 1
        self.last_kind = kind
        call_id = facts.call_id
        if isinstance(call_id, str):
            if kind == "call" and facts.decision == "ALLOW":
                self.open_calls[call_id] = len(self.hashes) - 1
            elif kind == "result":
                self.open_calls.pop(call_id, None)


def _verify_log(
    broker: str,
    segments: list[Path],
    trusted_keys: dict[str, bytes],
    pool: _Workers,
    anchors: Anchors | None,
) -> LogReport:
    size = 0
    for segment in segments:
        try:
            size += segment.stat().st_size
        except OSError as exc:
            raise LogReadError(f"{segment}: cannot read: {exc.strerror or exc}") from None
    torn: TornTail | None
    parallel = pool.count > 1 and size >= PARALLEL_FROM_BYTES
    if parallel:
        try:
            placed, torn_of = _parallel_facts(segments, trusted_keys, pool.executor(), pool.count)
            check = _LogCheck(placed)
            first_break = check.first_break()
            torn = torn_of()
        except BrokenProcessPool:  # e.g. a calling script that spawned workers cannot import
            pool.count = 1
            parallel = False
    if not parallel:
        torn_found: list[TornTail] = []
        check = _LogCheck(
            _Placed(line.segment, line.number, _line_facts(line.data, line.terminated, trusted_keys))
            for line in iter_lines(segments, torn_found)
        )
        first_break = check.first_break()
        torn = torn_found[0] if torn_found else None
    if check.lines == 0:
        where = segments[-1] if segments else Path(broker)
        first_break = Break(0, where, 1, "truncated", "the log holds no entries")
    anchor_report: AnchorReport | None = None
    if anchors is not None:
        # The log's broker is the one its entries name (a copied folder may be named otherwise).
        named = check.broker if isinstance(check.broker, str) else broker
        place = _Locator(check.places, segments)
        anchor_break, anchor_report = _check_anchors(named, segments, place, check.hashes, anchors)
        first_break = first_break or anchor_break
    return LogReport(
        anchors=anchor_report,
        broker=broker,
        segments=tuple(segments),
        entries=check.lines,
        kinds=dict(check.kinds),
        first_break=first_break,
        sealed=check.last_kind == "stop",
        torn_tail=torn,
        unknown_outcome=tuple(sorted((seq, call_id) for call_id, seq in check.open_calls.items())),
        crash_restarts=tuple(check.crash_restarts),
        last_seq=len(check.hashes) - 1,
    )


# -- the parallel path: seals checked on every core, the chain judged here in order ------------

PARALLEL_FROM_BYTES = 16 * 1024 * 1024
CHUNK_BYTES = 4 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class _Range:
    segment: Path
    start: int
    end: int


def _ranges(segments: list[Path]) -> tuple[list[_Range], int]:
    """Whole-line byte ranges of about CHUNK_BYTES over the segments, and the size of the last
    segment's torn tail (the bytes after its last newline), which no range covers."""
    ranges: list[_Range] = []
    torn_size = 0
    for index, segment in enumerate(segments):
        with segment.open("rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            end_of_lines = size
            if index == len(segments) - 1:
                end_of_lines = _after_last_newline(handle, size)
                torn_size = size - end_of_lines
            start = 0
            while start < end_of_lines:
                cut = start + CHUNK_BYTES
                if cut >= end_of_lines:
                    cut = end_of_lines
                else:
                    handle.seek(cut)
                    found = -1
                    while found < 0 and cut < end_of_lines:
                        block = handle.read(65536)
                        found = block.find(b"\n")
                        cut = min(cut + (found + 1 if found >= 0 else len(block)), end_of_lines)
                ranges.append(_Range(segment, start, cut))
                start = cut
    return ranges, torn_size


def _after_last_newline(handle: BinaryIO, size: int) -> int:
    position = size
    while position > 0:
        step = min(65536, position)
        handle.seek(position - step)
        block = handle.read(step)
        found = block.rfind(b"\n")
        if found >= 0:
            return position - step + found + 1
        position -= step
    return 0


def _range_facts(chunk: _Range, trusted_keys: dict[str, bytes]) -> list[tuple[object, ...]]:
    """Runs in a worker process: the facts of every line in one range of a segment, as plain
    tuples (cheapest to send back)."""
    with chunk.segment.open("rb") as handle:
        handle.seek(chunk.start)
        data = handle.read(chunk.end - chunk.start)
    parts = data.split(b"\n")
    tail = parts.pop()  # b"" when the range ends with a newline
    facts = [tuple(_line_facts(part, True, trusted_keys)) for part in parts]
    if tail:  # only the end of an earlier segment can leave a line unterminated
        facts.append(tuple(_line_facts(tail, False, trusted_keys)))
    return facts


class _Workers:
    """The worker processes of one verification, started on first use. Spawned, not forked:
    safe in a process that runs threads (a broker, a test harness)."""

    def __init__(self, count: int) -> None:
        self.count = count
        self._pool: ProcessPoolExecutor | None = None

    def executor(self) -> ProcessPoolExecutor:
        if self._pool is None:
            self._pool = ProcessPoolExecutor(self.count, mp_context=multiprocessing.get_context("spawn"))
        return self._pool

    def __enter__(self) -> _Workers:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)


def _parallel_facts(
    segments: list[Path], trusted_keys: dict[str, bytes], pool: ProcessPoolExecutor, workers: int
) -> tuple[Iterator[_Placed], Callable[[], TornTail | None]]:
    """The lines' facts in log order, computed ahead on the pool; and, once they are all read,
    the torn tail."""
    try:
        ranges, torn_size = _ranges(segments)
    except OSError as exc:
        raise LogReadError(f"cannot read the log: {exc.strerror or exc}") from None
    numbers: dict[Path, int] = {}
    # A few ranges ahead per worker, not all of them: results wait in memory until the chain
    # check reaches them, so submitting everything at once held the whole log's facts.
    ahead = 4 * max(1, workers)

    def results() -> Iterator[list[tuple[object, ...]]]:
        pending: deque[Future[list[tuple[object, ...]]]] = deque()
        queued = iter(ranges)
        for chunk in itertools.islice(queued, ahead):
            pending.append(pool.submit(_range_facts, chunk, trusted_keys))
        while pending:
            facts = pending.popleft().result()
            for chunk in itertools.islice(queued, 1):
                pending.append(pool.submit(_range_facts, chunk, trusted_keys))
            yield facts

    def placed() -> Iterator[_Placed]:
        for chunk, facts in zip(ranges, results(), strict=True):
            number = numbers.get(chunk.segment, 0)
            for offset, fact in enumerate(facts, start=1):
                yield _Placed(chunk.segment, number + offset, _Facts._make(fact))
            numbers[chunk.segment] = number + len(facts)

    def torn() -> TornTail | None:
        if not torn_size:
            return None
        last = segments[-1]
        return TornTail(last, numbers.get(last, 0) + 1, torn_size)

    return placed(), torn


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


class _Locator:
    """Where the entry of a seq stands (segment, line), for a break a checkpoint reveals."""

    def __init__(self, places: _Places, segments: list[Path]) -> None:
        self._places = places
        self._segments = segments

    def at(self, seq: int, category: Category, detail: str) -> Break:
        if seq < len(self._places):
            segment, number = self._places[seq]
            return Break(seq, segment, number, category, detail)
        if self._places:
            segment, number = self._places[-1]
            return Break(seq, segment, number + 1, category, detail)
        return Break(seq, self._segments[-1] if self._segments else Path("-"), 1, category, detail)


def _check_anchors(
    broker: str, segments: list[Path], place: _Locator, hashes: _Hashes, anchors: Anchors
) -> tuple[Break | None, AnchorReport]:
    log_key = next((key for key in anchors.checkpoint_keys if key.name.endswith("/" + broker)), None)
    if log_key is None:
        detail = f"no trusted checkpoint key for the origin */{broker}: its checkpoints cannot be checked"
        return place.at(len(hashes), "bad_checkpoint_signature", detail), AnchorReport()
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
    found = _compare_roots(place, hashes, anchored)
    if found is None and bad_signature is not None:
        found = place.at(len(hashes), "bad_checkpoint_signature", bad_signature)
    if found is None and bad_cosignature is not None:
        found = place.at(len(hashes), "bad_cosignature", bad_cosignature)
    return found, report


def _signed_by(note: Note, key: Verifier) -> bool:
    matching = [sig for sig in note.signatures if key.matches(sig)]
    return bool(matching) and all(key.verify(note.text, sig) for sig in matching)


def _compare_roots(place: _Locator, hashes: _Hashes, anchored: Sequence[_Anchored]) -> Break | None:
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
            tree.append(hashes.digest(tree.size))
        if tree.root() != item.checkpoint.root:
            witnessed = f", cosigned by {', '.join(sorted(item.witnesses))}" if item.witnesses else ""
            return place.at(
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
        return place.at(
            len(hashes),
            "truncated",
            f"the log ends after {len(hashes)} entries but size {top.checkpoint.size} was anchored "
            f"({top.where.name}{witnessed}): entries {len(hashes)} to {top.checkpoint.size - 1} are missing",
        )
    return None
