"""The window's few styles and sizes, in one place so that every page looks the same."""

from __future__ import annotations

from PySide6.QtCore import Qt
from PySide6.QtWidgets import QLabel, QWidget

# A message that stops the user (a failed scan, a run that cannot start): a red box.
ERROR_BOX_STYLE = ("QLabel { color: #8a1c1c; background: #fdecec; border: 1px solid #e8a5a5; border-radius: 4px; "
                   "padding: 8px; }")
# A line of text that reports something that went wrong, in place (a status line, a model that cannot be read).
ERROR_TEXT_STYLE = "color: #c62828;"
WARNING_TEXT_STYLE = "color: #9a4b00;"
# Captions and hints: quieter than the values they describe.
MUTED_TEXT_STYLE = "color: #505a66;"

SETTINGS_PANEL_WIDTH = 340  # the left column of the Generate and Noising pages
ACTION_BUTTON_HEIGHT = 34  # Start, Generate, Denoise and their Stop buttons


def hold_size(label: QLabel, widest: str) -> None:
    """Give a label that changes at every frame (a t, a value) a fixed size that fits ``widest``.

    A label whose size may change asks its window for a new layout at each ``setText``, and the layout
    repaints every widget on the page: with a fixed size only the label itself is painted again.
    """
    metrics = label.fontMetrics()
    label.setFixedSize(metrics.horizontalAdvance(widest) + 8, metrics.height() + 4)


def make_bold(widget: QWidget) -> None:
    font = widget.font()
    font.setBold(True)
    widget.setFont(font)


def error_box() -> QLabel:
    """A hidden, selectable, word-wrapped label in the error-box style; show it with a sentence."""
    label = QLabel()
    label.setWordWrap(True)
    label.setStyleSheet(ERROR_BOX_STYLE)
    label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
    label.hide()
    return label
