"""Choosing a model on a page: the library's picker, an "Open model…" button, and a line that says what went wrong."""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import QSettings, Signal
from PySide6.QtWidgets import QFileDialog, QHBoxLayout, QLabel, QPushButton, QVBoxLayout, QWidget

from ddpm_studio.core.model.store import ModelError, ModelInfo
from ddpm_studio.gui.model_library import ModelLibrary, ModelPicker
from ddpm_studio.gui.style import ERROR_TEXT_STYLE

NO_MODELS = "No trained model yet: train one on the Train page, or open a model folder."


class ModelChooser(QWidget):
    """``modelChanged(path or None)``; errors (a damaged folder, a failed load) appear in ``message``."""

    modelChanged = Signal(object)

    def __init__(self, library: ModelLibrary, settings: QSettings | None = None, parent: QWidget | None = None):
        super().__init__(parent)
        self.library = library
        self.settings = settings
        self.picker = ModelPicker(library)
        self.open_button = QPushButton("Open model…")
        self.open_button.setToolTip("Add a model folder (one with a model.json) to the list")
        self.open_button.clicked.connect(self.choose_folder)
        self.message = QLabel()
        self.message.setWordWrap(True)
        row = QHBoxLayout()
        row.setContentsMargins(0, 0, 0, 0)
        row.addWidget(self.picker, 1)
        row.addWidget(self.open_button)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addLayout(row)
        layout.addWidget(self.message)
        self.picker.modelChanged.connect(self._on_model_changed)
        self._error = ""
        self._update_hint()

    def current_path(self) -> Path | None:
        return self.picker.current_path()

    def current_info(self) -> ModelInfo | None:
        path = self.current_path()
        if path is None:
            return None
        for entry in self.library.usable():
            if entry.path.resolve() == path.resolve():
                return entry.info
        return None

    def select(self, path: Path | str) -> bool:
        """Choose a model folder, adding it to the library if it is not listed; False (and a message) if unusable."""
        if self.picker.select(path):
            self.clear_error()
            return True
        return self.open_folder(path)

    def choose_folder(self) -> None:
        start = str(Path.home()) if self.settings is None else self.settings.value("last_model_dir", str(Path.home()))
        folder = QFileDialog.getExistingDirectory(self, "Choose a model folder", start)
        if folder:
            if self.settings is not None:
                self.settings.setValue("last_model_dir", folder)
            self.open_folder(Path(folder))

    def open_folder(self, path: Path | str) -> bool:
        try:
            info = self.library.open(path)
        except ModelError as error:
            self.show_error(str(error))
            return False
        self.picker.select(info.path)
        self.clear_error()
        return True

    def show_error(self, text: str) -> None:
        self._error = text
        self._update_hint()

    def clear_error(self) -> None:
        self._error = ""
        self._update_hint()

    def error_text(self) -> str:
        return self._error

    def _on_model_changed(self, path: Path | None) -> None:
        self.clear_error()
        self.modelChanged.emit(path)

    def _update_hint(self) -> None:
        if self._error:
            self.message.setStyleSheet(ERROR_TEXT_STYLE)
            self.message.setText(self._error)
        else:
            unusable = self.library.unusable()
            self.message.setStyleSheet("")
            text = NO_MODELS if self.picker.usable_count() == 0 else ""
            if unusable:
                names = ", ".join(entry.path.name for entry in unusable)
                text += (" " if text else "") + f"Unusable: {names} (hover over them in the list for why)."
            self.message.setText(text)
            self.message.setToolTip("\n".join(entry.error or "" for entry in unusable))
        self.message.setVisible(bool(self.message.text()))
        self._fit_message()

    def resizeEvent(self, event) -> None:
        super().resizeEvent(event)
        self._fit_message()

    def _fit_message(self) -> None:
        # A wrapped label's height depends on its width, which the tab widget above does not pass down;
        # without this a two-line message is cut to one.
        self.message.setMinimumHeight(self.message.heightForWidth(self.width()) if self.message.text() else 0)
