"""Request targets: canonical origin form or nothing, and the registry lookup that precedes the gates.

A target that is not already canonical is rejected, never repaired: absolute-form, authority
form, `*`, dot segments (literal or percent-encoded), empty segments, encoded `/`, `\\`, `.` or
NUL, backslashes, controls and anything not ASCII. A canonical target then names an upstream by
its first segment and must fit one of that upstream's routes exactly (method, typed path,
query rules). Pure code: nothing is fetched or resolved.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from ztb.config.registry import QueryRule, Registry
from ztb.config.templates import check_value
from ztb.gates.base import Lookup
from ztb.reasons import Reason

# RFC 3986 pchar minus pct-encoded (handled apart): unreserved, sub-delims, ":" and "@".
_PCHAR = re.compile(r"[A-Za-z0-9\-._~!$&'()*+,;=:@]*")
_QCHAR = re.compile(r"[A-Za-z0-9\-._~!$&'()*+,;=:@/?]*")
_PCT = re.compile(r"%(..)")
_UNRESERVED = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
# Encoded forms that would change a path's meaning once decoded somewhere downstream.
_FORBIDDEN_ENCODED = frozenset(b"/\\.\x00")

NON_CANONICAL = Lookup(None, None, None, Reason.NON_CANONICAL_TARGET)


def _canonical_part(part: str, allowed: re.Pattern[str]) -> bool:
    """True when `part` uses only allowed characters and canonical, harmless %XX escapes."""
    if "%" not in part:
        return allowed.fullmatch(part) is not None
    for escape in _PCT.finditer(part):
        digits = escape.group(1)
        if not re.fullmatch(r"[0-9A-F]{2}", digits):  # lowercase or invalid hex
            return False
        byte = int(digits, 16)
        if byte in _UNRESERVED or byte in _FORBIDDEN_ENCODED or byte < 0x20 or byte == 0x7F:
            return False
    rest = _PCT.sub("", part)
    return "%" not in rest and allowed.fullmatch(rest) is not None


def lookup(registry: Registry, method: str, target: str) -> Lookup:
    if not target.startswith("/") or not target.isascii():
        return NON_CANONICAL
    path, sep, query = target.partition("?")
    if sep and not query:
        return NON_CANONICAL
    segments = tuple(path[1:].split("/"))
    for segment in segments:
        if segment in ("", ".", "..") or not _canonical_part(segment, _PCHAR):
            return NON_CANONICAL
    pairs: list[tuple[str, str]] = []
    if query:
        if not _canonical_part(query, _QCHAR):
            return NON_CANONICAL
        for item in query.split("&"):
            key, eq, value = item.partition("=")
            if not key or not eq:
                return NON_CANONICAL
            pairs.append((key, value))

    name = segments[0]
    routes = registry.routes.get(name)
    if routes is None:
        return Lookup(name, None, None, Reason.NO_ROUTE)
    rest = segments[1:]
    for route in routes:
        if route.method != method:
            continue
        values = route.template.match(rest)
        if values is None:
            continue
        rendered_query = _match_query(route.query, pairs)
        if rendered_query is None:
            continue
        return Lookup(name, route, route.template.render(values) + rendered_query, None)
    return Lookup(name, None, None, Reason.NO_ROUTE)


def _match_query(rules: Mapping[str, QueryRule], pairs: list[tuple[str, str]]) -> str | None:
    """The query to forward, rebuilt from validated values in sorted order; None when it does not fit."""
    seen: dict[str, str] = {}
    for key, value in pairs:
        rule = rules.get(key)
        if rule is None or key in seen or not check_value(rule.type, value):
            return None
        seen[key] = value
    for key, rule in rules.items():
        if rule.required and key not in seen:
            return None
    if not seen:
        return ""
    return "?" + "&".join(f"{key}={seen[key]}" for key in sorted(seen))
