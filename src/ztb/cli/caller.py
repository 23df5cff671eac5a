"""ztb token / ztb call: a caller's tools. Parse arguments, call ztb.client, print the answer."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

import click

from ztb.cli import UserError
from ztb.client import BrokerError, BrokerUnavailable, Caller, CertificateRefused, Response
from ztb.config import load_broker_config, load_registry
from ztb.gates.target import lookup

F = TypeVar("F", bound=Callable[..., Any])


def _identity_options(command: F) -> F:
    options = [
        click.option(
            "--deployment",
            "-d",
            type=click.Path(path_type=Path, file_okay=False, exists=True),
            help="A deployment folder: broker URL from its broker.yaml, certificates from callers/IDENTITY.",
        ),
        click.option("--as", "identity", metavar="IDENTITY", help="With --deployment: the caller identity."),
        click.option("--broker", metavar="URL", help="Broker URL, e.g. https://127.0.0.1:8443."),
        click.option(
            "--cert",
            type=click.Path(path_type=Path, dir_okay=False, exists=True),
            help="Client certificate (PEM).",
        ),
        click.option(
            "--key", type=click.Path(path_type=Path, dir_okay=False, exists=True), help="Client key (PEM)."
        ),
        click.option(
            "--ca",
            type=click.Path(path_type=Path, dir_okay=False, exists=True),
            help="CA of the broker's certificate.",
        ),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def _caller(
    deployment: Path | None,
    identity: str | None,
    broker: str | None,
    cert: Path | None,
    key: Path | None,
    ca: Path | None,
) -> Caller:
    if deployment is not None:
        config = load_broker_config(deployment)
        broker = broker or f"https://{config.listen.host}:{config.listen.port}"
        if identity is not None:
            folder = deployment / "callers" / identity
            if not folder.is_dir():
                raise UserError(f"no certificate for identity {identity!r} in {deployment / 'callers'}")
            cert, key = cert or folder / "cert.pem", key or folder / "key.pem"
        ca = ca or deployment / "ca" / "ca.pem"
    if broker is None or cert is None or key is None or ca is None:
        raise click.UsageError("give --deployment DIR --as IDENTITY, or --broker, --cert, --key and --ca")
    try:
        return Caller(broker, cert, key, ca)
    except (ValueError, OSError) as exc:
        raise UserError(f"cannot use the caller's certificate: {exc}") from None


@contextlib.contextmanager
def _one_line_errors(caller: Caller) -> Iterator[None]:
    """What can go wrong talking to the broker, as one line each; the caller closed after."""
    try:
        yield
    except (CertificateRefused, BrokerUnavailable) as exc:  # each says what happened, in full
        raise UserError(str(exc)) from None
    except BrokerError as exc:  # only a mint raises one: a call's refusal is printed as its answer
        raise UserError(f"token refused: {exc}") from None
    except OSError as exc:
        raise UserError(f"cannot reach the broker at {caller.host}:{caller.port}: {exc}") from None
    finally:
        caller.close()


def _print_response(response: Response) -> None:
    click.echo(f"HTTP {response.status}")
    for name in ("ztb-call-id", "ztb-next-token", "ztb-receipt"):
        if name in response.headers:
            click.echo(f"{name}: {response.headers[name]}")
    click.echo(response.body.decode("utf-8", "replace"))


@click.command("token")
@_identity_options
@click.argument("upstream")
@click.argument("scope")
def token(
    deployment: Path | None,
    identity: str | None,
    broker: str | None,
    cert: Path | None,
    key: Path | None,
    ca: Path | None,
    upstream: str,
    scope: str,
) -> None:
    """Mint a single-use token for SCOPE on UPSTREAM, as the certificate's identity."""
    caller = _caller(deployment, identity, broker, cert, key, ca)
    with _one_line_errors(caller):
        click.echo(caller.mint(upstream, scope))


@click.command("call")
@_identity_options
@click.argument("method")
@click.argument("target")
@click.option("--scope", help="Scope to mint a token for (with --deployment it is found from the registry).")
@click.option("--token", "given_token", help="Use this token instead of minting one.")
@click.option(
    "--body", type=click.File("rb"), help="Request body file ('-' for stdin); sent as application/json."
)
@click.option(
    "--header", "-H", "headers", multiple=True, metavar="'NAME: VALUE'", help="Extra request header."
)
def call(
    deployment: Path | None,
    identity: str | None,
    broker: str | None,
    cert: Path | None,
    key: Path | None,
    ca: Path | None,
    method: str,
    target: str,
    scope: str | None,
    given_token: str | None,
    body: BinaryIO | None,
    headers: tuple[str, ...],
) -> None:
    """Make one brokered call: METHOD UPSTREAM/PATH, e.g. POST orders.api.internal/v1/orders/create.

    Mints a token for the route's scope first (unless --token is given). Exit 0 on a 2xx answer.
    """
    method = method.upper()
    target = target if target.startswith("/") else "/" + target
    upstream = target[1:].split("/", 1)[0]
    extra: dict[str, str] = {}
    for header in headers:
        name, sep, value = header.partition(":")
        if not sep or not name.strip():
            raise click.UsageError(f"header {header!r} is not 'Name: value'")
        extra[name.strip()] = value.strip()
    data = body.read() if body is not None else None
    if data is not None:
        extra.setdefault("Content-Type", "application/json")
    if given_token is None and scope is None:
        if deployment is None:
            raise click.UsageError("give --scope (or --deployment, to find the route's scope)")
        found = lookup(load_registry(deployment), method, target)
        if found.route is None:
            raise UserError(f"no route in {deployment / 'registry.yaml'} matches {method} {target}")
        scope = found.route.scope
    caller = _caller(deployment, identity, broker, cert, key, ca)
    with _one_line_errors(caller):
        bearer = given_token or caller.mint(upstream, scope or "")
        response = caller.request(method, target, data, {"Authorization": f"Bearer {bearer}", **extra})
    _print_response(response)
    sys.exit(0 if 200 <= response.status < 300 else 1)


COMMANDS: list[click.Command] = [token, call]
