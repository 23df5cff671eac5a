"""A real deployment under test: `ztb init` files, the recording sample upstream and the broker,
running on their own event loop in a background thread, on free loopback ports.

Tests talk to it over real TLS sockets with `ztb.client` (`stack.caller()`) or raw `ssl` sockets, read what
the upstream received (`upstream.received`) and read the audit log from disk.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import yaml

from ztb.audit.checkpoint import Checkpoint, parse_notes
from ztb.audit.note import Note
from ztb.sample.local import SAMPLE_UPSTREAM, LocalDeployment, LoopThread, free_port
from ztb.witness.config import init_witness, load_witness_config
from ztb.witness.server import WitnessServer

UPSTREAM = SAMPLE_UPSTREAM
__all__ = ["UPSTREAM", "AnchoredStack", "LoopThread", "Stack", "free_port"]


class Stack(LocalDeployment):
    # -- the audit log -----------------------------------------------------------------------

    def entries(self) -> list[dict[str, Any]]:
        lines: list[dict[str, Any]] = []
        for segment in sorted(self.log_dir.glob("*.jsonl")):
            data = segment.read_bytes()
            whole = data[: data.rfind(b"\n") + 1]  # a line still being written is not read yet
            lines.extend(json.loads(line) for line in whole.splitlines())
        return lines

    def wait_for(self, predicate: Any, timeout: float = 5.0) -> list[dict[str, Any]]:
        """Entries matching `predicate`, waiting (bounded) for the group commit that writes them."""
        deadline = time.monotonic() + timeout
        while True:
            found = [entry for entry in self.entries() if predicate(entry)]
            if found or time.monotonic() > deadline:
                return found
            time.sleep(0.01)

    def entry_of(self, call_id: str, kind: str = "call") -> dict[str, Any]:
        found = self.wait_for(lambda e: e.get("call_id") == call_id and e["kind"] == kind)
        assert len(found) == 1, f"expected one {kind} entry for {call_id}, found {len(found)}"
        return found[0]


class AnchoredStack(Stack):
    """A Stack whose broker anchors its log to a real witness (on the same loop, real mTLS) and to
    a file sink; the witness can be stopped and started under the broker."""

    def __init__(
        self,
        root: Path,
        *,
        every_entries: int = 1000,
        every_s: float = 0.2,
        max_lag_s: float = 60,
        witness_running: bool = True,
    ) -> None:
        super().__init__(root, start=False)
        self.witness_dir = root.parent / f"{root.name}-witness"
        self.witness_port = free_port()
        self.witness_vkey = init_witness(
            self.witness_dir,
            name="witness.test/w1",
            port=self.witness_port,
            client_ca=root / "ca" / "ca.pem",
            logs=(root / "keys" / "checkpoint.vkey",),
        ).vkey()
        self.offhost = root.parent / f"{root.name}-offhost" / "checkpoints.notes"
        config = yaml.safe_load((root / "broker.yaml").read_text())
        config["anchor"].update(
            every_entries=every_entries,
            every_s=every_s,
            max_lag_s=max_lag_s,
            sinks=[
                {
                    "witness": f"https://127.0.0.1:{self.witness_port}",
                    "ca": str(self.witness_dir / "tls" / "ca.pem"),
                    "vkey": str(self.witness_dir / "keys" / "witness.vkey"),
                    "timeout_s": 2,
                },
                {"file": str(self.offhost)},
            ],
        )
        (root / "broker.yaml").write_text(yaml.safe_dump(config))
        self.witness: WitnessServer | None = None
        if witness_running:
            self.start_witness()
        self.loop.run(self.upstream.start())
        self.start_broker()

    def start_witness(self) -> None:
        self.witness = WitnessServer(load_witness_config(self.witness_dir))
        self.loop.run(self.witness.start())

    def stop_witness(self) -> None:
        if self.witness is not None:
            self.loop.run(self.witness.stop())
            self.witness = None

    def close(self) -> None:
        self.stop_broker()
        self.stop_witness()
        self.loop.run(self.upstream.stop())
        self.loop.stop()

    @property
    def checkpoints_dir(self) -> Path:
        return self.log_dir / "checkpoints"

    def notes(self, name: str = "cosigned.notes") -> list[Note]:
        path = self.checkpoints_dir / name
        return parse_notes(path.read_bytes())[0] if path.exists() else []

    def sizes(self, name: str = "cosigned.notes") -> list[int]:
        return [Checkpoint.from_text(note.text).size for note in self.notes(name)]
