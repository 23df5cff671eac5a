"""Hostile upstreams: redirects, leaked response headers, oversize and late answers, and
certificates that are valid under the upstream CA but are not what the registry pinned.

The broker never follows a redirect, strips every response header the route does not allowlist,
refuses to relay an oversize answer (502) or to wait past the upstream's timeout (504), and sends
nothing to an upstream whose certificate fails its pin or its purpose (502). Every outcome is a
`result` entry closing the call's ALLOW entry.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from hostile import (
    Answer,
    Canary,
    HostileUpstream,
    Invariant,
    add_to_registry,
    hostile_deployment,
    mint,
    request_bytes,
    send_raw,
    start,
    tls_context,
    write_limits,
)
from stack import Stack
from ztb import pki

MAX_RESPONSE = 65536
HOSTILE = "hostile.api.internal"
# name -> how its server certificate is wrong (all are pinned in the registry unless "unpinned")
CERT_CASES = {
    "unpinned.api.internal": "valid under the CA, serverAuth, but its key is not pinned",
    "noserverauth.api.internal": "pinned, under the CA, but only clientAuth",
    "expired.api.internal": "pinned, under the CA, expired",
    "notyet.api.internal": "pinned, under the CA, not yet valid",
    "otherca.api.internal": "pinned, but issued by another CA",
    "cacert.api.internal": "pinned, under the CA, but a CA certificate (CA:TRUE)",
}


@dataclass
class Env:
    stack: Stack
    canary: Canary
    hostile: HostileUpstream
    by_name: dict[str, HostileUpstream]


def server_cert(name: str, ca: pki.Issued) -> tuple[pki.Issued, str]:
    """The certificate an upstream presents, and the pin the registry holds for it."""
    now = dt.datetime.now(dt.UTC)
    common: dict[str, Any] = {"dns_names": ["localhost"], "ip_addresses": ["127.0.0.1"]}
    if name == "unpinned.api.internal":
        cert = pki.issue_server(ca, ["localhost"], ["127.0.0.1"])
        return cert, pki.key_pin(pki.new_key().public_key())
    if name == "noserverauth.api.internal":
        cert = pki.issue_leaf(ca, "localhost", eku=[pki.CLIENT_AUTH], **common)
    elif name == "expired.api.internal":
        cert = pki.issue_leaf(
            ca,
            "localhost",
            eku=[pki.SERVER_AUTH],
            not_before=now - dt.timedelta(days=30),
            not_after=now - dt.timedelta(days=1),
            **common,
        )
    elif name == "notyet.api.internal":
        cert = pki.issue_leaf(
            ca,
            "localhost",
            eku=[pki.SERVER_AUTH],
            not_before=now + dt.timedelta(days=1),
            not_after=now + dt.timedelta(days=30),
            **common,
        )
    elif name == "otherca.api.internal":
        cert = pki.issue_server(pki.new_ca("another CA"), ["localhost"], ["127.0.0.1"])
    elif name == "cacert.api.internal":
        cert = pki.issue_leaf(ca, "localhost", eku=[pki.SERVER_AUTH], is_ca=True, **common)
    else:
        cert = pki.issue_server(ca, ["localhost"], ["127.0.0.1"])
    return cert, cert.pin


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    running = hostile_deployment(tmp_path_factory.mktemp("upstreams") / "dep")
    root = running.root
    canary = Canary(running.loop)
    ca = pki.load_issued(root / "ca" / "ca.pem", root / "ca" / "ca.key")
    servers: dict[str, HostileUpstream] = {}
    upstreams: dict[str, Any] = {}
    routes: list[dict[str, Any]] = []
    grants: dict[str, list[str]] = {}
    try:
        for name in [HOSTILE, *CERT_CASES]:
            folder = root / "upstreams" / name
            folder.mkdir()
            cert, pin = server_cert(name, ca)
            cert.write(folder / "cert.pem", folder / "key.pem")
            server = HostileUpstream(
                folder / "cert.pem",
                folder / "key.pem",
                root / "ca" / "ca.pem",
                canary.authority,
                MAX_RESPONSE,
            )
            port = running.loop.run(server.start())
            servers[name] = server
            upstreams[name] = {
                "url": f"https://127.0.0.1:{port}",
                "ca": "ca/ca.pem",
                "spki": [pin],
                "timeout_ms": 1000,
            }
            slug = name.split(".")[0]
            if name == HOSTILE:
                for path in ("redirect", "headers", "big", "slow"):
                    routes.append(
                        {
                            "id": f"{slug}.{path}",
                            "upstream": name,
                            "method": "GET",
                            "path": f"/{path}",
                            "scope": f"{slug}:read",
                        }
                    )
                routes.append(
                    {
                        "id": f"{slug}.redirect-allowed",
                        "upstream": name,
                        "method": "GET",
                        "path": "/redirect-allowed",
                        "scope": f"{slug}:read",
                        "response_headers": ["content-type", "location"],
                    }
                )
            else:
                routes.append(
                    {
                        "id": f"{slug}.ping",
                        "upstream": name,
                        "method": "GET",
                        "path": "/v1/ping",
                        "scope": f"{slug}:read",
                    }
                )
            grants[name] = [f"{slug}:read"]
        add_to_registry(root, upstreams=upstreams, routes=routes, grants={"svc.checkout": grants})
        write_limits(root, max_response_bytes=MAX_RESPONSE)
        start(running)
        yield Env(running, canary, servers[HOSTILE], servers)
    finally:
        canary.close()
        for server in servers.values():
            running.loop.run(server.stop())
        running.close()


@pytest.fixture(scope="module")
def stack(env: Env) -> Stack:
    return env.stack


@pytest.fixture(scope="module")
def canary(env: Env) -> Canary:
    return env.canary


def call(env: Env, upstream: str, path: str) -> Answer:
    token = mint(env.stack, f"{upstream.split('.', maxsplit=1)[0]}:read", upstream)
    raw = request_bytes("GET", f"/{upstream}{path}", [("Authorization", f"Bearer {token}")])
    return send_raw(env.stack.port, tls_context(env.stack.root), raw)


def outcome(env: Env, answer: Answer) -> tuple[dict[str, Any], dict[str, Any]]:
    """The call's ALLOW entry and the result entry that closes it."""
    call_id = answer.header("ztb-call-id")
    assert call_id is not None
    entry = env.stack.entry_of(call_id)
    assert entry["decision"] == "ALLOW"
    return entry, env.stack.entry_of(call_id, "result")


LEAKED = [
    "x-internal-debug",
    "set-cookie",
    "server",
    "x-powered-by",
    "access-control-allow-origin",
    "www-authenticate",
    "strict-transport-security",
    "refresh",
    "link",
]


def test_redirect_is_not_followed_and_loses_its_location(env: Env) -> None:
    check = Invariant(env.stack, env.canary, recorders=list(env.by_name.values()))
    answer = call(env, HOSTILE, "/redirect")
    assert answer.status == 302
    assert answer.header("location") is None
    assert all(answer.header(name) is None for name in LEAKED)
    [seen] = check.forwarded()
    assert seen.raw_path == "/redirect"
    check.clean()  # the canary the Location pointed at was never contacted
    _, result = outcome(env, answer)
    assert (result["status"], result["forwarded"]) == (302, True)


def test_redirect_location_passes_only_where_the_route_allowlists_it(env: Env) -> None:
    check = Invariant(env.stack, env.canary, recorders=list(env.by_name.values()))
    answer = call(env, HOSTILE, "/redirect-allowed")
    assert answer.status == 302
    assert answer.header("location") == f"http://{env.canary.authority}/leak"
    assert all(answer.header(name) is None for name in LEAKED)
    check.clean()  # relayed to the caller, never followed by the broker


def test_response_headers_are_reduced_to_the_allowlist(env: Env) -> None:
    check = Invariant(env.stack, env.canary, recorders=list(env.by_name.values()))
    answer = call(env, HOSTILE, "/headers")
    assert answer.status == 200 and answer.body == b'{"ok":true}'
    names = {name for name, _ in answer.headers}
    assert names <= {"content-type", "content-length", "ztb-call-id", "ztb-next-token", "ztb-receipt"}, names
    check.clean()


def test_oversize_response_is_not_relayed(env: Env) -> None:
    check = Invariant(env.stack, env.canary, recorders=list(env.by_name.values()))
    answer = call(env, HOSTILE, "/big")
    assert answer.status == 502 and answer.error["reason"] == "upstream_response_too_large"
    assert b"aaaa" not in answer.body
    _, result = outcome(env, answer)
    assert result["error"] == "upstream_response_too_large" and result["forwarded"] is True
    check.clean()


def test_slow_upstream_gets_504_at_its_timeout(env: Env) -> None:
    check = Invariant(env.stack, env.canary, recorders=list(env.by_name.values()))
    answer = call(env, HOSTILE, "/slow")
    assert answer.status == 504 and answer.error["reason"] == "upstream_timeout"
    assert answer.elapsed_s < 2.4  # the upstream's 1 s timeout, not its 2.5 s answer
    _, result = outcome(env, answer)
    assert result["error"] == "upstream_timeout"
    check.clean()


EXPECTED_CERT = {
    "unpinned.api.internal": "upstream_pin_mismatch",
    "noserverauth.api.internal": "upstream_tls_failed",
    "expired.api.internal": "upstream_tls_failed",
    "notyet.api.internal": "upstream_tls_failed",
    "otherca.api.internal": "upstream_tls_failed",
    "cacert.api.internal": "upstream_pin_mismatch",
}


@pytest.mark.parametrize("upstream", list(CERT_CASES), ids=list(CERT_CASES.values()))
def test_upstream_certificate_not_pinned_or_not_fit_gets_502_and_nothing_sent(
    env: Env, upstream: str
) -> None:
    check = Invariant(env.stack, env.canary, recorders=list(env.by_name.values()))
    answer = call(env, upstream, "/v1/ping")
    assert answer.status == 502, answer.body
    assert answer.error == {
        "gate": "egress",
        "reason": EXPECTED_CERT[upstream],
        "call_id": answer.error["call_id"],
    }
    _, result = outcome(env, answer)
    assert (result["error"], result["forwarded"]) == (EXPECTED_CERT[upstream], False)
    assert env.by_name[upstream].received == []  # not one request byte reached it
    check.clean()
