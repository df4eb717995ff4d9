"""The nearest training images of one sample, beside the timeline: does this image copy the dataset?

The search (``core.evaluation.memorization.neighbours_of_image``) starts only when the user clicks a
sample, and runs through this panel's own job controller, with progress and Stop, so it never interrupts
the page's sampling; the training images come from the dataset cache. It compares pixels, and also the
FID network's pool features where its weights are on this machine (the training set's features are
kept between clicks). A model that records no training set gets one grey line, once; a recorded
dataset that is gone gets one sentence on the status line.
"""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import QSize, Qt
from PySide6.QtGui import QIcon
from PySide6.QtWidgets import QHBoxLayout, QLabel, QListWidget, QListWidgetItem, QVBoxLayout, QWidget

from ddpm_studio.core.evaluation.memorization import (
    ImageNeighbours,
    MemorizationProgress,
    PixelsOnly,
    neighbours_of_image,
    pixels_only_note,
)
from ddpm_studio.core.evaluation.metrics import INCEPTION
from ddpm_studio.core.model.store import ModelInfo
from ddpm_studio.core.sampling.imaging import to_hwc
from ddpm_studio.core.system.devices import choose_device
from ddpm_studio.gui.jobs.controller import JobController
from ddpm_studio.gui.style import MUTED_TEXT_STYLE
from ddpm_studio.gui.widgets.image_view import scaled_pixmap

NEIGHBOURS = 6
THUMBNAIL = 32
CLICK_HINT = "Click an image to find its nearest training images."
NO_TRAINING_SET = "This model records no training images, so there are none to compare with."
SEARCH_NOTE = "A distance near 0 is a copy; hover a row for its path."
PIXELS_ONLY_NOTE = "Pixels only: no Inception features here (hover for how to add them)."
SHORT_UNITS = {"pixels": "RMS on [0, 255]"}  # a feature space's distances are Euclidean
# How the panel's sentence about the Inception weights names the window's way of choosing the file.
WINDOW_WEIGHTS_WORDS = ("The Evaluate page's Inception file", "choose it in the Inception field of the Evaluate page")


def records_training_set(info: ModelInfo) -> bool:
    return bool(info.dataset.get("paths"))


def shown_name(path: Path, roots: list[Path]) -> str:
    """A training file as the list names it: its path inside the dataset folder it came from, so that a labelled
    folder's class shows (``square/0374.png``); the bare name when it is in none of them."""
    for root in roots:
        if path.is_relative_to(root):
            return path.relative_to(root).as_posix()
    return path.name


class NeighboursPanel(QWidget):
    """Click a sample: its ``NEIGHBOURS`` nearest training images by pixels (and by Inception features where the
    weights are), nearest first, with distances and file names."""

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self._roots: list[Path] = []  # the dataset folders of the model searched, for the names shown
        self.jobs = JobController(self, "nearest training images")
        self.title = QLabel("Nearest training images")
        self.note = QLabel(CLICK_HINT)
        self.note.setWordWrap(True)
        self.note.setStyleSheet(MUTED_TEXT_STYLE)
        self.list = QListWidget()  # a row each, nearest first: the picture, its file name and its distance
        self.list.setIconSize(QSize(THUMBNAIL, THUMBNAIL))
        self.list.setWordWrap(True)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.title)
        layout.addWidget(self.note)
        layout.addWidget(self.list, 1)
        controls = QHBoxLayout()
        controls.addWidget(self.jobs.progress_bar, 1)
        controls.addWidget(self.jobs.stop_button)
        layout.addLayout(controls)
        layout.addWidget(self.jobs.status_box)
        self._show_controls(False)
        self.result: ImageNeighbours | None = None  # by pixels
        self.feature_result: ImageNeighbours | None = None
        self.feature_extractor = INCEPTION  # the tests choose their stand-in
        self.cache: dict = {}  # the extractor and the training features, between clicks
        self.searches = 0  # searches started, for the tests: Generate alone starts none
        self._model: Path | None = None
        self.setMinimumWidth(220)

    def set_model(self, info: ModelInfo) -> None:
        """The page shows ``info``'s images: the hint to click one, or (once) the line that there is nothing to
        compare with. No search starts until a click."""
        if self._model == info.path:
            return
        self._model = info.path
        self.jobs.stop()
        self.result = self.feature_result = None
        self.list.clear()
        self.title.setText("Nearest training images")
        self.note.setText(CLICK_HINT if records_training_set(info) else NO_TRAINING_SET)
        self.note.setToolTip("")
        self.jobs.set_status("")

    def show_sample(self, info: ModelInfo, image_uint8, label: str, weights: Path | None = None) -> None:
        """Search the training set of ``info``'s model for the clicked sample ``image_uint8`` (C, S, S), named
        ``label``; ``weights`` is the Inception weights file chosen in the window (None: torch's cache)."""
        self.set_model(info)
        if not records_training_set(info):
            return  # the grey line already says so
        self.result = self.feature_result = None
        self.list.clear()
        self.title.setText(f"Nearest training images of {label}")
        self._roots = [Path(root) for root in info.dataset.get("paths", [])]
        self.note.setText(SEARCH_NOTE)
        self.note.setToolTip("")
        self._show_controls(True)
        self.searches += 1
        self.jobs.run(lambda: neighbours_of_image(info, image_uint8, NEIGHBOURS, choose_device("auto"),
                                                  self.feature_extractor, weights, self.cache),
                      status="Opening the training images from the cache…", progress_format="%v of %m",
                      progress_types=(MemorizationProgress,), on_progress=self._on_progress,
                      on_event=self._on_event, on_done=self._on_done)

    def _on_progress(self, event: MemorizationProgress) -> None:
        self.jobs.show_progress(event.done, event.total)
        self.jobs.set_status("Reading the training images' features…" if event.phase == "training features"
                             else "Searching the training images…")

    def _on_event(self, event: object) -> None:
        if isinstance(event, PixelsOnly):  # a short line; the whole sentence, with how to get the weights, on hover
            self.note.setText(PIXELS_ONLY_NOTE)
            self.note.setToolTip(pixels_only_note(event.why, WINDOW_WEIGHTS_WORDS))
        elif isinstance(event, ImageNeighbours):
            if event.space == "pixels":
                self.result = event
            else:
                self.feature_result = event
            self._add_section(event)

    def _add_section(self, event: ImageNeighbours) -> None:
        header = QListWidgetItem(f"By {event.space} · {SHORT_UNITS.get(event.space, 'Euclidean')}")
        header.setFlags(Qt.ItemFlag.ItemIsEnabled)  # a heading: not selectable, not greyed
        font = header.font()
        font.setBold(True)
        header.setFont(font)
        self.list.addItem(header)
        for index, (image, path, distance) in enumerate(zip(event.images, event.files, event.distances)):
            item = QListWidgetItem(QIcon(scaled_pixmap(to_hwc(image), THUMBNAIL)),
                                   f"{index + 1}. {shown_name(path, self._roots)} · {distance:.1f}")
            item.setToolTip(f"{path}\n{distance:.3f} {event.unit}")
            self.list.addItem(item)

    def _show_controls(self, shown: bool) -> None:
        """The progress bar and Stop only while searching: the list gets their room otherwise."""
        self.jobs.progress_bar.setVisible(shown)
        self.jobs.stop_button.setVisible(shown)

    def _on_done(self, stopped: bool) -> None:
        self._show_controls(False)
        if stopped:
            self.jobs.set_status("Stopped before the search ended.")
        elif self.result is not None:
            self.jobs.set_status("")
