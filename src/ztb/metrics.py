"""Prometheus metrics of one broker process, in their own registry (never the global one).

Names and labels are part of the operator's contract (docs/operations.md lists them). Labels
carry only codes and registry names (decision, gate, reason, upstream, stage): never a token,
an identity's certificate or anything a caller chose, so a hostile caller cannot grow the
series. It only counts: it never decides anything.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
READINESS_CHECKS = ("audit_writable", "registry_loaded", "token_store", "accepting")


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        # -- calls ---------------------------------------------------------------------------------
        self.calls = Counter(
            "ztb_calls",
            "Data-plane calls by decision; gate and reason empty for ALLOW, upstream empty when no route matched",
            ["decision", "gate", "reason", "upstream"],
            registry=r,
        )
        self.in_flight = Gauge("ztb_calls_in_flight", "Data-plane calls being handled now", registry=r)
        self.gates_seconds = Histogram(
            "ztb_gates_seconds",
            "Arrival to decision (gates 1-4, before the egress gate's audit wait)",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.durability_seconds = Histogram(
            "ztb_audit_durability_wait_seconds",
            "Time a call waited for its own entry to be durable (entry: call or result)",
            ["entry"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.upstream_seconds = Histogram(
            "ztb_upstream_seconds",
            "Upstream exchange time",
            ["upstream"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.upstream_failures = Counter(
            "ztb_upstream_failures", "Upstream exchanges that failed", ["upstream", "reason"], registry=r
        )
        self.tls_rejections = Counter(
            "ztb_tls_rejections", "Connections refused at the TLS level", ["reason"], registry=r
        )
        # -- tokens --------------------------------------------------------------------------------
        self.tokens_minted = Counter(
            "ztb_tokens_minted",
            "Tokens minted (how: mint at /.ztb/token, or rotation in ZTB-Next-Token)",
            ["how"],
            registry=r,
        )
        self.tokens_consumed = Counter(
            "ztb_tokens_consumed", "Tokens taken from the store by a presentation", registry=r
        )
        self.mint_refused = Counter("ztb_token_mints_refused", "Token mints refused", ["reason"], registry=r)
        self.store_errors = Counter(
            "ztb_token_store_errors",
            "Token store operations that failed or timed out (operation: put, take, ping)",
            ["operation"],
            registry=r,
        )
        # -- the audit log -------------------------------------------------------------------------
        self.batch_entries = Histogram(
            "ztb_audit_batch_entries", "Entries per group commit", buckets=BATCH_BUCKETS, registry=r
        )
        self.fsync_seconds = Histogram(
            "ztb_audit_fsync_seconds",
            "Write and fsync time of one group commit",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.audit_writable = Gauge("ztb_audit_writable", "1 when the audit log is writable", registry=r)
        self.audit_next_seq = Gauge("ztb_audit_next_seq", "Next audit seq", registry=r)
        self.audit_segment = Gauge("ztb_audit_segment", "Number of the segment being written", registry=r)
        # -- anchoring -----------------------------------------------------------------------------
        self.anchor_tree_size = Gauge(
            "ztb_anchor_tree_size", "Durable entries in the log's Merkle tree", registry=r
        )
        self.anchor_size = Gauge(
            "ztb_anchor_anchored_size",
            "Largest tree size anchored, per sink ('local' = kept beside the log)",
            ["sink"],
            registry=r,
        )
        self.anchor_lag = Gauge(
            "ztb_anchor_lag_seconds",
            "How long the oldest durable entry not yet anchored has waited, per sink",
            ["sink"],
            registry=r,
        )
        self.anchor_failures = Counter(
            "ztb_anchor_failures", "Checkpoints a sink did not take", ["sink"], registry=r
        )
        # -- registry and readiness ----------------------------------------------------------------
        self.registry_info = Gauge(
            "ztb_registry_info", "Registry in force (value 1, label sha256)", ["sha256"], registry=r
        )
        self.reloads = Counter(
            "ztb_registry_reloads", "Registry reloads (outcome: applied or refused)", ["outcome"], registry=r
        )
        self.ready = Gauge("ztb_ready", "Readiness checks (1 passing, 0 failing)", ["check"], registry=r)
        self._registry_sha: str | None = None
        # Children of the hot path's labels, looked up once rather than on every call.
        self.durable_call = self.durability_seconds.labels("call")
        self.durable_result = self.durability_seconds.labels("result")
        self.minted_rotation = self.tokens_minted.labels("rotation")
        self._allowed: dict[str, Counter] = {}
        self._upstream_time: dict[str, Histogram] = {}

    def allowed(self, upstream: str) -> Counter:
        """The ALLOW child of `ztb_calls` for `upstream` (a counter)."""
        child = self._allowed.get(upstream)
        if child is None:
            child = self._allowed[upstream] = self.calls.labels("ALLOW", "", "", upstream)
        return child

    def upstream_time(self, upstream: str) -> Histogram:
        """The `ztb_upstream_seconds` child of `upstream` (a histogram)."""
        child = self._upstream_time.get(upstream)
        if child is None:
            child = self._upstream_time[upstream] = self.upstream_seconds.labels(upstream)
        return child

    def registry_in_force(self, sha256: str) -> None:
        if self._registry_sha is not None and self._registry_sha != sha256:
            self.registry_info.remove(self._registry_sha)
        self._registry_sha = sha256
        self.registry_info.labels(sha256).set(1)

    def audit_batch(self, entries: int, seconds: float) -> None:
        self.batch_entries.observe(entries)
        self.fsync_seconds.observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)
