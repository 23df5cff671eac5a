"""ztb audit commands: the auditor's `verify` and `prove`, and the operator's `show`. Parses
arguments and calls ztb.audit; it never judges a log itself.

Exit codes of `verify`: 0 intact, 1 tampered or broken, 2 usage error (bad arguments, no logs,
unreadable key). `prove` exits 0 with the proof as JSON, 1 when no checkpoint can prove the
entry, 2 on a usage error.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from ztb.audit.anchor import deployment_checkpoint_keys
from ztb.audit.keys import kid_of, load_public_key
from ztb.audit.note import COSIGNATURE_V1, ED25519, NoteError, Verifier
from ztb.audit.proofs import prove_entry
from ztb.audit.reader import LogNotFound, LogReadError, find_logs, read_entries
from ztb.audit.verify import Anchors, verify_logs
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
@click.option(
    "--checkpoint-key",
    "checkpoint_keys",
    multiple=True,
    metavar="VKEY",
    help="A log's checkpoint verifier key (file or text, name = origin). Repeatable. "
    "Default for a deployment: its keys/checkpoint.vkey.",
)
@click.option(
    "--witness-key",
    "witness_keys",
    multiple=True,
    metavar="VKEY",
    help="A witness whose cosignatures are required (file or text). Repeatable.",
)
@click.option(
    "--checkpoints",
    "notes_files",
    multiple=True,
    type=click.Path(path_type=Path, dir_okay=False),
    help="More checkpoints: a file: sink's notes file or a witness state file. Repeatable.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def verify(
    directory: Path,
    pubkeys: tuple[str, ...],
    checkpoint_keys: tuple[str, ...],
    witness_keys: tuple[str, ...],
    notes_files: tuple[Path, ...],
    as_json: bool,
) -> None:
    """Check every entry of the logs in DIRECTORY (a deployment, an audit folder or one log),
    and the log against its checkpoints when a checkpoint key is known.

    Exit 0 intact, 1 tampered or broken, 2 usage error.
    """
    logs = _find(directory)
    anchors = _anchors(directory, checkpoint_keys, witness_keys, notes_files)
    trusted: dict[str, bytes] = {}
    for spec in pubkeys or (str(_deployment_public_key(directory)),):
        try:
            public_raw = load_public_key(spec)
        except ValueError as exc:
            raise _UsageProblem(f"--pubkey {exc}") from None
        trusted[kid_of(public_raw)] = public_raw
    try:
        report = verify_logs(logs, trusted, anchors)
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


def _vkey(spec: str, kind: int, option: str) -> Verifier:
    path = Path(spec)
    try:
        text = path.read_text(encoding="ascii") if path.is_file() else spec
        verifier = Verifier.parse(text)
    except (OSError, UnicodeDecodeError, NoteError) as exc:
        raise _UsageProblem(f"{option} {spec}: {exc}") from None
    if verifier.signature_type != kind:
        raise _UsageProblem(f"{option} {spec}: a key of signature type 0x{kind:02x} is needed")
    return verifier


def _checkpoint_keys(directory: Path, specs: tuple[str, ...]) -> list[Verifier]:
    if specs:
        return [_vkey(spec, ED25519, "--checkpoint-key") for spec in specs]
    if (directory / BROKER_FILE).is_file():
        try:
            return deployment_checkpoint_keys(load_broker_config(directory))
        except ConfigError as exc:
            raise _UsageProblem(str(exc)) from None
    return []


def _anchors(
    directory: Path,
    checkpoint_keys: tuple[str, ...],
    witness_keys: tuple[str, ...],
    notes_files: tuple[Path, ...],
) -> Anchors | None:
    keys = _checkpoint_keys(directory, checkpoint_keys)
    witnesses = tuple(_vkey(spec, COSIGNATURE_V1, "--witness-key") for spec in witness_keys)
    if not keys:
        if witnesses or notes_files:
            raise _UsageProblem("checking checkpoints needs the log's --checkpoint-key")
        return None
    return Anchors(tuple(keys), witnesses, notes_files)


@audit.command("prove")
@click.argument("directory", type=click.Path(path_type=Path))
@click.option("--call-id", help="Prove the `call` entry of this call.")
@click.option("--seq", type=click.IntRange(min=0), help="Prove the entry with this seq.")
@click.option("--broker", help="The log to read when DIRECTORY holds several.")
@click.option(
    "--checkpoint-key", metavar="VKEY", help="The log's checkpoint verifier key (default: the deployment's)."
)
@click.option(
    "--witness-key",
    "witness_keys",
    multiple=True,
    metavar="VKEY",
    help="Prove against a checkpoint cosigned by this witness (file or text). Repeatable.",
)
@click.option(
    "--checkpoints",
    "notes_files",
    multiple=True,
    type=click.Path(path_type=Path, dir_okay=False, exists=True),
    help="More notes files to find checkpoints in. Repeatable.",
)
def prove(
    directory: Path,
    call_id: str | None,
    seq: int | None,
    broker: str | None,
    checkpoint_key: str | None,
    witness_keys: tuple[str, ...],
    notes_files: tuple[Path, ...],
) -> None:
    """Print an entry, its inclusion proof and the checkpoint it is proved against, as JSON.

    The checkpoint is the largest one that covers the entry (cosigned by every --witness-key).
    """
    if (call_id is None) == (seq is None):
        raise _UsageProblem("give exactly one of --call-id and --seq")
    logs = _find(directory)
    if broker is not None:
        if broker not in logs:
            raise _UsageProblem(f"no log of broker {broker} in {directory}")
        logs = {broker: logs[broker]}
    if call_id is not None:
        found = [
            (name, entry)
            for name, segments in logs.items()
            for entry in _entries(segments)
            if entry.get("call_id") == call_id and entry.get("kind") == "call"
        ]
        if not found:
            raise UserError(f"no call entry with call_id {call_id} in {directory}")
        broker, entry = found[0]
        seq = int(str(entry["seq"]))
    elif len(logs) != 1:
        raise _UsageProblem(f"{directory} holds several logs: name one with --broker")
    else:
        broker = next(iter(logs))
    assert seq is not None and broker is not None
    keys = _checkpoint_keys(directory, (checkpoint_key,) if checkpoint_key else ())
    log_key = next((key for key in keys if key.name.endswith("/" + broker)), None)
    if log_key is None:
        raise _UsageProblem(f"no checkpoint key for the log of {broker}: pass --checkpoint-key")
    witnesses = [_vkey(spec, COSIGNATURE_V1, "--witness-key") for spec in witness_keys]
    try:
        proof = prove_entry(
            logs[broker][0].parent, seq, log_key, witness_keys=witnesses, extra_notes=notes_files
        )
    except ConfigError as exc:
        raise UserError(str(exc)) from None
    click.echo(json.dumps(proof.to_json(), indent=2, ensure_ascii=False))


def _entries(segments: list[Path]) -> list[dict[str, object]]:
    try:
        return list(read_entries(segments))
    except LogReadError as exc:
        raise UserError(str(exc)) from None


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
