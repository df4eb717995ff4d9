"""The studio window under pytest-qt: registered so that it is closed, without asking, after every test."""

from __future__ import annotations

import time

from PySide6.QtCore import QTimer
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


def when_shown(kind, read, close) -> list:
    """Before a modal dialog of class ``kind`` opens (its ``exec`` returns only once it is closed), arrange for it
    to be read with ``read(dialog)`` and closed with ``close(dialog)`` as soon as it shows. Returns the list the
    readings go to."""
    seen = []

    def read_and_close() -> None:
        shown = [widget for widget in QApplication.topLevelWidgets() if isinstance(widget, kind) and widget.isVisible()]
        if not shown:
            QTimer.singleShot(50, read_and_close)
            return
        seen.append(read(shown[0]))
        close(shown[0])

    QTimer.singleShot(50, read_and_close)
    return seen


def open_generate_page(window, model, count: int, seed: int):
    """The Generate page, shown, with ``model`` opened and chosen, ``count`` images and ``seed``."""
    window.library.open(model)
    page = window.generate_page
    window.tabs.setCurrentWidget(page)
    assert page.select_model(model)
    page.count_spin.setValue(count)
    page.seed_spin.setValue(seed)
    return page
