"""ztb witness commands: create a witness folder and run the witness. Parses arguments and calls
ztb.witness, nothing more."""

from __future__ import annotations

from pathlib import Path

import click

from ztb.witness.config import init_witness

_PORT = click.IntRange(0, 65535)


@click.group("witness")
def witness() -> None:
    """A C2SP tlog-witness that cosigns a broker's checkpoints (run it on another host)."""


@witness.command("init")
@click.argument("directory", type=click.Path(path_type=Path, file_okay=False))
@click.option("--name", default="witness.ztb.invalid/w1", show_default=True, help="The witness's key name.")
@click.option("--port", type=_PORT, default=9700, show_default=True, help="Listening port.")
@click.option(
    "--client-ca",
    type=click.Path(path_type=Path, dir_okay=False, exists=True),
    required=True,
    help="CA of the brokers' client (egress) certificates, e.g. DEPLOYMENT/ca/ca.pem.",
)
@click.option(
    "--log",
    "logs",
    multiple=True,
    type=click.Path(path_type=Path, dir_okay=False, exists=True),
    help="A log's checkpoint verifier key, e.g. DEPLOYMENT/keys/checkpoint.vkey. Repeatable.",
)
def init(directory: Path, name: str, port: int, client_ca: Path, logs: tuple[Path, ...]) -> None:
    """Create a witness folder in DIRECTORY (new or empty): its key, certificates and witness.yaml."""
    verifier = init_witness(directory, name=name, port=port, client_ca=client_ca, logs=logs)
    click.echo(f"Created a witness in {directory}: {verifier.name}, port {port}, {len(logs)} log(s).")
    click.echo(f"  keys/witness.vkey     its cosignature key: {verifier.vkey()}")
    click.echo("  tls/ca.pem            the CA brokers use to trust this witness")
    click.echo("To anchor a broker here, add to its broker.yaml (anchor.sinks):")
    click.echo(
        f"  - {{witness: https://127.0.0.1:{port}, ca: {directory.absolute()}/tls/ca.pem, "
        f"vkey: {directory.absolute()}/keys/witness.vkey}}"
    )
    click.echo(f"Next: ztb witness serve {directory}")


@witness.command("serve")
@click.argument("directory", type=click.Path(path_type=Path, file_okay=False, exists=True))
def serve(directory: Path) -> None:
    """Run the witness of DIRECTORY until SIGTERM or Ctrl-C."""
    import asyncio

    from ztb.witness.server import serve_forever

    asyncio.run(serve_forever(directory))


COMMANDS: list[click.Command] = [witness]
