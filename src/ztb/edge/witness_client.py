"""The broker's side of C2SP tlog-witness: `POST <prefix>/add-checkpoint` over mTLS, and the
cosignatures that come back.

A `WitnessSink` sends the witness the size it last cosigned, the consistency proof from there,
and the signed checkpoint; it follows one `409 Conflict` that names the witness's real size
(text/x.tlog.size), and accepts an answer only when it holds a valid cosignature from the
witness key it was configured with. A witness that has seen a larger tree than this log holds
is reported, never argued with: the log has lost entries. The connection uses the broker's
egress certificate and trusts only the witness's configured CA. It knows nothing of gates.
"""

from __future__ import annotations

import base64
import ssl

import aiohttp

from ztb.audit.anchor import Prover, SinkError
from ztb.audit.checkpoint import Checkpoint
from ztb.audit.note import EM_DASH, Note, NoteError, NoteSignature, Verifier

__all__ = ["SIZE_CONTENT_TYPE", "WitnessSink", "add_checkpoint_body"]

SIZE_CONTENT_TYPE = "text/x.tlog.size"
MAX_ANSWER_BYTES = 64 * 1024


def add_checkpoint_body(old: int, proof: list[bytes], note: Note) -> bytes:
    lines = [f"old {old}\n", *(base64.b64encode(p).decode("ascii") + "\n" for p in proof), "\n"]
    return ("".join(lines) + note.encode()).encode("utf-8")


class WitnessSink:
    def __init__(self, url: str, ssl_context: ssl.SSLContext, verifier: Verifier, timeout_s: float) -> None:
        self.url = url.rstrip("/") + "/add-checkpoint"
        self.name = f"witness:{url}"
        self.verifier: Verifier | None = verifier
        self._witness = verifier
        self._ssl = ssl_context
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._session: aiohttp.ClientSession | None = None

    async def publish(
        self, note: Note, checkpoint: Checkpoint, acked: int, prove: Prover
    ) -> tuple[NoteSignature, ...]:
        old = acked
        for _ in range(2):
            if old > checkpoint.size:
                raise SinkError(
                    f"the witness has cosigned size {old}, larger than this log's {checkpoint.size}: "
                    "the log lost entries"
                )
            proof = [] if old in (0, checkpoint.size) else await prove(old, checkpoint.size)
            status, content_type, text = await self._post(add_checkpoint_body(old, proof, note))
            if status == 200:
                return self._cosignatures(note, text)
            if status == 409 and content_type == SIZE_CONTENT_TYPE and text.strip().isdigit():
                witness_size = int(text.strip())
                if witness_size != old:
                    old = witness_size
                    continue
            raise SinkError(
                f"the witness refused the checkpoint of size {checkpoint.size}: {status} {text[:200].strip()}"
            )
        raise SinkError("the witness's size kept changing")

    def _cosignatures(self, note: Note, text: str) -> tuple[NoteSignature, ...]:
        found: list[NoteSignature] = []
        for line in text.split("\n"):
            if not line.startswith(EM_DASH):
                continue
            try:
                signature = NoteSignature.parse(line)
            except NoteError:
                continue
            if self._witness.matches(signature):
                if not self._witness.verify(note.text, signature):
                    raise SinkError(f"the cosignature of {signature.name} does not verify")
                found.append(signature)
        if not found:
            raise SinkError(f"the witness answered without a cosignature of {self._witness.name}")
        return tuple(found)

    async def _post(self, body: bytes) -> tuple[int, str, str]:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(ssl=self._ssl, limit=4), timeout=self._timeout
            )
        try:
            async with self._session.post(
                self.url, data=body, headers={"Content-Type": "text/plain; charset=utf-8"}
            ) as response:
                data = await response.content.read(MAX_ANSWER_BYTES)
                return response.status, response.content_type, data.decode("utf-8", errors="replace")
        except (aiohttp.ClientError, TimeoutError, OSError, ssl.SSLError) as exc:
            raise SinkError(f"cannot reach the witness at {self.url}: {type(exc).__name__}: {exc}") from None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
