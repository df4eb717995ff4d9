"""The model library: the models in the bundled and user folders plus any the user opened, and a picker for them."""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import QObject, Signal
from PySide6.QtWidgets import QComboBox, QWidget

from ..core import model_store
from ..core.model_store import ModelEntry, ModelError


class ModelLibrary(QObject):
    """Lists usable model folders; ``changed`` fires after a refresh or an open."""

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
                try:
                    entries.append(ModelEntry(path, model_store.read_model_info(path)))
                except ModelError as error:
                    entries.append(ModelEntry(path, None, str(error)))
        self.entries = entries
        self.changed.emit()

    def open(self, path: Path | str) -> model_store.ModelInfo:
        """Add a model folder chosen by the user; raises ModelError if it is not a usable model."""
        info = model_store.read_model_info(path)
        if info.path.resolve() not in {p.resolve() for p in self.opened}:
            self.opened.append(info.path)
        self.refresh()
        return info

    def usable(self) -> list[ModelEntry]:
        return [entry for entry in self.entries if entry.info is not None]

    def resumable(self) -> list[ModelEntry]:
        return [entry for entry in self.usable() if entry.info.can_resume]


def describe_entry(entry: ModelEntry) -> str:
    info = entry.info
    if info is None:
        return f"{entry.path.name} (unusable)"
    unet = info.unet
    return f"{info.name} — {unet.image_size}px, {info.step:,} steps"


class ModelPicker(QComboBox):
    """A combo box over the library's usable models; keeps the chosen model across refreshes."""

    modelChanged = Signal(object)  # Path or None

    def __init__(self, library: ModelLibrary, resumable_only: bool = False, parent: QWidget | None = None):
        super().__init__(parent)
        self.library = library
        self.resumable_only = resumable_only
        self.setMinimumContentsLength(24)
        self.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        library.changed.connect(self.reload)
        self.currentIndexChanged.connect(lambda _: self.modelChanged.emit(self.current_path()))
        self.reload()

    def reload(self) -> None:
        chosen = self.current_path()
        entries = self.library.resumable() if self.resumable_only else self.library.usable()
        self.blockSignals(True)
        self.clear()
        for entry in entries:
            self.addItem(describe_entry(entry), str(entry.path))
            self.setItemData(self.count() - 1, str(entry.path), role=3)  # tooltip role
        if chosen is not None:
            self.select(chosen)
        self.blockSignals(False)
        self.modelChanged.emit(self.current_path())

    def current_path(self) -> Path | None:
        data = self.currentData()
        return Path(data) if data else None

    def select(self, path: Path | str) -> bool:
        target = Path(path).resolve()
        for index in range(self.count()):
            if Path(self.itemData(index)).resolve() == target:
                self.setCurrentIndex(index)
                return True
        return False
