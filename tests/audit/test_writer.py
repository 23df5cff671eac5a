"""The audit writer on a real folder: the chain from seq 0, group commit, stop/start across
reopens, and a torn last line set aside with a `recover` entry. No mocks: real files, real fsync,
real Ed25519 keys; the result is checked by recomputing every seal and link and by the verifier.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from faults import StallingWriter

from ztb.audit.entry import ZERO_HASH, check_seal
from ztb.audit.jcs import canonicalize
from ztb.audit.keys import SigningKey
from ztb.audit.reader import find_logs
from ztb.audit.verify import verify_logs
from ztb.audit.writer import AuditWriter

BROKER = "broker-t"
VERSION = "9.9.9"
REGISTRY = "ab" * 32
SEGMENT = "000001.jsonl"


def read(folder: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (folder / SEGMENT).read_bytes().splitlines()]


def check_chain(folder: Path, key: SigningKey) -> list[dict[str, Any]]:
    """Every line canonical, sealed under `key`, seq from 0 by one, prev_hash linked."""
    raw = (folder / SEGMENT).read_bytes()
    assert raw.endswith(b"\n")
    entries = []
    previous = ZERO_HASH
    for seq, line in enumerate(raw.splitlines()):
        entry = json.loads(line)
        assert canonicalize(entry) == line
        assert check_seal(entry, key.public_raw) is None
        assert entry["seq"] == seq
        assert entry["prev_hash"] == previous
        assert entry["v"] == "ztb-1"
        assert entry["broker"] == BROKER
        assert entry["kid"] == key.kid
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", entry["ts"])
        previous = entry["hash"]
        entries.append(entry)
    return entries


def verifier_accepts(folder: Path, key: SigningKey) -> None:
    report = verify_logs(find_logs(folder), {key.kid: key.public_raw})
    assert report.ok, report.to_text()
    cli = subprocess.run(
        [sys.executable, "-m", "ztb", "audit", "verify", str(folder), "--pubkey", key.public_hex],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert cli.returncode == 0, cli.stdout + cli.stderr


async def open_writer(folder: Path, key: SigningKey) -> AuditWriter:
    writer = AuditWriter(folder, BROKER, key)
    await writer.open(version=VERSION, registry_sha256=REGISTRY)
    return writer


def test_start_entry_opens_the_chain(tmp_path: Path) -> None:
    key = SigningKey.generate()
    folder = tmp_path / BROKER

    async def scenario() -> None:
        writer = await open_writer(folder, key)
        start = writer.append("call", {"call_id": "c0"})
        assert start.seq == 1
        assert await writer.durable(start.seq, 5.0)
        assert writer.writable
        assert await writer.close()
        assert not writer.writable

    asyncio.run(scenario())
    entries = check_chain(folder, key)
    assert [e["kind"] for e in entries] == ["start", "call", "stop"]
    start = entries[0]
    assert start["seq"] == 0
    assert start["prev_hash"] == "sha256:" + "0" * 64
    assert start["version"] == VERSION
    assert start["registry_sha256"] == REGISTRY
    assert start["keys"] == {key.kid: key.public_hex}
    assert key.kid == hashlib.sha256(key.public_raw).hexdigest()[:16]
    verifier_accepts(folder, key)


def test_concurrent_appends_share_fsyncs(tmp_path: Path) -> None:
    key = SigningKey.generate()
    folder = tmp_path / BROKER
    count = 200

    async def scenario() -> tuple[list[int], int]:
        writer = await open_writer(folder, key)
        assert await writer.durable(0, 5.0)
        batches_before = writer.batches

        async def one(number: int) -> int:
            appended = writer.append("call", {"call_id": f"c{number:03d}", "n": number})
            assert await writer.durable(appended.seq, 5.0)
            return appended.seq

        seqs = await asyncio.gather(*(one(n) for n in range(count)))
        batches = writer.batches - batches_before
        assert await writer.close()
        return list(seqs), batches

    seqs, batches = asyncio.run(scenario())
    assert sorted(seqs) == list(range(1, count + 1))
    assert 1 <= batches < count  # group commit: many entries per fsync
    entries = check_chain(folder, key)
    assert len(entries) == count + 2
    assert [e["kind"] for e in entries] == ["start"] + ["call"] * count + ["stop"]
    assert [e["call_id"] for e in entries[1:-1]] == [f"c{n:03d}" for n in range(count)]
    verifier_accepts(folder, key)


def test_reopen_continues_the_chain(tmp_path: Path) -> None:
    key = SigningKey.generate()
    folder = tmp_path / BROKER

    async def session(calls: int) -> None:
        writer = await open_writer(folder, key)
        for n in range(calls):
            writer.append("call", {"call_id": f"c{n}"})
        assert await writer.close()

    asyncio.run(session(3))
    first = check_chain(folder, key)
    assert [e["kind"] for e in first] == ["start", "call", "call", "call", "stop"]
    asyncio.run(session(2))
    entries = check_chain(folder, key)
    assert entries[: len(first)] == first  # nothing before the reopen changed
    assert [e["kind"] for e in entries] == [
        "start",
        "call",
        "call",
        "call",
        "stop",
        "start",
        "call",
        "call",
        "stop",
    ]
    second_start = entries[5]
    assert second_start["seq"] == 5
    assert second_start["prev_hash"] == first[-1]["hash"]
    verifier_accepts(folder, key)


def test_torn_last_line_is_set_aside(tmp_path: Path) -> None:
    key = SigningKey.generate()
    folder = tmp_path / BROKER

    async def session() -> None:
        writer = await open_writer(folder, key)
        writer.append("call", {"call_id": "before"})
        assert await writer.close()

    asyncio.run(session())
    segment = folder / SEGMENT
    whole = segment.read_bytes()
    garbage = b'{"v":"ztb-1","kind":"call","seq":3,"ts":"2026-05-04T11:42:08.3'
    with segment.open("ab") as handle:
        handle.write(garbage)
    torn_offset = len(whole)

    async def reopen() -> None:
        writer = await open_writer(folder, key)
        writer.append("call", {"call_id": "after"})
        assert await writer.close()

    asyncio.run(reopen())
    data = segment.read_bytes()
    assert garbage not in data
    assert data.startswith(whole)
    aside = folder / f"{SEGMENT}.torn-{torn_offset}"
    assert aside.read_bytes() == garbage
    entries = check_chain(folder, key)
    assert [e["kind"] for e in entries] == ["start", "call", "stop", "start", "recover", "call", "stop"]
    start, recover = entries[3], entries[4]
    assert start["seq"] == 3
    assert start["prev_hash"] == entries[2]["hash"]
    assert recover["torn_sha256"] == "sha256:" + hashlib.sha256(garbage).hexdigest()
    assert recover["torn_bytes"] == len(garbage)
    assert recover["offset"] == torn_offset
    assert recover["segment"] == SEGMENT
    verifier_accepts(folder, key)


def test_durable_is_immediate_for_entries_already_on_disk(tmp_path: Path) -> None:
    key = SigningKey.generate()

    async def scenario() -> None:
        writer = await open_writer(tmp_path / BROKER, key)
        appended = writer.append("call", {"call_id": "x"})
        assert await writer.durable(appended.seq, 5.0)
        assert await writer.durable(appended.seq, 0.0)  # already durable: no wait at all
        assert await writer.durable(0, 0.0)
        assert await writer.close()

    asyncio.run(scenario())


@pytest.mark.parametrize("kind", ["call", "result", "token", "identity"])
def test_fields_are_kept_and_common_fields_set(tmp_path: Path, kind: str) -> None:
    key = SigningKey.generate()
    fields = {"call_id": "01HX9GZ6P7B2WMK0RTV3F8N4QE", "decision": "DENY", "nested": {"a": [1, None, "x"]}}

    async def scenario() -> None:
        writer = await open_writer(tmp_path / BROKER, key)
        writer.append(kind, fields)
        assert await writer.close()

    asyncio.run(scenario())
    entry = check_chain(tmp_path / BROKER, key)[1]
    assert entry["kind"] == kind
    assert {name: entry[name] for name in fields} == fields
    assert set(entry) == {"v", "kind", "seq", "ts", "broker", "kid", "prev_hash", "hash", "sig", *fields}


def test_durability_waits_time_out_alone_and_are_released_together(tmp_path: Path) -> None:
    """Several callers wait on one entry: one gives up on its own timer (and the log is then
    overdue, not writable), one is cancelled, and the rest all hear of the commit that finally
    covers the entry, after which the log is writable again."""

    async def scenario() -> None:
        writer = StallingWriter(tmp_path / "log", BROKER, SigningKey.generate())
        await writer.open(version=VERSION, registry_sha256=REGISTRY)
        assert await writer.durable(writer.next_seq - 1, 5.0)
        writer.stall()
        held = writer.append("call", {"call_id": "held"}).seq
        patient = [asyncio.create_task(writer.durable(held, 10.0)) for _ in range(3)]
        cancelled = asyncio.create_task(writer.durable(held, 10.0))
        assert await writer.durable(held, 0.05) is False  # its own timer, the others still wait
        assert not writer.writable
        cancelled.cancel()
        await asyncio.sleep(0.05)
        assert not any(task.done() for task in patient)
        writer.release()
        assert await asyncio.wait_for(asyncio.gather(*patient), 10.0) == [True, True, True]
        assert cancelled.cancelled()
        assert writer.writable  # the overdue entry is durable: calls may go ahead again
        assert await writer.close()

    asyncio.run(scenario())
