"""Widgets that show uint8 images crisply: one large image, and a clickable grid of thumbnails."""

from __future__ import annotations

import numpy as np
from PySide6.QtCore import QItemSelectionModel, QRect, QSize, Qt, Signal
from PySide6.QtGui import QColor, QIcon, QImage, QPainter, QPixmap
from PySide6.QtWidgets import QAbstractItemView, QLabel, QListWidget, QListWidgetItem, QSizePolicy, QWidget

ROW_CAPTION_WIDTH = 110  # the column left of the rows that names them (one row per class)


def to_qimage(array: np.ndarray) -> QImage:
    """A (H, W, 3) or (H, W) uint8 array as a QImage that owns its pixels."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    height, width = array.shape[:2]
    if array.ndim == 2:
        image = QImage(array.data, width, height, width, QImage.Format.Format_Grayscale8)
    else:
        image = QImage(array.data, width, height, 3 * width, QImage.Format.Format_RGB888)
    return image.copy()  # detach from the numpy buffer


def scaled_pixmap(array: np.ndarray, size: int) -> QPixmap:
    """A square thumbnail, nearest-neighbour when enlarging so small images stay crisp."""
    image = to_qimage(array)
    mode = (Qt.TransformationMode.FastTransformation if image.width() < size
            else Qt.TransformationMode.SmoothTransformation)
    return QPixmap.fromImage(image.scaled(size, size, Qt.AspectRatioMode.KeepAspectRatio, mode))


class ImageView(QWidget):
    """Shows one image as large as fits, with whole-number nearest-neighbour scaling for small images."""

    def __init__(self, placeholder: str = "", caption: str = "", parent: QWidget | None = None):
        super().__init__(parent)
        self._image: QImage | None = None
        self._array: np.ndarray | None = None
        self.placeholder = placeholder
        self.caption = caption
        self.setMinimumSize(96, 96)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Expanding)
        # paintEvent fills every pixel: Qt need not paint the page, the tabs and the window beneath first.
        self.setAttribute(Qt.WidgetAttribute.WA_OpaquePaintEvent)

    def set_image(self, array: np.ndarray | None) -> None:
        self._array = None if array is None else np.asarray(array)
        self._image = None if array is None else to_qimage(array)
        self.update()

    def image(self) -> np.ndarray | None:
        return self._array

    def set_caption(self, caption: str) -> None:
        self.caption = caption
        self.update()

    def sizeHint(self) -> QSize:
        return QSize(256, 256)

    def target_rect(self) -> QRect:
        caption_height = self.fontMetrics().height() + 6 if self.caption else 0
        area = self.rect().adjusted(0, caption_height, 0, 0)
        if self._image is None:
            return area
        width, height = self._image.width(), self._image.height()
        scale = min(area.width() / width, area.height() / height)
        if scale >= 1:
            scale = int(scale)  # whole pixels, so every source pixel is the same size
        w, h = max(1, int(width * scale)), max(1, int(height * scale))
        return QRect(area.x() + (area.width() - w) // 2, area.y() + (area.height() - h) // 2, w, h)

    def paintEvent(self, event) -> None:
        painter = QPainter(self)
        painter.fillRect(self.rect(), self.palette().window())
        if self.caption:
            painter.drawText(self.rect().adjusted(0, 2, 0, 0),
                             Qt.AlignmentFlag.AlignHCenter | Qt.AlignmentFlag.AlignTop, self.caption)
        target = self.target_rect()
        if self._image is None:
            painter.setPen(QColor(128, 128, 128))
            painter.drawRect(target.adjusted(0, 0, -1, -1))
            painter.drawText(target, Qt.AlignmentFlag.AlignCenter | Qt.TextFlag.TextWordWrap, self.placeholder)
            return
        smooth = target.width() < self._image.width()
        painter.setRenderHint(QPainter.RenderHint.SmoothPixmapTransform, smooth)
        painter.drawImage(target, self._image)


class ThumbnailGrid(QListWidget):
    """A grid of image thumbnails; ``imageActivated(index)`` when one is clicked.

    With ``smallest_size`` set, the thumbnails shrink (down to that size) as far as it takes for every
    image to be seen without scrolling, and grow back to ``thumbnail_size`` when there is room.
    """

    imageActivated = Signal(int)

    def __init__(self, thumbnail_size: int = 64, parent: QWidget | None = None, smallest_size: int | None = None):
        super().__init__(parent)
        self.largest_size = self.thumbnail_size = thumbnail_size
        self.smallest_size = smallest_size or thumbnail_size
        self._arrays: list[np.ndarray] = []
        self.row_length: int | None = None  # images a row, exactly (one row per class); None: as many as fit
        self.row_captions: list[str] = []  # with row_length: the name of each row, shown left of it
        self.caption_labels: list[QLabel] = []
        self.setViewMode(QListWidget.ViewMode.IconMode)
        self.setIconSize(QSize(thumbnail_size, thumbnail_size))
        self.setResizeMode(QListWidget.ResizeMode.Adjust)
        self.setMovement(QListWidget.Movement.Static)
        self.setUniformItemSizes(True)
        self.setSpacing(4)
        # The selection is a frame, never a tint: a tint changes the picture's colours (pink looks purple).
        self.setStyleSheet("QListView::item { border: 3px solid transparent; }"
                           "QListView::item:selected { background: transparent; "
                           "border: 3px solid palette(highlight); }")
        self.setSelectionMode(QAbstractItemView.SelectionMode.ExtendedSelection)
        self.itemClicked.connect(lambda item: self.imageActivated.emit(self.row(item)))
        self.verticalScrollBar().valueChanged.connect(self._place_captions)

    def set_images(self, images: list[np.ndarray] | np.ndarray, tooltips: list[str] | None = None) -> None:
        """Replace the grid with ``images`` ((H, W, C) or (H, W) uint8 each)."""
        self.clear()
        self._arrays = list(images)
        self.thumbnail_size = self.fitting_size()
        self._fit_row_length()
        self.setIconSize(QSize(self.thumbnail_size, self.thumbnail_size))
        for index, array in enumerate(images):
            pixmap = scaled_pixmap(array, self.thumbnail_size)
            icon = QIcon(pixmap)
            icon.addPixmap(pixmap, QIcon.Mode.Selected)  # drawn as it is when selected, not blended with the highlight
            item = QListWidgetItem(icon, "")
            if tooltips:
                item.setToolTip(tooltips[index])
            item.setSizeHint(QSize(self.thumbnail_size + 8, self.thumbnail_size + 8))
            self.addItem(item)
        self._place_captions()

    def selected_indices(self) -> list[int]:
        return sorted(self.row(item) for item in self.selectedItems())

    def fitting_size(self) -> int:
        """The largest thumbnail size, in steps of 8 px from ``thumbnail_size`` down to ``smallest_size``, at which
        every image fits the grid's area without scrolling (the smallest when none does)."""
        count = len(self._arrays)
        area = self.contentsRect().adjusted(self._caption_width(), 0, 0, 0)  # without a scroll bar: none if all fit
        spacing = self.spacing()
        size = self.largest_size
        while size > self.smallest_size:
            cell = size + 8 + spacing  # an item's size hint, and the gap after it
            columns = max(1, (area.width() - spacing) // cell)
            if self.row_length:
                if columns < self.row_length:
                    size = max(self.smallest_size, size - 8)
                    continue
                columns = self.row_length
            rows = -(-count // columns)
            if rows * cell + spacing <= area.height():
                return size
            size = max(self.smallest_size, size - 8)
        return self.smallest_size

    def _fit_row_length(self) -> None:
        """A right margin that leaves room for exactly ``row_length`` thumbnails a row (none without one)."""
        if not self.row_length:
            self.setViewportMargins(0, 0, 0, 0)
            return
        cell = self.thumbnail_size + 8 + self.spacing()
        left = self._caption_width()
        spare = self.contentsRect().width() - left - (self.row_length * cell + self.spacing())
        self.setViewportMargins(left, 0, max(0, spare - cell // 2), 0)  # half a cell spare: row_length fit, not more

    def _caption_width(self) -> int:
        return ROW_CAPTION_WIDTH if self.row_length and self.row_captions else 0

    def _place_captions(self) -> None:
        """One label left of each row's first thumbnail, vertically centred on it, moved as the grid scrolls."""
        names = self.row_captions if self.row_length else []
        while len(self.caption_labels) < len(names):
            label = QLabel(self)
            label.setObjectName("rowCaption")
            label.setAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
            font = label.font()
            font.setBold(True)
            label.setFont(font)
            self.caption_labels.append(label)
        viewport = self.viewport().geometry()
        for row, label in enumerate(self.caption_labels):
            first = row * (self.row_length or 0)
            if row >= len(names) or first >= self.count():
                label.hide()
                continue
            width = ROW_CAPTION_WIDTH - 8
            label.setText(label.fontMetrics().elidedText(names[row], Qt.TextElideMode.ElideRight, width))
            label.setToolTip(names[row])  # the whole name, when it is elided
            rect = self.visualItemRect(self.item(first)).translated(viewport.topLeft())
            label.setGeometry(self.contentsRect().left(), rect.top(), width, rect.height())
            label.setVisible(viewport.top() <= rect.center().y() <= viewport.bottom())

    def resizeEvent(self, event) -> None:
        super().resizeEvent(event)
        self._fit_row_length()
        self._place_captions()
        if self._arrays and self.smallest_size < self.largest_size and self.fitting_size() != self.thumbnail_size:
            selected, current = self.selected_indices(), self.currentRow()
            self.set_images(self._arrays, [self.item(row).toolTip() for row in range(self.count())])
            for row in selected:
                self.item(row).setSelected(True)
            if current >= 0:
                self.setCurrentRow(current, QItemSelectionModel.SelectionFlag.NoUpdate)
