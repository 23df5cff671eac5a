"""Segment rotation: the writer starts a new segment once a group commit passes `segment_bytes`,
the chain continues across segments, a reopened log continues in the right segment, and the
verifier walks them in order. The last test runs a whole broker with a small `segment_bytes`."""

from __future__ import annotations

import asyncio
import itertools
import json
from pathlib import Path

import pytest

from served import ztb
from stack import UPSTREAM, Stack
from ztb.audit.keys import SigningKey
from ztb.audit.reader import find_logs
from ztb.audit.verify import verify_logs
from ztb.audit.writer import AuditWriter
from ztb.config import ConfigError, load_broker_config
from ztb.deploy import init_deployment, sample_order

KEY = SigningKey.generate()
KEYS = {KEY.kid: KEY.public_raw}


async def _session(folder: Path, entries: int, segment_bytes: int) -> None:
    writer = AuditWriter(folder, "broker-a", KEY, segment_bytes=segment_bytes)
    await writer.open(version="test", registry_sha256="0" * 64)
    for i in range(entries):
        appended = writer.append("call", {"call_id": f"c{i}", "note": "x" * 200})
        assert await writer.durable(appended.seq, 5)  # one entry per group commit
    assert await writer.close()


def _lines(folder: Path) -> list[tuple[str, dict[str, object]]]:
    return [
        (segment.name, json.loads(line))
        for segment in sorted(folder.glob("*.jsonl"))
        for line in segment.read_bytes().splitlines()
    ]


def test_the_chain_continues_across_segments_and_sessions(tmp_path: Path) -> None:
    folder = tmp_path / "broker-a"
    asyncio.run(_session(folder, 20, 1500))
    first = _lines(folder)
    segments = sorted(p.name for p in folder.glob("*.jsonl"))
    assert len(segments) >= 4
    for path in sorted(folder.glob("*.jsonl"))[:-1]:
        assert path.stat().st_size >= 1500  # a segment is closed only once past the size
    # Rotated after the last write: the newest segment may be empty; the chain continues there.
    asyncio.run(_session(folder, 10, 1500))
    lines = _lines(folder)
    assert [entry["seq"] for _, entry in lines] == list(range(len(lines)))
    for (_, before), (_, after) in itertools.pairwise(lines):
        assert after["prev_hash"] == before["hash"]
    restart = lines[len(first)]
    assert restart[1]["kind"] == "start"
    assert restart[0] >= first[-1][0]  # never back into an older segment
    report = verify_logs(find_logs(folder), KEYS)
    assert report.ok and report.logs[0].sealed
    assert len(report.logs[0].segments) == len(list(folder.glob("*.jsonl")))


def test_verify_walks_segments_in_order(tmp_path: Path) -> None:
    folder = tmp_path / "broker-a"
    asyncio.run(_session(folder, 12, 1500))
    segments = sorted(folder.glob("*.jsonl"))
    second, third = segments[1].read_bytes(), segments[2].read_bytes()
    segments[1].write_bytes(third)
    segments[2].write_bytes(second)
    report = verify_logs(find_logs(folder), KEYS)
    assert not report.ok
    assert report.logs[0].first_break is not None
    assert report.logs[0].first_break.segment == segments[1]


@pytest.mark.parametrize(
    ("setting", "ok"), [(16383, False), (16384, True), (2**30, True), (2**30 + 1, False)]
)
def test_segment_bytes_is_bounded(tmp_path: Path, setting: int, ok: bool) -> None:
    init_deployment(tmp_path / "dep", broker_port=0, admin_port=0)
    path = tmp_path / "dep" / "broker.yaml"
    path.write_text(path.read_text().replace("segment_bytes: 67108864", f"segment_bytes: {setting}"))
    if ok:
        assert load_broker_config(tmp_path / "dep").audit.segment_bytes == setting
    else:
        with pytest.raises(ConfigError, match=r"broker.yaml: audit.segment_bytes: Input should be"):
            load_broker_config(tmp_path / "dep")


def test_a_broker_rotates_across_several_segments_and_restarts_on_them(tmp_path: Path) -> None:
    stack = Stack(tmp_path / "dep", start=False)
    try:
        path = stack.root / "broker.yaml"
        path.write_text(path.read_text().replace("segment_bytes: 67108864", "segment_bytes: 16384"))
        stack.loop.run(stack.upstream.start())
        for _ in range(2):  # a second broker process life continues the rotated log
            stack.start_broker()
            with stack.caller() as client:
                for _ in range(25):
                    assert (
                        client.post(
                            UPSTREAM, "/v1/orders/create", scope="orders:create", json=sample_order()
                        ).status
                        == 201
                    )
            stack.stop_broker()
        assert len(list(stack.log_dir.glob("*.jsonl"))) >= 4
        done = ztb("audit", "verify", str(stack.root), "--json")
        assert done.returncode == 0, done.stdout
        log = json.loads(done.stdout)["logs"][0]
        assert log["ok"] and log["sealed"] and log["unknown_outcome"] == []
        assert log["kinds"]["start"] == 2 and log["kinds"]["call"] == 50
    finally:
        stack.close()
