"""Operational logs: one JSON line per operational event on stderr, with a level.

These are for operators (start, stop, reload, audit write failing or recovered, token store
errors, upstream failures), never a record of decisions: the audit log is that record. A line
never carries a token, a request body or a header value; only names, codes and counts.

    {"ts": "2026-05-04T11:42:08.317Z", "level": "warning", "logger": "ztb.broker",
     "event": "upstream_failed", "upstream": "orders.api.internal", "reason": "upstream_pin_mismatch"}
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any, Literal

import orjson

LogLevel = Literal["debug", "info", "warning", "error"]
_FIELDS = "ztb_fields"


class JSONFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        seconds = int(record.created)
        line: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
            + f".{int((record.created - seconds) * 1000):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": record.getMessage(),
            **getattr(record, _FIELDS, {}),
        }
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(line, default=str).decode()


def configure(level: LogLevel = "info") -> None:
    """Send the `ztb` loggers to stderr as JSON lines at `level` (idempotent)."""
    root = logging.getLogger("ztb")
    for handler in list(root.handlers):
        if getattr(handler, "ztb_json", False):
            root.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JSONFormatter())
    handler.ztb_json = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(level.upper())
    root.propagate = False


def event(logger: logging.Logger, level: int, name: str, **fields: Any) -> None:
    """Log one operational event: `name` is a snake_case event code, `fields` plain values."""
    logger.log(level, name, extra={_FIELDS: fields})
