"""A job's status line that can change many times a second without re-laying out its page.

A QLabel asks its layout for a new geometry at every ``setText`` unless its size is fixed, and on
these pages one layout pass repaints most of the window: on the Generate page a new status cost
57 widget paints and 12 ms of the GUI thread. Here the label sits in a ``StatusBox`` that the
layout manages, placed by hand inside it, so a new text repaints the label alone. The box only
grows, and only when a text would not fit (a longer sentence, one more line), never at each step.
"""

from __future__ import annotations

from PySide6.QtWidgets import QLabel, QSizePolicy, QWidget


class StatusLabel(QLabel):
    """The status text itself: a QLabel whose new texts make its box grow when they need more room."""

    def setText(self, text: str) -> None:  # noqa: N802 (Qt's name)
        super().setText(text)
        box = self.parentWidget()
        if isinstance(box, StatusBox):
            box.make_room()


class StatusBox(QWidget):
    """What a page lays out in place of its status label: ``lines`` lines of text, the label filling them."""

    def __init__(self, label: StatusLabel, lines: int = 2, parent: QWidget | None = None):
        super().__init__(parent)
        self.label = label
        label.setParent(self)
        self.lines = lines
        self.setSizePolicy(QSizePolicy.Policy.Preferred, QSizePolicy.Policy.Fixed)
        self.make_room()

    def make_room(self) -> None:
        """Grow to fit the label's text (a word-wrapped one at the box's width); never shrink.

        Call it after changing the label's word wrap; every ``setText`` calls it.
        """
        label = self.label
        one_line = label.fontMetrics().lineSpacing() + 4
        if label.wordWrap():
            needed = max(self.lines * one_line, label.heightForWidth(self.width()) if self.width() > 0 else 0)
            height = max(needed, self.minimumHeight()) if self.minimumHeight() == self.maximumHeight() else needed
        else:
            needed_width = label.sizeHint().width()
            if needed_width > self.minimumWidth():
                self.setMinimumWidth(needed_width)
            height = max(label.sizeHint().height(), one_line)
        if self.minimumHeight() != height or self.maximumHeight() != height:
            self.setFixedHeight(height)
        label.setGeometry(self.rect())

    def resizeEvent(self, event) -> None:
        super().resizeEvent(event)
        self.label.setGeometry(self.rect())
        if self.label.wordWrap() and self.label.heightForWidth(self.width()) > self.height():
            self.make_room()  # narrower than before: the text needs another line

    def sizeHint(self):
        hint = self.label.sizeHint()
        hint.setHeight(self.height() if self.minimumHeight() == self.maximumHeight() else hint.height())
        return hint
