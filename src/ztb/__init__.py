"""ztb, the Zero-Trust API Broker.

Every call between internal services passes five gates (identity, scope, allowlist, shape,
egress) and leaves a signed, hash-chained audit entry. See docs/architecture.md.
"""

__version__ = "0.1.0"
