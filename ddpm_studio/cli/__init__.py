"""The ``ddpm-studio`` command line: ``entry.main`` parses it (``arguments``) and runs one command module."""

from ddpm_studio.cli.entry import main

__all__ = ["main"]
