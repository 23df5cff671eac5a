"""The one error type for a deployment file that cannot be used.

Its message names the file, the field and what is wrong, on one line, so the command line can
print it as it is.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import ValidationError


class ConfigError(Exception):
    """A deployment file is missing, unreadable or invalid; str() is the whole message."""


def from_validation(path: Path, error: ValidationError) -> ConfigError:
    problems = []
    for item in error.errors():
        where = ".".join(str(part) for part in item["loc"]) or "(top level)"
        message = item["msg"].removeprefix("Value error, ")  # pydantic's prefix for our own checks
        problems.append(f"{where}: {message}")
    return ConfigError(f"{path}: " + "; ".join(problems))
