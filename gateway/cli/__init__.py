"""The `gateway` command: argv parsing and the admin commands, in `commands.py`."""

from gateway.cli.commands import main

__all__ = ["main"]
