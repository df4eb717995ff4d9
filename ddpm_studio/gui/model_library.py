"""The model library: the models in the bundled and user folders plus any the user opened, and a picker for them.

Folders that cannot be used stay in the list, disabled, with the reason as their tooltip. Listing reads
each folder's ``model.json`` and weights header only (``model_store.read_entry``), so it stays quick
however the folder was crafted.
"""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import QObject, Qt, Signal
from PySide6.QtGui import QFontMetrics
from PySide6.QtWidgets import QComboBox, QStyle, QStyleOptionComboBox, QStylePainter, QWidget

from ddpm_studio.core.model import store as model_store
from ddpm_studio.core.model.store import ModelEntry, ModelError
from ddpm_studio.gui.formatting import counted


class ModelLibrary(QObject):
    """Lists model folders, usable or not; ``changed`` fires after a refresh or an open."""

    changed = Signal()

    def __init__(self, folders: list[Path] | None = None, parent: QObject | None = None):
        super().__init__(parent)
        self.folders = folders if folders is not None else model_store.model_search_dirs()
        self.opened: list[Path] = []
        self.entries: list[ModelEntry] = []
        self.refresh()

    def refresh(self) -> None:
        entries = model_store.list_models(self.folders)
        known = {entry.path.resolve() for entry in entries}
        for path in self.opened:
            if path.resolve() not in known:
                entries.append(model_store.read_entry(path))
        self.entries = entries
        self.changed.emit()

    def open(self, path: Path | str) -> model_store.ModelInfo:
        """Add a model folder chosen by the user; raises ModelError if it is not a usable model.

        A folder with a ``model.json`` is listed even when it is unusable, so that the list says why.
        """
        folder = Path(path)
        if folder.is_file() and folder.name == model_store.CONFIG_FILE:
            folder = folder.parent
        entry = model_store.read_entry(folder)
        if (folder / model_store.CONFIG_FILE).is_file() and folder.resolve() not in {p.resolve() for p in self.opened}:
            self.opened.append(folder)
        self.refresh()
        if entry.info is None:
            raise ModelError(entry.error)
        return entry.info

    def usable(self) -> list[ModelEntry]:
        return [entry for entry in self.entries if entry.info is not None]

    def resumable(self) -> list[ModelEntry]:
        return [entry for entry in self.usable() if entry.info.can_resume]

    def unusable(self) -> list[ModelEntry]:
        return [entry for entry in self.entries if entry.info is None]


NAME_SEPARATOR = " — "  # between a model's name and what it is ("32px, 8,000 steps")


def elide_model_text(text: str, metrics: QFontMetrics, width: int) -> str:
    """``text`` within ``width`` pixels: the name loses its end to "…" first, the description stays whole."""
    if metrics.horizontalAdvance(text) <= width:
        return text
    name, separator, description = text.partition(NAME_SEPARATOR)
    tail = separator + description
    room = width - metrics.horizontalAdvance(tail)
    if separator and room >= metrics.horizontalAdvance("ab…"):
        return metrics.elidedText(name, Qt.TextElideMode.ElideRight, room) + tail
    return metrics.elidedText(text, Qt.TextElideMode.ElideRight, width)


def describe_entry(entry: ModelEntry) -> str:
    info = entry.info
    if info is None:
        return f"{entry.path.name} (unusable)"
    unet = info.unet
    if info.step == 0 and info.extra.get("source"):
        return f"{info.name}{NAME_SEPARATOR}{unet.image_size}px, imported"
    return f"{info.name}{NAME_SEPARATOR}{unet.image_size}px, {counted(info.step, 'step')}"


def entry_tooltip(entry: ModelEntry) -> str:
    """Where the model is, or why it cannot be used; and why it has no preview, when that is so."""
    if entry.info is None:
        return entry.error or "This folder cannot be used."
    latest = {record["metric"]: record for record in model_store.evaluations(entry.info)}  # the newest of each
    measured = "".join(f"\n{model_store.describe_evaluation(record)}" for record in latest.values())
    if entry.info.unet.learned_variance:
        measured = "\nLearned variance (L_hybrid)" + measured
    return (str(entry.path) + (f"\nNo preview: {entry.preview_problem}" if entry.preview_problem else "")
            + measured)


class ModelPicker(QComboBox):
    """A combo box over the library's usable models, then its unusable ones, disabled, with the reason as their
    tooltip; keeps the chosen model across refreshes."""

    modelChanged = Signal(object)  # Path or None

    def __init__(self, library: ModelLibrary, resumable_only: bool = False, parent: QWidget | None = None):
        super().__init__(parent)
        self.library = library
        self.resumable_only = resumable_only
        self.setMinimumContentsLength(24)
        self.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        library.changed.connect(self.reload)
        self.currentIndexChanged.connect(lambda _: self.modelChanged.emit(self.current_path()))
        self.currentIndexChanged.connect(self._show_whole_text_as_tooltip)
        self.reload()

    # --- a long name is elided in the box, and whole in its tooltip -----------------------------------
    def _text_option(self) -> QStyleOptionComboBox:
        option = QStyleOptionComboBox()
        self.initStyleOption(option)
        field = self.style().subControlRect(QStyle.ComplexControl.CC_ComboBox, option,
                                            QStyle.SubControl.SC_ComboBoxEditField, self)
        option.currentText = elide_model_text(option.currentText, self.fontMetrics(), field.width())
        return option

    def shown_text(self) -> str:
        """The current item's text as the box draws it (elided to fit)."""
        return self._text_option().currentText

    def paintEvent(self, event) -> None:
        # Qt's box clips a long text wherever the edge falls ("8,000 ste"): draw it elided instead.
        painter = QStylePainter(self)
        option = self._text_option()
        painter.drawComplexControl(QStyle.ComplexControl.CC_ComboBox, option)
        painter.drawControl(QStyle.ControlElement.CE_ComboBoxLabel, option)

    def _show_whole_text_as_tooltip(self) -> None:
        index = self.currentIndex()
        details = self.itemData(index, Qt.ItemDataRole.ToolTipRole) if index >= 0 else None
        self.setToolTip(self.currentText() + (f"\n{details}" if details else "") if index >= 0
                        else "The models in the models folders, and any you opened")

    def reload(self) -> None:
        chosen = self.current_path()
        entries = self.library.resumable() if self.resumable_only else self.library.usable()
        self.blockSignals(True)
        self.clear()
        for entry in entries + self.library.unusable():
            usable = entry.info is not None
            self.addItem(describe_entry(entry), str(entry.path) if usable else "")
            self.setItemData(self.count() - 1, entry_tooltip(entry), Qt.ItemDataRole.ToolTipRole)
            if not usable:
                self.model().item(self.count() - 1).setEnabled(False)
        if chosen is None or not self.select(chosen):
            self.setCurrentIndex(0 if entries else -1)
        self.blockSignals(False)
        self._show_whole_text_as_tooltip()
        self.modelChanged.emit(self.current_path())

    def current_path(self) -> Path | None:
        data = self.currentData()
        return Path(data) if data else None

    def usable_count(self) -> int:
        return sum(1 for index in range(self.count()) if self.itemData(index))

    def select(self, path: Path | str) -> bool:
        target = Path(path).resolve()
        for index in range(self.count()):
            if self.itemData(index) and Path(self.itemData(index)).resolve() == target:
                self.setCurrentIndex(index)
                return True
        return False
