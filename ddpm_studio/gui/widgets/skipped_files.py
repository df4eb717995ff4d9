"""The list of files a scan did not use, each with its reason, readable at any width without scrolling sideways.

The file column takes what its names need, up to a share of the width (a longer name is shortened in
the middle, whole in its tooltip); the reason takes the rest and wraps onto more lines when it is long.
"""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import QRect, QSize, Qt
from PySide6.QtWidgets import QHeaderView, QStyle, QTreeWidget, QTreeWidgetItem, QWidget

FILE_COLUMN_SHARE = 0.45  # of the list's width, at most, for the file names
COLUMN_PADDING = 16  # beside a column's text: the cell's margins and a gap before the next column


class SkippedFilesList(QTreeWidget):
    """Rows of (file, reason); the reasons wrap, the names are shortened in the middle when they must be."""

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.setHeaderLabels(["File", "Reason"])
        self.setRootIsDecorated(False)
        self.setWordWrap(True)
        self.setUniformRowHeights(False)  # a wrapped reason makes its row taller
        self.setTextElideMode(Qt.TextElideMode.ElideMiddle)  # a name keeps its start and its extension
        self.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        header = self.header()
        header.setStretchLastSection(True)
        header.setSectionResizeMode(0, QHeaderView.ResizeMode.Interactive)
        self._name_width = 0

    def set_rows(self, rows: list[tuple[Path, str]]) -> None:
        """Replace the list: each file by its name (its whole path in the tooltip), and why it was not used."""
        self.clear()
        items = []
        for path, reason in rows:
            item = QTreeWidgetItem([path.name, reason])
            item.setToolTip(0, str(path))
            item.setToolTip(1, reason)
            items.append(item)
        self.addTopLevelItems(items)
        metrics = self.fontMetrics()
        widths = [metrics.horizontalAdvance(path.name) for path, _ in rows]
        self._name_width = max(widths + [metrics.horizontalAdvance("File")]) + COLUMN_PADDING
        self._fit_columns()

    def text_margin(self) -> int:
        """The gap the style leaves on each side of a cell's text."""
        return self.style().pixelMetric(QStyle.PixelMetric.PM_FocusFrameHMargin, None, self) + 1

    def _fit_columns(self) -> None:
        """The names' column as wide as they need, up to its share; each row as tall as its wrapped reason.

        A tree view sizes its rows without looking at the columns' widths, so a reason would be cut to one
        line: each row's height is worked out here, for the width its reason has now.
        """
        width = self.viewport().width()
        self.setColumnWidth(0, min(self._name_width, int(width * FILE_COLUMN_SHARE)))
        reason_width = max(1, width - self.columnWidth(0) - 2 * self.text_margin())
        metrics = self.fontMetrics()
        line = metrics.height()
        for row in range(self.topLevelItemCount()):
            item = self.topLevelItem(row)
            height = metrics.boundingRect(QRect(0, 0, reason_width, 100 * line), Qt.TextFlag.TextWordWrap,
                                          item.text(1)).height()
            item.setSizeHint(1, QSize(reason_width, max(line, height) + 2))

    def resizeEvent(self, event) -> None:
        super().resizeEvent(event)
        self._fit_columns()
