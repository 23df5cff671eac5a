"""The anchor: the broker's Merkle tree over its durable entries, and the checkpoints that take
the tree's head off the host (SPEC section 7).

The tree (an RFC 6962 right edge, grown one leaf at a time) is fed only the (seq, hash) pairs
the writer reports durable, so no checkpoint covers an entry that is not on disk. Every
`every_entries` entries or `every_s` seconds, whichever comes first and only if the log grew,
it signs a checkpoint with the checkpoint key, appends it to `checkpoints/checkpoints.notes`
beside the log, and hands it to every sink: `FileSink` appends it to a file elsewhere; a witness
sink (ztb.edge.witness_client) returns cosignatures, kept in `checkpoints/cosigned.notes`.
Consistency proofs for a sink come from the right edge at its old size and the leaves appended
since (kept in memory while a sink lags, read back from the log when they are not).

A failing sink never stops calls: it is retried, its lag (how long the oldest durable entry it
has not anchored has waited) is measured, and past `max_lag_s` the broker reports not-ready.
On start it refuses a log that is shorter than, or differs from, a checkpoint it already signed:
signing a new head for it would fork the log. The start reads the log once, one segment at a
time, or, when the right edge saved at the last checkpoint (`checkpoints/tree.json`) is vouched
for by a checkpoint this key signed and the log continues it, only from there on
(docs/operations.md, "What a start costs"). It never knows about HTTP.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import re
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import orjson

from ztb.audit.checkpoint import Checkpoint, origin_of, parse_notes, sign_checkpoint
from ztb.audit.keys import SigningKey
from ztb.audit.merkle import HASH_SIZE, CompactRange, ProofError, consistency_proof, subtree_of
from ztb.audit.note import ED25519, Note, NoteError, NoteSignature, Verifier, open_note
from ztb.audit.reader import LogReadError, iter_lines
from ztb.config.broker import BrokerConfig
from ztb.config.errors import ConfigError
from ztb.durable import append_durably, replace_durably

__all__ = [
    "CHECKPOINTS_DIR",
    "COSIGNED_NOTES",
    "LOG_NOTES",
    "Anchor",
    "FileSink",
    "Sink",
    "SinkError",
    "SinkStatus",
    "append_durably",
    "read_leaves",
]

CHECKPOINTS_DIR = "checkpoints"
LOG_NOTES = "checkpoints.notes"
COSIGNED_NOTES = "cosigned.notes"
TREE_STATE = "tree.json"  # the tree's right edge at the latest checkpoint: where a start resumes
MAX_WINDOW = 1 << 20  # leaves kept for lagging witnesses (32 MiB); past that the log is re-read
RETRY_S = 1.0
FINAL_TIMEOUT_S = 5.0

Prover = Callable[[int, int], Awaitable[list[bytes]]]
"""The consistency proof from an old size to a new size of this log."""


class SinkError(Exception):
    """A sink that could not take a checkpoint; str() is a one-line reason."""


class Sink(Protocol):
    name: str
    verifier: Verifier | None  # the key of a sink's cosignatures (None: it returns none)

    async def publish(
        self, note: Note, checkpoint: Checkpoint, acked: int, prove: Prover
    ) -> tuple[NoteSignature, ...]:
        """Hand over a checkpoint the sink last saw at size `acked`; its cosignatures, if any.
        SinkError when it was not taken."""

    async def close(self) -> None: ...


@dataclass(frozen=True, slots=True)
class SinkStatus:
    name: str
    anchored_size: int
    lag_s: float
    failures: int
    error: str | None


def iter_leaves(log_dir: Path) -> Iterator[bytes]:
    """The leaf hash of every whole entry of one log, in order (a torn tail is not an entry),
    with one segment in memory at a time."""
    return _leaves(log_dir, sorted(log_dir.glob("*.jsonl")), 0)


class _NoResume(Exception):
    """The log on disk does not continue the saved tree state (a start then reads it all)."""


def _leaves(log_dir: Path, segments: list[Path], first: int, tail_hash: str | None = None) -> Iterator[bytes]:
    """The leaf hashes of the entries from seq `first` on, read from `segments` (which must
    begin at or before it). With `tail_hash`, entry `first - 1` must be there with that hash,
    or `_NoResume` is raised."""
    seeking = tail_hash is not None  # still looking for entry first - 1
    expected = first - 1 if seeking else first
    try:
        for line in iter_lines(segments):
            # Only `seq` and `hash` are read here (judging every line is the verifier's task), so
            # the fast parser will do: a line it cannot parse is damaged either way.
            try:
                entry = orjson.loads(line.data)
            except ValueError:
                if seeking:
                    raise _NoResume(f"{line.segment.name}:{line.number} is not an entry") from None
                raise
            seq = entry.get("seq") if isinstance(entry, dict) else None
            stated = entry.get("hash") if isinstance(entry, dict) else None
            if seeking:
                if isinstance(seq, int) and seq < expected:
                    continue  # before the resume point, in the segment where it lies
                if seq != expected or stated != tail_hash:
                    raise _NoResume(f"entry {expected} is not the one the saved tree state ends with")
                seeking = False
            elif seq != expected or not isinstance(stated, str):
                raise ConfigError(f"{log_dir}: entry {expected} is damaged; run `ztb audit verify`")
            else:
                yield bytes.fromhex(stated.removeprefix("sha256:"))
            expected += 1
    except (LogReadError, ValueError) as exc:
        raise ConfigError(f"{log_dir}: {exc}") from None
    if seeking:
        raise _NoResume(f"the log does not reach entry {expected}")


def read_leaves(log_dir: Path) -> list[bytes]:
    """Every leaf hash of one log, in memory (32 bytes an entry)."""
    return list(iter_leaves(log_dir))


@dataclass
class _Scan:
    """One pass over a log: its tree, the root at one size, and the leaves from some size on."""

    tree: CompactRange
    root_at: bytes | None  # the root at the size asked for, None if the log is shorter
    window: _Window
    tail_hash: str | None  # the last entry's hash, None when no entry was read


def _scan(log_dir: Path, root_size: int | None, keep_from: int, max_window: int | None) -> _Scan:
    """Read the whole log once, keeping O(log n) of the tree and the leaves from `keep_from` on
    (at most the last `max_window` of them, when given, the rest folded into the window's edge)."""
    return _grow(CompactRange(), iter_leaves(log_dir), root_size, keep_from, max_window)


def _grow(
    tree: CompactRange,
    leaves: Iterator[bytes],
    root_size: int | None,
    keep_from: int,
    max_window: int | None,
) -> _Scan:
    """`_scan` from a tree that already holds `tree.size` leaves (`keep_from` not below it)."""
    root_at = tree.root() if root_size == tree.size else None
    edge: CompactRange | None = tree.copy() if keep_from == tree.size else None
    kept = bytearray()
    fold = None if max_window is None else 2 * max_window * HASH_SIZE
    last: bytes | None = None
    for leaf in leaves:
        last = leaf
        tree.append(leaf)
        if tree.size == root_size:
            root_at = tree.root()
        if edge is not None:
            kept += leaf
            if fold is not None and len(kept) > fold:  # past twice the bound: fold half into the edge
                cut = len(kept) - fold // 2
                edge.extend([bytes(kept[i : i + HASH_SIZE]) for i in range(0, cut, HASH_SIZE)])
                del kept[:cut]
        elif tree.size == keep_from:
            edge = tree.copy()
    window = _Window(edge if edge is not None else tree.copy(), [])
    window.data = kept
    return _Scan(tree, root_at, window, None if last is None else "sha256:" + last.hex())


def _resume(log_dir: Path, saved: CompactRange, tail_hash: str, root_size: int, keep_from: int) -> _Scan:
    """`_scan` from a saved right edge: only the segment where it ends and the later ones are
    read. `_NoResume` when the log does not continue it there."""
    segments = sorted(log_dir.glob("*.jsonl"))
    start = 0
    for index, segment in enumerate(segments):  # the last segment beginning at or before the tail
        first = _first_seq(segment)
        if first is not None and first <= saved.size - 1:
            start = index
        elif first is not None:
            break
    leaves = _leaves(log_dir, segments[start:], saved.size, tail_hash)
    scan = _grow(saved.copy(), leaves, root_size, keep_from, MAX_WINDOW)
    scan.tail_hash = scan.tail_hash or tail_hash  # nothing after the saved state: its tail
    return scan


def _first_seq(segment: Path) -> int | None:
    try:
        with segment.open("rb") as handle:
            entry = orjson.loads(handle.readline())
    except (OSError, ValueError):
        return None
    seq = entry.get("seq") if isinstance(entry, dict) else None
    return seq if isinstance(seq, int) else None


def save_tree_state(path: Path, edge: CompactRange, tail_hash: str) -> None:
    """Replace `path`, atomically and durably, with the tree's right edge and its last entry's hash."""
    state = {"size": edge.size, "nodes": [node.hex() for node in edge.nodes], "tail_hash": tail_hash}
    replace_durably(path, orjson.dumps(state))


def load_tree_state(path: Path) -> tuple[CompactRange, str] | None:
    """The saved right edge and tail hash; None when there is none or it is not one."""
    try:
        saved = orjson.loads(path.read_bytes())
        edge = CompactRange.restore(int(saved["size"]), [bytes.fromhex(node) for node in saved["nodes"]])
        tail_hash = saved["tail_hash"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return (edge, tail_hash) if isinstance(tail_hash, str) and edge.size > 0 else None


def read_notes(path: Path) -> list[Note]:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror or exc}") from None
    return parse_notes(data)[0]


NOTES_TAIL_BYTES = 1 << 20  # what a start reads of a notes file: the last few thousand notes
# Where a note ends: a signature line ("— " is U+2014 and a space) and the empty line after it.
_NOTE_END = re.compile(rb"\n\xe2\x80\x94 [^\n]*\n\n")


def read_recent_notes(path: Path, tail_bytes: int = NOTES_TAIL_BYTES) -> list[Note]:
    """The notes at the end of a notes file: its last `tail_bytes`, from the first whole note
    in them on. Checkpoints are appended in growing size, so the latest is there; a start needs
    no more (the whole file is the verifier's business), and a file that grows by a note every
    few seconds must not make every start slower."""
    try:
        with path.open("rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            if size > tail_bytes:
                handle.seek(size - tail_bytes)
            data = handle.read()
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror or exc}") from None
    if size > tail_bytes:
        cut = _NOTE_END.search(data)
        data = data[cut.end() :] if cut is not None else b""
    return parse_notes(data)[0]


def largest_signed(
    notes: Sequence[Note], log: Verifier, witness: Verifier | None = None
) -> Checkpoint | None:
    """The largest checkpoint among `notes` signed by `log` (and cosigned by `witness`, if given).

    Candidates are tried largest first, so only the signatures of the answer (and of larger
    notes that fail) are checked."""
    keys = [log] if witness is None else [log, witness]
    candidates: list[tuple[int, int, Checkpoint, Note]] = []
    for index, note in enumerate(notes):
        try:
            checkpoint = Checkpoint.from_text(note.text)
        except NoteError:
            continue
        if checkpoint.origin == log.name:
            candidates.append((checkpoint.size, index, checkpoint, note))
    for _, _, checkpoint, note in sorted(candidates, key=lambda item: (item[0], item[1]), reverse=True):
        try:
            signed = open_note(note, keys)
        except NoteError:
            continue
        if all(key in signed for key in keys):
            return checkpoint
    return None


class FileSink:
    """`file:` anchor: each checkpoint is appended, as a note and an empty line, to one file."""

    verifier: Verifier | None = None

    def __init__(self, path: Path) -> None:
        self.path = path
        self.name = f"file:{path}"

    async def publish(
        self, note: Note, checkpoint: Checkpoint, acked: int, prove: Prover
    ) -> tuple[NoteSignature, ...]:
        try:
            await asyncio.to_thread(append_durably, self.path, (note.encode() + "\n").encode())
        except OSError as exc:
            raise SinkError(f"cannot append to {self.path}: {exc.strerror or exc}") from None
        return ()

    async def close(self) -> None:
        return None


class _Window:
    """The leaves from `base` on, and the right edge at `base`: enough to prove consistency from
    any size >= base without the rest of the log."""

    def __init__(self, edge: CompactRange, leaves: Sequence[bytes]) -> None:
        self.base = edge.size
        self.edge = edge
        self.data = bytearray(b"".join(leaves))

    @property
    def end(self) -> int:
        return self.base + len(self.data) // HASH_SIZE

    def append(self, leaf: bytes) -> None:
        self.data += leaf

    def leaves(self, start: int, end: int) -> list[bytes]:
        return [
            bytes(self.data[(i - self.base) * HASH_SIZE : (i - self.base + 1) * HASH_SIZE])
            for i in range(start, end)
        ]

    def edge_at(self, size: int) -> CompactRange:
        edge = self.edge.copy()
        edge.extend(self.leaves(self.base, size))
        return edge

    def trim(self, base: int) -> None:
        if base > self.base:
            self.edge = self.edge_at(base)
            del self.data[: (base - self.base) * HASH_SIZE]
            self.base = base

    def consistency(self, old: int, new: int) -> list[bytes]:
        if not self.base <= old <= new <= self.end:
            raise KeyError((old, new))
        old_edge = self.edge_at(old)
        recent = self.leaves(old, new)

        def subtree(start: int, end: int) -> bytes:
            if end <= old:
                return old_edge.node(start, end)
            return subtree_of(recent)(start - old, end - old)

        return consistency_proof(old, new, subtree)


@dataclass
class _SinkState:
    sink: Sink
    acked: int = 0
    failures: int = 0
    error: str | None = None


class Anchor:
    def __init__(
        self,
        log_dir: Path,
        origin: str,
        key: SigningKey,
        sinks: Sequence[Sink],
        *,
        every_entries: int = 1000,
        every_s: float = 5.0,
        max_lag_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
        on_failure: Callable[[str], None] | None = None,
    ) -> None:
        self.log_dir = log_dir
        self.origin = origin
        self._key = key
        self.verifier = Verifier(origin, ED25519, key.public_raw)
        self._states = [_SinkState(sink) for sink in sinks]
        self._every_entries = every_entries
        self._every_s = every_s
        self.max_lag_s = max_lag_s
        self._clock = clock
        self._on_failure = on_failure
        self.tree = CompactRange()
        self._tail_hash: str | None = None  # the hash of the tree's last leaf's entry
        self.resumed_from: int | None = None  # the saved size the last start resumed from, if any
        self._window = _Window(CompactRange(), [])
        self._grown: deque[tuple[int, float]] = deque()  # (tree size after a batch, when it was durable)
        self.latest: tuple[Checkpoint, Note] | None = None
        self._latest_at = clock()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self.error: str | None = None  # why the last checkpoint could not be kept beside the log
        self.broken = False

    @property
    def notes_dir(self) -> Path:
        return self.log_dir / CHECKPOINTS_DIR

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self, next_seq: int) -> None:
        """Rebuild the tree from the log on disk (which must hold `next_seq` entries and agree with
        every checkpoint already signed), then start the schedule. One pass over the log, one
        segment in memory at a time: the tree's right edge, the root at the latest signed size,
        and only the leaves a witness may still need a proof over."""
        own = await asyncio.to_thread(read_recent_notes, self.notes_dir / LOG_NOTES)
        cosigned = await asyncio.to_thread(read_recent_notes, self.notes_dir / COSIGNED_NOTES)
        latest = largest_signed([*own, *cosigned], self.verifier)
        resumed = [await self._resume_size(state.sink, cosigned) for state in self._states]
        proving = [size for size, state in zip(resumed, self._states, strict=True) if state.sink.verifier]
        keep_from = min(proving or [next_seq])
        scan = await self._read_from_saved(latest, own, keep_from)
        if scan is None:
            self.resumed_from = None
            scan = await asyncio.to_thread(
                _scan, self.log_dir, None if latest is None else latest.size, keep_from, MAX_WINDOW
            )
        if scan.tree.size != next_seq:
            raise ConfigError(f"{self.log_dir}: the log holds {scan.tree.size} entries, expected {next_seq}")
        if latest is not None:
            self._check_log_holds(latest, scan)
            self.latest = (latest, sign_checkpoint(latest, self._key))
        for state, size in zip(self._states, resumed, strict=True):
            state.acked = 0 if size > scan.tree.size else size  # a sink ahead of this log starts over
        self.tree = scan.tree
        self._tail_hash = scan.tail_hash
        self._window = scan.window
        now = self._clock()
        self._grown.append((self.tree.size, now))
        self._latest_at = now
        self._task = asyncio.create_task(self._run(), name=f"anchor-{self.origin}")

    async def _read_from_saved(
        self, latest: Checkpoint | None, own: list[Note], keep_from: int
    ) -> _Scan | None:
        """The log read from the right edge saved at a checkpoint this key signed (the edge's root
        is that checkpoint's), when the log continues it: entry `size - 1` is where the saved
        state says, with the hash it says. None to read the whole log instead."""
        saved = await asyncio.to_thread(load_tree_state, self.notes_dir / TREE_STATE)
        if saved is None or latest is None:
            return None
        edge, tail_hash = saved
        if edge.size > keep_from or not self._vouched(edge, own):
            return None
        try:
            scan = await asyncio.to_thread(_resume, self.log_dir, edge, tail_hash, latest.size, keep_from)
        except _NoResume:
            return None
        self.resumed_from = edge.size
        return scan

    def _vouched(self, edge: CompactRange, notes: Sequence[Note]) -> bool:
        """True when one of `notes` is a checkpoint this key signed of exactly this tree head."""
        root = edge.root()
        for note in reversed(notes):
            try:
                checkpoint = Checkpoint.from_text(note.text)
                if (checkpoint.origin, checkpoint.size, checkpoint.root) != (self.origin, edge.size, root):
                    continue
                if self.verifier in open_note(note, [self.verifier]):
                    return True
            except NoteError:
                continue
        return False

    def _check_log_holds(self, latest: Checkpoint, scan: _Scan) -> None:
        if latest.size > scan.tree.size:
            raise ConfigError(
                f"{self.log_dir}: the log holds {scan.tree.size} entries but checkpoint {latest.size} was signed: "
                "entries were removed; run `ztb audit verify`"
            )
        if scan.root_at != latest.root:
            raise ConfigError(
                f"{self.log_dir}: the first {latest.size} entries do not match the checkpoint signed for them; "
                "run `ztb audit verify`"
            )

    async def _resume_size(self, sink: Sink, cosigned: list[Note]) -> int:
        """The largest size `sink` took a checkpoint at, by the notes it or the log keeps."""
        if sink.verifier is not None:
            best = largest_signed(cosigned, self.verifier, sink.verifier)
        elif isinstance(sink, FileSink):
            best = largest_signed(await asyncio.to_thread(read_recent_notes, sink.path), self.verifier)
        else:
            best = None
        return 0 if best is None else best.size

    async def close(self, *, final: bool = True) -> None:
        """Stop the schedule; with `final`, first anchor everything durable (bounded in time)."""
        self._closing = True
        self._wake.set()
        if self._task is not None:
            # The loop sees `_closing` when it wakes; a round in flight gets a bounded wait.
            done, _ = await asyncio.wait({self._task}, timeout=FINAL_TIMEOUT_S)
            if not done:
                self._task.cancel()
                await asyncio.wait({self._task}, timeout=1.0)
            self._task = None
        if final:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(FINAL_TIMEOUT_S):
                    await self._round(force=True)
        for state in self._states:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(1.0):
                    await state.sink.close()

    # -- fed by the writer ---------------------------------------------------------------------

    def on_durable(self, batch: Sequence[tuple[int, str]]) -> None:
        for seq, entry_hash in batch:
            if seq != self.tree.size or self.broken:  # the writer hands over every entry once, in order
                # Never raise into the writer's flusher: stop growing, so the lag turns the broker not-ready.
                self.broken = True
                self.error = f"the tree expected seq {self.tree.size}, got {seq}: anchoring stopped"
                return
            leaf = bytes.fromhex(entry_hash.removeprefix("sha256:"))
            self.tree.append(leaf)
            self._window.append(leaf)
            self._tail_hash = entry_hash
        self._grown.append((self.tree.size, self._clock()))
        if self.tree.size - self._anchored_size() >= self._every_entries:
            self._wake.set()

    # -- the schedule ------------------------------------------------------------------------------

    async def _run(self) -> None:
        while not self._closing:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._next_due()):
                    await self._wake.wait()
            self._wake.clear()
            if not self._closing:
                await self._round(force=False)

    def _next_due(self) -> float:
        if any(state.error for state in self._states) or self.error:
            return min(RETRY_S, self._every_s)
        if self.tree.size > self._anchored_size():
            return max(0.01, self._every_s - (self._clock() - self._latest_at))
        return self._every_s

    def _anchored_size(self) -> int:
        return 0 if self.latest is None else self.latest[0].size

    async def _round(self, *, force: bool) -> None:
        grown = self.tree.size - self._anchored_size()
        due = force or grown >= self._every_entries or self._clock() - self._latest_at >= self._every_s
        if grown > 0 and due:
            await self._checkpoint()
        if self.latest is not None:
            checkpoint, note = self.latest
            behind = [state for state in self._states if state.acked < checkpoint.size]
            await asyncio.gather(*(self._publish(state, checkpoint, note) for state in behind))
        self._trim()

    async def _checkpoint(self) -> None:
        checkpoint = Checkpoint(self.origin, self.tree.size, self.tree.root())
        edge, tail_hash = self.tree.copy(), self._tail_hash
        note = sign_checkpoint(checkpoint, self._key)
        try:
            await asyncio.to_thread(
                append_durably, self.notes_dir / LOG_NOTES, (note.encode() + "\n").encode()
            )
        except OSError as exc:
            self.error = f"cannot keep the checkpoint beside the log: {exc.strerror or exc}"
            return
        self.error = None
        self.latest = (checkpoint, note)
        self._latest_at = self._clock()
        if tail_hash is not None:
            # Where the next start resumes; without it (it could not be written), a start reads
            # the whole log, which is slower and just as sound.
            with contextlib.suppress(OSError):
                await asyncio.to_thread(save_tree_state, self.notes_dir / TREE_STATE, edge, tail_hash)

    async def _publish(self, state: _SinkState, checkpoint: Checkpoint, note: Note) -> None:
        try:
            cosignatures = await state.sink.publish(note, checkpoint, state.acked, self._prove)
            if cosignatures:
                cosigned = note.with_signatures(cosignatures)
                await asyncio.to_thread(
                    append_durably, self.notes_dir / COSIGNED_NOTES, (cosigned.encode() + "\n").encode()
                )
        except (SinkError, ProofError, OSError) as exc:
            state.failures += 1
            state.error = str(exc) or type(exc).__name__
            if self._on_failure is not None:
                self._on_failure(state.sink.name)
            return
        state.acked = checkpoint.size
        state.error = None

    async def _prove(self, old: int, new: int) -> list[bytes]:
        try:
            return self._window.consistency(old, new)
        except KeyError:
            pass
        # A sink further behind than the window: one pass over the log, keeping the leaves from
        # its size on (32 bytes for each entry it lags by).
        scan = await asyncio.to_thread(_scan, self.log_dir, None, old, None)
        if scan.tree.size < new:
            raise ProofError(f"the log on disk holds fewer than {new} entries")
        return scan.window.consistency(old, new)

    def _trim(self) -> None:
        anchored = [state.acked for state in self._states]
        low = min([*anchored, self._anchored_size()])
        while self._grown and self._grown[0][0] <= low:
            self._grown.popleft()
        proving = [state.acked for state in self._states if state.sink.verifier is not None]
        base = min([*proving, self._anchored_size()])
        base = max(base, self._window.end - MAX_WINDOW)
        self._window.trim(min(base, self._window.end))

    # -- what the admin plane shows --------------------------------------------------------------

    def lag_s(self, anchored: int) -> float:
        """How long the oldest durable entry beyond `anchored` has waited (0 when there is none)."""
        if anchored >= self.tree.size:
            return 0.0
        since = next((at for size, at in self._grown if size > anchored), self._clock())
        return max(0.0, self._clock() - since)

    def status(self) -> list[SinkStatus]:
        local = SinkStatus("local", self._anchored_size(), self.lag_s(self._anchored_size()), 0, self.error)
        return [local] + [
            SinkStatus(state.sink.name, state.acked, self.lag_s(state.acked), state.failures, state.error)
            for state in self._states
        ]

    @property
    def ready(self) -> bool:
        return all(status.lag_s <= self.max_lag_s for status in self.status())


def deployment_checkpoint_keys(config: BrokerConfig) -> list[Verifier]:
    """The checkpoint verifier keys a deployment's own files vouch for: `<checkpoint_key>.vkey`,
    and, with `workers: N`, the same key under the origin of each worker's log (every worker signs
    with the deployment's one checkpoint key; each log has its own origin). Empty without a vkey."""
    vkey = config.path(config.anchor.checkpoint_key).with_suffix(".vkey")
    if not vkey.is_file():
        return []
    try:
        base = Verifier.parse(vkey.read_text(encoding="ascii"))
    except (OSError, UnicodeDecodeError, NoteError) as exc:
        raise ConfigError(f"{vkey}: not a checkpoint verifier key: {exc}") from None
    if config.workers == 1:
        return [base]
    return [
        dataclasses.replace(base, name=origin_of(config.deployment, config.worker_id(n)))
        for n in range(config.workers)
    ]
