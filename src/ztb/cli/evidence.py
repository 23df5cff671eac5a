"""ztb evidence: write an evidence bundle (`ztb evidence DIR --out BUNDLE`), or check one
(`ztb evidence check BUNDLE`). Parses arguments and calls ztb.evidence, nothing more."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

_DIR = click.Path(path_type=Path, file_okay=False, exists=True)


class _EvidenceGroup(click.Group):
    """`ztb evidence DIR ...` runs the default `make`; `ztb evidence check BUNDLE` checks."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and not args[0].startswith("-"):
            args = ["make", *args]
        return super().parse_args(ctx, args)


@click.group("evidence", cls=_EvidenceGroup)
def evidence() -> None:
    """Evidence for auditors: `ztb evidence DIR --out BUNDLE [--broker URL]` runs every control
    against a live broker of DIR (one started on free ports if no --broker) and writes the
    bundle; `ztb evidence check BUNDLE` re-derives a bundle's verdicts offline."""


@evidence.command("make", hidden=True)
@click.argument("directory", type=_DIR)
@click.option(
    "--out", required=True, type=click.Path(path_type=Path, file_okay=False), help="New bundle folder."
)
@click.option("--broker", metavar="URL", help="A live broker of DIR (default: start one on free ports).")
@click.option(
    "--controls", "controls_dir", type=_DIR, help="The controls/ folder (default: the source tree's)."
)
def make(directory: Path, out: Path, broker: str | None, controls_dir: Path | None) -> None:
    """Run every control against a live broker of DIRECTORY and write the bundle to OUT.
    Exit 0 when every control passed and the log and registry verify, 1 otherwise."""
    from ztb.evidence.bundle import write_bundle

    written = write_bundle(directory, out, broker_url=broker, controls_dir=controls_dir)
    report: dict[str, Any] = written.report
    for control in report["controls"]:
        checks = control.get("checks") or []
        held = sum(1 for c in checks if c.get("ok"))
        click.echo(
            f"{'PASS' if control['ok'] else 'FAIL'}  {control['control']:<22} {held} of {len(checks)} checks"
        )
    click.echo(f"{'PASS' if report['audit'].get('ok') else 'FAIL'}  audit log verification")
    click.echo(f"{'PASS' if report['registry'].get('ok') else 'FAIL'}  registry approvals")
    click.echo(f"bundle: {out} (manifest.json sha256 {written.manifest_sha256})")
    click.echo(
        f"verdict: {'PASS' if written.ok else 'FAIL'}; re-check anywhere with: ztb evidence check {out}"
    )
    sys.exit(0 if written.ok else 1)


@evidence.command("check")
@click.argument("bundle", type=_DIR)
def check(bundle: Path) -> None:
    """Re-derive BUNDLE's verdicts offline: manifest, audit log, registry approvals, cited entries,
    each control's verdict. Exit 0 only if the bundle is intact and consistent and the verdict PASS."""
    from ztb.evidence.check import check_bundle

    result = check_bundle(bundle)
    click.echo(result.to_text())
    sys.exit(0 if result.consistent and result.verdict_ok else 1)


COMMANDS: list[click.Command] = [evidence]
