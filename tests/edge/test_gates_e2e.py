"""The five gates end to end: real TLS over 127.0.0.1 to the real broker and the recording sample
upstream, the audit log read back from disk. Nothing is mocked.

For every refusal reachable on the data plane and the token endpoint: the HTTP status, the exact
error body, the audit entry of that call (DENY, gate, reason), and proof that the upstream saw
nothing of it. For allowed calls: exactly what reached the upstream, what came back, and the
`call` and `result` entries that describe both.

Reminder of the order that shapes these tests: identity -> scope -> allowlist -> shape -> egress.
The scope gate takes the presented token before the allowlist and shape gates look at anything,
so every request meant to reach those gates carries a fresh, valid token of its own.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import http.client
import json
import re
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from stack import UPSTREAM, Stack
from ztb import pki
from ztb.client import Caller, CertificateRefused, Response, client_context
from ztb.config import load_registry
from ztb.deploy import sample_order, sign_registry_with_dev_keys
from ztb.tokens.format import new_token, token_hash, token_id

CHECKOUT = "svc.checkout"
REPORTS = "svc.reports"
CREATE = "/v1/orders/create"
LIST = "/v1/orders"
ORDER_ID = "6f1c2a9e-4b7d-4e1a-9c3f-2d8b5e0a7c41"
READ = "orders:read"
WRITE = "orders:create"
ULID = re.compile(r"[0-9A-HJKMNP-TV-Z]{26}")
ORDER = json.dumps(sample_order(), separators=(",", ":")).encode()
REFUSAL_HEADERS = {"content-type", "cache-control", "content-length", "connection"}

# A second and a third upstream for the `edited` deployment: both are the same sample upstream,
# one registered with a pin that is not its key's, the other with a short timeout.
BILLING = "billing.api.internal"
SLOW = "slow.api.internal"


# -- helpers --------------------------------------------------------------------------------------


def tid(token: str) -> str:
    return token_id(token_hash(token))


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def pin_of(stack: Stack, identity: str) -> str:
    folder = stack.root / "callers" / identity
    return pki.load_issued(folder / "cert.pem", folder / "key.pem").pin


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def error_of(response: Response, status: int, gate: str, reason: str) -> str:
    """Check a refusal's status and exact body; return its call id."""
    assert response.status == status, (response.status, response.body)
    assert response.headers["content-type"] == "application/json"
    body = json.loads(response.body)
    call_id = body.get("error", {}).get("call_id")
    assert isinstance(call_id, str)
    assert ULID.fullmatch(call_id), call_id
    assert body == {"error": {"gate": gate, "reason": reason, "call_id": call_id}}
    return call_id


def assert_not_forwarded(stack: Stack, before: int, call_id: str) -> None:
    assert len(stack.upstream.received) == before
    assert all(request.header("ztb-call-id") != call_id for request in stack.upstream.received)


def assert_refused(
    stack: Stack,
    response: Response,
    status: int,
    gate: str,
    reason: str,
    *,
    before: int,
    kind: str = "call",
) -> dict[str, Any]:
    """A refusal: status, exact body, no rotation token, one DENY entry, nothing upstream."""
    call_id = error_of(response, status, gate, reason)
    assert "ztb-next-token" not in response.headers
    assert set(response.headers) <= REFUSAL_HEADERS, response.headers
    entry = entry_of(stack, call_id, kind)
    assert entry["decision"] == "DENY"
    assert entry["reason"] == reason
    if kind == "call":
        assert entry["gate"] == gate
    assert_not_forwarded(stack, before, call_id)
    return entry


def raw_request(stack: Stack, data: bytes, identity: str = CHECKOUT, timeout: float = 5.0) -> Response:
    """Send `data` as is over a fresh mTLS connection and read one response."""
    folder = stack.root / "callers" / identity
    ctx = client_context(folder / "cert.pem", folder / "key.pem", stack.root / "ca" / "ca.pem")
    with (
        socket.create_connection(("127.0.0.1", stack.port), timeout=timeout) as sock,
        ctx.wrap_socket(sock, server_hostname="127.0.0.1") as tls,
    ):
        tls.sendall(data)
        response = http.client.HTTPResponse(tls)
        response.begin()
        body = response.read()
        return Response(response.status, {k.lower(): v for k, v in response.getheaders()}, body)


def log_entries(stack: Stack) -> list[dict[str, Any]]:
    """The entries on disk, without a line the writer is still in the middle of writing."""
    entries: list[dict[str, Any]] = []
    for segment in sorted(stack.log_dir.glob("*.jsonl")):
        data = segment.read_bytes()
        whole = data[: data.rfind(b"\n") + 1]
        entries.extend(json.loads(line) for line in whole.splitlines())
    return entries


def wait_for(
    stack: Stack, predicate: Callable[[dict[str, Any]], bool], timeout: float = 5.0
) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while True:
        found = [entry for entry in log_entries(stack) if predicate(entry)]
        if found or time.monotonic() > deadline:
            return found
        time.sleep(0.01)


def entry_of(stack: Stack, call_id: str, kind: str = "call") -> dict[str, Any]:
    found = wait_for(stack, lambda e: e.get("call_id") == call_id and e["kind"] == kind)
    assert len(found) == 1, f"expected one {kind} entry for {call_id}, found {len(found)}"
    return found[0]


def head(method: str, target: str, headers: list[tuple[str, str]], version: str = "HTTP/1.1") -> bytes:
    lines = [f"{method} {target} {version}", "Host: 127.0.0.1", *(f"{k}: {v}" for k, v in headers)]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def edit_yaml(path: Path, change: Callable[[dict[str, Any]], None]) -> None:
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    change(data)
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")


def restarted(stack: Stack, file: str, change: Callable[[dict[str, Any]], None]) -> Stack:
    stack.stop_broker()
    edit_yaml(stack.root / file, change)
    if file == "registry.yaml":  # a changed policy needs its approvals again
        sign_registry_with_dev_keys(stack.root)
    stack.start_broker()
    return stack


# -- fixtures -------------------------------------------------------------------------------------


@pytest.fixture
def checkout(stack: Stack) -> Iterator[Caller]:
    caller = stack.caller(CHECKOUT)
    yield caller
    caller.close()


@pytest.fixture
def reports(stack: Stack) -> Iterator[Caller]:
    caller = stack.caller(REPORTS)
    yield caller
    caller.close()


def _add_upstreams(registry: dict[str, Any]) -> None:
    orders = registry["upstreams"][UPSTREAM]
    checkout_pin = registry["identities"][CHECKOUT]["spki"][0]
    registry["upstreams"][BILLING] = {**orders, "spki": [checkout_pin]}  # not the upstream's key
    registry["upstreams"][SLOW] = {**orders, "timeout_ms": 300}
    registry["routes"] += [
        {
            "id": "billing.invoices",
            "upstream": BILLING,
            "method": "GET",
            "path": "/v1/invoices",
            "scope": "invoices:read",
        },
        {"id": "slow.orders", "upstream": SLOW, "method": "GET", "path": LIST, "scope": READ},
    ]
    registry["grants"][CHECKOUT][BILLING] = ["invoices:read"]
    registry["grants"][CHECKOUT][SLOW] = [READ]


@pytest.fixture(scope="module")
def edited(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """A deployment with two more upstreams: `billing` (pin mismatch) and `slow` (300 ms timeout)."""
    stack = Stack(tmp_path_factory.mktemp("edited") / "dep")
    try:
        yield restarted(stack, "registry.yaml", _add_upstreams)
    finally:
        stack.close()


def _fast_limits(config: dict[str, Any]) -> None:
    config["token_ttl_s"] = 1
    config["limits"]["header_timeout_s"] = 1.0
    config["limits"]["body_timeout_s"] = 0.5


@pytest.fixture(scope="module")
def quick(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """A deployment with a 1 s token TTL, a 1 s header timeout and a 0.5 s body timeout."""
    stack = Stack(tmp_path_factory.mktemp("quick") / "dep")
    try:
        yield restarted(stack, "broker.yaml", _fast_limits)
    finally:
        stack.close()


# == gate 1: identity ============================================================================


def test_unknown_spki_is_refused_before_the_token_is_looked_at(
    stack: Stack, checkout: Caller, tmp_path: Path
) -> None:
    ca = pki.load_issued(stack.root / "ca" / "ca.pem", stack.root / "ca" / "ca.key")
    stranger = pki.issue_client(ca, "svc.stranger")
    stranger.write(tmp_path / "cert.pem", tmp_path / "key.pem")
    caller = Caller(stack.url, tmp_path / "cert.pem", tmp_path / "key.pem", stack.root / "ca" / "ca.pem")
    token = checkout.mint(UPSTREAM, READ)
    before = len(stack.upstream.received)
    try:
        response = caller.request("GET", f"/{UPSTREAM}{LIST}", headers=bearer(token))
    finally:
        caller.close()
    entry = assert_refused(stack, response, 403, "identity", "unknown_spki", before=before)
    assert entry["caller"] == {"spki": stranger.pin, "identity": None, "addr": "127.0.0.1"}
    assert entry["token"] is None
    assert entry["shape"] is None
    # the identity gate ran first: the token was not even taken
    assert checkout.call("GET", UPSTREAM, LIST, token=token).status == 200


def test_unknown_spki_cannot_mint(stack: Stack, tmp_path: Path) -> None:
    ca = pki.load_issued(stack.root / "ca" / "ca.pem", stack.root / "ca" / "ca.key")
    stranger = pki.issue_client(ca, CHECKOUT)  # the right name is not the right key
    stranger.write(tmp_path / "cert.pem", tmp_path / "key.pem")
    caller = Caller(stack.url, tmp_path / "cert.pem", tmp_path / "key.pem", stack.root / "ca" / "ca.pem")
    before = len(stack.upstream.received)
    body = json.dumps({"upstream": UPSTREAM, "scope": READ}).encode()
    try:
        response = caller.request("POST", "/.ztb/token", body, {"Content-Type": "application/json"})
    finally:
        caller.close()
    entry = assert_refused(stack, response, 403, "identity", "unknown_spki", before=before, kind="token")
    assert entry["caller"] == {"spki": stranger.pin, "identity": None, "addr": "127.0.0.1"}
    assert "id" not in entry


def _tls_client(stack: Stack, folder: Path, kind: str) -> tuple[Path | None, Path | None]:
    ca = pki.load_issued(stack.root / "ca" / "ca.pem", stack.root / "ca" / "ca.key")
    past = dt.datetime(2020, 1, 1, tzinfo=dt.UTC)
    issued = {
        "none": None,
        "other CA": lambda: pki.issue_client(pki.new_ca("another CA"), CHECKOUT),
        "self-signed": lambda: pki.issue_leaf(None, CHECKOUT, eku=[pki.CLIENT_AUTH]),
        "expired": lambda: pki.issue_client(
            ca, CHECKOUT, not_before=past, not_after=past + dt.timedelta(days=1)
        ),
        "serverAuth only": lambda: pki.issue_leaf(ca, CHECKOUT, eku=[pki.SERVER_AUTH]),
        "no EKU": lambda: pki.issue_leaf(ca, CHECKOUT, eku=[]),
        "CA as leaf": lambda: pki.issue_leaf(ca, CHECKOUT, eku=[pki.CLIENT_AUTH], is_ca=True),
    }[kind]
    if issued is None:
        return None, None
    issued().write(folder / "cert.pem", folder / "key.pem")
    return folder / "cert.pem", folder / "key.pem"


@pytest.mark.parametrize(
    ("kind", "reason"),
    [
        ("none", "no_client_certificate"),
        ("other CA", "untrusted_certificate"),
        ("self-signed", "untrusted_certificate"),
        ("expired", "untrusted_certificate"),
        ("serverAuth only", "untrusted_certificate"),
        ("no EKU", "client_cert_not_client_auth"),
        ("CA as leaf", "client_cert_is_ca"),
    ],
)
def test_bad_client_certificate_gets_no_conversation(
    stack: Stack, tmp_path: Path, kind: str, reason: str
) -> None:
    cert, key = _tls_client(stack, tmp_path, kind)
    before = len(stack.upstream.received)
    assert stack.broker is not None
    last_seq = stack.broker.writer.next_seq - 1  # appended so far, flushed or not
    caller = Caller(stack.url, cert, key, stack.root / "ca" / "ca.pem")
    try:
        # Refused in the handshake: the caller is told so by its alert (CertificateRefused, with the
        # entry's reason). Refused right after it (no EKU, a CA as leaf): the connection just closes.
        with pytest.raises((CertificateRefused, OSError, http.client.HTTPException)) as raised:
            caller.request("GET", f"/{UPSTREAM}{LIST}", headers=bearer(new_token()))
    finally:
        caller.close()
    if reason in ("client_cert_not_client_auth", "client_cert_is_ca"):
        assert not isinstance(raised.value, CertificateRefused)
    else:
        assert isinstance(raised.value, CertificateRefused) and raised.value.reason == reason
    # One `identity` entry (repeats from one source within a second are folded into a count).
    found = wait_for(
        stack, lambda e: e["kind"] == "identity" and e["seq"] > last_seq and e["reason"] == reason
    )
    assert found, f"no identity entry with reason {reason}"
    entry = found[0]
    assert entry["decision"] == "DENY"
    assert entry["gate"] == "identity"
    assert entry["caller"] == {"addr": "127.0.0.1"}
    assert entry["count"] >= 1
    assert len(stack.upstream.received) == before
    assert not wait_for(stack, lambda e: e["kind"] == "call" and e["seq"] > last_seq, timeout=0.2)


# == gate 2: scope ===============================================================================


def test_missing_token(stack: Stack, checkout: Caller) -> None:
    before = len(stack.upstream.received)
    response = checkout.request("GET", f"/{UPSTREAM}{LIST}")
    entry = assert_refused(stack, response, 401, "scope", "missing_token", before=before)
    assert entry["token"] is None
    assert entry["caller"]["identity"] == CHECKOUT
    assert entry["upstream"]["route"] == "orders.list"


MALFORMED = {
    "bad prefix": lambda t: "Bearer xtb_" + t[4:],
    "bad checksum": lambda t: "Bearer " + t[:-1] + ("0" if t[-1] != "0" else "1"),
    "one character changed": lambda t: "Bearer " + t[:10] + ("A" if t[10] != "A" else "B") + t[11:],
    "truncated": lambda t: "Bearer " + t[:-1],
    "Basic scheme": lambda t: "Basic " + t,
    "no scheme": lambda t: t,
    "scheme only": lambda t: "Bearer",
    "two tokens": lambda t: f"Bearer {t} {t}",
    "JWT-looking": lambda t: "Bearer eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0.",
}


@pytest.mark.parametrize("value", list(MALFORMED.values()), ids=list(MALFORMED))
def test_malformed_token(stack: Stack, checkout: Caller, value: Callable[[str], str]) -> None:
    token = checkout.mint(UPSTREAM, READ)
    before = len(stack.upstream.received)
    response = checkout.request("GET", f"/{UPSTREAM}{LIST}", headers={"Authorization": value(token)})
    entry = assert_refused(stack, response, 401, "scope", "malformed_token", before=before)
    assert entry["token"] is None


def test_basic_scheme_is_not_a_presentation(stack: Stack, checkout: Caller) -> None:
    """Only `Authorization: Bearer` presents a token: a token sent otherwise is not consumed."""
    token = checkout.mint(UPSTREAM, READ)
    response = checkout.request("GET", f"/{UPSTREAM}{LIST}", headers={"Authorization": f"Basic {token}"})
    assert response.status == 401
    assert checkout.call("GET", UPSTREAM, LIST, token=token).status == 200


def test_two_authorization_headers(stack: Stack, checkout: Caller) -> None:
    token = checkout.mint(UPSTREAM, READ)
    other = checkout.mint(UPSTREAM, READ)
    before = len(stack.upstream.received)
    data = head(
        "GET",
        f"/{UPSTREAM}{LIST}",
        [("Authorization", f"Bearer {token}"), ("Authorization", f"Bearer {other}")],
    )
    response = raw_request(stack, data)
    entry = assert_refused(stack, response, 401, "scope", "malformed_token", before=before)
    assert entry["token"] is None


def test_unknown_token(stack: Stack, checkout: Caller) -> None:
    token = new_token()  # well-formed, never minted
    before = len(stack.upstream.received)
    response = checkout.call("GET", UPSTREAM, LIST, token=token)
    entry = assert_refused(stack, response, 401, "scope", "unknown_token", before=before)
    assert entry["token"] == {"id": tid(token), "scope": None, "exp_in_s": None, "next_id": None}


def test_token_works_once_then_replay_is_refused(stack: Stack, checkout: Caller) -> None:
    token = checkout.mint(UPSTREAM, READ)
    assert checkout.call("GET", UPSTREAM, LIST, token=token).status == 200
    before = len(stack.upstream.received)
    response = checkout.call("GET", UPSTREAM, LIST, token=token)
    entry = assert_refused(stack, response, 403, "scope", "token_replayed", before=before)
    assert entry["token"] == {"id": tid(token), "scope": None, "exp_in_s": None, "next_id": None}
    # and again: a replay stays a replay
    response = checkout.call("GET", UPSTREAM, LIST, token=token)
    assert_refused(stack, response, 403, "scope", "token_replayed", before=before)


def test_token_from_another_certificate_is_refused_and_burnt(
    stack: Stack, checkout: Caller, reports: Caller
) -> None:
    token = checkout.mint(UPSTREAM, READ)  # svc.reports is granted orders:read too
    before = len(stack.upstream.received)
    response = reports.call("GET", UPSTREAM, LIST, token=token)
    entry = assert_refused(stack, response, 403, "scope", "wrong_certificate", before=before)
    assert entry["caller"] == {"spki": pin_of(stack, REPORTS), "identity": REPORTS, "addr": "127.0.0.1"}
    assert entry["token"]["id"] == tid(token)
    assert entry["token"]["scope"] == [READ]
    assert entry["token"]["exp_in_s"] in (59, 60)
    # the leaked token is gone for its owner too
    response = checkout.call("GET", UPSTREAM, LIST, token=token)
    assert_refused(stack, response, 403, "scope", "token_replayed", before=before)


def test_token_for_another_scope_is_refused(stack: Stack, checkout: Caller) -> None:
    token = checkout.mint(UPSTREAM, READ)
    before = len(stack.upstream.received)
    response = checkout.call("POST", UPSTREAM, CREATE, token=token, body=ORDER)
    entry = assert_refused(stack, response, 403, "scope", "scope_mismatch", before=before)
    assert entry["token"]["scope"] == [READ]
    assert entry["upstream"]["route"] == "orders.create"
    assert entry["shape"] is None  # decided before the body was read
    response = checkout.call("GET", UPSTREAM, LIST, token=token)
    assert_refused(stack, response, 403, "scope", "token_replayed", before=before)


def test_token_for_another_upstream_is_refused(edited: Stack) -> None:
    caller = edited.caller(CHECKOUT)
    try:
        token = caller.mint(BILLING, "invoices:read")
        before = len(edited.upstream.received)
        response = caller.call("GET", UPSTREAM, LIST, token=token)
        entry = assert_refused(edited, response, 403, "scope", "upstream_mismatch", before=before)
        assert entry["token"]["scope"] == ["invoices:read"]
        assert entry["upstream"]["name"] == UPSTREAM
    finally:
        caller.close()


def test_expired_token_is_refused(quick: Stack) -> None:
    caller = quick.caller(CHECKOUT)
    try:
        body = json.dumps({"upstream": UPSTREAM, "scope": READ}).encode()
        minted = caller.request("POST", "/.ztb/token", body, {"Content-Type": "application/json"})
        assert minted.status == 200
        assert minted.json()["expires_in"] == 1
        token = minted.json()["access_token"]
        time.sleep(2.1)
        before = len(quick.upstream.received)
        response = caller.call("GET", UPSTREAM, LIST, token=token)
        entry = assert_refused(quick, response, 401, "scope", "token_expired", before=before)
        assert entry["token"] == {"id": tid(token), "scope": None, "exp_in_s": None, "next_id": None}
        # an expired token is consumed by its presentation like any other
        response = caller.call("GET", UPSTREAM, LIST, token=token)
        assert_refused(quick, response, 403, "scope", "token_replayed", before=before)
    finally:
        caller.close()


def test_grant_revoked_after_mint_is_refused(fresh_stack: Stack) -> None:
    """The identity must still be granted the scope under the registry in force at the call."""
    caller = fresh_stack.caller(REPORTS)
    try:
        token = caller.mint(UPSTREAM, READ)
        edit_yaml(fresh_stack.root / "registry.yaml", lambda r: r["grants"].pop(REPORTS))
        sign_registry_with_dev_keys(fresh_stack.root)
        assert fresh_stack.broker is not None
        # what a registry reload does: the broker takes the new registry for the calls that follow
        fresh_stack.broker.broker.registry = load_registry(fresh_stack.root)
        before = len(fresh_stack.upstream.received)
        response = caller.call("GET", UPSTREAM, LIST, token=token)
        entry = assert_refused(fresh_stack, response, 403, "scope", "not_granted", before=before)
        assert entry["token"]["scope"] == [READ]
    finally:
        caller.close()


# -- the token endpoint ---------------------------------------------------------------------------


def mint_raw(caller: Caller, body: bytes, content_type: str = "application/json") -> Response:
    return caller.request("POST", "/.ztb/token", body, {"Content-Type": content_type})


def test_mint_answer(stack: Stack, checkout: Caller) -> None:
    response = mint_raw(checkout, json.dumps({"upstream": UPSTREAM, "scope": WRITE}).encode())
    assert response.status == 200
    answer = response.json()
    token = answer["access_token"]
    assert answer == {
        "access_token": token,
        "token_type": "Bearer",
        "expires_in": 60,
        "upstream": UPSTREAM,
        "scope": WRITE,
    }
    assert response.headers["cache-control"] == "no-store"
    call_id = response.headers["ztb-call-id"]
    entry = entry_of(stack, call_id, "token")
    assert entry["decision"] == "ALLOW"
    assert entry["reason"] is None
    assert entry["id"] == tid(token)
    assert entry["exp_in_s"] == 60
    assert entry["upstream"] == UPSTREAM
    assert entry["scope"] == WRITE
    assert entry["caller"] == {"spki": pin_of(stack, CHECKOUT), "identity": CHECKOUT, "addr": "127.0.0.1"}
    assert token not in json.dumps(log_entries(stack))  # the log holds ids, never tokens


@pytest.mark.parametrize(
    ("upstream", "scope"),
    [
        (UPSTREAM, WRITE),  # a real scope svc.reports is not granted
        (UPSTREAM, "orders:delete"),  # a scope no route uses
        ("billing.api.internal", READ),  # an upstream that does not exist
    ],
)
def test_mint_not_granted(stack: Stack, reports: Caller, upstream: str, scope: str) -> None:
    before = len(stack.upstream.received)
    response = mint_raw(reports, json.dumps({"upstream": upstream, "scope": scope}).encode())
    entry = assert_refused(stack, response, 403, "scope", "not_granted", before=before, kind="token")
    assert entry["caller"]["identity"] == REPORTS
    assert "id" not in entry


def test_refused_mint_records_what_was_asked(stack: Stack, reports: Caller) -> None:
    response = mint_raw(reports, json.dumps({"upstream": UPSTREAM, "scope": WRITE}).encode())
    call_id = error_of(response, 403, "scope", "not_granted")
    entry = entry_of(stack, call_id, "token")
    assert (entry["upstream"], entry["scope"]) == (UPSTREAM, WRITE)


BAD_MINTS = {
    "not JSON": b"{",
    "empty": b"",
    "array": b"[]",
    "extra field": json.dumps({"upstream": UPSTREAM, "scope": READ, "ttl": 3600}).encode(),
    "missing scope": json.dumps({"upstream": UPSTREAM}).encode(),
    "scope not a string": json.dumps({"upstream": UPSTREAM, "scope": [READ]}).encode(),
    "duplicate key": b'{"upstream": "orders.api.internal", "scope": "orders:read", "scope": "orders:create"}',
    "too large": json.dumps({"upstream": UPSTREAM, "scope": READ + " " * 5000}).encode(),
}


@pytest.mark.parametrize("body", list(BAD_MINTS.values()), ids=list(BAD_MINTS))
def test_bad_token_request(stack: Stack, checkout: Caller, body: bytes) -> None:
    before = len(stack.upstream.received)
    response = mint_raw(checkout, body)
    entry = assert_refused(stack, response, 400, "scope", "bad_token_request", before=before, kind="token")
    assert entry["caller"]["identity"] == CHECKOUT
    assert (entry["upstream"], entry["scope"]) == (None, None)


# == gate 3: allowlist ===========================================================================

NON_CANONICAL = {
    "absolute-form metadata": "http://169.254.169.254/latest/meta-data/",
    "absolute-form upstream": f"https://{UPSTREAM}{LIST}",
    "asterisk": "*",
    "dot-dot segment": f"/{UPSTREAM}/v1/orders/../orders",
    "dot segment": f"/{UPSTREAM}/v1/./orders",
    "encoded dot-dot": f"/{UPSTREAM}/v1/%2E%2E/v1/orders",
    "encoded slash": f"/{UPSTREAM}/v1%2Forders",
    "encoded backslash": f"/{UPSTREAM}/v1%5Corders",
    "encoded NUL": f"/{UPSTREAM}/v1/orders%00",
    "empty segment": f"/{UPSTREAM}//v1/orders",
    "backslash": f"/{UPSTREAM}/v1\\orders",
    "lowercase escape": f"/{UPSTREAM}/v1/%6frders",
    "empty query": f"/{UPSTREAM}{LIST}?",
}


@pytest.mark.parametrize("target", list(NON_CANONICAL.values()), ids=list(NON_CANONICAL))
def test_non_canonical_target(stack: Stack, checkout: Caller, target: str) -> None:
    token = checkout.mint(UPSTREAM, READ)
    before = len(stack.upstream.received)
    response = checkout.request("GET", target, headers=bearer(token))
    entry = assert_refused(stack, response, 400, "allowlist", "non_canonical_target", before=before)
    assert entry["upstream"] == {"name": None, "route": None, "method": "GET", "path": None, "target": target}
    assert entry["token"]["id"] == tid(token)
    # probing burns the token
    response = checkout.call("GET", UPSTREAM, LIST, token=token)
    assert_refused(stack, response, 403, "scope", "token_replayed", before=before)


def test_unknown_upstream_and_unknown_route_look_the_same(stack: Stack, checkout: Caller) -> None:
    before = len(stack.upstream.received)
    answers = []
    for target in (
        "/billing.api.internal/v1/orders",
        f"/{UPSTREAM}/v1/admin",
        f"/{UPSTREAM}/v1/orders?debug=1",
    ):
        token = checkout.mint(UPSTREAM, READ)
        response = checkout.request("GET", target, headers=bearer(token))
        entry = assert_refused(stack, response, 404, "allowlist", "no_route", before=before)
        assert entry["upstream"]["route"] is None
        assert entry["upstream"]["path"] is None
        assert entry["upstream"]["target"] == target
        call_id = entry["call_id"]
        headers = dict(response.headers)
        answers.append((response.status, response.body.replace(call_id.encode(), b"ID"), headers))
    assert answers[0] == answers[1] == answers[2]


def test_probing_burns_tokens(stack: Stack, checkout: Caller) -> None:
    token = checkout.mint(UPSTREAM, READ)
    before = len(stack.upstream.received)
    response = checkout.call("GET", UPSTREAM, "/v1/orders/all", token=token)
    entry = assert_refused(stack, response, 404, "allowlist", "no_route", before=before)
    assert entry["token"]["id"] == tid(token)
    response = checkout.call("GET", UPSTREAM, LIST, token=token)
    assert_refused(stack, response, 403, "scope", "token_replayed", before=before)


@pytest.mark.parametrize(
    "data",
    [
        head("GET", f"/{UPSTREAM}{LIST}", [], version="HTTP/1.0"),
        head("GET", f"/{UPSTREAM}{LIST}", [("Connection", "Upgrade"), ("Upgrade", "h2c")]),
        head("GET", f"/{UPSTREAM}{LIST}", [("Connection", "Upgrade"), ("Upgrade", "websocket")]),
        b"HELLO\r\n\r\n",
        head("GET", f"/{UPSTREAM}{LIST}", [("Transfer-Encoding", "gzip, chunked")]),
        head("GET", f"/{UPSTREAM}{LIST}", [("Bad Header", "x")]),
    ],
    ids=[
        "HTTP/1.0",
        "h2c upgrade",
        "websocket upgrade",
        "garbage",
        "gzip transfer-encoding",
        "bad header name",
    ],
)
def test_malformed_request(stack: Stack, checkout: Caller, data: bytes) -> None:
    token = checkout.mint(UPSTREAM, READ)
    before = len(stack.upstream.received)
    data = data.replace(b"\r\n\r\n", f"\r\nAuthorization: Bearer {token}\r\n\r\n".encode(), 1)
    response = raw_request(stack, data)
    entry = assert_refused(stack, response, 400, "allowlist", "malformed_request", before=before)
    assert entry["token"] is None


# == gate 4: shape ===============================================================================


def create(
    caller: Caller,
    body: bytes | None,
    headers: dict[str, str] | None = None,
    *,
    content_type: str | None = "application/json",
) -> tuple[str, Response]:
    """POST to orders.create with a fresh orders:create token; (token, response)."""
    token = caller.mint(UPSTREAM, WRITE)
    all_headers = bearer(token)
    if content_type is not None:
        all_headers["Content-Type"] = content_type
    all_headers.update(headers or {})
    return token, caller.request("POST", f"/{UPSTREAM}{CREATE}", body, all_headers)


def test_body_too_large_is_refused_without_reading_it(stack: Stack, checkout: Caller) -> None:
    token = checkout.mint(UPSTREAM, WRITE)
    before = len(stack.upstream.received)
    data = head(
        "POST",
        f"/{UPSTREAM}{CREATE}",
        [
            ("Authorization", f"Bearer {token}"),
            ("Content-Type", "application/json"),
            ("Content-Length", "10000000"),
        ],
    )
    started = time.monotonic()
    response = raw_request(stack, data + b'{"customer_id": ', timeout=5.0)
    assert time.monotonic() - started < 4.0  # well before the 30 s body timeout
    entry = assert_refused(stack, response, 413, "shape", "body_too_large", before=before)
    assert entry["shape"] is None
    assert entry["token"]["scope"] == [WRITE]


def test_declared_length_one_over_the_cap_is_refused(stack: Stack, checkout: Caller) -> None:
    # Only the head and a few bytes are sent: the broker answers without reading the body (it
    # closes the connection after the 413, so a client still sending the body would see EOF).
    token = checkout.mint(UPSTREAM, WRITE)
    before = len(stack.upstream.received)
    data = head(
        "POST",
        f"/{UPSTREAM}{CREATE}",
        [
            ("Authorization", f"Bearer {token}"),
            ("Content-Type", "application/json"),
            ("Content-Length", "65537"),
        ],
    )
    response = raw_request(stack, data + b"{", timeout=5.0)
    entry = assert_refused(stack, response, 413, "shape", "body_too_large", before=before)
    assert entry["shape"] is None


def test_chunked_body_over_the_cap_is_refused(stack: Stack, checkout: Caller) -> None:
    # One chunk announced larger than the cap; 65600 bytes of it are sent, so the cap is crossed
    # while reading and every byte sent has been read when the 413 comes back.
    token = checkout.mint(UPSTREAM, WRITE)
    before = len(stack.upstream.received)
    data = head(
        "POST",
        f"/{UPSTREAM}{CREATE}",
        [
            ("Authorization", f"Bearer {token}"),
            ("Content-Type", "application/json"),
            ("Transfer-Encoding", "chunked"),
        ],
    )
    chunk = f"{70000:x}\r\n".encode() + b" " * 65600
    started = time.monotonic()
    response = raw_request(stack, data + chunk, timeout=5.0)
    assert time.monotonic() - started < 4.0  # well before the 30 s body timeout
    entry = assert_refused(stack, response, 413, "shape", "body_too_large", before=before)
    assert entry["shape"] is None


def test_body_at_the_cap_reaches_the_schema(stack: Stack, checkout: Caller) -> None:
    order = sample_order()
    order["note"] = ""
    body = json.dumps(order).encode()
    body = body[:-1] + b" " * (65536 - len(body)) + b"}"
    assert len(body) == 65536
    before = len(stack.upstream.received)
    _, response = create(checkout, body)
    assert response.status == 201
    assert stack.upstream.received[before].body == body


@pytest.mark.parametrize(
    ("content_type", "reason"),
    [
        ("text/plain", "unsupported_media_type"),
        ("application/x-www-form-urlencoded", "unsupported_media_type"),
        ("application/jsonx", "unsupported_media_type"),
        ("application/json; boundary=x", "unsupported_media_type"),
        (None, "unsupported_media_type"),
        ("application/json; charset=utf-16", "unsupported_charset"),
        ("application/json; charset=latin-1", "unsupported_charset"),
    ],
)
def test_media_type(stack: Stack, checkout: Caller, content_type: str | None, reason: str) -> None:
    before = len(stack.upstream.received)
    _, response = create(checkout, ORDER, content_type=content_type)
    entry = assert_refused(stack, response, 415, "shape", reason, before=before)
    assert entry["shape"] is None


def test_json_with_utf8_charset_is_accepted(stack: Stack, checkout: Caller) -> None:
    _, response = create(checkout, ORDER, content_type='Application/JSON; charset="UTF-8"')
    assert response.status == 201


def test_content_encoding_refused(stack: Stack, checkout: Caller) -> None:
    before = len(stack.upstream.received)
    _, response = create(checkout, ORDER, {"Content-Encoding": "gzip"})
    entry = assert_refused(stack, response, 415, "shape", "content_encoding_refused", before=before)
    assert entry["shape"] is None


def test_bad_transfer_encoding(stack: Stack, checkout: Caller) -> None:
    token = checkout.mint(UPSTREAM, WRITE)
    before = len(stack.upstream.received)
    data = head(
        "POST",
        f"/{UPSTREAM}{CREATE}",
        [
            ("Authorization", f"Bearer {token}"),
            ("Content-Type", "application/json"),
            ("Transfer-Encoding", "chunked"),
            ("Content-Length", "5"),
        ],
    )
    response = raw_request(stack, data + b"0\r\n\r\n")
    # Content-Length with Transfer-Encoding is bad framing: refused on the raw head, before any gate.
    entry = assert_refused(stack, response, 400, "allowlist", "malformed_request", before=before)
    assert entry["token"] is None


def _order_with(**changes: Any) -> dict[str, Any]:
    order = sample_order()
    order.update(changes)
    return order


BAD_BODIES = {
    "invalid_json": b'{"customer_id": ',
    "duplicate_key": ORDER[:-1] + b',"currency":"USD"}',
    "non_finite_number": ORDER.replace(b'"unit_price_cents":1299', b'"unit_price_cents":NaN'),
    "number_out_of_range": ORDER.replace(b'"qty":2', b'"qty":9007199254740993'),
    "lone_surrogate": ORDER.replace(b'"note":"', b'"note":"\\ud800'),
    "invalid_utf8": ORDER.replace(b"Ada", b"\xc0\xafda"),
    "nesting_too_deep": ORDER[:-1] + b',"x":' + b"[" * 40 + b"]" * 40 + b"}",
    "schema_violation": json.dumps(_order_with(currency="BTC")).encode(),
}


@pytest.mark.parametrize(("reason", "body"), list(BAD_BODIES.items()), ids=list(BAD_BODIES))
def test_bad_body(stack: Stack, checkout: Caller, reason: str, body: bytes) -> None:
    before = len(stack.upstream.received)
    token, response = create(checkout, body)
    entry = assert_refused(stack, response, 400, "shape", reason, before=before)
    assert entry["shape"] == {"schema": "order.create.v3", "bytes": len(body), "sha256": sha(body)}
    assert entry["token"]["id"] == tid(token)
    assert entry["upstream"]["route"] == "orders.create"


@pytest.mark.parametrize(
    "order",
    [
        _order_with(extra="field"),
        _order_with(items=[]),
        _order_with(customer_id="not-a-uuid"),
        {k: v for k, v in sample_order().items() if k != "shipping"},
        [sample_order()],
    ],
    ids=["extra field", "no items", "bad uuid", "missing field", "array"],
)
def test_schema_violation(stack: Stack, checkout: Caller, order: Any) -> None:
    body = json.dumps(order).encode()
    before = len(stack.upstream.received)
    _, response = create(checkout, body)
    entry = assert_refused(stack, response, 400, "shape", "schema_violation", before=before)
    assert entry["shape"]["sha256"] == sha(body)


def test_body_not_allowed_on_get(stack: Stack, checkout: Caller) -> None:
    token = checkout.mint(UPSTREAM, READ)
    before = len(stack.upstream.received)
    response = checkout.request(
        "GET", f"/{UPSTREAM}{LIST}", b"{}", {**bearer(token), "Content-Type": "application/json"}
    )
    entry = assert_refused(stack, response, 400, "shape", "body_not_allowed", before=before)
    assert entry["shape"] is None


def test_too_many_headers(stack: Stack, checkout: Caller) -> None:
    token = checkout.mint(UPSTREAM, READ)
    before = len(stack.upstream.received)
    headers = [("Authorization", f"Bearer {token}")] + [(f"X-Pad-{n}", "x") for n in range(64)]
    response = raw_request(stack, head("GET", f"/{UPSTREAM}{LIST}", headers))
    assert_refused(stack, response, 431, "shape", "headers_too_large", before=before)


def test_header_block_too_large(stack: Stack, checkout: Caller) -> None:
    token = checkout.mint(UPSTREAM, READ)
    before = len(stack.upstream.received)
    headers = [("Authorization", f"Bearer {token}"), ("X-Pad", "x" * 17000)]
    response = raw_request(stack, head("GET", f"/{UPSTREAM}{LIST}", headers))
    assert_refused(stack, response, 431, "shape", "headers_too_large", before=before)


def test_header_block_under_the_cap_is_served(stack: Stack, checkout: Caller) -> None:
    token = checkout.mint(UPSTREAM, READ)
    headers = [("Authorization", f"Bearer {token}"), ("X-Pad", "x" * 15000)]
    response = raw_request(stack, head("GET", f"/{UPSTREAM}{LIST}", headers))
    assert response.status == 200


def test_body_timeout(quick: Stack) -> None:
    caller = quick.caller(CHECKOUT)
    try:
        token = caller.mint(UPSTREAM, WRITE)
    finally:
        caller.close()
    before = len(quick.upstream.received)
    data = head(
        "POST",
        f"/{UPSTREAM}{CREATE}",
        [
            ("Authorization", f"Bearer {token}"),
            ("Content-Type", "application/json"),
            ("Content-Length", "400"),
        ],
    )
    started = time.monotonic()
    response = raw_request(quick, data + b'{"customer_id": ', timeout=5.0)
    assert 0.4 < time.monotonic() - started < 3.0
    entry = assert_refused(quick, response, 408, "shape", "body_timeout", before=before)
    assert entry["shape"] is None


def test_header_timeout(quick: Stack) -> None:
    before = len(quick.upstream.received)
    started = time.monotonic()
    response = raw_request(quick, f"GET /{UPSTREAM}{LIST} HTTP/1.1\r\nHost: 127".encode(), timeout=5.0)
    assert 0.9 < time.monotonic() - started < 3.5
    assert_refused(quick, response, 408, "shape", "header_timeout", before=before)


# == gate 5: egress ==============================================================================


def test_upstream_down(fresh_stack: Stack) -> None:
    stack = fresh_stack
    caller = stack.caller(CHECKOUT)
    try:
        token = caller.mint(UPSTREAM, READ)
        stack.loop.run(stack.upstream.stop())
        response = caller.call("GET", UPSTREAM, LIST, token=token)
        call_id = error_of(response, 502, "egress", "upstream_unreachable")
        assert response.headers["ztb-call-id"] == call_id
        next_token = response.headers["ztb-next-token"]
        entry = entry_of(stack, call_id)
        assert (entry["decision"], entry["gate"], entry["reason"]) == ("ALLOW", None, None)
        assert entry["token"]["next_id"] == tid(next_token)
        result = entry_of(stack, call_id, "result")
        assert result["forwarded"] is False
        assert result["error"] == "upstream_unreachable"
        assert (result["status"], result["bytes"], result["sha256"]) == (None, None, None)
        assert result["seq"] > entry["seq"]
        # the rotation token handed back with the 502 works once the upstream is back
        stack.loop.run(stack.upstream.start())
        assert caller.call("GET", UPSTREAM, LIST, token=next_token).status == 200
    finally:
        caller.close()


def test_upstream_pin_mismatch(edited: Stack) -> None:
    caller = edited.caller(CHECKOUT)
    try:
        token = caller.mint(BILLING, "invoices:read")
        before = len(edited.upstream.received)
        response = caller.call("GET", BILLING, "/v1/invoices", token=token)
        call_id = error_of(response, 502, "egress", "upstream_pin_mismatch")
        assert "ztb-next-token" in response.headers
        assert_not_forwarded(edited, before, call_id)
        entry = entry_of(edited, call_id)
        assert entry["decision"] == "ALLOW"
        assert entry["upstream"]["name"] == BILLING
        result = entry_of(edited, call_id, "result")
        assert (result["forwarded"], result["error"]) == (False, "upstream_pin_mismatch")
        # and the pinned upstream next to it still works
        assert caller.call("GET", UPSTREAM, LIST, token=caller.mint(UPSTREAM, READ)).status == 200
    finally:
        caller.close()


def test_upstream_timeout(edited: Stack) -> None:
    caller = edited.caller(CHECKOUT)

    async def stall(_: object) -> None:
        await asyncio.sleep(3.0)

    try:
        token = caller.mint(SLOW, READ)
        before = len(edited.upstream.received)
        edited.upstream.on_request = stall
        started = time.monotonic()
        try:
            response = caller.call("GET", SLOW, LIST, token=token)
        finally:
            edited.upstream.on_request = None
        assert time.monotonic() - started < 2.5  # the 300 ms timeout, not the 3 s stall
        call_id = error_of(response, 504, "egress", "upstream_timeout")
        assert "ztb-next-token" in response.headers
        received = edited.upstream.received[before:]
        assert [r.header("ztb-call-id") for r in received] == [call_id]  # it went out, then timed out
        result = entry_of(edited, call_id, "result")
        assert (result["forwarded"], result["error"]) == (True, "upstream_timeout")
    finally:
        caller.close()


# == allowed calls ===============================================================================


def test_allowed_create_forwards_exactly_the_validated_request(stack: Stack, checkout: Caller) -> None:
    token = checkout.mint(UPSTREAM, WRITE)
    before = len(stack.upstream.received)
    response = checkout.call(
        "POST",
        UPSTREAM,
        CREATE,
        token=token,
        body=ORDER,
        headers={
            "Host": "evil.example",
            "Content-Type": "application/json; charset=utf-8",
            "X-Request-Id": "req-42",
            "X-Forwarded-Host": "evil.example",
            "X-Forwarded-For": "10.0.0.1",
            "X-Forwarded-Proto": "http",
            "Forwarded": "for=10.0.0.1;host=evil.example",
            "Cookie": "session=abc",
            "X-Internal-Debug": "1",
            "Accept-Encoding": "gzip",
            "Proxy-Authorization": "Basic eDp5",
            "TE": "trailers",
        },
    )
    assert response.status == 201, response.body
    assert response.json()["status"] == "created"
    call_id = response.headers["ztb-call-id"]
    next_token = response.headers["ztb-next-token"]

    # what the upstream received
    received = stack.upstream.received[before:]
    assert len(received) == 1
    (request,) = received
    assert request.method == "POST"
    assert request.raw_path == CREATE
    assert request.body == ORDER
    assert request.peer_cn == "ztb-broker-egress"
    assert sorted(name.lower() for name, _ in request.headers) == sorted(
        ["host", "x-request-id", "ztb-call-id", "ztb-caller", "content-type", "content-length"]
    )
    assert {name.lower(): value for name, value in request.headers} == {
        "host": f"127.0.0.1:{stack.upstream_port}",
        "x-request-id": "req-42",
        "ztb-call-id": call_id,
        "ztb-caller": CHECKOUT,
        "content-type": "application/json",
        "content-length": str(len(ORDER)),
    }

    # what came back: reduced to the route's response allowlist and the broker's own headers
    assert set(response.headers) - {"connection"} == {
        "content-type",
        "x-request-id",
        "content-length",
        "ztb-call-id",
        "ztb-next-token",
        "ztb-receipt",
    }
    assert response.headers["x-request-id"] == "req-42"

    # the call entry
    entry = entry_of(stack, call_id)
    assert (entry["decision"], entry["gate"], entry["reason"]) == ("ALLOW", None, None)
    assert entry["caller"] == {"spki": pin_of(stack, CHECKOUT), "identity": CHECKOUT, "addr": "127.0.0.1"}
    assert entry["upstream"] == {
        "name": UPSTREAM,
        "route": "orders.create",
        "method": "POST",
        "path": CREATE,
        "target": f"/{UPSTREAM}{CREATE}",
    }
    assert entry["shape"] == {"schema": "order.create.v3", "bytes": len(ORDER), "sha256": sha(request.body)}
    assert entry["token"]["id"] == tid(token)
    assert entry["token"]["scope"] == [WRITE]
    assert entry["token"]["exp_in_s"] in (59, 60)
    assert entry["token"]["next_id"] == tid(next_token)
    assert isinstance(entry["latency_ms"], int)
    assert entry["latency_ms"] >= 0

    # the result entry
    result = entry_of(stack, call_id, "result")
    assert result["seq"] > entry["seq"]
    assert result["forwarded"] is True
    assert result["status"] == 201
    assert result["bytes"] == len(response.body)
    assert result["sha256"] == sha(response.body)
    assert result["error"] is None
    assert isinstance(result["upstream_ms"], int)


def test_call_entry_is_on_disk_before_the_upstream_sees_the_request(stack: Stack, checkout: Caller) -> None:
    seen: dict[str, list[dict[str, Any]]] = {}

    def look(request: Any) -> None:
        call_id = request.header("ztb-call-id")
        seen[call_id] = [e for e in log_entries(stack) if e.get("call_id") == call_id]

    stack.upstream.on_request = look
    try:
        token = checkout.mint(UPSTREAM, WRITE)
        response = checkout.call("POST", UPSTREAM, CREATE, token=token, body=ORDER)
    finally:
        stack.upstream.on_request = None
    assert response.status == 201
    call_id = response.headers["ztb-call-id"]
    assert [(e["kind"], e["decision"]) for e in seen[call_id]] == [("call", "ALLOW")]


def test_next_token_works_exactly_once(stack: Stack, checkout: Caller, reports: Caller) -> None:
    first = checkout.call("POST", UPSTREAM, CREATE, token=checkout.mint(UPSTREAM, WRITE), body=ORDER)
    assert first.status == 201
    rotated = first.headers["ztb-next-token"]
    second = checkout.call("POST", UPSTREAM, CREATE, token=rotated, body=ORDER)
    assert second.status == 201
    entry = entry_of(stack, second.headers["ztb-call-id"])
    assert entry["token"]["id"] == tid(rotated)
    assert entry["token"]["scope"] == [WRITE]
    assert second.headers["ztb-next-token"] != rotated
    before = len(stack.upstream.received)
    again = checkout.call("POST", UPSTREAM, CREATE, token=rotated, body=ORDER)
    assert_refused(stack, again, 403, "scope", "token_replayed", before=before)
    # a rotation token is bound to the same certificate and scope
    leaked = second.headers["ztb-next-token"]
    response = reports.call("POST", UPSTREAM, CREATE, token=leaked, body=ORDER)
    assert_refused(stack, response, 403, "scope", "wrong_certificate", before=before)


def test_rotation_token_keeps_the_scope(stack: Stack, checkout: Caller) -> None:
    first = checkout.call("GET", UPSTREAM, LIST, token=checkout.mint(UPSTREAM, READ))
    assert first.status == 200
    before = len(stack.upstream.received)
    response = checkout.call("POST", UPSTREAM, CREATE, token=first.headers["ztb-next-token"], body=ORDER)
    assert_refused(stack, response, 403, "scope", "scope_mismatch", before=before)


def test_get_with_typed_path_parameter(stack: Stack, reports: Caller) -> None:
    token = reports.mint(UPSTREAM, READ)
    before = len(stack.upstream.received)
    response = reports.call(
        "GET", UPSTREAM, f"/v1/orders/{ORDER_ID}", token=token, headers={"X-Request-Id": "r1"}
    )
    assert response.status == 200
    assert response.json()["order_id"] == ORDER_ID
    assert set(response.headers) - {"connection"} == {
        "content-type",
        "content-length",
        "ztb-call-id",
        "ztb-next-token",
        "ztb-receipt",
    }
    (request,) = stack.upstream.received[before:]
    assert request.method == "GET"
    assert request.raw_path == f"/v1/orders/{ORDER_ID}"
    assert request.body == b""
    call_id = response.headers["ztb-call-id"]
    assert {name.lower(): value for name, value in request.headers} == {
        "host": f"127.0.0.1:{stack.upstream_port}",
        "ztb-call-id": call_id,
        "ztb-caller": REPORTS,
    }
    entry = entry_of(stack, call_id)
    assert entry["upstream"]["route"] == "orders.get"
    assert entry["upstream"]["path"] == f"/v1/orders/{ORDER_ID}"
    assert entry["shape"] == {"schema": None, "bytes": 0, "sha256": sha(b"")}
    result = entry_of(stack, call_id, "result")
    assert (result["status"], result["sha256"]) == (200, sha(response.body))


def test_list_with_query_is_rebuilt(stack: Stack, checkout: Caller) -> None:
    token = checkout.mint(UPSTREAM, READ)
    before = len(stack.upstream.received)
    response = checkout.call("GET", UPSTREAM, "/v1/orders?limit=10&cursor=abc", token=token)
    assert response.status == 200
    assert len(response.json()["orders"]) == 2
    (request,) = stack.upstream.received[before:]
    assert request.raw_path == "/v1/orders?cursor=abc&limit=10"
    entry = entry_of(stack, response.headers["ztb-call-id"])
    assert entry["upstream"]["route"] == "orders.list"
    assert entry["upstream"]["path"] == "/v1/orders?cursor=abc&limit=10"
    assert entry["upstream"]["target"] == f"/{UPSTREAM}/v1/orders?limit=10&cursor=abc"


def test_keep_alive_carries_several_calls(stack: Stack, checkout: Caller) -> None:
    token = checkout.mint(UPSTREAM, READ)
    for _ in range(3):
        response = checkout.call("GET", UPSTREAM, LIST, token=token)
        assert response.status == 200
        token = response.headers["ztb-next-token"]
