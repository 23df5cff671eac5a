"""ztb init: the development deployment it lays out, and what it refuses to touch."""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.x509.oid import ExtendedKeyUsageOID

from ztb import pki
from ztb.cli.deployment import init as init_command
from ztb.config import ConfigError, load_broker_config, load_registry
from ztb.deploy import init_deployment, sample_order

FILES = [
    "ca/ca.pem",
    "ca/ca.key",
    "broker/server.pem",
    "broker/server.key",
    "broker/egress.pem",
    "broker/egress.key",
    "keys/audit.key",
    "keys/audit.pub",
    "keys/checkpoint.key",
    "keys/checkpoint.pub",
    "keys/checkpoint.vkey",
    "callers/svc.checkout/cert.pem",
    "callers/svc.checkout/key.pem",
    "callers/svc.reports/cert.pem",
    "callers/svc.reports/key.pem",
    "upstreams/orders.api.internal/cert.pem",
    "upstreams/orders.api.internal/key.pem",
    "schemas/order.create.v3.json",
    "broker.yaml",
    "registry.yaml",
    "registry.sig",
    "approvers.yaml",
    "approvers/dev-approver-1.key",
    "approvers/dev-approver-1.pub",
    "approvers/dev-approver-2.key",
    "approvers/dev-approver-2.pub",
    "README.md",
]
KEYS = [f for f in FILES if f.endswith((".key", "key.pem"))]


@pytest.fixture(scope="module")
def dep(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("deploy") / "dev"
    init_deployment(root, broker_port=18443, admin_port=19090, upstream_port=19443)
    return root


def _cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def test_creates_every_file_and_nothing_else(dep: Path) -> None:
    for name in FILES:
        assert (dep / name).is_file(), name
    made = {str(p.relative_to(dep)) for p in dep.rglob("*") if p.is_file()}
    assert made == set(FILES)
    assert not [p for p in dep.parent.iterdir() if p.name != "dev"]  # no staging folder left


def test_key_files_are_private(dep: Path) -> None:
    for name in KEYS:
        assert (dep / name).stat().st_mode & 0o777 == 0o600, name


def test_broker_yaml_loads(dep: Path) -> None:
    cfg = load_broker_config(dep)
    assert (cfg.broker_id, cfg.deployment) == ("broker-a", "dev")
    assert (cfg.listen.host, cfg.listen.port) == ("127.0.0.1", 18443)
    assert (cfg.admin.host, cfg.admin.port) == ("127.0.0.1", 19090)
    assert cfg.tls.min_version == "1.3"
    assert cfg.token_ttl_s == 60 and cfg.token_store == "memory"
    assert cfg.audit.durability_timeout_ms == 1000
    assert cfg.limits.max_response_bytes == 8 * 1024 * 1024
    for path in (
        cfg.tls.cert,
        cfg.tls.key,
        cfg.tls.client_ca,
        cfg.egress.cert,
        cfg.egress.key,
        cfg.audit.signing_key,
    ):
        assert cfg.path(path).is_file()


def test_registry_loads_with_matching_pins(dep: Path) -> None:
    reg = load_registry(dep)
    for identity in ("svc.checkout", "svc.reports"):
        pin = pki.spki_pin(_cert(dep / "callers" / identity / "cert.pem"))
        assert reg.identity_for(pin) == identity
    up = reg.upstreams["orders.api.internal"]
    assert (up.host, up.port) == ("127.0.0.1", 19443)
    assert up.pins == {pki.spki_pin(_cert(dep / "upstreams/orders.api.internal/cert.pem"))}
    assert up.ca == (dep / "ca/ca.pem").resolve()
    assert {r.id for r in reg.routes["orders.api.internal"]} == {"orders.create", "orders.get", "orders.list"}
    assert reg.is_granted("svc.checkout", "orders.api.internal", "orders:create")
    assert reg.is_granted("svc.reports", "orders.api.internal", "orders:read")
    assert not reg.is_granted("svc.reports", "orders.api.internal", "orders:create")
    # The broker's own certificates are not caller identities.
    for name in ("broker/server.pem", "broker/egress.pem", "ca/ca.pem"):
        assert reg.identity_for(pki.spki_pin(_cert(dep / name))) is None


def test_certificates_chain_and_carry_the_right_usage(dep: Path) -> None:
    ca = _cert(dep / "ca/ca.pem")
    expected = {
        "broker/server.pem": ExtendedKeyUsageOID.SERVER_AUTH,
        "broker/egress.pem": ExtendedKeyUsageOID.CLIENT_AUTH,
        "callers/svc.checkout/cert.pem": ExtendedKeyUsageOID.CLIENT_AUTH,
        "callers/svc.reports/cert.pem": ExtendedKeyUsageOID.CLIENT_AUTH,
        "upstreams/orders.api.internal/cert.pem": ExtendedKeyUsageOID.SERVER_AUTH,
    }
    for name, usage in expected.items():
        cert = _cert(dep / name)
        cert.verify_directly_issued_by(ca)
        eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        assert list(eku) == [usage], name
    assert pki.common_name(_cert(dep / "broker/egress.pem")) == "ztb-broker-egress"
    san = _cert(dep / "upstreams/orders.api.internal/cert.pem").extensions.get_extension_for_class(
        x509.SubjectAlternativeName
    )
    assert san.value.get_values_for_type(x509.DNSName) == ["orders.api.internal", "localhost"]
    # Each certificate's key file holds its private key.
    for name in expected:
        key_name = (
            name.replace(".pem", ".key")
            if name.startswith("broker/")
            else name.replace("cert.pem", "key.pem")
        )
        assert pki.load_issued(dep / name, dep / key_name).pin == pki.spki_pin(_cert(dep / name))


def test_audit_key_formats(dep: Path) -> None:
    private = serialization.load_pem_private_key((dep / "keys/audit.key").read_bytes(), password=None)
    public = serialization.load_pem_public_key((dep / "keys/audit.pub").read_bytes())
    assert isinstance(private, Ed25519PrivateKey) and isinstance(public, Ed25519PublicKey)
    public.verify(private.sign(b"ztb"), b"ztb")


def test_checkpoint_key_is_its_own_and_named_by_the_origin(dep: Path) -> None:
    from ztb.audit.keys import SigningKey
    from ztb.audit.note import ED25519, Verifier

    key = SigningKey.load(dep / "keys/checkpoint.key")
    assert key.public_raw != SigningKey.load(dep / "keys/audit.key").public_raw
    verifier = Verifier.parse((dep / "keys/checkpoint.vkey").read_text())
    assert (verifier.name, verifier.signature_type, verifier.public_raw) == (
        "dev/broker-a",
        ED25519,
        key.public_raw,
    )
    anchor = load_broker_config(dep).anchor
    assert (anchor.every_entries, anchor.every_s, anchor.max_lag_s, anchor.sinks) == (1000, 5, 60, ())


def _create_validator(dep: Path) -> Callable[[Any], Any]:
    route = next(r for r in load_registry(dep).routes["orders.api.internal"] if r.id == "orders.create")
    assert route.schema == "order.create.v3" and route.validator is not None
    return route.validator


def test_sample_order_validates(dep: Path) -> None:
    validate = _create_validator(dep)
    order = sample_order()
    validate(order)
    assert 350 <= len(json.dumps(order, separators=(",", ":"))) <= 500


@pytest.mark.parametrize(
    "breakage",
    [
        lambda o: o.update(extra=1),
        lambda o: o.update(currency="JPY"),
        lambda o: o.update(customer_id="not-a-uuid"),
        lambda o: o.update(items=[]),
        lambda o: o["items"][0].update(qty=0),
        lambda o: o["items"][0].update(sku="lower-case"),
        lambda o: o["items"][0].update(debug=True),
        lambda o: o["shipping"].update(country="gbr"),
        lambda o: o["shipping"].pop("city"),
        lambda o: o.update(note="x" * 201),
        lambda o: o.pop("items"),
    ],
)
def test_broken_orders_are_refused(dep: Path, breakage: Callable[[dict[str, Any]], object]) -> None:
    validate = _create_validator(dep)
    order = copy.deepcopy(sample_order())
    breakage(order)
    with pytest.raises(Exception):  # noqa: B017 - fastjsonschema.JsonSchemaValueException
        validate(order)


def test_refuses_a_non_empty_folder_without_touching_it(tmp_path: Path) -> None:
    root = tmp_path / "taken"
    root.mkdir()
    (root / "keep.txt").write_text("mine")
    with pytest.raises(ConfigError, match="not empty"):
        init_deployment(root)
    assert [p.name for p in root.iterdir()] == ["keep.txt"]
    assert (root / "keep.txt").read_text() == "mine"
    assert [p.name for p in tmp_path.iterdir()] == ["taken"]


def test_refuses_a_file(tmp_path: Path) -> None:
    target = tmp_path / "file"
    target.write_text("x")
    with pytest.raises(ConfigError, match="not a folder"):
        init_deployment(target)
    assert target.read_text() == "x"


def test_fills_an_empty_folder(tmp_path: Path) -> None:
    root = tmp_path / "empty"
    root.mkdir()
    init_deployment(root)
    load_registry(root)
    assert load_broker_config(root).listen.port == 8443
    assert [p.name for p in tmp_path.iterdir()] == ["empty"]


def test_os_errors_become_config_errors(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="cannot create the deployment"):
        init_deployment(tmp_path / "file" / "dep")  # its parent is a file


def test_bad_arguments_write_nothing(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="upstream port"):
        init_deployment(tmp_path / "a", upstream_port=0)
    with pytest.raises(ConfigError, match="broker id"):
        init_deployment(tmp_path / "a", broker_id="Bad Name")
    assert list(tmp_path.iterdir()) == []


def test_cli_init(tmp_path: Path) -> None:
    command = init_command
    root = tmp_path / "cli"
    result = CliRunner().invoke(command, [str(root), "--broker-port", "28443", "--upstream-port", "29443"])
    assert result.exit_code == 0, result.output
    assert f"ztb serve {root}" in result.output
    assert load_broker_config(root).listen.port == 28443
    assert load_registry(root).upstreams["orders.api.internal"].port == 29443
    again = CliRunner().invoke(command, [str(root)])
    assert again.exit_code != 0
    assert isinstance(again.exception, ConfigError)


def test_key_files_survive_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        init_deployment(tmp_path / "u")
    finally:
        os.umask(old)
    for name in KEYS:
        assert (tmp_path / "u" / name).stat().st_mode & 0o777 == 0o600, name
