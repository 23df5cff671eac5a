"""Finding audit logs on disk and reading their lines and entries.

Owns the on-disk layout (an audit folder holds one folder per broker, each a chain of
`NNNNNN.jsonl` segments read in name order) and the split of segments into lines, with a torn
final line set apart. It only reads: it must never write, repair or judge a log (that is the
writer's and the verifier's business).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ztb.config import load_broker_config
from ztb.config.broker import BROKER_FILE

__all__ = [
    "Line",
    "LogNotFound",
    "LogReadError",
    "TornTail",
    "find_logs",
    "iter_lines",
    "parse_line",
    "read_entries",
    "read_lines",
]

SEGMENT_GLOB = "*.jsonl"


class LogNotFound(Exception):
    """No audit log where one was expected; str() is the whole one-line message."""


class LogReadError(Exception):
    """A log cannot be read or a line is not a JSON object; str() names the file and line."""


@dataclass(frozen=True, slots=True)
class Line:
    """One line of a segment, without its newline; only the end of an earlier segment can
    leave a line unterminated."""

    segment: Path
    number: int  # 1-based within the segment
    data: bytes
    terminated: bool = True


@dataclass(frozen=True, slots=True)
class TornTail:
    """Bytes after the last newline of the last segment: an interrupted write."""

    segment: Path
    number: int
    size: int


def find_logs(path: Path) -> dict[str, list[Path]]:
    """Broker id -> its segment files in order, for a deployment folder (its broker.yaml
    names the audit folder), an audit folder, or one broker's log folder."""
    if not path.is_dir():
        raise LogNotFound(f"{path}: no such folder")
    if (path / BROKER_FILE).is_file():
        config = load_broker_config(path)
        audit = config.path(config.audit.dir)
        if not audit.is_dir():
            raise LogNotFound(f"{audit}: no audit folder (audit.dir of {path / BROKER_FILE})")
        return _logs_in(audit)
    segments = _segments(path)
    if segments:
        return {path.name: segments}
    return _logs_in(path)


def _logs_in(audit: Path) -> dict[str, list[Path]]:
    logs = {
        folder.name: segments
        for folder in sorted(audit.iterdir())
        if folder.is_dir() and (segments := _segments(folder))
    }
    if not logs:
        raise LogNotFound(f"{audit}: no audit logs (no <broker>/NNNNNN.jsonl segment files)")
    return logs


def _segments(folder: Path) -> list[Path]:
    return sorted(path for path in folder.glob(SEGMENT_GLOB) if path.is_file())


def iter_lines(segments: list[Path], torn: list[TornTail] | None = None) -> Iterator[Line]:
    """Every whole line of the log, in order, with one segment in memory at a time; the torn
    tail of the last segment, if any, is appended to `torn` (when given) instead.

    An unterminated line at the end of an earlier segment is returned as a line: only the
    log's very end can be an interrupted write.
    """
    for index, segment in enumerate(segments):
        try:
            data = segment.read_bytes()
        except OSError as exc:
            raise LogReadError(f"{segment}: cannot read: {exc.strerror or exc}") from None
        parts = data.split(b"\n")
        del data
        tail = parts.pop()  # b"" when the segment ends with a newline
        for number, part in enumerate(parts, start=1):
            yield Line(segment, number, part)
        if tail:
            if index == len(segments) - 1:
                if torn is not None:
                    torn.append(TornTail(segment, len(parts) + 1, len(tail)))
            else:
                yield Line(segment, len(parts) + 1, tail, terminated=False)


def read_lines(segments: list[Path]) -> tuple[list[Line], TornTail | None]:
    """Every whole line of the log, in order, and the torn tail of the last segment if any
    (all in memory: `iter_lines` reads one segment at a time)."""
    torn: list[TornTail] = []
    lines = list(iter_lines(segments, torn))
    return lines, torn[0] if torn else None


def parse_line(data: bytes) -> dict[str, object] | None:
    """The JSON object on a line, or None when the line is not UTF-8 JSON holding an object."""
    try:
        value = json.loads(data.decode("utf-8"), parse_constant=_refuse_constant)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _refuse_constant(name: str) -> object:
    raise ValueError(f"{name} is not JSON")


def read_entries(segments: list[Path]) -> Iterator[dict[str, object]]:
    """The entries of one log in order, one segment in memory at a time; a torn tail is skipped
    (`read_lines` reports it)."""
    for line in iter_lines(segments):
        entry = parse_line(line.data)
        if entry is None:
            raise LogReadError(f"{line.segment}:{line.number}: not a JSON object; run `ztb audit verify`")
        yield entry
