"""ztb.client's pure parts: the rotation token cache and how answers become typed refusals."""

from __future__ import annotations

import json

import pytest

from ztb.client import (
    AllowlistRefused,
    EgressFailed,
    IdentityRefused,
    Response,
    ScopeRefused,
    ShapeRefused,
    refusal,
)
from ztb.client.tokens import TokenCache

KEY = ("orders.api.internal", "orders:create")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_cache_hands_out_newest_first_each_once() -> None:
    cache = TokenCache(clock=Clock())
    cache.put(KEY, "a")
    cache.put(KEY, "b")
    assert cache.take(KEY) == "b"
    assert cache.take(KEY) == "a"
    assert cache.take(KEY) is None
    assert cache.take(("other", "x:y")) is None


def test_cache_drops_tokens_a_margin_before_expiry() -> None:
    clock = Clock()
    cache = TokenCache(clock=clock, margin_s=5)
    cache.learn_ttl(KEY, 30)
    cache.put(KEY, "a")
    clock.now += 24.9
    cache.put(KEY, "b")
    clock.now += 0.2  # "a" has 4.9 s left: inside the margin
    assert cache.take(KEY) == "b"
    assert cache.take(KEY) is None


def test_cache_is_bounded_per_key_and_can_drop_a_key() -> None:
    cache = TokenCache(clock=Clock(), per_key=3)
    for token in "abcde":
        cache.put(KEY, token)
    assert [cache.take(KEY) for _ in range(4)] == ["e", "d", "c", None]
    cache.put(KEY, "f")
    cache.drop(KEY)
    assert cache.take(KEY) is None


def _answer(status: int, gate: str, reason: str, content_type: str = "application/json") -> Response:
    body = json.dumps({"error": {"gate": gate, "reason": reason, "call_id": "01HX"}}).encode()
    return Response(status, {"content-type": content_type}, body)


@pytest.mark.parametrize(
    ("status", "gate", "reason", "kind"),
    [
        (403, "identity", "unknown_spki", IdentityRefused),
        (403, "scope", "token_replayed", ScopeRefused),
        (503, "scope", "token_store_unavailable", ScopeRefused),
        (404, "allowlist", "no_route", AllowlistRefused),
        (413, "shape", "body_too_large", ShapeRefused),
        (503, "egress", "audit_unavailable", EgressFailed),
        (502, "egress", "upstream_pin_mismatch", EgressFailed),
    ],
)
def test_broker_refusals_become_typed_errors(status: int, gate: str, reason: str, kind: type) -> None:
    refused = refusal(_answer(status, gate, reason))
    assert type(refused) is kind
    assert refused is not None
    assert (refused.status, refused.gate, refused.reason, refused.call_id) == (status, gate, reason, "01HX")


@pytest.mark.parametrize(
    "answer",
    [
        _answer(404, "scope", "token_replayed"),  # wrong status for the reason
        _answer(403, "shape", "token_replayed"),  # reason of another gate
        _answer(403, "scope", "made_up"),  # not a reason code
        _answer(403, "scope", "token_replayed", "text/plain"),
        Response(404, {"content-type": "application/json"}, b'{"error": "not_found"}'),
        Response(201, {"content-type": "application/json"}, b"{}"),
    ],
)
def test_anything_else_is_an_upstream_answer(answer: Response) -> None:
    assert refusal(answer) is None
