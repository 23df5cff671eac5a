"""Path templates and typed parameters: the registry's vocabulary for what a path may look like.

A template is a list of segments, each either a literal or one whole-segment typed parameter
(`/v1/orders/{order_id:uuid}`). Matching works on already-canonical segments; rendering builds
the forwarded path from the template and the validated values, never from the request's bytes.
Pure code: no I/O.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum

MAX_SAFE_INTEGER = 2**53 - 1


class ParamType(StrEnum):
    INT = "int"  # non-negative decimal, no leading zeros, at most 2^53-1
    UUID = "uuid"  # lowercase canonical 8-4-4-4-12
    SLUG = "slug"  # [a-z0-9][a-z0-9-]{0,62}
    STR = "str"  # 1..128 unreserved characters, never "." or ".."


_PATTERNS = {
    ParamType.INT: re.compile(r"0|[1-9][0-9]{0,15}"),
    ParamType.UUID: re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"),
    ParamType.SLUG: re.compile(r"[a-z0-9][a-z0-9-]{0,62}"),
    ParamType.STR: re.compile(r"[A-Za-z0-9._~-]{1,128}"),
}

_LITERAL = re.compile(r"[A-Za-z0-9._~-]+")
_PARAM = re.compile(r"\{([a-z_][a-z0-9_]{0,31}):([a-z]+)\}")


def check_value(kind: ParamType, value: str) -> bool:
    """True when `value` is a canonical spelling of a `kind` parameter."""
    if _PATTERNS[kind].fullmatch(value) is None:
        return False
    if kind is ParamType.INT:
        return int(value) <= MAX_SAFE_INTEGER
    if kind is ParamType.STR:
        return value not in (".", "..")
    return True


@dataclass(frozen=True, slots=True)
class Param:
    name: str
    kind: ParamType


Segment = str | Param


@dataclass(frozen=True, slots=True)
class PathTemplate:
    text: str
    segments: tuple[Segment, ...]

    @classmethod
    def parse(cls, text: str) -> PathTemplate:
        """Parse a template, raising ValueError with what is wrong."""
        if not text.startswith("/"):
            raise ValueError("must start with '/'")
        if text == "/":
            return cls(text, ())
        segments: list[Segment] = []
        names: set[str] = set()
        for raw in text[1:].split("/"):
            if raw == "":
                raise ValueError("empty segment ('//' or trailing '/')")
            param = _PARAM.fullmatch(raw)
            if param is not None:
                name, kind = param.group(1), param.group(2)
                if kind not in ParamType.__members__.values():
                    raise ValueError(f"unknown parameter type {kind!r} (use int, uuid, slug or str)")
                if name in names:
                    raise ValueError(f"parameter {name!r} appears twice")
                names.add(name)
                segments.append(Param(name, ParamType(kind)))
            elif _LITERAL.fullmatch(raw) and raw not in (".", ".."):
                segments.append(raw)
            else:
                raise ValueError(
                    f"segment {raw!r} is neither a literal of unreserved characters nor {{name:type}}"
                )
        return cls(text, tuple(segments))

    def match(self, segments: tuple[str, ...]) -> dict[str, str] | None:
        """The parameter values when `segments` (canonical, undecoded) fit this template."""
        if len(segments) != len(self.segments):
            return None
        values: dict[str, str] = {}
        for want, got in zip(self.segments, segments, strict=True):
            if isinstance(want, Param):
                if not check_value(want.kind, got):
                    return None
                values[want.name] = got
            elif want != got:
                return None
        return values

    def render(self, values: dict[str, str]) -> str:
        """The path built from this template and validated values."""
        parts = [values[s.name] if isinstance(s, Param) else s for s in self.segments]
        return "/" + "/".join(parts)
