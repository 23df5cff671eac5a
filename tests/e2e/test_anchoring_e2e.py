"""End to end with real processes on loopback: `ztb serve` anchors its log to `ztb witness serve`
over mTLS; then the auditor's commands catch a cut log and a history rewritten with stolen keys,
and a caller's receipt becomes a verified inclusion proof."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from audit.auditlog_builder import forge
from procs import ZtbProcess
from ztb.audit.anchor import CHECKPOINTS_DIR, COSIGNED_NOTES, LOG_NOTES, read_leaves
from ztb.audit.checkpoint import Checkpoint, sign_checkpoint
from ztb.audit.keys import SigningKey, load_public_key
from ztb.audit.merkle import root_of
from ztb.client import Caller
from ztb.receipt import verify_receipt
from ztb.sample.local import SAMPLE_UPSTREAM, LoopThread, free_port
from ztb.sample.upstream import SampleUpstream


def ztb(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ztb", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@dataclass
class Run:
    dep: Path
    witness: Path
    offhost: Path
    receipts: list[str]

    @property
    def log(self) -> Path:
        return self.dep / "audit" / "broker-a"

    def keys(self) -> list[str | Path]:
        return [
            "--pubkey",
            self.dep / "keys/audit.pub",
            "--checkpoint-key",
            self.dep / "keys/checkpoint.vkey",
            "--witness-key",
            self.witness / "keys/witness.vkey",
        ]


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    root = tmp_path_factory.mktemp("e2e")
    dep, witness, offhost = root / "dep", root / "witness", root / "offhost" / "checkpoints.notes"
    upstream_port, witness_port = free_port(), free_port()
    broker_port, admin_port = free_port(), free_port()
    made = ztb(
        "init",
        dep,
        "--broker-port",
        broker_port,
        "--admin-port",
        admin_port,
        "--upstream-port",
        upstream_port,
    )
    assert made.returncode == 0, made.stderr
    made = ztb(
        "witness", "init", witness, "--port", witness_port,
        "--client-ca", dep / "ca/ca.pem", "--log", dep / "keys/checkpoint.vkey",
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    config = yaml.safe_load((dep / "broker.yaml").read_text())
    config["anchor"].update(
        every_s=0.2,
        sinks=[
            {"witness": f"https://127.0.0.1:{witness_port}", "ca": str(witness / "tls/ca.pem"),
             "vkey": str(witness / "keys/witness.vkey")},
            {"file": str(offhost)},
        ],
    )  # fmt: skip
    (dep / "broker.yaml").write_text(yaml.safe_dump(config))
    loop = LoopThread()
    folder = dep / "upstreams" / SAMPLE_UPSTREAM
    upstream = SampleUpstream(folder / "cert.pem", folder / "key.pem", dep / "ca/ca.pem", port=upstream_port)
    loop.run(upstream.start())
    witness_process = ZtbProcess("witness", "serve", witness, ready="serving https://")
    broker = ZtbProcess("serve", dep, ready="serving https://")
    try:
        caller = Caller.for_identity(dep, "svc.checkout", f"https://127.0.0.1:{broker_port}")
        receipts = []
        for _ in range(6):
            token = caller.mint(SAMPLE_UPSTREAM, "orders:read")
            response = caller.call("GET", SAMPLE_UPSTREAM, "/v1/orders?limit=5", token=token)
            assert response.status == 200
            receipts.append(response.headers["ztb-receipt"])
        caller.close()
        assert broker.stop() == 0  # SIGTERM: `stop`, then a last checkpoint, cosigned
        yield Run(dep, witness, offhost, receipts)
    finally:
        broker.kill()
        witness_process.kill()
        loop.run(upstream.stop())
        loop.stop()


def test_the_anchored_log_verifies_with_the_witness_key(run: Run) -> None:
    result = ztb(
        "audit",
        "verify",
        run.dep,
        "--witness-key",
        run.witness / "keys/witness.vkey",
        "--checkpoints",
        run.offhost,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    entries = len(read_leaves(run.log))
    assert (
        f"anchored up to size {entries}; cosigned by witness.ztb.invalid/w1 up to size {entries}"
        in result.stdout
    )


def test_deleting_the_last_entries_is_reported_truncated(run: Run, tmp_path: Path) -> None:
    copy = tmp_path / "broker-a"
    shutil.copytree(run.log, copy)
    segment = copy / "000001.jsonl"
    lines = segment.read_bytes().splitlines(keepends=True)
    segment.write_bytes(b"".join(lines[:-5]))
    result = ztb("audit", "verify", copy, *run.keys(), "--json")
    assert result.returncode == 1
    (log,) = json.loads(result.stdout)["logs"]
    assert log["first_break"]["category"] == "truncated"
    assert log["first_break"]["seq"] == len(lines) - 5
    # Without the anchors, a cut log is indistinguishable from one that ended there.
    plain = ztb("audit", "verify", copy, "--pubkey", run.dep / "keys/audit.pub")
    assert plain.returncode == 0


def test_a_history_resigned_with_stolen_keys_is_exposed_by_the_cosigned_checkpoints(
    run: Run, tmp_path: Path
) -> None:
    """The thief holds the audit key and the checkpoint key (both live on the broker's host)."""
    copy = tmp_path / "broker-a"
    shutil.copytree(run.log, copy)
    segment = copy / "000001.jsonl"
    audit_key = SigningKey.load(run.dep / "keys/audit.key")
    checkpoint_key = SigningKey.load(run.dep / "keys/checkpoint.key")
    forged = forge(
        segment.read_bytes().splitlines(keepends=True), 4, audit_key, lambda body: body.update(latency_ms=0)
    )
    segment.write_bytes(b"".join(forged))
    # Fresh checkpoints for the forged tree, signed with the stolen checkpoint key; the witness
    # cosignatures cannot be forged, so the thief drops them.
    notes = copy / CHECKPOINTS_DIR
    shutil.rmtree(notes)
    notes.mkdir()
    leaves = read_leaves(copy)
    resigned = [
        sign_checkpoint(Checkpoint("dev/broker-a", size, root_of(leaves[:size])), checkpoint_key)
        for size in range(4, len(leaves) + 1)
    ]
    (notes / LOG_NOTES).write_text("".join(note.encode() + "\n" for note in resigned))
    chain_only = ztb(
        "audit",
        "verify",
        copy,
        "--pubkey",
        run.dep / "keys/audit.pub",
        "--checkpoint-key",
        run.dep / "keys/checkpoint.vkey",
    )
    assert chain_only.returncode == 0  # the thief's own signatures all hold
    (state,) = (run.witness / "state").glob("*.json")
    for anchor in (state, run.offhost):
        result = ztb("audit", "verify", copy, *run.keys(), "--checkpoints", anchor, "--json")
        assert result.returncode == 1, anchor
        (log,) = json.loads(result.stdout)["logs"]
        assert log["first_break"]["category"] == "root_mismatch", (anchor, log["first_break"])
    missing = ztb("audit", "verify", copy, *run.keys())
    assert missing.returncode == 1 and "bad_cosignature" in missing.stdout


def test_a_receipt_from_a_response_verifies_against_a_later_checkpoint(run: Run) -> None:
    header = run.receipts[2]
    seq = header.split(".")[0]
    result = ztb("audit", "prove", run.dep, "--seq", seq, "--witness-key", run.witness / "keys/witness.vkey")
    assert result.returncode == 0, result.stderr
    proved = verify_receipt(
        header,
        result.stdout,
        audit_keys=[load_public_key(str(run.dep / "keys/audit.pub"))],
        checkpoint_key=(run.dep / "keys/checkpoint.vkey").read_text(),
        witness_keys=[(run.witness / "keys/witness.vkey").read_text()],
    )
    assert proved.checkpoint.size > int(seq)
    assert proved.witnesses == ("witness.ztb.invalid/w1",)
    assert json.loads(result.stdout)["checkpoint"] in (run.log / CHECKPOINTS_DIR / COSIGNED_NOTES).read_text()
