"""ztb caller commands."""

import click

COMMANDS: list[click.Command] = []
