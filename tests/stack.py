"""A real deployment under test: `ztb init` files, the recording sample upstream and the broker,
running on their own event loop in a background thread, on free loopback ports.

Tests talk to it over real TLS sockets with `ztb.client` (`stack.caller()`) or raw `ssl` sockets, read what
the upstream received (`upstream.received`) and read the audit log from disk.
"""

from __future__ import annotations

import json
import time
from typing import Any

from ztb.sample.local import SAMPLE_UPSTREAM, LocalDeployment, LoopThread, free_port

UPSTREAM = SAMPLE_UPSTREAM
__all__ = ["UPSTREAM", "LoopThread", "Stack", "free_port"]


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
