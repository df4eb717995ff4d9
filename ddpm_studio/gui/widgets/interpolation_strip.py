"""A strip of interpolation frames, left (λ = 0, picture A) to right (λ = 1, picture B), with λ under each frame.

Clicking a frame emits ``frameClicked(index)``; the page opens that frame's trajectory on its timeline.
"""

from __future__ import annotations

import numpy as np
from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import QFrame, QHBoxLayout, QLabel, QScrollArea, QVBoxLayout, QWidget

from ddpm_studio.gui.style import MUTED_TEXT_STYLE
from ddpm_studio.gui.widgets.image_view import scaled_pixmap

FRAME_SIZE = 88  # each frame, in pixels: nine fit beside the settings at 1400 px
SELECTED_STYLE = "QLabel { border: 3px solid palette(highlight); }"
UNSELECTED_STYLE = "QLabel { border: 3px solid transparent; }"


class FrameTile(QWidget):
    """One frame and its λ; a click on it emits ``clicked(index)``."""

    clicked = Signal(int)

    def __init__(self, index: int, picture: np.ndarray, lam: float, parent: QWidget | None = None):
        super().__init__(parent)
        self.index = index
        self.picture = QLabel()
        self.picture.setPixmap(scaled_pixmap(picture[..., 0] if picture.shape[-1] == 1 else picture, FRAME_SIZE))
        self.picture.setFixedSize(FRAME_SIZE + 6, FRAME_SIZE + 6)
        self.picture.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.picture.setStyleSheet(UNSELECTED_STYLE)
        self.lambda_label = QLabel(f"λ = {lam:.2f}")
        self.lambda_label.setAlignment(Qt.AlignmentFlag.AlignHCenter)
        self.lambda_label.setStyleSheet(MUTED_TEXT_STYLE)
        self.setToolTip(f"λ = {lam:.2f}: click to follow this frame on the timeline")
        self.setCursor(Qt.CursorShape.PointingHandCursor)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(1)
        layout.addWidget(self.picture)
        layout.addWidget(self.lambda_label)

    def set_selected(self, selected: bool) -> None:
        self.picture.setStyleSheet(SELECTED_STYLE if selected else UNSELECTED_STYLE)

    def mousePressEvent(self, event) -> None:
        if event.button() == Qt.MouseButton.LeftButton:
            self.clicked.emit(self.index)
        super().mousePressEvent(event)


class InterpolationStrip(QScrollArea):
    """The frames of one interpolation run in a row that scrolls sideways when it is wider than the page."""

    frameClicked = Signal(int)

    def __init__(self, placeholder: str, parent: QWidget | None = None):
        super().__init__(parent)
        self.tiles: list[FrameTile] = []
        self.placeholder = QLabel(placeholder)
        self.placeholder.setEnabled(False)
        self.placeholder.setWordWrap(True)
        content = QWidget()
        self.row = QHBoxLayout(content)
        self.row.setContentsMargins(4, 4, 4, 4)
        self.row.addWidget(self.placeholder, 1)
        self.row.addStretch(0)
        self.setWidget(content)
        self.setWidgetResizable(True)
        self.setFrameShape(QFrame.Shape.NoFrame)
        self.setMinimumHeight(FRAME_SIZE + 60)

    def set_frames(self, frames: list[np.ndarray], lambdas: list[float]) -> None:
        """Show ``frames`` (uint8 HWC), frame i above "λ = lambdas[i]"."""
        self.clear_frames()
        for index, (frame, lam) in enumerate(zip(frames, lambdas, strict=True)):
            tile = FrameTile(index, frame, lam)
            tile.clicked.connect(self._on_clicked)
            self.tiles.append(tile)
            self.row.insertWidget(index, tile)
        self.placeholder.setVisible(not self.tiles)

    def clear_frames(self) -> None:
        for tile in self.tiles:
            self.row.removeWidget(tile)
            tile.deleteLater()
        self.tiles = []
        self.placeholder.setVisible(True)

    def lambdas(self) -> list[str]:
        return [tile.lambda_label.text() for tile in self.tiles]

    def select(self, index: int | None) -> None:
        for tile in self.tiles:
            tile.set_selected(tile.index == index)

    def _on_clicked(self, index: int) -> None:
        self.select(index)
        self.frameClicked.emit(index)
