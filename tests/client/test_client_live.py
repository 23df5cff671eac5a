"""ztb.client against a live broker over real mTLS, sync (`Client`) and async (`AsyncClient`):
mint on demand, ZTB-Next-Token rotation, every typed refusal with its audit entry, recovery from
a broker restart, and an undeliverable request."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest

from stack import UPSTREAM, Stack
from ztb import pki
from ztb.client import (
    AllowlistRefused,
    AsyncClient,
    BrokerError,
    BrokerUnavailable,
    CertificateRefused,
    Client,
    EgressFailed,
    IdentityRefused,
    Response,
    ScopeRefused,
    ShapeRefused,
    refusal,
)
from ztb.deploy import sample_order
from ztb.runtime import RunningBroker

CREATE = "/v1/orders/create"
KINDS = ["sync", "async"]
T = TypeVar("T")


def _paths(stack: Stack, identity: str) -> tuple[Path, Path, Path]:
    folder = stack.root / "callers" / identity
    return folder / "cert.pem", folder / "key.pem", stack.root / "ca" / "ca.pem"


def run(
    kind: str,
    stack: Stack,
    action: Callable[[Any], Any],
    identity: str = "svc.checkout",
    paths: tuple[Path, Path, Path] | None = None,
) -> Any:
    """Run `action(client)` with a sync Client, or `await action(client)` with an AsyncClient."""
    cert, key, ca = paths or _paths(stack, identity)
    if kind == "sync":
        with Client(stack.url, cert, key, ca) as client:
            return action(client)

    async def go() -> Any:
        async with AsyncClient(stack.url, cert, key, ca) as client:
            return await action(client)

    return asyncio.run(go())


def post_orders(count: int) -> Callable[[Any], Any]:
    """`count` order creations in a row with one client; the responses."""

    def sync(client: Client) -> list[Response]:
        return [
            client.post(UPSTREAM, CREATE, scope="orders:create", json=sample_order()) for _ in range(count)
        ]

    async def many(client: AsyncClient) -> list[Response]:
        return [
            await client.post(UPSTREAM, CREATE, scope="orders:create", json=sample_order())
            for _ in range(count)
        ]

    return lambda client: sync(client) if isinstance(client, Client) else many(client)


@pytest.mark.parametrize("kind", KINDS)
def test_mints_once_then_lives_on_rotation(stack: Stack, kind: str) -> None:
    answers = run(kind, stack, post_orders(3))
    assert [a.status for a in answers] == [201, 201, 201]
    calls = [stack.entry_of(a.call_id) for a in answers]
    assert all(c["decision"] == "ALLOW" for c in calls)
    # Each call presented the token the previous one handed back in ZTB-Next-Token.
    assert calls[1]["token"]["id"] == calls[0]["token"]["next_id"]
    assert calls[2]["token"]["id"] == calls[1]["token"]["next_id"]
    mint = [e for e in stack.entries() if e["kind"] == "token" and e.get("id") == calls[0]["token"]["id"]]
    assert len(mint) == 1 and mint[0]["decision"] == "ALLOW"


def test_async_client_is_shared_by_concurrent_tasks(stack: Stack) -> None:
    async def go(client: AsyncClient) -> list[Response]:
        calls = [client.post(UPSTREAM, CREATE, scope="orders:create", json=sample_order()) for _ in range(6)]
        first = await asyncio.gather(*calls)
        second = await asyncio.gather(
            *(client.get(UPSTREAM, "/v1/orders", scope="orders:read") for _ in range(3))
        )
        return [*first, *second]

    answers = run("async", stack, go)
    assert [a.status for a in answers] == [201] * 6 + [200] * 3
    assert len({a.call_id for a in answers}) == 9


def _stranger(stack: Stack, tmp_path: Path, *, same_ca: bool) -> tuple[Path, Path, Path]:
    """A client certificate not pinned to any identity: from the deployment's CA, or another CA."""
    ca = (
        pki.load_issued(stack.root / "ca" / "ca.pem", stack.root / "ca" / "ca.key")
        if same_ca
        else pki.new_ca("some other CA")
    )
    issued = pki.issue_client(ca, "svc.stranger")
    issued.write(tmp_path / "cert.pem", tmp_path / "key.pem")
    return tmp_path / "cert.pem", tmp_path / "key.pem", stack.root / "ca" / "ca.pem"


CASES: dict[str, tuple[str, Callable[[Any], Any], type[BrokerError], int, str, str, str]] = {
    # name: identity, action, exception, status, gate, reason, audit entry kind
    "not_granted": (
        "svc.reports",
        lambda c: c.post(UPSTREAM, CREATE, scope="orders:create", json=sample_order()),
        ScopeRefused,
        403,
        "scope",
        "not_granted",
        "token",
    ),
    "no_route": (
        "svc.checkout",
        lambda c: c.get(UPSTREAM, "/v1/nothing", scope="orders:read"),
        AllowlistRefused,
        404,
        "allowlist",
        "no_route",
        "call",
    ),
    "schema": (
        "svc.checkout",
        lambda c: c.post(UPSTREAM, CREATE, scope="orders:create", json={"customer_id": 1}),
        ShapeRefused,
        400,
        "shape",
        "schema_violation",
        "call",
    ),
    "too_large": (
        "svc.checkout",
        lambda c: c.post(UPSTREAM, CREATE, scope="orders:create", body=b" " * 70_000),
        ShapeRefused,
        413,
        "shape",
        "body_too_large",
        "call",
    ),
}


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("case", sorted(CASES))
def test_refusals_raise_typed_errors_with_gate_reason_and_call_id(stack: Stack, kind: str, case: str) -> None:
    identity, action, exception, status, gate, reason, entry_kind = CASES[case]
    before = len(stack.upstream.received)
    with pytest.raises(exception) as raised:
        run(kind, stack, action, identity)
    error = raised.value
    assert (error.status, error.gate, error.reason) == (status, gate, reason)
    assert error.call_id is not None
    entry = stack.entry_of(error.call_id, entry_kind)
    assert (entry["decision"], entry["reason"]) == ("DENY", reason)
    assert len(stack.upstream.received) == before


@pytest.mark.parametrize("kind", KINDS)
def test_unpinned_certificate_raises_identity_refused(stack: Stack, kind: str, tmp_path: Path) -> None:
    paths = _stranger(stack, tmp_path, same_ca=True)
    with pytest.raises(IdentityRefused) as raised:
        run(kind, stack, lambda c: c.get(UPSTREAM, "/v1/orders", scope="orders:read"), paths=paths)
    assert (raised.value.status, raised.value.reason) == (403, "unknown_spki")
    assert stack.entry_of(raised.value.call_id or "", "token")["reason"] == "unknown_spki"


@pytest.mark.parametrize("kind", KINDS)
def test_untrusted_certificate_is_refused_at_the_tls_level(stack: Stack, kind: str, tmp_path: Path) -> None:
    # The broker's handshake refuses the certificate with a TLS alert, which the client turns
    # into a typed refusal (not an outage), with the reason the broker's `identity` entry has.
    paths = _stranger(stack, tmp_path, same_ca=False)
    before = len(stack.upstream.received)
    with pytest.raises(CertificateRefused) as raised:
        run(kind, stack, lambda c: c.get(UPSTREAM, "/v1/orders", scope="orders:read"), paths=paths)
    refused = raised.value
    assert isinstance(refused, IdentityRefused)
    assert (refused.status, refused.gate, refused.reason, refused.call_id) == (
        0,
        "identity",
        "untrusted_certificate",
        None,
    )
    assert refused.alert == "TLSV1_ALERT_UNKNOWN_CA" and "refused this client certificate" in str(refused)
    assert stack.wait_for(lambda e: e["kind"] == "identity" and e["reason"] == "untrusted_certificate")
    assert len(stack.upstream.received) == before


@pytest.mark.parametrize("kind", KINDS)
def test_no_certificate_is_refused_at_the_tls_level(stack: Stack, kind: str) -> None:
    before = len(stack.upstream.received)
    paths = (None, None, stack.root / "ca" / "ca.pem")
    with pytest.raises(CertificateRefused) as raised:
        run(kind, stack, lambda c: c.get(UPSTREAM, "/v1/orders", scope="orders:read"), paths=paths)  # type: ignore[arg-type]
    assert raised.value.reason == "no_client_certificate"
    assert raised.value.alert == "TLSV13_ALERT_CERTIFICATE_REQUIRED"
    assert stack.wait_for(lambda e: e["kind"] == "identity" and e["reason"] == "no_client_certificate")
    assert len(stack.upstream.received) == before


@pytest.mark.parametrize("kind", KINDS)
def test_a_ca_certificate_as_leaf_is_refused_after_the_handshake(
    stack: Stack, kind: str, tmp_path: Path
) -> None:
    # OpenSSL accepts it, the listener refuses it once the handshake is done, when no alert can
    # be sent any more: the client only sees the connection closed, and says both possibilities.
    ca = pki.load_issued(stack.root / "ca" / "ca.pem", stack.root / "ca" / "ca.key")
    leaf = pki.issue_leaf(ca, "svc.checkout", eku=[pki.CLIENT_AUTH], is_ca=True)
    leaf.write(tmp_path / "cert.pem", tmp_path / "key.pem")
    paths = (tmp_path / "cert.pem", tmp_path / "key.pem", stack.root / "ca" / "ca.pem")
    before = len(stack.upstream.received)
    with pytest.raises(BrokerUnavailable, match="refusing this client certificate"):
        run(kind, stack, lambda c: c.get(UPSTREAM, "/v1/orders", scope="orders:read"), paths=paths)
    assert stack.wait_for(lambda e: e["kind"] == "identity" and e["reason"] == "client_cert_is_ca")
    assert len(stack.upstream.received) == before


def test_a_replayed_token_is_a_typed_refusal(stack: Stack) -> None:
    with stack.caller() as caller:
        token = caller.mint(UPSTREAM, "orders:read")
        assert caller.call("GET", UPSTREAM, "/v1/orders", token=token).status == 200
        again = caller.call("GET", UPSTREAM, "/v1/orders", token=token)
    refused = refusal(again)
    assert isinstance(refused, ScopeRefused)
    assert (refused.status, refused.reason, refused.call_id) == (403, "token_replayed", again.call_id)


def _restart_broker(stack: Stack) -> None:
    port = stack.port
    stack.stop_broker()
    stack.broker = stack.loop.run(RunningBroker.start(stack.root, port=port))


@pytest.mark.parametrize("kind", KINDS)
def test_upstream_failure_is_egress_failed_and_rotation_survives_it(fresh_stack: Stack, kind: str) -> None:
    async def stop() -> None:
        await fresh_stack.upstream.stop()

    def story(client: Any) -> Any: ...

    def sync(client: Client) -> tuple[Response, EgressFailed, Response]:
        first = client.post(UPSTREAM, CREATE, scope="orders:create", json=sample_order())
        fresh_stack.loop.run(stop())
        with pytest.raises(EgressFailed) as failed:
            client.post(UPSTREAM, CREATE, scope="orders:create", json=sample_order())
        fresh_stack.loop.run(fresh_stack.upstream.start())
        last = client.post(UPSTREAM, CREATE, scope="orders:create", json=sample_order())
        return first, failed.value, last

    async def aio(client: AsyncClient) -> tuple[Response, EgressFailed, Response]:
        loop = asyncio.get_running_loop()
        first = await client.post(UPSTREAM, CREATE, scope="orders:create", json=sample_order())
        await loop.run_in_executor(None, fresh_stack.loop.run, stop())
        with pytest.raises(EgressFailed) as failed:
            await client.post(UPSTREAM, CREATE, scope="orders:create", json=sample_order())
        await loop.run_in_executor(None, fresh_stack.loop.run, fresh_stack.upstream.start())
        last = await client.post(UPSTREAM, CREATE, scope="orders:create", json=sample_order())
        return first, failed.value, last

    first, failed, last = run(kind, fresh_stack, sync if kind == "sync" else aio)
    assert (first.status, last.status) == (201, 201)
    assert (failed.status, failed.gate, failed.reason) == (502, "egress", "upstream_unreachable")
    result = fresh_stack.entry_of(failed.call_id or "", "result")
    assert (result["forwarded"], result["error"]) == (False, "upstream_unreachable")
    # The 502 still carried ZTB-Next-Token: the last call needed no mint.
    calls = [fresh_stack.entry_of(x) for x in (first.call_id, failed.call_id, last.call_id)]
    assert calls[2]["token"]["id"] == calls[1]["token"]["next_id"]
    assert sum(e["kind"] == "token" for e in fresh_stack.entries()) == 1


@pytest.mark.parametrize("kind", KINDS)
def test_tokens_of_a_restarted_broker_are_replaced_by_a_fresh_mint(fresh_stack: Stack, kind: str) -> None:
    def sync(client: Client) -> list[Response]:
        first = client.post(UPSTREAM, CREATE, scope="orders:create", json=sample_order())
        _restart_broker(fresh_stack)  # the in-process token store starts empty
        return [first, client.post(UPSTREAM, CREATE, scope="orders:create", json=sample_order())]

    async def aio(client: AsyncClient) -> list[Response]:
        first = await client.post(UPSTREAM, CREATE, scope="orders:create", json=sample_order())
        await asyncio.get_running_loop().run_in_executor(None, _restart_broker, fresh_stack)
        return [first, await client.post(UPSTREAM, CREATE, scope="orders:create", json=sample_order())]

    first, second = run(kind, fresh_stack, sync if kind == "sync" else aio)
    assert (first.status, second.status) == (201, 201)
    unknown = fresh_stack.wait_for(lambda e: e["kind"] == "call" and e["reason"] == "unknown_token")
    assert len(unknown) == 1  # the rotated token was refused (nothing forwarded), then a mint
    assert sum(e["kind"] == "token" for e in fresh_stack.entries()) == 2
    assert len(fresh_stack.upstream.received) == 2


@pytest.mark.parametrize("kind", KINDS)
def test_a_stopped_broker_is_unavailable(fresh_stack: Stack, kind: str) -> None:
    url = fresh_stack.url
    fresh_stack.stop_broker()
    cert, key, ca = _paths(fresh_stack, "svc.checkout")

    async def aio() -> None:
        async with AsyncClient(url, cert, key, ca) as client:
            await client.get(UPSTREAM, "/v1/orders", scope="orders:read")

    with pytest.raises(BrokerUnavailable, match="cannot connect to the broker"):
        if kind == "sync":
            with Client(url, cert, key, ca) as client:
                client.get(UPSTREAM, "/v1/orders", scope="orders:read")
        else:
            asyncio.run(aio())
