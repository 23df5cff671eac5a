"""`ztb witness serve` as a real process over mTLS: refusals leave its state file untouched,
racing submissions end in one state, and a SIGKILL in the middle of updates leaves a state that
is whole and one of those submitted."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from witness_logs import ORIGIN, FakeLog

from procs import MtlsClient, ZtbProcess
from ztb import pki
from ztb.audit.keys import SigningKey
from ztb.audit.note import Note, Verifier, open_note
from ztb.sample.local import free_port
from ztb.witness.config import init_witness

READY = "serving https://"


class Rig:
    def __init__(self, root: Path) -> None:
        self.root = root
        ca = pki.new_ca("test brokers CA")
        ca.write(root / "ca.pem", root / "ca.key")
        pki.issue_client(ca, "broker-a").write(root / "client.pem", root / "client.key")
        self.log = FakeLog()
        (root / "log.vkey").write_text(self.log.verifier.vkey() + "\n")
        self.port = free_port()
        self.folder = root / "witness"
        self.verifier = init_witness(
            self.folder,
            name="witness.test/w1",
            port=self.port,
            client_ca=root / "ca.pem",
            logs=(root / "log.vkey",),
        )
        self.client = MtlsClient(
            self.port, self.folder / "tls/ca.pem", root / "client.pem", root / "client.key"
        )
        self.process: ZtbProcess | None = None

    def start(self) -> None:
        self.process = ZtbProcess("witness", "serve", self.folder, ready=READY)

    def submit(
        self, old: int, new: int, log: FakeLog | None = None, proof: list[bytes] | None = None
    ) -> tuple[int, str, str]:
        return self.client.post("/add-checkpoint", (log or self.log).body(old, new, proof))

    def state_files(self) -> list[Path]:
        return sorted((self.folder / "state").glob("*.json"))

    def state_bytes(self) -> bytes:
        (path,) = self.state_files()
        return path.read_bytes()

    def state(self) -> dict[str, object]:
        return json.loads(self.state_bytes())  # type: ignore[no-any-return]


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    made = Rig(tmp_path)
    made.start()
    try:
        yield made
    finally:
        assert made.process is not None
        made.process.kill()


def test_refusals_over_the_wire_leave_the_state_untouched(rig: Rig) -> None:
    assert rig.submit(0, 10)[0] == 200
    before = rig.state_bytes()
    forked = FakeLog(seed="b", key=rig.log.key)
    wrong = rig.log.proof(10, 20)
    wrong[-1] = bytes(32)
    stranger = FakeLog(key=SigningKey.generate())
    cases = {
        "fork (same size, other root)": (rig.submit(10, 10, log=forked), 409),
        "rollback (smaller size)": (rig.submit(10, 5, proof=[]), 400),
        "rollback (stale old size)": (rig.submit(5, 8), 409),
        "wrong consistency proof": (rig.submit(10, 20, proof=wrong), 422),
        "signed by an unknown key": (rig.submit(10, 20, log=stranger), 403),
        "unknown origin": (rig.submit(0, 5, log=FakeLog(origin="test/other")), 404),
        "malformed": (rig.client.post("/add-checkpoint", b"old 10\n"), 400),
    }
    for name, ((status, _, body), expected) in cases.items():
        assert status == expected, (name, status, body)
        assert rig.state_bytes() == before, name
    assert rig.submit(5, 8)[1] == "text/x.tlog.size"
    assert rig.submit(5, 8)[2] == "10\n"
    status, _, body = rig.submit(10, 20)
    assert status == 200 and body.startswith("\u2014 witness.test/w1 ")
    assert rig.state()["size"] == 20


def test_a_client_without_a_certificate_is_refused(rig: Rig) -> None:
    anonymous = MtlsClient(rig.port, rig.folder / "tls/ca.pem", None, None)
    with pytest.raises((OSError, ConnectionError)):
        anonymous.post("/add-checkpoint", rig.log.body(0, 10))
    assert rig.state_files() == []


def test_racing_submissions_end_in_one_state(rig: Rig) -> None:
    assert rig.submit(0, 10)[0] == 200
    racers = 8
    barrier = threading.Barrier(racers)
    results: dict[int, int] = {}

    def race(size: int) -> None:
        body = rig.log.body(10, size)
        barrier.wait(10)
        results[size] = rig.client.post("/add-checkpoint", body)[0]

    threads = [threading.Thread(target=race, args=(11 + i,)) for i in range(racers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    winners = [size for size, status in results.items() if status == 200]
    assert len(results) == racers and len(winners) == 1, results
    assert sorted(results.values()) == [200] + [409] * (racers - 1)
    state = rig.state()
    assert state["size"] == winners[0]
    note = Note.parse(str(state["checkpoint"]))
    witness = Verifier.parse(rig.verifier.vkey())
    assert open_note(note, [rig.log.verifier, witness]) == [rig.log.verifier, witness]


def test_sigkill_mid_update_leaves_a_whole_state(rig: Rig) -> None:
    assert rig.process is not None
    size = 0
    for _round in range(3):
        acked, sent = size, size
        stop = threading.Event()

        def submit_forever(stop: threading.Event = stop) -> None:
            nonlocal acked, sent
            while not stop.is_set() and sent < 500:
                sent = acked + 1
                try:
                    status = rig.submit(acked, sent)[0]
                except OSError:
                    return
                if status != 200:
                    return
                acked = sent

        worker = threading.Thread(target=submit_forever)
        worker.start()
        start = acked
        deadline = threading.Event()
        while acked < start + 5 and worker.is_alive():
            deadline.wait(0.01)
        rig.process.kill()  # SIGKILL, while the worker keeps submitting
        stop.set()
        worker.join(15)
        rig.start()
        state = rig.state()
        assert state["origin"] == ORIGIN
        assert state["size"] in (acked, sent), (state["size"], acked, sent)
        note = Note.parse(str(state["checkpoint"]))
        open_note(note, [rig.log.verifier, Verifier.parse(rig.verifier.vkey())])
        assert not list((rig.folder / "state").glob(".tmp-*"))
        size = int(str(state["size"]))
        assert rig.submit(size, size + 1)[0] == 200  # and it carries on from there
        size += 1


def test_a_second_witness_on_the_same_folder_is_refused(rig: Rig) -> None:
    second = subprocess.run(
        [sys.executable, "-m", "ztb", "witness", "serve", str(rig.folder)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert second.returncode == 1
    assert second.stderr.startswith("ztb: error: ") and "another witness process" in second.stderr
