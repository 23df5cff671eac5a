"""The command line: entry points only. Each command parses its arguments and calls the library.

Errors a user can cause are printed as one line on stderr with a non-zero exit, never as a
traceback: library code raises `UserError` (or `ConfigError`) and `main` prints it.
"""

from __future__ import annotations

import sys

import click

from ztb import __version__
from ztb.config import ConfigError


class UserError(click.ClickException):
    """A mistake or a condition the user can fix; printed as `ztb: error: <message>`."""

    def show(self, file: object = None) -> None:
        click.echo(f"ztb: error: {self.format_message()}", err=True)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="ztb")
def cli() -> None:
    """ztb, the Zero-Trust API Broker: five gates, single-use scoped tokens, a signed audit log."""


def _register() -> None:
    # Imported here so each command group lives in its own module.
    from ztb.cli import audit, caller, deployment, evidence, explain, registry, witness

    for module in (deployment, registry, explain, audit, caller, evidence, witness):
        for command in module.COMMANDS:
            cli.add_command(command)


def main() -> None:
    _register()
    try:
        cli.main(standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("ztb: aborted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        if isinstance(exc, click.UsageError):
            exc.show()
            sys.exit(2)
        UserError(exc.format_message()).show()
        sys.exit(exc.exit_code or 1)
    except ConfigError as exc:
        click.echo(f"ztb: error: {exc}", err=True)
        sys.exit(1)
    except SystemExit:
        raise
    except KeyboardInterrupt:
        sys.exit(130)
