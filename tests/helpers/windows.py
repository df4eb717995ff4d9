"""The studio window under pytest-qt: registered so that it is closed, without asking, after every test."""

from __future__ import annotations

import time

from PySide6.QtWidgets import QApplication


def add_window(qtbot, window) -> None:
    """Register a studio window with qtbot, which closes it after the test, also after a failure with a job
    still running. Then it must neither ask "Stop running work?" (nobody answers offscreen: the run would
    hang) nor be deleted while its jobs stop: it is closed here without asking, and waited for."""

    def close_without_asking(widget) -> None:
        widget.confirm_close = False
        widget.close()
        deadline = time.monotonic() + 60
        while not widget.closed and time.monotonic() < deadline:
            QApplication.processEvents()
            time.sleep(0.01)

    qtbot.addWidget(window, before_close_func=close_without_asking)
