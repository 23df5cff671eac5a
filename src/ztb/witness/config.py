"""witness.yaml -> a frozen WitnessConfig, and `ztb witness init`'s folder.

A witness folder holds: witness.yaml; keys/witness.key (its Ed25519 cosigning key, 0600) with
witness.pub and witness.vkey (the cosignature/v1 verifier key brokers and auditors trust);
tls/ (its own development CA, its server certificate, and the CA of the brokers' client
certificates); logs/ (one verifier key per log it witnesses, key name = the log's origin); and
state/ (the latest checkpoint per log). Paths are resolved against the folder at load.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Annotated

from pydantic import Field, ValidationError

from ztb import pki
from ztb.audit.keys import SigningKey
from ztb.audit.note import COSIGNATURE_V1, ED25519, NoteError, Verifier
from ztb.config.broker import Listen, read_yaml_mapping
from ztb.config.errors import ConfigError, from_validation
from ztb.config.model import Frozen

__all__ = ["WITNESS_FILE", "WitnessConfig", "init_witness", "load_witness_config"]

WITNESS_FILE = "witness.yaml"
_NAME = re.compile(r"^[^\s+]{1,200}$")


class TLS(Frozen):
    cert: Path
    key: Path
    client_ca: Path


class WitnessConfig(Frozen):
    name: Annotated[str, Field(pattern=_NAME.pattern)]
    listen: Listen
    tls: TLS
    key: Path = Path("keys/witness.key")
    state: Path = Path("state")
    logs: tuple[Path, ...] = ()
    root: Path = Path(".")

    def path(self, relative: Path) -> Path:
        return relative if relative.is_absolute() else self.root / relative

    def log_keys(self) -> dict[str, Verifier]:
        """Origin -> the verifier key of each log this witness knows; ConfigError when one is bad."""
        keys: dict[str, Verifier] = {}
        for relative in self.logs:
            path = self.path(relative)
            try:
                verifier = Verifier.parse(path.read_text(encoding="ascii"))
            except (OSError, UnicodeDecodeError) as exc:
                raise ConfigError(f"{path}: cannot read: {exc}") from None
            except NoteError as exc:
                raise ConfigError(f"{path}: not a verifier key: {exc}") from None
            if verifier.signature_type != ED25519:
                raise ConfigError(f"{path}: a log's checkpoint key must be an Ed25519 (type 0x01) vkey")
            if verifier.name in keys:
                raise ConfigError(f"{path}: a second key for the log {verifier.name}")
            keys[verifier.name] = verifier
        return keys


def load_witness_config(folder: Path) -> WitnessConfig:
    path = folder / WITNESS_FILE
    raw = read_yaml_mapping(path)
    try:
        return WitnessConfig.model_validate({**raw, "root": folder.resolve()})
    except ValidationError as exc:
        raise from_validation(path, exc) from None


def init_witness(
    root: Path, *, name: str, port: int, client_ca: Path, logs: tuple[Path, ...] = (), host: str = "127.0.0.1"
) -> Verifier:
    """Create a witness folder in `root` (new or empty); its cosignature verifier key."""
    if _NAME.fullmatch(name) is None:
        raise ConfigError(f"witness name {name!r} must be 1-200 characters without spaces or '+'")
    if not 0 <= port <= 65535:
        raise ConfigError(f"port {port} is not in 0..65535")
    root = root.absolute()
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        raise ConfigError(f"{root}: exists and is not an empty folder")
    try:
        client_ca_pem = client_ca.read_bytes()
        log_keys = [(path, Verifier.parse(path.read_text(encoding="ascii"))) for path in logs]
    except OSError as exc:
        raise ConfigError(f"{exc.filename}: cannot read: {exc.strerror or exc}") from None
    except NoteError as exc:
        raise ConfigError(f"--log: not a verifier key: {exc}") from None
    if b"-----BEGIN CERTIFICATE-----" not in client_ca_pem:
        raise ConfigError(f"{client_ca}: not a PEM certificate")
    root.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{root.name}.init-", dir=root.parent))
    try:
        verifier = _write(staging, name, host, port, client_ca_pem, log_keys)
        load_witness_config(staging).log_keys()
        staging.replace(root)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return verifier


def _write(
    d: Path, name: str, host: str, port: int, client_ca_pem: bytes, logs: list[tuple[Path, Verifier]]
) -> Verifier:
    for sub in ("keys", "tls", "logs", "state"):
        (d / sub).mkdir()
    key = SigningKey.generate()
    key.save(d / "keys/witness.key")
    verifier = Verifier(name, COSIGNATURE_V1, key.public_raw)
    (d / "keys/witness.vkey").write_text(verifier.vkey() + "\n", encoding="ascii")
    ca = pki.new_ca(f"ztb witness {name} development CA")
    ca.write(d / "tls/ca.pem", d / "tls/ca.key")
    pki.issue_server(ca, ["localhost"], ["127.0.0.1", "::1"]).write(
        d / "tls/server.pem", d / "tls/server.key"
    )
    (d / "tls/client-ca.pem").write_bytes(client_ca_pem)
    files = []
    for index, (_, log) in enumerate(logs, start=1):
        file = f"logs/{index:02d}-{re.sub(r'[^A-Za-z0-9._-]', '_', log.name)}.vkey"
        (d / file).write_text(log.vkey() + "\n", encoding="ascii")
        files.append(file)
    log_lines = "".join(f"  - {file}\n" for file in files) or "  []\n"
    (d / WITNESS_FILE).write_text(
        f"""\
# witness.yaml: a C2SP tlog-witness (`ztb witness serve`). Run it on another host than the brokers.

# The witness's key name: its cosignatures are signature lines "— <name> ...".
name: "{name}"
# POST https://<host>:<port>/add-checkpoint, over mTLS (client certificates from tls.client_ca).
listen: {{host: {host}, port: {port}}}
tls:
  cert: tls/server.pem          # issued by tls/ca.pem: give brokers tls/ca.pem to trust this witness
  key: tls/server.key
  client_ca: tls/client-ca.pem  # the CA of the brokers' egress certificates
# The cosigning key (keys/witness.vkey is what brokers and auditors trust).
key: keys/witness.key
# The latest cosigned checkpoint of each log, one file per log, replaced atomically.
state: state
# The logs this witness knows: their checkpoint verifier keys (key name = origin).
logs:
{log_lines}""",
        encoding="utf-8",
    )
    os.chmod(d, 0o700)
    return verifier
