"""The audit writer: one broker instance's append-only, hash-chained, signed log on disk.

It owns the chain (seq, prev_hash), the segment files and durability. `append` seals an entry
at once (so its place in the chain is fixed the moment a decision is made) and queues its
line; a single flusher writes queued lines in batches and fsyncs each batch once (group
commit) on a dedicated thread, so the event loop never blocks on the disk. `durable(seq,
timeout)` waits, bounded, for the batch holding an entry; `on_durable` hands each durable batch's
(seq, hash) pairs, in order, to whoever builds the Merkle tree (the anchor).

Failure rules (SPEC §4): a failed write keeps its lines queued, in order, and retries them at
the same file offset, so nothing is lost, duplicated or forked; while writes fail or an entry
is overdue, `writable` is False and callers refuse calls fast instead of hanging. On open, a
torn last line is set aside, the chain continues from the last whole entry, and `start` is
followed by a `recover` entry. It never knows about HTTP.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
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
from ztb.gates.base import Appended

SEGMENT_SUFFIX = ".jsonl"
DEFAULT_SEGMENT_BYTES = 64 * 1024 * 1024
RETRY_DELAY_S = 0.05
MAX_RETRY_DELAY_S = 1.0


def utc_timestamp(now: float) -> str:
    """RFC 3339 UTC with milliseconds, as in SPEC §4: 2026-05-04T11:42:08.317Z."""
    seconds = int(now)
    millis = int((now - seconds) * 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{millis:03d}Z"


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


class AuditWriter:
    def __init__(
        self,
        folder: Path,
        broker_id: str,
        key: SigningKey,
        *,
        segment_bytes: int = DEFAULT_SEGMENT_BYTES,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.folder = folder
        self.broker_id = broker_id
        self._key = key
        self._segment_bytes = segment_bytes
        self._clock = clock
        self._tail = _find_tail(folder)
        self._fd = -1
        self._pending: list[tuple[int, bytes, str]] = []  # seq, line, hash
        self._durable_seq = self._tail.seq - 1
        self._waiters: dict[int, asyncio.Future[None]] = {}
        self._failing = False
        self._overdue = False
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
        self.folder.mkdir(parents=True, exist_ok=True)
        await asyncio.get_running_loop().run_in_executor(self._thread, self._open_segment)
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
        self._thread.shutdown(wait=done)
        return done

    # -- the AuditLog interface --------------------------------------------------------------

    @property
    def writable(self) -> bool:
        return not (self._failing or self._overdue or self._closed)

    @property
    def next_seq(self) -> int:
        return self._tail.seq

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
        appended = Appended(tail.seq, entry_hash, sig)
        tail.seq += 1
        tail.prev_hash = entry_hash
        self._wake.set()
        return appended

    async def durable(self, seq: int, timeout_s: float) -> bool:
        if seq <= self._durable_seq:
            return True
        waiter = self._waiters.get(seq)
        if waiter is None:
            waiter = asyncio.get_running_loop().create_future()
            self._waiters[seq] = waiter
        try:
            await asyncio.wait_for(asyncio.shield(waiter), timeout_s)
        except TimeoutError:
            self._overdue = True
            return False
        return True

    # -- group commit --------------------------------------------------------------------------

    async def _flush_forever(self) -> None:
        loop = asyncio.get_running_loop()
        delay = RETRY_DELAY_S
        while True:
            if not self._pending:
                self._wake.clear()
                await self._wake.wait()
            batch = self._pending
            self._pending = []
            data = b"".join(line for _, line, _ in batch)
            try:
                await loop.run_in_executor(self._thread, self._write_batch, data)
            except OSError as exc:
                self._pending = batch + self._pending
                self._failing = True
                self.last_error = f"{type(exc).__name__}: {exc}"
                await asyncio.sleep(delay)
                delay = min(delay * 2, MAX_RETRY_DELAY_S)
                continue
            delay = RETRY_DELAY_S
            self._failing = False
            self.last_error = None
            self.batches += 1
            self.batch_sizes_total += len(batch)
            self._durable_seq = batch[-1][0]
            if self.on_durable is not None:
                self.on_durable([(seq, entry_hash) for seq, _, entry_hash in batch])
            self._release_waiters()

    def _release_waiters(self) -> None:
        durable = self._durable_seq
        for seq in [seq for seq in self._waiters if seq <= durable]:
            waiter = self._waiters.pop(seq)
            if not waiter.done():
                waiter.set_result(None)
        if not self._waiters:
            self._overdue = False

    # -- runs on the writer thread ---------------------------------------------------------------

    def _open_segment(self) -> None:
        path = self.folder / segment_name(self._tail.segment)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o640)
        self._fd = fd
        _fsync_dir(self.folder)

    def _write_batch(self, data: bytes) -> None:
        """Write at the tail's offset (a retry overwrites a partial write) and fsync once."""
        if self._fd < 0:
            self._open_segment()
        tail = self._tail
        view = memoryview(data)
        written = 0
        while written < len(data):
            written += os.pwrite(self._fd, view[written:], tail.offset + written)
        os.fsync(self._fd)
        tail.offset += len(data)
        if tail.offset >= self._segment_bytes:
            self._close_fd()
            tail.segment += 1
            tail.offset = 0
            self._open_segment()

    def _close_fd(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _find_tail(folder: Path) -> _Tail:
    """Where an existing log continues; sets a torn last line aside (copied beside the segment)."""
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
