"""Running the window's event loop until it reaches a state: for the scripts that drive the real window.

The benchmarks and the README's screenshots start the real window and wait on it as a user would,
turning the Qt event loop while they wait, so that its timers, signals and paints all happen.
"""

from __future__ import annotations

import time
from collections.abc import Callable

POLL_S = 0.01


def wait_until(app, condition: Callable[[], bool], timeout_s: float = 600) -> None:
    """Turn ``app``'s event loop until ``condition()`` holds; TimeoutError after ``timeout_s`` seconds."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"the window did not reach the state waited for within {timeout_s:g} s")
        app.processEvents()
        time.sleep(POLL_S)


def settle(app, seconds: float = 0.5) -> None:
    """Turn ``app``'s event loop for ``seconds``, so that what is queued (a job's last signals, paints) happens."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        app.processEvents()
        time.sleep(POLL_S)
