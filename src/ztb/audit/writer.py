"""The audit writer: one broker instance's append-only, hash-chained, signed log on disk.

It owns the chain (seq, prev_hash), the segment files and durability. `append` seals an entry
at once (so its place in the chain is fixed the moment a decision is made) and queues its
line; a single flusher writes queued lines in batches and fsyncs each batch once (group
commit) on a dedicated thread, so the event loop never blocks on the disk. `durable(seq,
timeout)` waits, bounded, for the batch holding an entry; `on_durable` hands each durable batch's
(seq, hash) pairs, in order, to whoever builds the Merkle tree (the anchor).

Failure rules (SPEC §4, docs/audit-faults.md): a failed write keeps its lines queued, in order,
and retries them at the same file offset, so nothing is lost, duplicated or forked; while writes
fail or an entry is overdue, `writable` is False and callers refuse calls fast instead of
hanging, and the first batch that succeeds makes the log writable again. Before each batch, and
once a second when idle, the writer checks that the segment on disk is still the file it holds
and still writable: a segment deleted, replaced or truncated under it is never written again
(its bytes are saved beside it as `*.orphan-*`, which stops any later start until an operator
decides), so the chain can never fork silently. Pending lines are bounded: past
`MAX_PENDING_BYTES` the log reports `saturated` and the edge sheds new connections. On open, a
torn last line is set aside, the chain continues from the last whole entry, and `start` is
followed by a `recover` entry. Segments rotate once a group commit takes one past
`segment_bytes`; the chain simply continues in the next file. It never knows about HTTP.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ztb.audit.entry import VERSION, ZERO_HASH, seal
from ztb.audit.keys import SigningKey
from ztb.config.errors import ConfigError
from ztb.durable import fsync_folder, write_all
from ztb.gates.base import Appended
from ztb.oplog import event

SEGMENT_SUFFIX = ".jsonl"
ORPHAN_MARK = ".orphan-"
DEFAULT_SEGMENT_BYTES = 64 * 1024 * 1024
RETRY_DELAY_S = 0.05
MAX_RETRY_DELAY_S = 1.0
IDLE_CHECK_S = 1.0
# Lines waiting for a disk that fails: past this the edge stops taking new connections.
MAX_PENDING_BYTES = 32 * 1024 * 1024

log = logging.getLogger("ztb.audit")


class SegmentDisplaced(Exception):
    """The segment file on disk is no longer the one this writer holds; str() says how."""


_second_text: tuple[int, str] = (-1, "")  # the last whole second formatted, reused within it


def utc_timestamp(now: float) -> str:
    """RFC 3339 UTC with milliseconds, as in SPEC §4: 2026-05-04T11:42:08.317Z."""
    global _second_text  # noqa: PLW0603 - a one-entry cache: entries come many to a second
    seconds = int(now)
    if _second_text[0] != seconds:
        _second_text = (seconds, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)))
    return f"{_second_text[1]}.{int((now - seconds) * 1000):03d}Z"


def segment_name(number: int) -> str:
    return f"{number:06d}{SEGMENT_SUFFIX}"


@dataclass(frozen=True, slots=True)
class TornTail:
    segment: str
    offset: int
    size: int
    sha256: str


@dataclass(slots=True)
class _Tail:
    """Where the chain continues: the next seq, the last hash, the segment and its length."""

    seq: int
    prev_hash: str
    segment: int
    offset: int
    torn: TornTail | None


def _settle(waiter: asyncio.Future[bool], durable: bool) -> None:
    if not waiter.done():
        waiter.set_result(durable)


class AuditWriter:
    def __init__(
        self,
        folder: Path,
        broker_id: str,
        key: SigningKey,
        *,
        segment_bytes: int = DEFAULT_SEGMENT_BYTES,
        clock: Callable[[], float] = time.time,
        on_batch: Callable[[int, float], None] | None = None,
    ) -> None:
        self.folder = folder
        self.broker_id = broker_id
        self._key = key
        self._segment_bytes = segment_bytes
        self._clock = clock
        self._on_batch = on_batch  # (entries, seconds to write and fsync) of each group commit
        self._tail = _find_tail(folder)
        self._fd = -1
        self._pending: list[tuple[int, bytes, str]] = []  # seq, line, hash
        self._pending_bytes = 0
        self._durable_seq = self._tail.seq - 1
        self._waiters: dict[int, list[asyncio.Future[bool]]] = {}  # seq -> its callers' futures
        self._failing = False
        self._overdue = False
        self._displaced: str | None = None
        self._wake = asyncio.Event()
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"audit-{broker_id}")
        self._flusher: asyncio.Task[None] | None = None
        self._closed = False
        self.last_error: str | None = None
        self.on_durable: Callable[[Sequence[tuple[int, str]]], None] | None = None
        self.batches = 0  # group commits done (for metrics)
        self.batch_sizes_total = 0

    # -- lifecycle ---------------------------------------------------------------------------

    async def open(self, *, version: str, registry_sha256: str) -> Appended:
        """Open the current segment, then write `start` (and `recover` for a torn tail)."""
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            await asyncio.get_running_loop().run_in_executor(self._thread, self._open_segment, False)
        except (OSError, SegmentDisplaced) as exc:
            raise ConfigError(f"{self.folder}: cannot open the audit log: {exc}") from None
        self._flusher = asyncio.create_task(self._flush_forever(), name=f"audit-flusher-{self.broker_id}")
        start = self.append(
            "start",
            {
                "version": version,
                "registry_sha256": registry_sha256,
                "keys": {self._key.kid: self._key.public_hex},
            },
        )
        torn = self._tail.torn
        if torn is not None:
            self.append(
                "recover",
                {
                    "segment": torn.segment,
                    "offset": torn.offset,
                    "torn_bytes": torn.size,
                    "torn_sha256": torn.sha256,
                },
            )
        return start

    async def close(self, *, timeout_s: float = 5.0) -> bool:
        """Write `stop`, flush everything, and release the file; False if it could not be flushed."""
        if self._closed:
            return True
        stop = self.append("stop", {})
        done = await self.durable(stop.seq, timeout_s)
        self._closed = True
        if self._flusher is not None:
            self._flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._flusher
        self._thread.submit(self._close_fd)
        # A writer thread stuck in a write or fsync that never returns must not hang the stop.
        self._thread.shutdown(wait=done)
        return done

    # -- the AuditLog interface --------------------------------------------------------------

    @property
    def writable(self) -> bool:
        return not (self._failing or self._overdue or self._closed or self._displaced is not None)

    @property
    def saturated(self) -> bool:
        """True while more lines wait for the disk than the bound allows: shed new work."""
        return self._pending_bytes > MAX_PENDING_BYTES

    @property
    def next_seq(self) -> int:
        return self._tail.seq

    @property
    def segment(self) -> int:
        """The number of the segment being written."""
        return self._tail.segment

    def append(self, kind: str, fields: dict[str, Any]) -> Appended:
        tail = self._tail
        body: dict[str, Any] = {
            "v": VERSION,
            "kind": kind,
            "seq": tail.seq,
            "ts": utc_timestamp(self._clock()),
            "broker": self.broker_id,
            "kid": self._key.kid,
            **fields,
            "prev_hash": tail.prev_hash,
        }
        line, entry_hash, sig = seal(body, self._key)
        self._pending.append((tail.seq, line, entry_hash))
        self._pending_bytes += len(line)
        appended = Appended(tail.seq, entry_hash, sig)
        tail.seq += 1
        tail.prev_hash = entry_hash
        self._wake.set()
        return appended

    async def durable(self, seq: int, timeout_s: float) -> bool:
        if seq <= self._durable_seq:
            return True
        if self._displaced is not None:
            return False  # nothing is written any more: no point waiting
        loop = asyncio.get_running_loop()
        # The caller waits on a future of its own, settled True by the commit that covers `seq`
        # (`_release_waiters`) or False by its timer: no task per wait, no future shared between
        # callers, and the commit wakes the caller directly.
        mine: asyncio.Future[bool] = loop.create_future()
        waiting = self._waiters.setdefault(seq, [])
        waiting.append(mine)
        timer = loop.call_later(timeout_s, _settle, mine, False)
        try:
            durable = await mine
        finally:
            timer.cancel()
            if not mine.done() or mine.cancelled() or not mine.result():
                # Given up (timed out or cancelled): `seq` itself stays listed while it is not
                # durable, so the log is reported overdue until it is.
                with contextlib.suppress(ValueError):
                    waiting.remove(mine)
        if not durable:
            if not self._overdue:
                log.error("audit entry %d not durable within %.3f s: refusing calls", seq, timeout_s)
            self._overdue = True
        return durable

    # -- group commit --------------------------------------------------------------------------

    async def _flush_forever(self) -> None:
        loop = asyncio.get_running_loop()
        delay = RETRY_DELAY_S
        while True:
            if not self._pending:
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(IDLE_CHECK_S):  # no task per wait, unlike wait_for
                        await self._wake.wait()
                if not self._pending:
                    batch: list[tuple[int, bytes, str]] = []
                    work: Callable[[], float | None] = self._check_segment
                else:
                    continue
            else:
                batch, self._pending = self._pending, []
                data = b"".join(line for _, line, _ in batch)
                work = functools.partial(self._write_batch, data)
            try:
                result = await loop.run_in_executor(self._thread, work)
            except SegmentDisplaced as exc:
                self._pending = batch + self._pending
                self._displaced = self.last_error = str(exc)
                saved = await loop.run_in_executor(self._thread, self._save_orphan)
                self.last_error = f"{exc}; {saved}"
                event(
                    log,
                    logging.ERROR,
                    "audit_segment_displaced",
                    folder=str(self.folder),
                    error=self.last_error,
                )
                return  # this writer never writes again: a second file would fork the chain
            except OSError as exc:
                self._pending = batch + self._pending
                if not self._failing:
                    event(log, logging.ERROR, "audit_write_failing", folder=str(self.folder), error=str(exc))
                self._failing = True
                self.last_error = f"{type(exc).__name__}: {exc}"
                await asyncio.sleep(delay)
                delay = min(delay * 2, MAX_RETRY_DELAY_S)
                continue
            delay = RETRY_DELAY_S
            if self._failing:
                event(log, logging.WARNING, "audit_write_recovered", folder=str(self.folder))
            self._failing = False
            self.last_error = None
            if batch:
                self._pending_bytes -= sum(len(line) for _, line, _ in batch)
                self.batches += 1
                self.batch_sizes_total += len(batch)
                if self._on_batch is not None and result is not None:
                    self._on_batch(len(batch), result)
                self._durable_seq = batch[-1][0]
                if self.on_durable is not None:
                    self.on_durable([(seq, entry_hash) for seq, _, entry_hash in batch])
            self._release_waiters()

    def _release_waiters(self) -> None:
        durable = self._durable_seq
        for seq in [seq for seq in self._waiters if seq <= durable]:
            for waiter in self._waiters.pop(seq):
                _settle(waiter, True)
        if not self._waiters:
            self._overdue = False

    # -- runs on the writer thread ---------------------------------------------------------------

    def _segment_path(self) -> Path:
        return self.folder / segment_name(self._tail.segment)

    def _open_segment(self, new: bool) -> None:
        """Open the tail's segment; a `new` one (after rotation) must not exist yet."""
        path = self._segment_path()
        flags = os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | (os.O_EXCL if new else 0)
        try:
            fd = os.open(path, flags, 0o640)
        except FileExistsError:
            raise SegmentDisplaced(f"{path.name} appeared before this writer rotated into it") from None
        self._fd = fd
        fsync_folder(self.folder)

    def _write_batch(self, data: bytes) -> float:
        """Write at the tail's offset (a retry overwrites a partial write) and fsync once;
        returns the seconds it took."""
        started = time.perf_counter()
        tail = self._tail
        if self._fd < 0:
            self._open_segment(tail.offset == 0 and tail.segment > 1)
        elif tail.offset >= self._segment_bytes:
            # Rotation happens before a write, so a failed rotation never repeats a durable batch.
            self._close_fd()
            tail.segment += 1
            tail.offset = 0
            self._open_segment(True)
            event(log, logging.INFO, "audit_segment_rotated", segment=segment_name(tail.segment))
        self._check_segment()
        view = memoryview(data)
        written = 0
        while written < len(data):
            written += os.pwrite(self._fd, view[written:], tail.offset + written)
        self._sync(self._fd)
        tail.offset += len(data)
        return time.perf_counter() - started

    def _sync(self, fd: int) -> None:
        os.fsync(fd)

    def _check_segment(self) -> None:
        """SegmentDisplaced when the path no longer names the file held open (deleted, replaced,
        truncated); PermissionError when it is no longer writable. Cheap: two stats."""
        if self._fd < 0:
            return
        path = self._segment_path()
        try:
            on_disk = os.stat(path)
        except FileNotFoundError:
            raise SegmentDisplaced(f"{path.name} was deleted under the running broker") from None
        held = os.fstat(self._fd)
        if (on_disk.st_dev, on_disk.st_ino) != (held.st_dev, held.st_ino):
            raise SegmentDisplaced(f"{path.name} was replaced under the running broker")
        if held.st_size < self._tail.offset:
            raise SegmentDisplaced(f"{path.name} was truncated under the running broker")
        # Root ignores mode bits but not the immutable flag or a read-only mount; this catches all.
        if not os.access(path, os.W_OK):
            raise PermissionError(errno.EACCES, "segment no longer writable (permissions removed)", str(path))

    def _save_orphan(self) -> str:
        """Copy the held (displaced) segment's durable bytes beside it, as evidence and as a
        marker that stops the next start until an operator decides."""
        path = self._segment_path()
        orphan = path.with_name(f"{path.name}{ORPHAN_MARK}{os.fstat(self._fd).st_ino}")
        try:
            data = os.pread(self._fd, self._tail.offset, 0)
            descriptor = os.open(orphan, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o440)
            try:
                write_all(descriptor, data)
                os.fsync(descriptor)
            finally:
                os.close(descriptor)
            fsync_folder(self.folder)
        except OSError as exc:
            return f"its entries could not be saved beside it: {exc}"
        finally:
            self._close_fd()
        return f"its {len(data)} bytes were saved as {orphan.name}"

    def _close_fd(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def _find_tail(folder: Path) -> _Tail:
    """Where an existing log continues; sets a torn last line aside (copied beside the segment)."""
    orphans = sorted(folder.glob(f"*{SEGMENT_SUFFIX}{ORPHAN_MARK}*")) if folder.is_dir() else []
    if orphans:
        raise ConfigError(
            f"{orphans[0]}: a segment was deleted or replaced under a running broker and its entries "
            "were saved here; put it back in place or move it out of the folder after investigating, "
            "then start again (see docs/audit-faults.md)"
        )
    segments = sorted(folder.glob("*" + SEGMENT_SUFFIX)) if folder.is_dir() else []
    if not segments:
        return _Tail(0, ZERO_HASH, 1, 0, None)
    last_number = int(segments[-1].name.removesuffix(SEGMENT_SUFFIX))
    torn: TornTail | None = None
    for path in reversed(segments):
        data = path.read_bytes()
        whole = data.rfind(b"\n") + 1
        if whole < len(data):
            if path != segments[-1] or torn is not None:
                raise ConfigError(f"{path}: unterminated line inside the log; run `ztb audit verify`")
            rest = data[whole:]
            torn = TornTail(path.name, whole, len(rest), "sha256:" + hashlib.sha256(rest).hexdigest())
            aside = path.with_name(f"{path.name}.torn-{whole}")
            aside.write_bytes(rest)
            with path.open("r+b") as handle:
                handle.truncate(whole)
                os.fsync(handle.fileno())
        if whole == 0:
            continue
        last_line = data[data.rfind(b"\n", 0, whole - 1) + 1 : whole]
        try:
            entry = json.loads(last_line)
            seq, entry_hash = int(entry["seq"]), str(entry["hash"])
        except (ValueError, KeyError, TypeError):
            raise ConfigError(f"{path}: last entry is damaged; run `ztb audit verify`") from None
        # A later, empty segment (rotated but never written) is where the chain continues.
        offset = whole if path == segments[-1] else 0
        return _Tail(seq + 1, entry_hash, last_number, offset, torn)
    return _Tail(0, ZERO_HASH, last_number, 0, torn)
