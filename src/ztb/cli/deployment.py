"""ztb deployment commands: create a deployment. Parses arguments and calls the library, nothing more."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from ztb.deploy import init_deployment

_PORT = click.IntRange(1, 65535)


@click.command("init")
@click.argument("directory", type=click.Path(path_type=Path, file_okay=False))
@click.option("--broker-port", type=_PORT, default=8443, show_default=True, help="Data-plane port.")
@click.option("--admin-port", type=_PORT, default=9090, show_default=True, help="Admin-plane port.")
@click.option("--upstream-port", type=_PORT, default=9443, show_default=True, help="Sample upstream port.")
def init(directory: Path, broker_port: int, admin_port: int, upstream_port: int) -> None:
    """Create a development deployment in DIRECTORY (new or empty): CA, certificates, keys, configs."""
    init_deployment(directory, broker_port=broker_port, admin_port=admin_port, upstream_port=upstream_port)
    click.echo(f"Created a development deployment in {directory}:")
    click.echo("  ca/                  development CA (its key is on disk: development only)")
    click.echo("  broker/              broker server and egress certificates")
    click.echo("  keys/                audit and checkpoint signing keys (Ed25519)")
    click.echo("  callers/             client certificates for svc.checkout and svc.reports")
    click.echo("  upstreams/           certificate of the sample upstream orders.api.internal")
    click.echo("  broker.yaml          listener, TLS, audit and limits")
    click.echo("  registry.yaml        identities, upstreams, routes, grants, schemas")
    click.echo(f"Broker on https://127.0.0.1:{broker_port}, admin on http://127.0.0.1:{admin_port}.")
    click.echo(f"Next: ztb serve {directory}")


@click.command("serve")
@click.argument("directory", type=click.Path(path_type=Path, file_okay=False, exists=True))
def serve(directory: Path) -> None:
    """Run the broker of the deployment in DIRECTORY until SIGTERM or Ctrl-C."""
    import asyncio

    from ztb.runtime import serve_forever

    asyncio.run(serve_forever(directory))


@click.command("demo")
def demo() -> None:
    """The whole story: a broker, a sample upstream, an allowed call, the attacks, the audit check."""
    from ztb.demo import run_demo

    if not run_demo(click.echo):
        sys.exit(1)


COMMANDS: list[click.Command] = [init, serve, demo]
