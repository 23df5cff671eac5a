"""ztb deployment commands: create, serve and reload a deployment. Parses arguments and calls the
library, nothing more."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from ztb.cli import UserError
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
    click.echo(
        "  approvers.yaml       two development approvers, both needed (M = 2); registry.sig: their approvals"
    )
    click.echo("  approvers/           the approvers' keys (private keys on disk: development only)")
    click.echo(f"Broker on https://127.0.0.1:{broker_port}, admin on http://127.0.0.1:{admin_port}.")
    click.echo(f"Next: ztb serve {directory}")


@click.command("serve")
@click.argument("directory", type=click.Path(path_type=Path, file_okay=False, exists=True))
def serve(directory: Path) -> None:
    """Run the broker of the deployment in DIRECTORY until SIGTERM or Ctrl-C.

    SIGHUP (or `ztb reload DIRECTORY`) reloads registry.yaml. SIGTERM drains: the broker stops
    accepting, lets calls in flight finish (drain_timeout_s), writes `stop` and exits 0.
    Operational events are JSON lines on stderr.

    With `workers: N` (N > 1) in broker.yaml, runs N broker processes on the one data port.
    """
    import asyncio

    from ztb.config import load_broker_config
    from ztb.runtime import serve_forever
    from ztb.workers import supervise

    if load_broker_config(directory).workers > 1:
        sys.exit(supervise(directory))
    if not asyncio.run(serve_forever(directory)):
        sys.exit(1)


@click.command("reload")
@click.argument("directory", type=click.Path(path_type=Path, file_okay=False, exists=True))
@click.option(
    "--timeout", type=click.FloatRange(0.1, 120), default=10, show_default=True, help="Seconds to wait."
)
def reload(directory: Path, timeout: float) -> None:
    """Reload registry.yaml in the broker serving DIRECTORY (SIGHUP) and report the outcome.

    A valid registry takes effect for new calls and is recorded in the audit log; an invalid
    one is refused whole and the broker keeps the registry it has (exit 1).
    """
    from ztb.control import BrokerNotRunning, request_reload

    try:
        outcome = request_reload(directory, timeout)
    except (BrokerNotRunning, TimeoutError) as exc:
        raise UserError(str(exc)) from None
    if outcome.get("applied"):
        click.echo(f"registry reloaded: sha256 {outcome['sha256']} in force for new calls")
        return
    raise UserError(f"registry refused, still serving sha256 {outcome['sha256']}: {outcome['error']}")


@click.command("demo")
def demo() -> None:
    """The whole story: a broker, a sample upstream, an allowed call, the attacks, the audit check."""
    from ztb.demo import run_demo

    if not run_demo(click.echo):
        sys.exit(1)


COMMANDS: list[click.Command] = [init, serve, reload, demo]
