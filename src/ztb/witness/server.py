"""`ztb witness serve`: the witness's HTTPS listener (aiohttp over mTLS) and its lifecycle.

One route, `POST /add-checkpoint`. The body is bounded; the stored state is read, judged
(service.py) and replaced under one lock, so racing submissions cannot roll the state back;
the new state is durable before the cosignature is sent. Client certificates must chain to the
configured CA (the brokers'); what the witness trusts is the checkpoint's signature.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from pathlib import Path

from aiohttp import web

from ztb.audit.keys import SigningKey
from ztb.config.errors import ConfigError
from ztb.edge.tls import server_context
from ztb.witness.config import WitnessConfig, load_witness_config
from ztb.witness.service import Answer, BadRequest, Witness, parse_request
from ztb.witness.state import StateStore

__all__ = ["WitnessServer", "serve_forever"]

MAX_BODY = 128 * 1024


class WitnessServer:
    def __init__(self, config: WitnessConfig) -> None:
        self.config = config
        key = SigningKey.load(config.path(config.key))
        self.witness = Witness(config.name, key, config.log_keys(), time.time)
        self.store = StateStore(config.path(config.state))
        try:
            self._ssl = server_context(
                config.path(config.tls.cert),
                config.path(config.tls.key),
                config.path(config.tls.client_ca),
                "1.3",
            )
        except (OSError, ValueError) as exc:
            raise ConfigError(
                f"{config.root / 'witness.yaml'}: tls: cannot load certificates: {exc}"
            ) from None
        self._lock = asyncio.Lock()
        self._runner: web.AppRunner | None = None
        self.port = 0

    async def start(self, port: int | None = None) -> int:
        self.store.open()
        app = web.Application(client_max_size=MAX_BODY)
        app.router.add_post("/add-checkpoint", self._add_checkpoint)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(
            self._runner,
            self.config.listen.host,
            self.config.listen.port if port is None else port,
            ssl_context=self._ssl,
        )
        await site.start()
        server = site._server
        sockets = getattr(server, "sockets", None) or []
        self.port = int(sockets[0].getsockname()[1]) if sockets else self.config.listen.port
        return self.port

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        self.store.close()

    async def _add_checkpoint(self, request: web.Request) -> web.Response:
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return _respond(Answer(413, "request body too large\n"))
        try:
            parsed = parse_request(body)
        except BadRequest as exc:
            return _respond(Answer(400, f"{exc}\n"))
        async with self._lock:  # compare and swap: nothing else reads or writes meanwhile
            try:
                stored = self.store.read(parsed.checkpoint.origin)
            except ConfigError as exc:
                return _respond(Answer(500, f"{exc}\n"))
            answer = self.witness.judge(parsed, stored)
            if answer.update is not None:
                try:
                    await asyncio.to_thread(self.store.write, answer.update)
                except OSError as exc:
                    return _respond(Answer(503, f"cannot store the new state: {exc.strerror or exc}\n"))
        return _respond(answer)


def _respond(answer: Answer) -> web.Response:
    response = web.Response(status=answer.status, body=answer.body.encode("utf-8"))
    response.headers["Content-Type"] = answer.content_type
    return response


async def serve_forever(folder: Path) -> None:
    server = WitnessServer(load_witness_config(folder))
    port = await server.start()
    logs = ", ".join(sorted(server.witness.logs)) or "none"
    print(
        f"ztb: witness {server.config.name} serving https://{server.config.listen.host}:{port}/add-checkpoint "
        f"(logs: {logs})",
        flush=True,
    )
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    try:
        await stopping.wait()
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(Exception):
                loop.remove_signal_handler(signum)
        await server.stop()
    print("ztb: witness stopped", flush=True)
