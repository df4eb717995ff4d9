"""Help › About names the version, as ``ddpm-studio --version`` prints it."""

from PySide6.QtCore import QTimer
from PySide6.QtGui import QAction
from PySide6.QtWidgets import QApplication, QMessageBox

from ddpm_studio import __version__


def test_about_shows_the_version(qtbot, window):
    about = next(action for action in window.findChildren(QAction) if action.text() == "&About DDPM Studio")
    seen = []

    def read_and_close() -> None:
        boxes = [widget for widget in QApplication.topLevelWidgets()
                 if isinstance(widget, QMessageBox) and widget.isVisible()]
        if not boxes:
            QTimer.singleShot(50, read_and_close)
            return
        seen.append((boxes[0].windowTitle(), boxes[0].text()))
        boxes[0].accept()

    QTimer.singleShot(50, read_and_close)
    about.trigger()  # what choosing Help › About does; returns once the box is closed
    assert len(seen) == 1
    title, text = seen[0]
    assert f"DDPM Studio {__version__}" in text and __version__ in title
