"""``ddpm-studio`` with no command: the studio window (or, where it cannot open, one line saying why)."""

from __future__ import annotations

from ddpm_studio.gui.app import run_app


def run() -> int:
    return run_app()
