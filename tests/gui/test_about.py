"""Help › About names the version, as ``ddpm-studio --version`` prints it."""

from PySide6.QtGui import QAction
from PySide6.QtWidgets import QMessageBox

from ddpm_studio import __version__
from tests.helpers.windows import when_shown


def test_about_shows_the_version(qtbot, window):
    about = next(action for action in window.findChildren(QAction) if action.text() == "&About DDPM Studio")
    seen = when_shown(QMessageBox, lambda box: (box.windowTitle(), box.text()), QMessageBox.accept)
    about.trigger()  # what choosing Help › About does; returns once the box is closed
    assert len(seen) == 1
    title, text = seen[0]
    assert f"DDPM Studio {__version__}" in text and __version__ in title
