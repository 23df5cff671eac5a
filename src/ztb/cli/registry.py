"""ztb registry commands."""

import click

COMMANDS: list[click.Command] = []
