"""ztb explain: why a call would be refused, and what it would need. Parses arguments, loads the
registry in force (approvals checked, as always) and prints `ztb.explain`'s answer."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import BinaryIO

import click

from ztb.config import load_registry
from ztb.explain import explain as run_explain


@click.command("explain")
@click.argument("directory", type=click.Path(path_type=Path, file_okay=False, exists=True))
@click.option(
    "--as", "identity", required=True, metavar="IDENTITY", help="The caller identity, e.g. svc.checkout."
)
@click.argument("method")
@click.argument("target")
@click.option("--body", type=click.File("rb"), help="Request body file ('-' for stdin), checked as JSON.")
@click.option("--header", "-H", "headers", multiple=True, metavar="'NAME: VALUE'", help="A request header.")
@click.option("--json", "as_json", is_flag=True, help="Print the explanation as JSON.")
def explain(
    directory: Path,
    identity: str,
    method: str,
    target: str,
    body: BinaryIO | None,
    headers: tuple[str, ...],
    as_json: bool,
) -> None:
    """Run METHOD TARGET (UPSTREAM/PATH, e.g. orders.api.internal/v1/orders) as IDENTITY through the
    gates against DIRECTORY's registry without sending it: which gate would refuse it and why, or
    which grant it would need. Exit 0 if it would be allowed, 1 if refused."""
    parsed: list[tuple[str, str]] = []
    for header in headers:
        name, sep, value = header.partition(":")
        if not sep or not name.strip():
            raise click.UsageError(f"header {header!r} is not 'Name: value'")
        parsed.append((name.strip().lower(), value.strip()))
    target = target if target.startswith("/") else "/" + target
    answer = run_explain(
        load_registry(directory),
        identity,
        method.upper(),
        target,
        body.read() if body is not None else None,
        tuple(parsed),
    )
    click.echo(json.dumps(answer.to_json(), indent=2) if as_json else answer.to_text())
    sys.exit(0 if answer.allowed else 1)


COMMANDS: list[click.Command] = [explain]
