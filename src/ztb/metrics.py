"""Prometheus metrics of one broker process, in their own registry (never the global one)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.calls = Counter(
            "ztb_calls",
            "Data-plane calls by decision",
            ["decision", "gate", "reason", "upstream"],
            registry=self.registry,
        )
        self.tokens_minted = Counter(
            "ztb_tokens_minted", "Tokens minted (incl. rotation)", registry=self.registry
        )
        self.mint_refused = Counter(
            "ztb_token_mints_refused", "Token mints refused", ["reason"], registry=self.registry
        )
        self.tls_rejections = Counter(
            "ztb_tls_rejections", "Connections refused at the TLS level", ["reason"], registry=self.registry
        )
        self.decision_seconds = Histogram(
            "ztb_decision_seconds",
            "Arrival to decision (gates 1-4)",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.upstream_seconds = Histogram(
            "ztb_upstream_seconds",
            "Upstream exchange time",
            ["upstream"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.audit_writable = Gauge(
            "ztb_audit_writable", "1 when the audit log is writable", registry=self.registry
        )
        self.audit_next_seq = Gauge("ztb_audit_next_seq", "Next audit seq", registry=self.registry)
        self.anchor_tree_size = Gauge(
            "ztb_anchor_tree_size", "Durable entries in the log's Merkle tree", registry=self.registry
        )
        self.anchor_size = Gauge(
            "ztb_anchor_anchored_size",
            "Largest tree size anchored, per sink ('local' = kept beside the log)",
            ["sink"],
            registry=self.registry,
        )
        self.anchor_lag = Gauge(
            "ztb_anchor_lag_seconds",
            "How long the oldest durable entry not yet anchored has waited, per sink",
            ["sink"],
            registry=self.registry,
        )
        self.anchor_failures = Counter(
            "ztb_anchor_failures", "Checkpoints a sink did not take", ["sink"], registry=self.registry
        )
        self.registry_info = Gauge(
            "ztb_registry_info", "Registry in force (value 1)", ["sha256"], registry=self.registry
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)
