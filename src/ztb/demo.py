"""`ztb demo`: the whole story on a temporary deployment and free loopback ports.

A sample upstream and the broker start; svc.checkout creates an order; then the attacks of the
story, each of which must be refused by the gate the story expects; then the audit log is
verified (and shown to break when one byte of a copy is changed). A table shows call by call
what happened, which gate decided and the audit `seq`. Then the anchoring step: a witness runs,
the broker's checkpoints are cosigned, a receipt is proved, and cutting the tail from a copy of
the log is reported `truncated`. Exit status 0 only if all behaved.
"""

from __future__ import annotations

import json
import shutil
import socket
import ssl
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ztb.audit.keys import kid_of, load_public_key
from ztb.audit.note import Verifier
from ztb.audit.reader import find_logs, read_entries
from ztb.audit.verify import Anchors, verify_logs
from ztb.client import BrokerError, Response
from ztb.deploy import sample_order
from ztb.receipt import ReceiptError, prove_receipt
from ztb.sample.local import SAMPLE_UPSTREAM, LocalDeployment, free_port
from ztb.witness.config import init_witness, load_witness_config
from ztb.witness.server import WitnessServer

CREATE = "/v1/orders/create"


@dataclass
class Step:
    actor: str
    action: str
    expected: str  # "201", "403 scope/token_replayed", "TLS refused identity/no_client_certificate"
    got: str = ""
    seq: str = ""
    upstream_saw: bool = False

    @property
    def ok(self) -> bool:
        return self.got == self.expected


class Story:
    def __init__(self, local: LocalDeployment) -> None:
        self.local = local
        self.steps: list[Step] = []
        self.checkout = local.caller("svc.checkout")
        self.reports = local.caller("svc.reports")
        self.order = json.dumps(sample_order()).encode()

    def entries(self) -> list[dict[str, Any]]:
        return list(read_entries(sorted(self.local.log_dir.glob("*.jsonl"))))

    def wait_entry(self, match: Callable[[dict[str, Any]], bool]) -> dict[str, Any] | None:
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            for entry in self.entries():
                if match(entry):
                    return entry
            time.sleep(0.02)
        return None

    def record(self, step: Step, response: Response | BrokerError, received_before: int) -> None:
        if isinstance(response, BrokerError):
            step.got = f"{response.status} {response.gate}/{response.reason}"
            call_id = response.call_id
        else:
            error = response.error
            step.got = (
                str(response.status)
                if error is None
                else f"{response.status} {error['gate']}/{error['reason']}"
            )
            call_id = response.call_id
        entry = self.wait_entry(lambda e: e.get("call_id") == call_id and e["kind"] in ("call", "token"))
        step.seq = str(entry["seq"]) if entry else "missing"
        step.upstream_saw = len(self.local.upstream.received) > received_before
        self.steps.append(step)

    def run_call(self, step: Step, send: Callable[[], Response]) -> None:
        """Run one step; the library's typed refusals are recorded like any other answer."""
        before = len(self.local.upstream.received)
        try:
            response: Response | BrokerError = send()
        except BrokerError as refused:
            response = refused
        self.record(step, response, before)

    def fresh_token(self, scope: str = "orders:create") -> str:
        return self.checkout.mint(SAMPLE_UPSTREAM, scope)

    # -- the story ---------------------------------------------------------------------------

    def tell(self) -> None:
        c, r = self.checkout, self.reports
        minted = self.fresh_token()
        self.run_call(
            Step("svc.checkout", "creates an order (token minted for orders:create)", "201"),
            lambda: c.call("POST", SAMPLE_UPSTREAM, CREATE, token=minted, body=self.order),
        )
        leaked = minted
        for action in (
            "ztb.client: another order (mints on demand)",
            "ztb.client: one more (ZTB-Next-Token)",
        ):
            self.run_call(
                Step("svc.checkout", action, "201"),
                lambda: c.post(SAMPLE_UPSTREAM, CREATE, scope="orders:create", body=self.order),
            )
        self.no_certificate()
        self.run_call(
            Step(
                "attacker",
                "SSRF: a URL in the path (/http://169.254.169.254/...)",
                "400 allowlist/non_canonical_target",
            ),
            lambda: c.request("GET", "/http://169.254.169.254/latest/meta-data/", None, self._bearer()),
        )
        self.run_call(
            Step(
                "attacker",
                "SSRF: absolute-form target GET http://169.254.169.254/",
                "400 allowlist/non_canonical_target",
            ),
            lambda: c.request("GET", "http://169.254.169.254/latest/meta-data/", None, self._bearer()),
        )
        self.run_call(
            Step("attacker", "SSRF: Host: 169.254.169.254 with a metadata path", "404 allowlist/no_route"),
            lambda: c.request(
                "GET", "/latest/meta-data/iam", None, {**self._bearer(), "Host": "169.254.169.254"}
            ),
        )
        self.run_call(
            Step(
                "attacker",
                "SSRF: an unregistered upstream (metadata.google.internal)",
                "404 allowlist/no_route",
            ),
            lambda: c.request(
                "GET", "/metadata.google.internal/computeMetadata/v1/instance", None, self._bearer()
            ),
        )
        self.run_call(
            Step("attacker", "replays the leaked token of the first call", "403 scope/token_replayed"),
            lambda: c.call("POST", SAMPLE_UPSTREAM, CREATE, token=leaked, body=self.order),
        )
        stolen = self.fresh_token()
        self.run_call(
            Step("svc.reports", "presents a token leaked from svc.checkout", "403 scope/wrong_certificate"),
            lambda: r.call("POST", SAMPLE_UPSTREAM, CREATE, token=stolen, body=self.order),
        )
        self.run_call(
            Step("svc.reports", "asks for orders:create (over-broad scope)", "403 scope/not_granted"),
            lambda: r.request(
                "POST",
                "/.ztb/token",
                json.dumps({"upstream": SAMPLE_UPSTREAM, "scope": "orders:create"}).encode(),
                {"Content-Type": "application/json"},
            ),
        )
        self.run_call(
            Step("svc.reports", "lists orders with its own orders:read token", "200"),
            lambda: r.get(SAMPLE_UPSTREAM, "/v1/orders?limit=5", scope="orders:read"),
        )
        bad = json.loads(self.order)
        bad["items"][0]["qty"] = "1; DROP TABLE orders"
        self.run_call(
            Step("svc.checkout", "sends a body that breaks the schema", "400 shape/schema_violation"),
            lambda: c.post(SAMPLE_UPSTREAM, CREATE, scope="orders:create", json=bad),
        )
        huge = json.dumps({**sample_order(), "note": "x" * 100_000}).encode()
        self.run_call(
            Step("svc.checkout", "sends a 100 KB body (cap 64 KiB)", "413 shape/body_too_large"),
            lambda: c.post(SAMPLE_UPSTREAM, CREATE, scope="orders:create", body=huge),
        )

    def _bearer(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.fresh_token()}"}

    def no_certificate(self) -> None:
        step = Step(
            "attacker", "connects with no client certificate", "TLS refused identity/no_client_certificate"
        )
        before = len(self.local.upstream.received)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.load_verify_locations(cafile=self.local.root / "ca" / "ca.pem")
        known = {e["seq"] for e in self.entries() if e["kind"] == "identity"}
        try:
            with (
                socket.create_connection(("127.0.0.1", self.local.port), timeout=5) as raw,
                ctx.wrap_socket(raw, server_hostname="localhost") as tls,
            ):
                tls.sendall(b"GET /orders.api.internal/v1/orders HTTP/1.1\r\nHost: x\r\n\r\n")
                answer = tls.recv(100)
                step.got = (
                    f"answered {answer[:12]!r}" if answer else "TLS refused identity/no_client_certificate"
                )
        except (ssl.SSLError, ConnectionError):
            step.got = "TLS refused identity/no_client_certificate"
        entry = self.wait_entry(lambda e: e["kind"] == "identity" and e["seq"] not in known)
        if entry is None or entry.get("reason") != "no_client_certificate":
            step.got = f"audit entry missing ({entry})"
        step.seq = str(entry["seq"]) if entry else "missing"
        step.upstream_saw = len(self.local.upstream.received) > before
        self.steps.append(step)


def _table(steps: list[Step]) -> str:
    rows = [("#", "who", "what", "expected", "got", "upstream", "audit seq", "verdict")]
    for i, s in enumerate(steps, 1):
        rows.append(
            (
                str(i),
                s.actor,
                s.action,
                s.expected,
                s.got,
                "saw it" if s.upstream_saw else "nothing",
                s.seq,
                "ok" if s.ok else "FAIL",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _tamper_check(log_dir: Path, keys: dict[str, bytes], scratch: Path) -> tuple[bool, str]:
    """Change one byte of a copy of the log: the verifier must call it broken."""
    copy = scratch / "tampered" / log_dir.name
    shutil.copytree(log_dir, copy)
    segment = sorted(copy.glob("*.jsonl"))[0]
    data = bytearray(segment.read_bytes())
    lines = bytes(data).split(b"\n")
    # Lower the "latency_ms" digit of the third entry... any byte would do; pick a visible one.
    target = len(lines[0]) + 1 + len(lines[1]) + 1 + lines[2].find(b'"kind":"') + 8
    data[target] ^= 0x01
    segment.write_bytes(bytes(data))
    report = verify_logs(find_logs(copy), keys)
    first = report.logs[0].first_break if report.logs else None
    detail = f"seq {first.seq} {first.category}" if first is not None else "not detected"
    return (not report.ok and first is not None and first.seq == 2), detail


def _anchoring(
    local: LocalDeployment, keys: dict[str, bytes], scratch: Path, out: Callable[[str], None]
) -> bool:
    """A witness cosigns the broker's checkpoints; a receipt is proved; a cut copy is caught."""
    root = local.root
    witness_dir = scratch / "witness"
    port = free_port()
    witness_key = init_witness(
        witness_dir,
        name="witness.demo/w1",
        port=port,
        client_ca=root / "ca/ca.pem",
        logs=(root / "keys/checkpoint.vkey",),
    )
    config = yaml.safe_load((root / "broker.yaml").read_text())
    config["anchor"].update(
        every_s=0.2,
        sinks=[{"witness": f"https://127.0.0.1:{port}", "ca": str(witness_dir / "tls/ca.pem"),
                "vkey": str(witness_dir / "keys/witness.vkey")}],
    )  # fmt: skip
    (root / "broker.yaml").write_text(yaml.safe_dump(config))
    witness = WitnessServer(load_witness_config(witness_dir))
    local.loop.run(witness.start())
    try:
        out(
            f"\nAnchoring: witness {witness_key.name} on 127.0.0.1:{port} (mTLS); the broker restarts with it as a sink"
        )
        local.start_broker()
        caller = local.caller("svc.checkout")
        try:
            token = caller.mint(SAMPLE_UPSTREAM, "orders:read")
            receipt = caller.call("GET", SAMPLE_UPSTREAM, "/v1/orders?limit=5", token=token).headers.get(
                "ztb-receipt", ""
            )
        finally:
            caller.close()
        local.stop_broker()  # a last checkpoint covers the `stop` entry, cosigned
    finally:
        local.loop.run(witness.stop())
    log_key = Verifier.parse((root / "keys/checkpoint.vkey").read_text())
    anchors = Anchors((log_key,), (witness_key,))
    (report,) = verify_logs(find_logs(local.log_dir), keys, anchors).logs
    cosigned = report.anchors.cosigned.get(witness_key.name, 0) if report.anchors else 0
    out(
        f"  the log: {report.entries} entries, {'ok' if report.ok else 'BROKEN'}, cosigned up to size {cosigned}"
    )
    try:
        _, proved = prove_receipt(
            receipt,
            local.log_dir,
            audit_keys=list(keys.values()),
            checkpoint_key=log_key,
            witness_keys=[witness_key],
        )
        proof_ok = True
        out(
            f"  ZTB-Receipt of the call (seq {receipt.split('.')[0]}) proved in the checkpoint of size {proved.checkpoint.size}, cosigned"
        )
    except ReceiptError as exc:
        proof_ok = False
        out(f"  ZTB-Receipt NOT proved: {exc}")
    copy = scratch / "cut" / local.log_dir.name
    shutil.copytree(local.log_dir, copy)
    segment = sorted(copy.glob("*.jsonl"))[-1]
    segment.write_bytes(b"".join(segment.read_bytes().splitlines(keepends=True)[:-3]))
    plain = verify_logs(find_logs(copy), keys).ok
    (cut,) = verify_logs(find_logs(copy), keys, anchors).logs
    category = cut.first_break.category if cut.first_break else "intact"
    out(
        f"  last 3 entries cut from a copy: chain alone says {'intact' if plain else 'BROKEN'}; with checkpoints: {category}"
    )
    return report.ok and cosigned == report.entries and proof_ok and category == "truncated"


def run_demo(out: Callable[[str], None] = print) -> bool:
    started = time.monotonic()
    scratch = Path(tempfile.mkdtemp(prefix="ztb-demo-"))
    out(f"ztb demo: a development deployment in {scratch / 'deployment'} on free loopback ports")
    local = LocalDeployment(scratch / "deployment")
    try:
        out(f"  sample upstream {SAMPLE_UPSTREAM} on 127.0.0.1:{local.upstream_port} (mTLS, SPKI-pinned)")
        out(f"  broker on {local.url}\n")
        story = Story(local)
        try:
            story.tell()
        finally:
            story.checkout.close()
            story.reports.close()
        local.stop_broker()
        out(_table(story.steps))
        key = load_public_key(str(local.root / "keys" / "audit.pub"))
        keys = {kid_of(key): key}
        report = verify_logs(find_logs(local.root), keys)
        out("\nThe auditor's check, `ztb audit verify` with the deployment's public key:")
        out(report.to_text())
        tamper_ok, detail = _tamper_check(local.log_dir, keys, scratch)
        out(
            f"\nOne byte of a copy of the log changed -> verify says: {detail} "
            f"({'detected' if tamper_ok else 'NOT DETECTED'})"
        )
        anchored_ok = _anchoring(local, keys, scratch, out)
        behaved = all(s.ok for s in story.steps) and report.ok and tamper_ok and anchored_ok
        refused_reached = [s for s in story.steps if s.expected[0] not in "2" and s.upstream_saw]
        behaved = behaved and not refused_reached
        out(
            f"\n{'Everything behaved' if behaved else 'SOMETHING DID NOT BEHAVE'}: "
            f"{sum(s.ok for s in story.steps)}/{len(story.steps)} steps as expected, "
            f"log {'intact' if report.ok else 'BROKEN'}, {time.monotonic() - started:.1f} s."
        )
        out(
            f"Deployment and log kept in {scratch / 'deployment'} (try: ztb audit show {scratch / 'deployment'} --tail 5)"
        )
        return behaved
    finally:
        local.close()
