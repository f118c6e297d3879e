"""The cli wing: the `kdtrain` command: its arguments, the checks each command makes before any work, and
what each subcommand does and prints."""

from kdtrain.cli.commands import main

__all__ = ["main"]
