"""ztb registry: check a deployment's policy and its approvals, sign it, and diff two versions."""

from __future__ import annotations

import json
from pathlib import Path

import click

from ztb.audit.keys import SigningKey
from ztb.config import load_broker_config, load_registry
from ztb.config.approvals import sign as add_signature
from ztb.config.diff import diff as registry_diff
from ztb.config.diff import read_side, to_text
from ztb.config.registry import validate_registry

_DIR = click.Path(path_type=Path, file_okay=False, exists=True)


@click.group("registry")
def registry() -> None:
    """Work with a deployment's registry.yaml (the policy) and its approvals."""


@registry.command("check")
@click.argument("directory", type=_DIR)
def check(directory: Path) -> None:
    """Validate DIRECTORY's broker.yaml, registry.yaml, its approvals and schemas; exit 1 with the
    first problem (a missing approval included)."""
    load_broker_config(directory)
    loaded = load_registry(directory)
    assert loaded.approval is not None
    routes = sum(len(r) for r in loaded.routes.values())
    grants = sum(len(scopes) for per in loaded.grants.values() for scopes in per.values())
    click.echo(
        f"registry OK: {len(loaded.identities)} identities, {len(loaded.upstreams)} upstreams, "
        f"{routes} routes, {grants} grants; sha256 {loaded.sha256}"
    )
    click.echo(
        f"approved by {len(loaded.approval.approved)} of {loaded.approval.threshold} required: "
        + ", ".join(loaded.approval.kids)
    )


@registry.command("sign")
@click.argument("directory", type=_DIR)
@click.option(
    "--key",
    required=True,
    type=click.Path(path_type=Path, dir_okay=False, exists=True),
    help="The approver's Ed25519 private key (PKCS#8 PEM).",
)
def sign(directory: Path, key: Path) -> None:
    """Approve DIRECTORY's registry.yaml as it is now: check it, then add KEY's signature to
    registry.sig. Review `ztb registry diff` first: a signature approves these exact bytes."""
    registry_bytes = validate_registry(directory)
    approval, dropped = add_signature(directory, registry_bytes, SigningKey.load(key))
    for reason in dropped:
        click.echo(f"dropped from registry.sig: {reason}")
    state = "takes effect on the next start or reload" if approval.ok else "not yet in effect"
    click.echo(
        f"signed registry {approval.registry_sha256[:16]}: {len(approval.approved)} of "
        f"{approval.threshold} required approvals ({state})"
    )


@registry.command("diff")
@click.argument("old", type=click.Path(path_type=Path, exists=True))
@click.argument("new", type=click.Path(path_type=Path, exists=True))
@click.option("--json", "as_json", is_flag=True, help="Print the changes as JSON.")
def diff(old: Path, new: Path, as_json: bool) -> None:
    """Show what changes from OLD to NEW in policy terms (deployment folders or registry files):
    who gains or loses access, grants, identities and pins, upstreams, routes and schemas."""
    before, after = read_side(old), read_side(new)
    changes = registry_diff(before, after)
    if as_json:
        click.echo(
            json.dumps(
                {
                    "old_sha256": before.sha256,
                    "new_sha256": after.sha256,
                    "changes": [c.to_json() for c in changes],
                },
                indent=2,
            )
        )
    else:
        click.echo(to_text(before, after, changes))


COMMANDS: list[click.Command] = [registry]
