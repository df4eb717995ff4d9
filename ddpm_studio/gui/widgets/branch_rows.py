"""The paper's Fig. 7 as rows: at each branch step t, the shared x_t, its x0_hat, then the N continuations.

Rows come from ``core.explore.branching.BranchRow`` (pictures already uint8); they are kept sorted
from the noisiest t down, and a second row at the same t replaces the first.
"""

from __future__ import annotations

import numpy as np
from PySide6.QtCore import Qt
from PySide6.QtWidgets import QFrame, QHBoxLayout, QLabel, QScrollArea, QVBoxLayout, QWidget

from ddpm_studio.core.explore.branching import BranchRow
from ddpm_studio.gui.style import MUTED_TEXT_STYLE, make_bold
from ddpm_studio.gui.widgets.image_view import scaled_pixmap

TILE_SIZE = 64  # each picture of a row, in pixels
DECIDED_EXPLANATION = ("Decided: how alike the continuations are: 100% = all the same image, 0% = as different as "
                       "unrelated samples.")


def decided_text(row: BranchRow) -> str:
    return f"t = {row.t} · {row.decided:.0%} decided"


def picture_tile(picture: np.ndarray, caption: str, tooltip: str) -> QWidget:
    """One picture with a short caption under it."""
    tile = QWidget()
    layout = QVBoxLayout(tile)
    layout.setContentsMargins(0, 0, 0, 0)
    layout.setSpacing(1)
    image = QLabel()
    image.setPixmap(scaled_pixmap(picture if picture.shape[-1] != 1 else picture[..., 0], TILE_SIZE))
    image.setFixedSize(TILE_SIZE, TILE_SIZE)
    image.setToolTip(tooltip)
    label = QLabel(caption)
    label.setAlignment(Qt.AlignmentFlag.AlignHCenter)
    label.setStyleSheet(MUTED_TEXT_STYLE)
    layout.addWidget(image)
    layout.addWidget(label)
    return tile


class BranchRowView(QWidget):
    """One branch step: "t = 750 · 62% decided", then x_t, x0_hat and the finals in a line."""

    def __init__(self, row: BranchRow, parent: QWidget | None = None):
        super().__init__(parent)
        self.row = row
        self.title = QLabel(decided_text(row))
        make_bold(self.title)
        self.title.setToolTip(f"{DECIDED_EXPLANATION} The finals' per-pixel spread here: {row.spread:.1f} of 255.")
        pictures = QHBoxLayout()
        pictures.setSpacing(4)
        pictures.addWidget(picture_tile(row.x_t, "x_t", f"The shared x_t at t = {row.t}"))
        pictures.addWidget(picture_tile(row.x0_hat, "pred. x_0", "The model's guess of x_0 from this x_t"))
        separator = QFrame()
        separator.setFrameShape(QFrame.Shape.VLine)
        pictures.addWidget(separator)
        self.final_tiles = [
            picture_tile(final, str(index + 1), f"Continuation {index + 1}: its own noise from t = {row.t} down to 0")
            for index, final in enumerate(row.finals)
        ]
        for tile in self.final_tiles:
            pictures.addWidget(tile)
        pictures.addStretch(1)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 2, 0, 2)
        layout.setSpacing(2)
        layout.addWidget(self.title)
        layout.addLayout(pictures)


class BranchRows(QScrollArea):
    """The rows of a branching run (or several), noisiest t at the top; a hint while there are none."""

    def __init__(self, placeholder: str, parent: QWidget | None = None):
        super().__init__(parent)
        self.views: list[BranchRowView] = []
        self.placeholder = QLabel(placeholder)
        self.placeholder.setWordWrap(True)
        self.placeholder.setEnabled(False)
        self.explanation = QLabel(DECIDED_EXPLANATION)
        self.explanation.setWordWrap(True)
        self.explanation.setStyleSheet(MUTED_TEXT_STYLE)
        self.explanation.hide()
        content = QWidget()
        self.rows_layout = QVBoxLayout(content)
        self.rows_layout.setContentsMargins(4, 4, 4, 4)
        self.rows_layout.addWidget(self.explanation)
        self.rows_layout.addWidget(self.placeholder)
        self.rows_layout.addStretch(1)
        self.setWidget(content)
        self.setWidgetResizable(True)
        self.setFrameShape(QFrame.Shape.NoFrame)

    def rows(self) -> list[BranchRow]:
        return [view.row for view in self.views]

    def timesteps(self) -> list[int]:
        return [view.row.t for view in self.views]

    def add_row(self, row: BranchRow) -> BranchRowView:
        """Show ``row`` in its place by t (descending); a row already shown at the same t goes."""
        for view in [view for view in self.views if view.row.t == row.t]:
            self._remove(view)
        view = BranchRowView(row)
        position = sum(1 for shown in self.views if shown.row.t > row.t)
        self.views.insert(position, view)
        self.rows_layout.insertWidget(position + 1, view)  # below the explanation
        self._update_hints()
        return view

    def clear_rows(self) -> None:
        for view in list(self.views):
            self._remove(view)
        self._update_hints()

    def _remove(self, view: BranchRowView) -> None:
        self.views.remove(view)
        self.rows_layout.removeWidget(view)
        view.deleteLater()

    def _update_hints(self) -> None:
        self.placeholder.setVisible(not self.views)
        self.explanation.setVisible(bool(self.views))
