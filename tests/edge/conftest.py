"""Fixtures of the hostile-input suites: a canary listener beside the module's running deployment."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from hostile import Canary
from stack import Stack


@pytest.fixture(scope="module")
def canary(stack: Stack) -> Iterator[Canary]:
    listener = Canary(stack.loop)
    try:
        yield listener
    finally:
        listener.close()
