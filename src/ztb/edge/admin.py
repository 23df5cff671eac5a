"""The admin plane: a separate plain-HTTP listener, loopback by default, with no data-plane route.

GET /healthz (the process runs), GET /readyz (the audit log is writable, a registry is in
force, the token store answers and the broker is not draining), GET /metrics (Prometheus
text), GET /registry (the registry in force and the outcome of the last reload, which
`ztb reload` reads). Everything here is read-only: nothing can reach an upstream, mint or see
a token, or change the broker's state.
"""

from __future__ import annotations

from typing import Any, Protocol

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST


class AdminViews(Protocol):
    async def readiness(self) -> dict[str, bool]: ...

    def render_metrics(self) -> bytes: ...

    def registry_status(self) -> dict[str, Any]: ...


class AdminPlane:
    def __init__(self) -> None:
        self._runner: web.AppRunner | None = None
        self.port = 0

    async def start(self, host: str, port: int, views: AdminViews) -> int:
        app = web.Application()

        async def healthz(request: web.Request) -> web.Response:
            return web.json_response({"status": "ok"})

        async def readyz(request: web.Request) -> web.Response:
            checks = await views.readiness()
            ready = all(checks.values())
            return web.json_response({"ready": ready, "checks": checks}, status=200 if ready else 503)

        async def metrics(request: web.Request) -> web.Response:
            response = web.Response(body=views.render_metrics())
            response.headers["Content-Type"] = CONTENT_TYPE_LATEST
            return response

        async def registry(request: web.Request) -> web.Response:
            return web.json_response(views.registry_status())

        app.router.add_get("/healthz", healthz)
        app.router.add_get("/readyz", readyz)
        app.router.add_get("/metrics", metrics)
        app.router.add_get("/registry", registry)
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
            self._runner = None
