"""ztb registry: check a deployment's policy without starting anything."""

from __future__ import annotations

from pathlib import Path

import click

from ztb.config import load_broker_config, load_registry


@click.group("registry")
def registry() -> None:
    """Work with a deployment's registry.yaml (the policy)."""


@registry.command("check")
@click.argument("directory", type=click.Path(path_type=Path, file_okay=False, exists=True))
def check(directory: Path) -> None:
    """Validate DIRECTORY's broker.yaml, registry.yaml and schemas; exit 1 with the first problem."""
    load_broker_config(directory)
    loaded = load_registry(directory)
    routes = sum(len(r) for r in loaded.routes.values())
    grants = sum(len(scopes) for per in loaded.grants.values() for scopes in per.values())
    click.echo(
        f"registry OK: {len(set(loaded.identities_by_spki.values()))} identities, {len(loaded.upstreams)} upstreams, "
        f"{routes} routes, {grants} grants; sha256 {loaded.sha256}"
    )


COMMANDS: list[click.Command] = [registry]
