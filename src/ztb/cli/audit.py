"""ztb audit commands: the auditor's `verify` and the operator's `show`. Parses arguments and
calls ztb.audit; it never judges a log itself.

Exit codes of `verify`: 0 intact, 1 tampered or broken, 2 usage error (bad arguments, no logs,
unreadable key).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from ztb.audit.keys import kid_of, load_public_key
from ztb.audit.reader import LogNotFound, LogReadError, find_logs, read_entries
from ztb.audit.verify import verify_logs
from ztb.cli import UserError
from ztb.config import ConfigError, load_broker_config
from ztb.config.broker import BROKER_FILE


class _UsageProblem(UserError):
    """A usage error printed as one line (not click's usage text), exit 2."""

    exit_code = 2


@click.group("audit")
def audit() -> None:
    """Verify and read the signed, hash-chained audit log."""


@audit.command("verify")
@click.argument("directory", type=click.Path(path_type=Path))
@click.option(
    "--pubkey",
    "pubkeys",
    multiple=True,
    metavar="FILE",
    help="A trusted audit public key: PEM file, file of 64 hex digits, or the hex itself. Repeatable.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def verify(directory: Path, pubkeys: tuple[str, ...], as_json: bool) -> None:
    """Check every entry of the logs in DIRECTORY (a deployment, an audit folder or one log).

    Exit 0 intact, 1 tampered or broken, 2 usage error.
    """
    logs = _find(directory)
    trusted: dict[str, bytes] = {}
    for spec in pubkeys or (str(_deployment_public_key(directory)),):
        try:
            public_raw = load_public_key(spec)
        except ValueError as exc:
            raise _UsageProblem(f"--pubkey {exc}") from None
        trusted[kid_of(public_raw)] = public_raw
    try:
        report = verify_logs(logs, trusted)
    except LogReadError as exc:
        raise _UsageProblem(str(exc)) from None
    if as_json:
        click.echo(json.dumps(report.to_json(), indent=2, ensure_ascii=False))
    else:
        click.echo(report.to_text())
    sys.exit(0 if report.ok else 1)


def _deployment_public_key(directory: Path) -> Path:
    if not (directory / BROKER_FILE).is_file():
        raise _UsageProblem(f"{directory} is not a deployment folder: pass the trusted key with --pubkey")
    try:
        config = load_broker_config(directory)
    except ConfigError as exc:
        raise _UsageProblem(str(exc)) from None
    return config.path(config.audit.signing_key).with_suffix(".pub")


def _find(directory: Path) -> dict[str, list[Path]]:
    try:
        return find_logs(directory)
    except (LogNotFound, ConfigError) as exc:
        raise _UsageProblem(str(exc)) from None


_COLUMNS = ("broker", "seq", "ts", "kind", "decision", "gate", "reason", "identity", "route", "call_id")


@audit.command("show")
@click.argument("directory", type=click.Path(path_type=Path))
@click.option("--call-id", help="Show every entry of this call (the call and its result).")
@click.option("--tail", type=click.IntRange(min=1), help="Show the last N entries of each log.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
def show(directory: Path, call_id: str | None, tail: int | None, as_json: bool) -> None:
    """Read entries of the logs in DIRECTORY (a deployment, an audit folder or one log)."""
    logs = _find(directory)
    selected: list[dict[str, object]] = []
    for segments in logs.values():
        try:
            entries = list(read_entries(segments))
        except LogReadError as exc:
            raise UserError(str(exc)) from None
        if call_id is not None:
            entries = [entry for entry in entries if entry.get("call_id") == call_id]
        if tail is not None:
            entries = entries[-tail:]
        selected.extend(entries)
    if call_id is not None and not selected:
        raise UserError(f"no entry with call_id {call_id} in {directory}")
    if as_json:
        for entry in selected:
            click.echo(json.dumps(entry, ensure_ascii=False, separators=(",", ":")))
        return
    rows = [_COLUMNS, *(_row(entry) for entry in selected)]
    widths = [max(len(row[column]) for row in rows) for column in range(len(_COLUMNS))]
    for row in rows:
        click.echo("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())


def _row(entry: dict[str, object]) -> tuple[str, ...]:
    kind = entry.get("kind")
    reason = entry.get("reason")
    if kind == "result":
        outcome: object = entry.get("status") if entry.get("forwarded") else "not forwarded"
        reason = entry.get("error")
    else:
        outcome = entry.get("decision")
    return tuple(
        _cell(value)
        for value in (
            entry.get("broker"),
            entry.get("seq"),
            entry.get("ts"),
            kind,
            outcome,
            entry.get("gate"),
            reason,
            _field(entry, "caller", "identity"),
            _field(entry, "upstream", "route"),
            entry.get("call_id"),
        )
    )


def _field(entry: dict[str, object], part: str, name: str) -> object:
    value = entry.get(part)
    return value.get(name) if isinstance(value, dict) else None


def _cell(value: object) -> str:
    return "-" if value is None else str(value)


COMMANDS: list[click.Command] = [audit]
