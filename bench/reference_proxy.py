"""The baseline: a bare aiohttp reverse proxy with the same TLS as ztb and none of the gates.

TLS 1.3 with a client certificate required on the way in (the deployment's broker certificate
and client CA), pooled keep-alive mTLS with the broker's egress certificate on the way out. It
forwards the method, path and body to the sample upstream and the response back. It exists only
to measure what the five gates cost: `python -m bench.reference_proxy DEPLOYMENT PORT`.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from aiohttp import ClientSession, TCPConnector, web

from ztb.config import load_broker_config, load_registry
from ztb.edge.tls import egress_context, server_context


async def serve(root: Path, port: int) -> None:
    config = load_broker_config(root)
    upstream = load_registry(root).upstreams["orders.api.internal"]
    inbound = server_context(
        config.path(config.tls.cert), config.path(config.tls.key), config.path(config.tls.client_ca), "1.3"
    )
    outbound = egress_context(
        config.path(config.egress.cert), config.path(config.egress.key), upstream.ca, "1.3"
    )
    session = ClientSession(connector=TCPConnector(ssl=outbound, limit=256), auto_decompress=False)
    base = f"https://{upstream.authority}"

    async def forward(request: web.Request) -> web.Response:
        body = await request.read()
        path = request.raw_path.split("/", 2)[2] if request.raw_path.count("/") >= 2 else ""
        headers = {"Content-Type": request.headers.get("Content-Type", "application/json")}
        async with session.request(
            request.method, f"{base}/{path}", data=body, headers=headers, allow_redirects=False
        ) as answer:
            payload = await answer.read()
            return web.Response(
                status=answer.status,
                body=payload,
                headers={"Content-Type": answer.headers.get("Content-Type", "")},
            )

    app = web.Application(client_max_size=64 * 1024)
    app.router.add_route("*", "/{tail:.*}", forward)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port, ssl_context=inbound).start()
    print(f"reference proxy on https://127.0.0.1:{port}", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await session.close()
        await runner.cleanup()


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: python -m bench.reference_proxy DEPLOYMENT PORT")
    asyncio.run(serve(Path(sys.argv[1]), int(sys.argv[2])))
