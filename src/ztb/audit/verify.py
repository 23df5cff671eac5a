"""The auditor's check of audit logs: every line, every link, and the first place a log breaks.

Owns the judgement of a whole log (SPEC section 4): canonical form, known key, hash and
signature, `seq` continuity from 0, `prev_hash` links, one version and one broker per log, and
the category of the first break. Needs only the log files and the public keys the auditor
trusts. It must never trust a key the auditor did not pass, never repair a log, and never
call a log tampered for what a crash explains (a torn tail, an unsealed end, an allowed call
without a result): those are warnings.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from ztb.audit.entry import VERSION, ZERO_HASH, check_seal
from ztb.audit.jcs import canonicalize
from ztb.audit.reader import Line, TornTail, parse_line, read_lines

__all__ = ["Break", "Category", "LogReport", "VerifyReport", "verify_logs"]

Category = Literal[
    "modified", "non_canonical", "unknown_key", "deleted", "inserted", "reordered", "forked", "truncated"
]


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


def verify_logs(logs: dict[str, list[Path]], trusted_keys: dict[str, bytes]) -> VerifyReport:
    """Check every log (broker id -> ordered segments) against the trusted keys (kid -> raw key)."""
    return VerifyReport(
        tuple(_verify_log(broker, segments, trusted_keys) for broker, segments in logs.items())
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


def _verify_log(broker: str, segments: list[Path], trusted_keys: dict[str, bytes]) -> LogReport:
    lines, torn = read_lines(segments)
    check = _LogCheck(lines, trusted_keys)
    first_break = check.first_break()
    if not lines:
        where = segments[-1] if segments else Path(broker)
        first_break = Break(0, where, 1, "truncated", "the log holds no entries")
    return LogReport(
        broker=broker,
        segments=tuple(segments),
        entries=len(lines),
        kinds=dict(check.kinds),
        first_break=first_break,
        sealed=check.last_kind == "stop",
        torn_tail=torn,
        unknown_outcome=tuple(sorted((seq, call_id) for call_id, seq in check.open_calls.items())),
    )
