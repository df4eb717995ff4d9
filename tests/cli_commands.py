"""What the tests that run ``ddpm-studio`` as a command share: how to call it, its error prefix, a hang guard."""

from __future__ import annotations

import sys

ERROR_PREFIX = "ddpm-studio: error: "
TIMEOUT = 300  # seconds; a guard against a hang, never a timing assertion


def command(*args) -> list[str]:
    """The command line of ``python -m ddpm_studio ARGS`` (paths and numbers as strings)."""
    return [sys.executable, "-m", "ddpm_studio", *map(str, args)]
