"""The admin plane: a separate plain-HTTP listener, loopback by default, with no data-plane route.

GET /healthz (the process runs), GET /readyz (the audit log is writable and the token store
answers), GET /metrics (Prometheus text). Nothing here can reach an upstream or a token.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

Readiness = Callable[[], Awaitable[dict[str, bool]]]


class AdminPlane:
    def __init__(self, readiness: Readiness, render_metrics: Callable[[], bytes]) -> None:
        self._readiness = readiness
        self._render = render_metrics
        self._runner: web.AppRunner | None = None
        self.port = 0

    async def start(self, host: str, port: int) -> int:
        app = web.Application()
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_get("/metrics", self._metrics)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        server = site._server
        assert server is not None
        sockets = getattr(server, "sockets", None) or []
        self.port = int(sockets[0].getsockname()[1]) if sockets else port
        return self.port

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def _readyz(self, request: web.Request) -> web.Response:
        checks = await self._readiness()
        ready = all(checks.values())
        return web.json_response({"ready": ready, "checks": checks}, status=200 if ready else 503)

    async def _metrics(self, request: web.Request) -> web.Response:
        response = web.Response(body=self._render())
        response.headers["Content-Type"] = CONTENT_TYPE_LATEST
        return response
