"""The classes of a labelled dataset, one row each: the class name, its count and a few of its thumbnails.

At most ``MAX_ROWS`` rows are built, then one line says how many classes are not shown, so a dataset
of a thousand classes draws as fast as one of ten.
"""

from __future__ import annotations

import numpy as np
from PySide6.QtCore import Qt
from PySide6.QtWidgets import QHBoxLayout, QLabel, QScrollArea, QVBoxLayout, QWidget

from ddpm_studio.gui.style import MUTED_TEXT_STYLE
from ddpm_studio.gui.widgets.image_view import scaled_pixmap

MAX_ROWS = 20
THUMBNAILS_PER_ROW = 8
THUMBNAIL_SIZE = 40
NAME_WIDTH = 160
MAX_HEIGHT = 300  # about six rows in sight at once


class ClassRows(QScrollArea):
    """Rows of (name, count, thumbnails); ``set_classes`` replaces them all."""

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.setWidgetResizable(True)
        self.setFrameShape(QScrollArea.Shape.NoFrame)
        self.rows: list[QWidget] = []
        self.more_label = QLabel()
        self.more_label.setStyleSheet(MUTED_TEXT_STYLE)
        self._body = QWidget()
        self._layout = QVBoxLayout(self._body)
        self._layout.setContentsMargins(0, 0, 0, 0)
        self._layout.setSpacing(2)
        self.setWidget(self._body)

    def set_classes(self, names: list[str], counts: list[int], thumbnails: list[list[np.ndarray]]) -> None:
        """Show the first ``MAX_ROWS`` classes; ``thumbnails[i]`` are a few (H, W, C) uint8 pictures of class i."""
        while self._layout.count():  # the rows, the "more" line and the stretch, rebuilt below
            widget = self._layout.takeAt(0).widget()
            if widget is not None and widget is not self.more_label:
                widget.deleteLater()
        self.rows = []
        for name, count, pictures in list(zip(names, counts, thumbnails))[:MAX_ROWS]:
            row = self._make_row(name, count, pictures[:THUMBNAILS_PER_ROW])
            self._layout.addWidget(row)
            self.rows.append(row)
        hidden = len(names) - len(self.rows)
        self.more_label.setText(f"and {hidden:,} more class{'es' if hidden != 1 else ''}" if hidden > 0 else "")
        self._layout.addWidget(self.more_label)  # added first: shown while still parentless, it would be a window
        self.more_label.setVisible(hidden > 0)
        self._layout.addStretch(1)
        # As tall as the rows, up to a limit, then scrolled: the thumbnail grid below keeps the rest.
        # Summed here, not read from the layout: rows just added to a shown box are not yet counted there.
        heights = [row.sizeHint().height() for row in self.rows]
        if hidden > 0:
            heights.append(self.more_label.sizeHint().height())
        spacing = self._layout.spacing() * max(0, len(heights) - 1)
        self.setFixedHeight(min(sum(heights) + spacing + 2 * self.frameWidth(), MAX_HEIGHT))

    @staticmethod
    def _make_row(name: str, count: int, pictures: list[np.ndarray]) -> QWidget:
        row = QWidget()
        layout = QHBoxLayout(row)
        layout.setContentsMargins(0, 0, 0, 0)
        caption = QLabel(f"<b>{_escaped(name)}</b><br>{count:,} image{'s' if count != 1 else ''}")
        caption.setObjectName("classCaption")
        caption.setFixedWidth(NAME_WIDTH)
        caption.setToolTip(name)
        layout.addWidget(caption)
        for picture in pictures:
            thumbnail = QLabel()
            thumbnail.setPixmap(scaled_pixmap(picture, THUMBNAIL_SIZE))
            thumbnail.setFixedSize(THUMBNAIL_SIZE, THUMBNAIL_SIZE)
            thumbnail.setAlignment(Qt.AlignmentFlag.AlignCenter)
            layout.addWidget(thumbnail)
        layout.addStretch(1)
        return row


def _escaped(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
