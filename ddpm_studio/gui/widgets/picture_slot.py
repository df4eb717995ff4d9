"""One picture to work with, shown small, with an Open button; a picture file dropped on it replaces it.

The slot only chooses files: ``fileChosen(path)`` goes to the page, which decodes the picture (in
core) and shows it here with ``set_picture``, or says why it cannot with ``show_error``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PySide6.QtCore import Signal
from PySide6.QtWidgets import QFileDialog, QLabel, QPushButton, QVBoxLayout, QWidget

from ddpm_studio.gui.drops import accept_files, one_file
from ddpm_studio.gui.style import ERROR_TEXT_STYLE, MUTED_TEXT_STYLE, make_bold
from ddpm_studio.gui.widgets.image_view import ImageView

IMAGE_FILTER = "Images (*.png *.jpg *.jpeg *.bmp *.gif *.webp *.tif *.tiff)"


class PictureSlot(QWidget):
    """A titled picture ("A", "B") with Open… and a drop target."""

    fileChosen = Signal(object)  # a Path

    def __init__(self, title: str, start_folder=lambda: str(Path.home()), parent: QWidget | None = None):
        super().__init__(parent)
        self.title = title
        self.start_folder = start_folder  # where Open starts, asked each time
        self.picture: np.ndarray | None = None
        heading = QLabel(title)
        make_bold(heading)
        self.view = ImageView("Open or drop a picture.")
        self.view.setFixedHeight(110)  # both slots the same size, whatever their captions
        self.open_button = QPushButton("Open…")
        self.open_button.setToolTip(f"Choose picture {title}, or drop one here")
        self.open_button.clicked.connect(self.choose_file)
        self.caption = QLabel()
        self.caption.setWordWrap(True)
        self.caption.setStyleSheet(MUTED_TEXT_STYLE)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(heading)
        layout.addWidget(self.view)
        layout.addWidget(self.open_button)
        layout.addWidget(self.caption)
        layout.addStretch(1)
        self.setAcceptDrops(True)

    def set_picture(self, picture: np.ndarray, caption: str) -> None:
        self.picture = picture
        self.view.set_image(picture[..., 0] if picture.ndim == 3 and picture.shape[2] == 1 else picture)
        self.caption.setText(caption)
        self.caption.setStyleSheet(MUTED_TEXT_STYLE)
        self.caption.setToolTip(caption)

    def show_error(self, sentence: str) -> None:
        self.caption.setText(sentence)
        self.caption.setStyleSheet(ERROR_TEXT_STYLE)

    def choose_file(self) -> None:
        file, _ = QFileDialog.getOpenFileName(self, f"Choose picture {self.title}", self.start_folder(), IMAGE_FILTER)
        if file:
            self.fileChosen.emit(Path(file))

    def dragEnterEvent(self, event) -> None:
        accept_files(event, one_file)

    def dropEvent(self, event) -> None:
        paths = accept_files(event, one_file)
        if paths:
            self.fileChosen.emit(paths[0])
