"""Registry approvals: approvers.yaml (who must approve, how many) and registry.sig (who did).

A registry takes effect only with at least M valid approver signatures (SPEC section 8). The
approvers and M come from approvers.yaml, a deployment file outside the registry, so a registry
can never approve itself. Each line of registry.sig is `<kid> <hex Ed25519 signature>` over
`"ztb-1/registry\\n" + hex SHA-256 of registry.yaml's bytes`.

This module judges signatures over a hash; it never parses the registry itself (the loader
checks approvals before it parses a byte of policy). It must never count one approver twice,
never count a signature by a key outside approvers.yaml, and never offer a way to skip the check.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

from pydantic import Field, ValidationError

from ztb.config.broker import read_yaml_mapping
from ztb.config.errors import ConfigError, from_validation
from ztb.config.model import Frozen

if TYPE_CHECKING:
    from ztb.audit.keys import SigningKey

APPROVERS_FILE = "approvers.yaml"
SIGNATURES_FILE = "registry.sig"
CONTEXT = b"ztb-1/registry\n"

_KID = re.compile(r"[0-9a-f]{16}")
_SIG = re.compile(r"[0-9a-f]{128}")


class _ApproverSpec(Frozen):
    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,62}$")]
    key: str  # a PEM or hex public key file (relative to the deployment), or 64 hex digits


class _ApproversSpec(Frozen):
    threshold: int
    approvers: Annotated[list[_ApproverSpec], Field(min_length=1)]


@dataclass(frozen=True, slots=True)
class Approver:
    name: str
    kid: str
    public_raw: bytes


@dataclass(frozen=True, slots=True)
class Approvers:
    threshold: int
    by_kid: dict[str, Approver]


@dataclass(frozen=True, slots=True)
class SignatureLine:
    number: int  # 1-based line in registry.sig
    kid: str
    signature: bytes

    def render(self) -> str:
        return f"{self.kid} {self.signature.hex()}"


@dataclass(frozen=True, slots=True)
class Approval:
    """Who approved one registry (by its hex SHA-256), and which signature lines did not count."""

    registry_sha256: str
    threshold: int
    approved: tuple[SignatureLine, ...]  # valid, by distinct approvers, in file order
    not_counted: tuple[str, ...]  # one short reason per line that did not count
    missing: tuple[str, ...]  # names of approvers who have not (validly) signed

    @property
    def ok(self) -> bool:
        return len(self.approved) >= self.threshold

    @property
    def kids(self) -> tuple[str, ...]:
        return tuple(line.kid for line in self.approved)

    def audit_fields(self) -> dict[str, object]:
        """What the `registry` audit entry records of this approval: the approving kids, M, and
        the signature lines themselves, so an auditor can re-check them from the log alone."""
        return {
            "approvers": list(self.kids),
            "threshold": self.threshold,
            "signatures": [line.render() for line in self.approved],
        }

    def problem(self) -> str:
        """One line: how many approvals are there, which are missing, what did not count."""
        names = ", ".join(self.missing) or "none left"
        text = (
            f"registry {self.registry_sha256[:16]} has {len(self.approved)} of {self.threshold} "
            f"required approvals; not yet signed by: {names}"
        )
        if self.not_counted:
            text += "; not counted: " + "; ".join(self.not_counted)
        return text


def message(registry_sha256: str) -> bytes:
    """The bytes an approver signs: the context line, then the registry's hex SHA-256."""
    return CONTEXT + registry_sha256.encode("ascii")


def registry_sha256(registry_bytes: bytes) -> str:
    return hashlib.sha256(registry_bytes).hexdigest()


def load_approvers(deployment: Path) -> Approvers:
    """approvers.yaml -> Approvers; ConfigError naming the file and field otherwise."""
    from ztb.audit.keys import kid_of, load_public_key  # at call time: ztb.audit imports ztb.config

    path = deployment / APPROVERS_FILE
    raw = read_yaml_mapping(path)
    try:
        spec = _ApproversSpec.model_validate(raw)
    except ValidationError as exc:
        raise from_validation(path, exc) from None
    by_kid: dict[str, Approver] = {}
    names: set[str] = set()
    for i, item in enumerate(spec.approvers):
        where = f"{path}: approvers.{i}"
        if item.name in names:
            raise ConfigError(f"{where}.name: approver {item.name!r} is listed twice")
        names.add(item.name)
        key_spec = item.key if re.fullmatch(r"[0-9a-fA-F]{64}", item.key) else str(deployment / item.key)
        try:
            public_raw = load_public_key(key_spec)
        except ValueError as exc:
            raise ConfigError(f"{where}.key: {exc}") from None
        kid = kid_of(public_raw)
        if kid in by_kid:
            raise ConfigError(
                f"{where}.key: key {kid} is already listed as {by_kid[kid].name!r}: one person, one approval"
            )
        by_kid[kid] = Approver(item.name, kid, public_raw)
    if not 1 <= spec.threshold <= len(by_kid):
        raise ConfigError(
            f"{path}: threshold: must be from 1 to the number of approvers ({len(by_kid)}), not {spec.threshold}"
        )
    return Approvers(spec.threshold, by_kid)


def key_files(deployment: Path) -> list[str]:
    """The approver key files approvers.yaml names (relative paths inside the deployment), for
    tools that copy a registry with its approvals; inline hex keys need no file."""
    spec = _ApproversSpec.model_validate(read_yaml_mapping(deployment / APPROVERS_FILE))
    return [
        a.key
        for a in spec.approvers
        if not re.fullmatch(r"[0-9a-fA-F]{64}", a.key)
        and not Path(a.key).is_absolute()
        and ".." not in Path(a.key).parts
    ]


def read_signatures(path: Path) -> tuple[SignatureLine, ...]:
    """The lines of registry.sig; an absent file is no signatures. ConfigError for a bad line."""
    try:
        text = path.read_text(encoding="ascii")
    except FileNotFoundError:
        return ()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read: {exc}") from None
    lines: list[SignatureLine] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 2 or not _KID.fullmatch(parts[0]) or not _SIG.fullmatch(parts[1]):
            raise ConfigError(f"{path}: line {number}: not '<16 hex kid> <128 hex Ed25519 signature>'")
        lines.append(SignatureLine(number, parts[0], bytes.fromhex(parts[1])))
    return tuple(lines)


def judge(approvers: Approvers, sha256: str, lines: tuple[SignatureLine, ...]) -> Approval:
    """Count the valid signatures of distinct approvers over `sha256`. Pure."""
    from ztb.audit.keys import verify_signature

    signed = message(sha256)
    approved: list[SignatureLine] = []
    not_counted: list[str] = []
    seen: set[str] = set()
    for line in lines:
        approver = approvers.by_kid.get(line.kid)
        if approver is None:
            not_counted.append(f"line {line.number}: kid {line.kid} is not an approver")
        elif line.kid in seen:
            not_counted.append(f"line {line.number}: a second signature by {approver.name}")
        elif not verify_signature(approver.public_raw, signed, line.signature):
            not_counted.append(
                f"line {line.number}: {approver.name}'s signature is not over this registry "
                "(an older version, or edited after signing)"
            )
        else:
            seen.add(line.kid)
            approved.append(line)
    missing = tuple(a.name for kid, a in approvers.by_kid.items() if kid not in seen)
    return Approval(sha256, approvers.threshold, tuple(approved), tuple(not_counted), missing)


def check_approvals(deployment: Path, registry_bytes: bytes) -> Approval:
    """The approval of these registry bytes in `deployment`; ConfigError (one line) when short."""
    approval = judge(
        load_approvers(deployment),
        registry_sha256(registry_bytes),
        read_signatures(deployment / SIGNATURES_FILE),
    )
    if not approval.ok:
        raise ConfigError(f"{deployment / SIGNATURES_FILE}: {approval.problem()}")
    return approval


def sign(deployment: Path, registry_bytes: bytes, key: SigningKey) -> tuple[Approval, tuple[str, ...]]:
    """Add `key`'s signature over these registry bytes to registry.sig.

    The key must be an approver's. Lines that are not valid approvals of these exact bytes
    (stale signatures over an older version, non-approvers) are dropped and returned, so the
    file only ever holds approvals of the registry beside it.
    """
    approvers = load_approvers(deployment)
    if key.kid not in approvers.by_kid:
        raise ConfigError(f"key {key.kid} is not an approver in {deployment / APPROVERS_FILE}")
    sha256 = registry_sha256(registry_bytes)
    path = deployment / SIGNATURES_FILE
    before = judge(approvers, sha256, read_signatures(path))
    ours = SignatureLine(0, key.kid, key.sign(message(sha256)))
    kept = [line for line in before.approved if line.kid != key.kid]
    lines = [*kept, ours]
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(line.render() + "\n" for line in lines), encoding="ascii")
    tmp.replace(path)
    after = judge(approvers, sha256, read_signatures(path))
    return after, before.not_counted
