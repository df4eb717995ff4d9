"""What the tests that run ``ddpm-studio`` as a command share: how to call it, its error prefix, a hang guard."""

from __future__ import annotations

import contextlib
import subprocess
import sys
from collections.abc import Iterator

ERROR_PREFIX = "ddpm-studio: error: "
TIMEOUT = 300  # seconds; a guard against a hang, never a timing assertion


def command(*args) -> list[str]:
    """The command line of ``python -m ddpm_studio ARGS`` (paths and numbers as strings)."""
    return [sys.executable, "-m", "ddpm_studio", *map(str, args)]


@contextlib.contextmanager
def started(args: list, env: dict, cwd) -> Iterator[subprocess.Popen]:
    """``ddpm-studio ARGS`` running in the background (text pipes); killed at the end if it still runs, so that
    a failed test leaves no process behind."""
    process = subprocess.Popen(command(*args), env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def assert_one_error_line(stderr: str, fragment: str) -> str:
    """The one non-empty line of ``stderr``: an error with the command's prefix that contains ``fragment``."""
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    assert lines[0].startswith(ERROR_PREFIX), stderr
    assert fragment in lines[0], lines[0]
    return lines[0]
