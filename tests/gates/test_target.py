"""ztb.gates.target.lookup: canonical origin form or nothing, then an exact registry match.

Pure unit tests against the registry `ztb init` writes: orders.create (POST /v1/orders/create),
orders.get (GET /v1/orders/{order_id:uuid}) and orders.list (GET /v1/orders, query limit:int and
cursor:str) on the upstream orders.api.internal.
"""

from __future__ import annotations

import string
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ztb.config import load_registry
from ztb.config.registry import Registry
from ztb.deploy import init_deployment
from ztb.gates.target import lookup
from ztb.reasons import Reason

UP = "orders.api.internal"
ORDER_ID = "6f1c2a9e-4b7d-4e1a-9c3f-2d8b5e0a7c41"


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Registry:
    root: Path = tmp_path_factory.mktemp("target") / "dep"
    init_deployment(root, broker_port=0, admin_port=0, upstream_port=9443)
    return load_registry(root)


# -- canonical targets ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "target", "route", "path"),
    [
        ("POST", f"/{UP}/v1/orders/create", "orders.create", "/v1/orders/create"),
        ("GET", f"/{UP}/v1/orders/{ORDER_ID}", "orders.get", f"/v1/orders/{ORDER_ID}"),
        ("GET", f"/{UP}/v1/orders", "orders.list", "/v1/orders"),
        ("GET", f"/{UP}/v1/orders?limit=10", "orders.list", "/v1/orders?limit=10"),
        ("GET", f"/{UP}/v1/orders?limit=0", "orders.list", "/v1/orders?limit=0"),
        # the query is rebuilt from validated values, sorted by name
        ("GET", f"/{UP}/v1/orders?limit=10&cursor=abc", "orders.list", "/v1/orders?cursor=abc&limit=10"),
        ("GET", f"/{UP}/v1/orders?cursor=a.b~c-d_e", "orders.list", "/v1/orders?cursor=a.b~c-d_e"),
        (
            "GET",
            f"/{UP}/v1/orders?limit=9007199254740991",
            "orders.list",
            "/v1/orders?limit=9007199254740991",
        ),
    ],
)
def test_canonical_target_matches_its_route(
    registry: Registry, method: str, target: str, route: str, path: str
) -> None:
    found = lookup(registry, method, target)
    assert found.error is None
    assert found.upstream == UP
    assert found.route is not None
    assert found.route.id == route
    assert found.route.upstream == UP
    assert found.path == path


# -- not in canonical origin form: 400 non_canonical_target ----------------------------------------

NON_CANONICAL = {
    "absolute-form": "http://169.254.169.254/latest/meta-data/",
    "absolute-form https": f"https://{UP}/v1/orders",
    "authority-form": f"{UP}:443",
    "asterisk": "*",
    "empty": "",
    "root only": "/",
    "dot segment": f"/{UP}/v1/./orders",
    "dot-dot segment": f"/{UP}/v1/orders/../orders/create",
    "leading dot-dot": f"/../{UP}/v1/orders",
    "trailing dot-dot": f"/{UP}/v1/orders/..",
    "encoded dot-dot upper": f"/{UP}/v1/%2E%2E/orders",
    "encoded dot-dot lower": f"/{UP}/v1/%2e%2e/orders",
    "half encoded dot-dot": f"/{UP}/v1/.%2E/orders",
    "encoded dot in a name": "/orders%2Eapi.internal/v1/orders",
    "empty segment": f"/{UP}//v1/orders",
    "leading empty segment": f"//{UP}/v1/orders",
    "trailing slash": f"/{UP}/v1/orders/",
    "encoded slash": f"/{UP}/v1%2Forders",
    "encoded slash lower": f"/{UP}/v1%2forders",
    "encoded backslash": f"/{UP}/v1%5Corders",
    "encoded NUL": f"/{UP}/v1/orders%00",
    "backslash": f"/{UP}/v1\\orders",
    "tab": f"/{UP}/v1/or\tders",
    "space": f"/{UP}/v1/or ders",
    "newline": f"/{UP}/v1/orders\n",
    "DEL": f"/{UP}/v1/orders\x7f",
    "encoded control": f"/{UP}/v1/orders%0A",
    "encoded DEL": f"/{UP}/v1/orders%7F",
    "non-ASCII": f"/{UP}/v1/ordérs",
    "non-ASCII latin-1 byte": f"/{UP}/v1/orders\xff",
    "lowercase hex escape": f"/{UP}/v1/orders%c3%a9",
    "encoded unreserved letter": f"/{UP}/v1/%6Frders",
    "encoded unreserved digit": f"/{UP}/v%31/orders",
    "encoded tilde": f"/{UP}/v1/orders%7E",
    "bare percent": f"/{UP}/v1/orders%",
    "truncated escape": f"/{UP}/v1/orders%4",
    "non-hex escape": f"/{UP}/v1/orders%GG",
    "question mark with empty query": f"/{UP}/v1/orders?",
    "empty query pair": f"/{UP}/v1/orders?limit=1&&cursor=a",
    "trailing ampersand": f"/{UP}/v1/orders?limit=1&",
    "query pair without =": f"/{UP}/v1/orders?limit",
    "query pair without name": f"/{UP}/v1/orders?=1",
    "encoded slash in query": f"/{UP}/v1/orders?cursor=a%2Fb",
    "encoded dot in query": f"/{UP}/v1/orders?cursor=a%2Eb",
    "encoded NUL in query": f"/{UP}/v1/orders?cursor=a%00",
    "space in query": f"/{UP}/v1/orders?cursor=a b",
    "non-ASCII in query": f"/{UP}/v1/orders?cursor=é",
    "fragment": f"/{UP}/v1/orders#top",
    "reserved name dot-dot": "/../etc/passwd",
}


@pytest.mark.parametrize("target", list(NON_CANONICAL.values()), ids=list(NON_CANONICAL))
@pytest.mark.parametrize("method", ["GET", "POST"])
def test_non_canonical_target_is_refused(registry: Registry, method: str, target: str) -> None:
    found = lookup(registry, method, target)
    assert found.error is Reason.NON_CANONICAL_TARGET
    assert found.route is None
    assert found.path is None
    assert found.upstream is None


# -- canonical but not registered: 404 no_route ---------------------------------------------------

NO_ROUTE = {
    "unknown upstream": ("GET", "/billing.api.internal/v1/orders", "billing.api.internal"),
    "metadata host as a name": ("GET", "/169.254.169.254/latest/meta-data", "169.254.169.254"),
    "reserved broker name": ("GET", "/.ztb/token", ".ztb"),
    "upstream name alone": ("GET", f"/{UP}", UP),
    "wrong method on create": ("GET", f"/{UP}/v1/orders/create", UP),
    "wrong method on list": ("POST", f"/{UP}/v1/orders", UP),
    "DELETE": ("DELETE", f"/{UP}/v1/orders/{ORDER_ID}", UP),
    "lowercase method": ("post", f"/{UP}/v1/orders/create", UP),
    "unknown path": ("GET", f"/{UP}/v1/admin", UP),
    "path prefix of a route": ("POST", f"/{UP}/v1", UP),
    "path longer than a route": ("POST", f"/{UP}/v1/orders/create/now", UP),
    "case differs": ("POST", f"/{UP}/v1/Orders/create", UP),
    "uppercase uuid": ("GET", f"/{UP}/v1/orders/{ORDER_ID.upper()}", UP),
    "not a uuid": ("GET", f"/{UP}/v1/orders/42", UP),
    "uuid without dashes": ("GET", f"/{UP}/v1/orders/{ORDER_ID.replace('-', '')}", UP),
    "encoded char in a typed param": ("GET", f"/{UP}/v1/orders/{ORDER_ID[:-1]}%20", UP),
    "int param not a number": ("GET", f"/{UP}/v1/orders?limit=ten", UP),
    "int param leading zero": ("GET", f"/{UP}/v1/orders?limit=010", UP),
    "int param negative": ("GET", f"/{UP}/v1/orders?limit=-1", UP),
    "int param beyond 2^53-1": ("GET", f"/{UP}/v1/orders?limit=9007199254740992", UP),
    "int param empty": ("GET", f"/{UP}/v1/orders?limit=", UP),
    "str param dot-dot": ("GET", f"/{UP}/v1/orders?cursor=..", UP),
    "str param with an escape": ("GET", f"/{UP}/v1/orders?cursor=a%20b", UP),
    "unknown query param": ("GET", f"/{UP}/v1/orders?foo=1", UP),
    "known and unknown query params": ("GET", f"/{UP}/v1/orders?limit=1&foo=1", UP),
    "duplicate query param": ("GET", f"/{UP}/v1/orders?limit=1&limit=2", UP),
    "duplicate identical query param": ("GET", f"/{UP}/v1/orders?cursor=a&cursor=a", UP),
    "query on a route without query rules": ("POST", f"/{UP}/v1/orders/create?dry_run=1", UP),
    "query on a typed-path route": ("GET", f"/{UP}/v1/orders/{ORDER_ID}?limit=1", UP),
}


@pytest.mark.parametrize(("method", "target", "name"), list(NO_ROUTE.values()), ids=list(NO_ROUTE))
def test_unregistered_target_has_no_route(registry: Registry, method: str, target: str, name: str) -> None:
    found = lookup(registry, method, target)
    assert found.error is Reason.NO_ROUTE
    assert found.route is None
    assert found.path is None
    assert found.upstream == name


def test_unknown_upstream_and_unknown_route_differ_only_in_the_name(registry: Registry) -> None:
    unknown_upstream = lookup(registry, "GET", "/billing.api.internal/v1/orders")
    unknown_route = lookup(registry, "GET", f"/{UP}/v1/admin")
    assert (unknown_upstream.route, unknown_upstream.path, unknown_upstream.error) == (
        unknown_route.route,
        unknown_route.path,
        unknown_route.error,
    )


# -- properties -----------------------------------------------------------------------------------

_PRINTABLE = string.printable  # printable ASCII, including whitespace and controls \t\n\r\x0b\x0c
_METHODS = st.sampled_from(["GET", "POST", "PUT", "DELETE", "HEAD"])
_NEAR_ROUTES = st.sampled_from(
    [f"/{UP}/v1/orders", f"/{UP}/v1/orders/create", f"/{UP}/v1/orders/", f"/{UP}/v1/", f"/{UP}/"]
)
_PIECES = st.sampled_from(
    [
        "",
        "?",
        "&",
        "=",
        "/",
        ".",
        "..",
        "%2E",
        "%2F",
        "%20",
        "%41",
        "limit",
        "cursor",
        "limit=5",
        "cursor=x",
        "?limit=7",
        "?cursor=abc&limit=3",
        ORDER_ID,
        "create",
    ]
)
_TARGETS = st.one_of(
    st.text(alphabet=_PRINTABLE, max_size=80),
    st.builds(lambda head, tail: head + tail, _NEAR_ROUTES, st.text(alphabet=_PRINTABLE, max_size=20)),
    st.builds(lambda head, parts: head + "".join(parts), _NEAR_ROUTES, st.lists(_PIECES, max_size=6)),
)


@settings(
    max_examples=600,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(method=_METHODS, target=_TARGETS)
def test_lookup_never_raises_and_a_match_renders_a_canonical_path(
    registry: Registry, method: str, target: str
) -> None:
    found = lookup(registry, method, target)
    assert found.error in (None, Reason.NO_ROUTE, Reason.NON_CANONICAL_TARGET)
    if found.error is not None:
        assert found.route is None
        assert found.path is None
        return
    assert found.route is not None
    assert found.path is not None
    assert found.upstream == found.route.upstream
    # The forwarded path is itself canonical and fits the same route, rendering to itself.
    again = lookup(registry, method, f"/{found.upstream}{found.path}")
    assert again.error is None
    assert again.route is found.route
    assert again.path == found.path
