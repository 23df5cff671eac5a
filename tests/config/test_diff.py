"""`ztb registry diff`: a reviewer's view of a registry change, in policy terms."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from ztb.deploy import init_deployment

UP = "orders.api.internal"
PIN = "sha256:" + "ab" * 32


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("diff")
    old = base / "old"
    init_deployment(old, broker_port=0, admin_port=0, upstream_port=19443)
    new = base / "new"
    shutil.copytree(old, new)
    path = new / "registry.yaml"
    r: dict[str, Any] = yaml.safe_load(path.read_text())
    r["grants"]["svc.reports"][UP].append("orders:create")  # widened grant
    r["grants"]["svc.checkout"][UP].remove("orders:read")  # narrowed grant
    r["identities"]["svc.billing"] = {"spki": [PIN]}  # new identity
    r["identities"]["svc.checkout"]["spki"].append(PIN.replace("ab", "cd"))  # a second key
    r["upstreams"][UP]["url"] = "https://127.0.0.1:19444"
    r["upstreams"][UP]["spki"] = [PIN.replace("ab", "ef")]  # pin replaced
    routes = {route["id"]: route for route in r["routes"]}
    routes["orders.create"]["max_bytes"] = 131072
    routes["orders.create"]["request_headers"].append("x-tenant")
    routes["orders.list"]["query"].pop("cursor")
    r["routes"].remove(routes["orders.get"])
    r["routes"].append(
        {
            "id": "orders.cancel",
            "upstream": UP,
            "method": "DELETE",
            "path": "/v1/orders/{id:uuid}",
            "scope": "orders:create",
        }
    )
    path.write_text(yaml.safe_dump(r))
    schema = new / "schemas" / "order.create.v3.json"
    loosened = json.loads(schema.read_text())
    loosened["additionalProperties"] = True
    schema.write_text(json.dumps(loosened))
    return old, new


EXPECTED = {
    (
        "access",
        "widened",
        "svc.reports can now call orders.create (POST /orders.api.internal/v1/orders/create)",
    ),
    (
        "access",
        "widened",
        "svc.checkout can now call orders.cancel (DELETE /orders.api.internal/v1/orders/{id:uuid})",
    ),
    (
        "access",
        "widened",
        "svc.reports can now call orders.cancel (DELETE /orders.api.internal/v1/orders/{id:uuid})",
    ),
    (
        "access",
        "narrowed",
        "svc.checkout can no longer call orders.list (GET /orders.api.internal/v1/orders)",
    ),
    (
        "access",
        "narrowed",
        "svc.checkout can no longer call orders.get (GET /orders.api.internal/v1/orders/{order_id:uuid})",
    ),
    (
        "access",
        "narrowed",
        "svc.reports can no longer call orders.get (GET /orders.api.internal/v1/orders/{order_id:uuid})",
    ),
    ("grants", "widened", "svc.reports gains orders:create on orders.api.internal"),
    ("grants", "narrowed", "svc.checkout loses orders:read on orders.api.internal"),
    ("identities", "added", f"svc.billing added, pinned to {PIN}"),
    ("identities", "widened", "svc.checkout: pin added " + PIN.replace("ab", "cd")),
    (
        "upstreams",
        "changed",
        "orders.api.internal: address https://127.0.0.1:19443 -> https://127.0.0.1:19444",
    ),
    ("upstreams", "widened", "orders.api.internal: pin added " + PIN.replace("ab", "ef")),
    ("upstreams", "narrowed", "orders.api.internal: pin removed "),  # the old pin, checked by prefix
    (
        "routes",
        "added",
        "orders.cancel added: DELETE /orders.api.internal/v1/orders/{id:uuid}, scope orders:create, no body",
    ),
    (
        "routes",
        "removed",
        "orders.get removed (was GET /orders.api.internal/v1/orders/{order_id:uuid}, scope orders:read, no body)",
    ),
    ("routes", "widened", "orders.create: max_bytes 65536 -> 131072"),
    ("routes", "widened", "orders.create: request header x-tenant now passed through"),
    ("routes", "narrowed", "orders.list: query parameter cursor no longer allowed"),
    ("schemas", "changed", "order.create.v3: content changed"),
}


def _matches(expected: tuple[str, str, str], change: dict[str, str]) -> bool:
    area, kind, text = expected
    return change["area"] == area and change["kind"] == kind and change["text"].startswith(text)


def test_diff_json_lists_every_change_and_nothing_else(pair: tuple[Path, Path]) -> None:
    old, new = pair
    result = subprocess.run(
        [sys.executable, "-m", "ztb", "registry", "diff", old, new, "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    changes = report["changes"]
    for expected in EXPECTED:
        assert sum(_matches(expected, c) for c in changes) == 1, expected
    assert len(changes) == len(EXPECTED), [c["text"] for c in changes]
    assert report["old_sha256"] != report["new_sha256"]


def test_diff_text_groups_by_area(pair: tuple[Path, Path]) -> None:
    old, new = pair
    result = subprocess.run(
        [sys.executable, "-m", "ztb", "registry", "diff", old / "registry.yaml", new],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].endswith(f"{len(EXPECTED)} changes")
    assert lines.index("access:") < lines.index("grants:") < lines.index("routes:") < lines.index("schemas:")
    assert "  + svc.reports gains orders:create on orders.api.internal" in lines
    assert "  - svc.checkout loses orders:read on orders.api.internal" in lines


def test_same_registry_is_no_change(pair: tuple[Path, Path]) -> None:
    old, _ = pair
    result = subprocess.run(
        [sys.executable, "-m", "ztb", "registry", "diff", old, old],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0
    assert result.stdout.strip().endswith("no policy change")


def test_unreadable_registry_is_one_line(tmp_path: Path, pair: tuple[Path, Path]) -> None:
    (tmp_path / "registry.yaml").write_text("identities: [")
    result = subprocess.run(
        [sys.executable, "-m", "ztb", "registry", "diff", pair[0], tmp_path],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1
    assert result.stderr.startswith("ztb: error: ") and result.stderr.count("\n") == 1
    assert "not valid YAML" in result.stderr
