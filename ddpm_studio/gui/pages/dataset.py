"""The Dataset page: drop or choose a folder of images, scan it in the background, see what is usable and what
was skipped.

The scan is core's ``open_cached_dataset`` iterator, run through the page's job controller: a
folder is decoded once into the dataset cache, and later scans of the same files open it. When it ends the page
shows how many images are usable, their original sizes, a grid of thumbnails (a sample of a
large folder) and every skipped file with its reason, then hands the result to the Train page.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (
    QComboBox,
    QFileDialog,
    QFrame,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QSplitter,
    QStackedWidget,
    QVBoxLayout,
    QWidget,
)

from ddpm_studio.core.data.cache import CachedScanResult, CacheMessage, datasets_dir, open_cached_dataset
from ddpm_studio.core.data.demo import DEFAULT_DEMO_COUNT, DemoProgress, is_complete_demo_dataset, write_demo_dataset
from ddpm_studio.core.data.folders import (
    IMAGE_EXTENSIONS,
    UNLABELLED,
    ScanProgress,
    ScanResult,
    describe_sources,
    explain_no_usable_images,
)
from ddpm_studio.core.model import store as model_store
from ddpm_studio.core.sampling.imaging import to_hwc
from ddpm_studio.gui.context import StudioContext
from ddpm_studio.gui.formatting import counted, format_image_size
from ddpm_studio.gui.pages.page import Page
from ddpm_studio.gui.session_memory import remember_dataset
from ddpm_studio.gui.style import MUTED_TEXT_STYLE, WARNING_TEXT_STYLE, error_box
from ddpm_studio.gui.widgets.class_rows import MAX_ROWS, THUMBNAILS_PER_ROW, ClassRows
from ddpm_studio.gui.widgets.image_view import ThumbnailGrid
from ddpm_studio.gui.widgets.skipped_files import SkippedFilesList

RESOLUTIONS = (16, 32, 64, 128, 256)
DEFAULT_RESOLUTION = 32
CHANNEL_CHOICES = (("Colour (RGB)", 3), ("Grayscale", 1))
THUMBNAIL_SAMPLE = 256
DEMO_FOLDER_NAME = "demo-dataset"
IGNORED_REASON = "ignored: not an image file (only image extensions are read)"

DROP_ZONE_STYLE = f"""
QFrame#dropZone {{ border: 2px dashed #9aa5b1; border-radius: 12px; background: palette(base); }}
QLabel#dropTitle {{ font-size: 20pt; font-weight: 600; }}
QLabel#dropSubtitle {{ {MUTED_TEXT_STYLE} }}
"""


def demo_dataset_dir() -> Path:
    """Where the demo dataset is written: beside the user's models folder."""
    return model_store.default_user_models_dir().parent / DEMO_FOLDER_NAME


def sample_indices(count: int, limit: int | None = None) -> np.ndarray:
    """Every index when ``count <= limit``, else ``limit`` indices spread evenly from first to last."""
    limit = THUMBNAIL_SAMPLE if limit is None else limit
    if count <= limit:
        return np.arange(count)
    return np.unique(np.linspace(0, count - 1, limit).round().astype(int))


def looks_grayscale(pictures: list[np.ndarray]) -> bool:
    """True when there are pictures and every one is colour with its three channels equal: grey scanned as RGB."""
    return bool(pictures) and all(
        picture.ndim == 3 and picture.shape[2] == 3
        and np.array_equal(picture[..., 0], picture[..., 1]) and np.array_equal(picture[..., 1], picture[..., 2])
        for picture in pictures)


def without_cache_paths(text: str, sources: list[Path]) -> str:
    """A cache sentence for the status bar: the dataset's folder named, not the cache entry's hashed path."""
    entry = re.escape(str(datasets_dir())) + r"[/\\][^\s);,]*"
    text = re.sub(r" \(" + entry + r"\)", "", text)
    text = re.sub(entry, "the dataset cache", text)
    return f"{describe_sources(sources)}: {text[:1].lower()}{text[1:]}" if sources else text


def describe_scan(result: ScanResult) -> str:
    """The status bar's line for a scan with usable images: the folder, the counts and what the cache did."""
    text = (f"{describe_sources(result.sources)}: {counted(len(result.files), 'usable image')}, "
            f"{len(result.skipped):,} skipped" + (f", {len(result.ignored):,} not images" if result.ignored else ""))
    if isinstance(result, CachedScanResult):
        text += "; decoded into the dataset cache" if result.decoded else "; opened from the dataset cache"
    return text + "."


class DropZone(QFrame):
    """The first thing a new user sees: where to drop images, and the two buttons that do the same."""

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.setObjectName("dropZone")
        self.setStyleSheet(DROP_ZONE_STYLE)
        title = QLabel("Drop a folder of images here")
        title.setObjectName("dropTitle")
        extensions = ", ".join(sorted(extension.lstrip(".").upper() for extension in IMAGE_EXTENSIONS))
        subtitle = QLabel(
            "…or several image files. Subfolders are included. Images are centre-cropped and resized to the "
            f"resolution above; nothing on disk is changed.\nReads {extensions}."
        )
        subtitle.setObjectName("dropSubtitle")
        subtitle.setWordWrap(True)
        subtitle.setAlignment(Qt.AlignmentFlag.AlignHCenter)
        self.choose_button = QPushButton("Choose folder…")
        self.demo_button = QPushButton("Use demo dataset")
        self.demo_button.setToolTip("2,000 procedurally drawn coloured shapes: learnable by a small model on a CPU.")
        for button in (self.choose_button, self.demo_button):
            button.setMinimumSize(180, 40)
        self.choose_button.setDefault(True)
        buttons = QHBoxLayout()
        buttons.addStretch(1)
        buttons.addWidget(self.choose_button)
        buttons.addSpacing(12)
        buttons.addWidget(self.demo_button)
        buttons.addStretch(1)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(40, 40, 40, 40)
        layout.addStretch(2)
        layout.addWidget(title, 0, Qt.AlignmentFlag.AlignHCenter)
        layout.addSpacing(8)
        layout.addWidget(subtitle)
        layout.addSpacing(20)
        layout.addLayout(buttons)
        layout.addStretch(3)


class DatasetPage(Page):
    """Scans image folders and shows the result; ``datasetReady(ScanResult)`` when images are usable."""

    datasetReady = Signal(object)  # ScanResult with at least one image; its ``sources`` are the scanned paths
    nextRequested = Signal()  # "Train on these images": the window shows the Train page

    def __init__(self, context: StudioContext, parent: QWidget | None = None):
        super().__init__(context, parent, job_name="scanning images")
        self.result: ScanResult | None = None  # the last scan with usable images
        self.last_scan: ScanResult | None = None  # the last finished scan, usable or not
        self.demo_count = DEFAULT_DEMO_COUNT
        self._sources: list[Path] = []
        self._build()
        self._restore_settings()
        self._show_idle()

    # --- layout -----------------------------------------------------------------------------------
    def _build(self) -> None:
        self.resolution_combo = QComboBox()
        for size in RESOLUTIONS:
            self.resolution_combo.addItem(f"{size} × {size} px", size)
        self.resolution_combo.setToolTip("The size images are resized to for training; the Train page starts from it.")
        self.channels_combo = QComboBox()
        for label, channels in CHANNEL_CHOICES:
            self.channels_combo.addItem(label, channels)
        self.resolution_combo.currentIndexChanged.connect(self._settings_changed)
        self.channels_combo.currentIndexChanged.connect(self._settings_changed)

        self.choose_button = QPushButton("Choose folder…")
        self.demo_button = QPushButton("Use demo dataset")
        header = QHBoxLayout()
        intro = QLabel("<b>Step 1.</b> Choose the images to train on.")
        header.addWidget(intro)
        header.addStretch(1)
        header.addWidget(QLabel("Resolution"))
        header.addWidget(self.resolution_combo)
        header.addSpacing(8)
        header.addWidget(QLabel("Channels"))
        header.addWidget(self.channels_combo)
        header.addSpacing(16)
        header.addWidget(self.choose_button)
        header.addWidget(self.demo_button)

        self.scan_label = self.jobs.status_label
        self.scan_label.setWordWrap(False)
        self.jobs.status_box.make_room()
        self.progress_bar = self.jobs.progress_bar
        self.progress_bar.setTextVisible(True)
        self.jobs.idle_format = "%p%"
        self.stop_button = self.jobs.stop_button
        self.stop_button.setMinimumHeight(0)
        self.stop_button.setToolTip("Stop scanning; the dataset shown before stays.")
        self.scan_row = QWidget()
        scan_layout = QHBoxLayout(self.scan_row)
        scan_layout.setContentsMargins(0, 0, 0, 0)
        scan_layout.addWidget(self.jobs.status_box)
        scan_layout.addWidget(self.progress_bar, 1)
        scan_layout.addWidget(self.stop_button)

        self.error_label = error_box()
        self.note_label = QLabel()  # a quiet line: the last dataset did not come back
        self.note_label.setWordWrap(True)
        self.note_label.setStyleSheet(MUTED_TEXT_STYLE)
        self.note_label.hide()

        self.drop_zone = DropZone()
        for button in (self.choose_button, self.drop_zone.choose_button):
            button.clicked.connect(self.choose_folder)
        for button in (self.demo_button, self.drop_zone.demo_button):
            button.clicked.connect(self.use_demo_dataset)

        self.stack = QStackedWidget()
        self.stack.addWidget(self.drop_zone)
        self.stack.addWidget(self._build_results())

        layout = QVBoxLayout(self)
        layout.addLayout(header)
        layout.addWidget(self.scan_row)
        layout.addWidget(self.error_label)
        layout.addWidget(self.note_label)
        layout.addWidget(self.stack, 1)

    def _build_results(self) -> QWidget:
        self.summary_label = QLabel()
        self.summary_label.setWordWrap(True)
        self.summary_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.next_button = QPushButton("Train on these images  →")
        self.next_button.setMinimumHeight(34)
        self.next_button.clicked.connect(self.nextRequested.emit)
        summary_row = QHBoxLayout()
        summary_row.addWidget(self.summary_label, 1)
        summary_row.addWidget(self.next_button, 0, Qt.AlignmentFlag.AlignTop)
        self.grayscale_hint = QLabel(
            "These images are all grayscale, scanned as colour: <a href='grayscale'>scan them as grayscale</a> "
            "(Channels above) to train a one-channel model on them.")
        self.grayscale_hint.setStyleSheet(WARNING_TEXT_STYLE)
        self.grayscale_hint.setWordWrap(True)
        self.grayscale_hint.linkActivated.connect(
            lambda _link: self.channels_combo.setCurrentIndex(self.channels_combo.findData(1)))
        self.grayscale_hint.hide()

        self.classes_label = QLabel()  # describe_classes(): the classes, and what happens to top-level images
        self.classes_label.setWordWrap(True)
        self.class_rows = ClassRows()
        self.sample_label = QLabel()
        self.thumbnails = ThumbnailGrid(thumbnail_size=64)
        thumbnails_box = QWidget()
        thumbnails_layout = QVBoxLayout(thumbnails_box)
        thumbnails_layout.setContentsMargins(0, 0, 0, 0)
        thumbnails_layout.addWidget(self.classes_label)
        thumbnails_layout.addWidget(self.class_rows)
        thumbnails_layout.addWidget(self.sample_label)
        thumbnails_layout.addWidget(self.thumbnails, 1)
        self.classes_label.hide()
        self.class_rows.hide()

        self.skipped_label = QLabel()
        self.skipped_label.setWordWrap(True)
        self.skipped_list = SkippedFilesList()  # whole reasons, wrapped, beside names that are always in sight
        self.skipped_box = skipped_box = QWidget()
        skipped_layout = QVBoxLayout(skipped_box)
        skipped_layout.setContentsMargins(0, 0, 0, 0)
        skipped_layout.addWidget(self.skipped_label)
        skipped_layout.addWidget(self.skipped_list, 1)

        self.splitter = QSplitter(Qt.Orientation.Horizontal)
        self.splitter.addWidget(thumbnails_box)
        self.splitter.addWidget(skipped_box)
        self.splitter.setStretchFactor(0, 3)
        self.splitter.setStretchFactor(1, 2)
        self.splitter.setSizes([600, 400])

        results = QWidget()
        layout = QVBoxLayout(results)
        layout.setContentsMargins(0, 4, 0, 0)
        layout.addLayout(summary_row)
        layout.addWidget(self.grayscale_hint)
        layout.addWidget(self.splitter, 1)
        return results

    # --- settings ---------------------------------------------------------------------------------
    def image_size(self) -> int:
        return int(self.resolution_combo.currentData())

    def channels(self) -> int:
        return int(self.channels_combo.currentData())

    def set_scan_settings(self, image_size: int, channels: int) -> None:
        """Choose the resolution and channels without rescanning."""
        for combo, value in ((self.resolution_combo, image_size), (self.channels_combo, channels)):
            index = combo.findData(value)
            if index >= 0:
                combo.blockSignals(True)
                combo.setCurrentIndex(index)
                combo.blockSignals(False)

    def _restore_settings(self) -> None:
        settings = self.context.settings
        self.set_scan_settings(int(settings.value("dataset/resolution", DEFAULT_RESOLUTION)),
                               int(settings.value("dataset/channels", 3)))

    def save_settings(self) -> None:
        self.context.settings.setValue("dataset/resolution", self.image_size())
        self.context.settings.setValue("dataset/channels", self.channels())
        remember_dataset(self.context.settings, self.result)

    def _settings_changed(self) -> None:
        """A new resolution or channel count rescans what is loaded (or being scanned)."""
        if self._sources:
            self.scan(self._sources)

    # --- actions ----------------------------------------------------------------------------------
    def choose_folder(self) -> None:
        start = self.context.settings.value("last_dataset_dir", str(Path.home()))
        folder = QFileDialog.getExistingDirectory(self, "Choose a folder of images", start)
        if folder:
            self.context.settings.setValue("last_dataset_dir", folder)
            self.scan([Path(folder)])

    def handle_drop(self, paths: list[Path]) -> None:
        """A folder, several folders or image files dropped on the window: scan them."""
        self.scan([Path(path) for path in paths])

    def use_demo_dataset(self) -> None:
        """Scan the procedural demo dataset, drawing it first if it is not on disk yet."""
        folder = demo_dataset_dir()
        count = self.demo_count
        size, channels = self.image_size(), self.channels()

        def demo_then_scan():
            if not is_complete_demo_dataset(folder):
                yield from write_demo_dataset(folder, count)
            yield from open_cached_dataset([folder], size, channels)

        self._start_scan([folder], demo_then_scan)

    def scan(self, paths: list[Path], quiet: bool = False) -> None:
        """Scan ``paths`` (folders and image files) at the chosen resolution, in the background.

        ``quiet`` (the last dataset, scanned again at start): nothing usable, or a folder that cannot be
        read, is one quiet line rather than a red box and an empty result.
        """
        paths = [Path(path) for path in paths]
        if not paths:
            return
        size, channels = self.image_size(), self.channels()
        self._start_scan(paths, lambda: open_cached_dataset(paths, size, channels), quiet)

    def scan_again(self, paths: list[Path], image_size: int, channels: int) -> None:
        """Scan the last dataset again, quietly, at the resolution and channels it was scanned at."""
        self.set_scan_settings(image_size, channels)
        self.scan(paths, quiet=True)

    def is_scanning(self) -> bool:
        """True from the start of a scan until the page has taken in its end."""
        return self.jobs.is_running()

    def _start_scan(self, paths: list[Path], make_iterator, quiet: bool = False) -> None:
        """Start a scan; one still running is stopped, and only the newest scan's results arrive."""
        self._sources = paths
        self.error_label.hide()
        self.note_label.hide()
        self.scan_row.show()
        on_event, on_error = (self._on_event, self.show_error)
        if quiet:
            on_event, on_error = (lambda event: self._on_quiet_event(event, paths),
                                  lambda message: self._not_back(paths, f"cannot be read: {message}"))
        self.run_job(make_iterator, status=f"Looking at {describe_sources(paths)}…",
                     progress_types=(ScanProgress, DemoProgress), on_progress=self._on_progress,
                     on_event=on_event, on_error=on_error, on_done=self._on_done)

    # --- job events -------------------------------------------------------------------------------
    def _on_progress(self, event) -> None:
        if isinstance(event, DemoProgress):
            self.scan_label.setText("Drawing the demo dataset…")
        else:
            self.scan_label.setText(f"Scanning {event.done:,} of {event.total:,} files")
        self.jobs.show_progress(event.done, event.total)

    def _on_event(self, event) -> None:
        if isinstance(event, ScanResult):
            self.show_result(event)
        elif isinstance(event, CacheMessage):
            self.context.show_message(without_cache_paths(event.text, self._sources))

    def _on_quiet_event(self, event, paths: list[Path]) -> None:
        if isinstance(event, ScanResult) and not event.files:
            self._not_back(paths, "has no usable images any more. Choose or drop a folder to train on.")
        else:
            self._on_event(event)

    def _not_back(self, paths: list[Path], why: str) -> None:
        self._sources = []  # nothing is loaded: a new resolution rescans nothing
        self.show_note(f"The last dataset, {describe_sources(paths)}, {why}")

    def _on_done(self, stopped: bool) -> None:
        self._show_idle()
        if stopped:
            kept = " The dataset shown before is kept." if self.result is not None else ""
            self.context.show_message("Scan stopped." + kept)
            self._sources = list(self.result.sources) if self.result is not None else []

    def _show_idle(self) -> None:
        self.scan_row.setVisible(False)
        has_result = self.last_scan is not None
        self.stack.setCurrentIndex(1 if has_result else 0)
        self.choose_button.setVisible(has_result)
        self.demo_button.setVisible(has_result)

    def show_error(self, message: str) -> None:
        self.error_label.setText(message)
        self.error_label.show()

    def show_note(self, sentence: str) -> None:
        """One quiet line above the page (hidden again by the next scan)."""
        self.note_label.setText(sentence)
        self.note_label.show()

    # --- showing a result -------------------------------------------------------------------------
    def show_result(self, result: ScanResult) -> None:
        """Show a finished scan; hand it on when it holds usable images."""
        self.last_scan = result
        self.stack.setCurrentIndex(1)
        usable = len(result.files)
        summary = result.summary()
        colour = "colour" if result.channels == 3 else "grayscale"
        if usable:
            self.error_label.hide()
            sizes = (f"Original sizes: smallest {format_image_size(summary['source_size_min'])}, "
                     f"median {format_image_size(summary['source_size_median'])}, "
                     f"largest {format_image_size(summary['source_size_max'])}.")
            self.summary_label.setText(
                f"<span style='font-size:14pt'><b>{usable:,} usable image{'s' if usable != 1 else ''}</b></span>"
                f" in {describe_sources(result.sources)}<br>"
                f"Scanned at {result.image_size}×{result.image_size} px, {colour}. {sizes}"
                + ("" if result.skipped else " No file was skipped.")
                + (f" {counted(len(result.ignored), 'other file')} ignored: not images (listed at the right)."
                   if result.ignored else "")
            )
        else:
            self.summary_label.setText(f"<b>No usable images</b> in {describe_sources(result.sources)}.")
            self.show_error(explain_no_usable_images(result))
        self.next_button.setVisible(usable > 0)
        thumbnails = self._show_thumbnails(result)
        self._show_classes(result)
        self.grayscale_hint.setVisible(result.channels == 3 and looks_grayscale(thumbnails))
        self._show_skipped(result)
        if usable:
            self.result = result
            self.context.show_message(describe_scan(result))
            self.datasetReady.emit(result)

    def _show_thumbnails(self, result: ScanResult) -> list[np.ndarray]:
        """Show the images, or an even sample of them; returns the pictures shown."""
        count = len(result.files)
        indices = sample_indices(count)
        images = [to_hwc(result.images[index]) for index in indices]
        tooltips = [f"{result.files[index]}\n{format_image_size(result.source_sizes[index])} px originally"
                    for index in indices]
        self.thumbnails.set_images(images, tooltips)
        if count == 0:
            self.sample_label.setText("No thumbnails: nothing was usable.")
        elif len(indices) < count:
            self.sample_label.setText(f"Showing {len(indices):,} of {counted(count, 'image')}, "
                                      "spread evenly through the folder.")
        else:
            self.sample_label.setText("The image, as the model will see it:" if count == 1
                                      else f"All {count:,} images, as the model will see them:")
        return images

    def _show_classes(self, result: ScanResult) -> None:
        """A labelled dataset's classes, a row each with a few thumbnails; nothing for an unlabelled one."""
        labelled = result.labelled and len(result.files) > 0
        self.classes_label.setVisible(labelled)
        self.class_rows.setVisible(labelled)
        if not labelled:
            self.class_rows.set_classes([], [], [])
            return
        self.classes_label.setText(result.describe_classes())
        labels = result.labels.numpy()
        shown = result.class_names[:MAX_ROWS]
        thumbnails = []
        for class_index in range(len(shown)):
            members = np.flatnonzero(labels == class_index)
            picks = members[sample_indices(len(members), THUMBNAILS_PER_ROW)] if len(members) else members
            thumbnails.append([to_hwc(result.images[int(index)]) for index in picks])
        names, counts = list(result.class_names), result.class_counts()
        if result.unlabelled_count():
            members = np.flatnonzero(labels == UNLABELLED)
            picks = members[sample_indices(len(members), THUMBNAILS_PER_ROW)]
            # Shown after the classes, so that a user sees what trains the null label only.
            shown_rows = min(len(names), MAX_ROWS - 1)
            names, counts, thumbnails = (names[:shown_rows] + ["(no class: top level)"] + names[shown_rows:],
                                         counts[:shown_rows] + [result.unlabelled_count()] + counts[shown_rows:],
                                         thumbnails[:shown_rows]
                                         + [[to_hwc(result.images[int(index)]) for index in picks]])
        self.class_rows.set_classes(names, counts, thumbnails)

    def _show_skipped(self, result: ScanResult) -> None:
        """The files skipped, with their reasons, then the files that are not images (a notes.txt), one list."""
        skipped, ignored = result.skipped, result.ignored
        self.skipped_box.setVisible(bool(skipped or ignored))  # nothing to list: the thumbnails take the whole width
        parts = []
        if skipped:
            by_reason = result.summary()["skipped_by_reason"]
            kinds = ", ".join(f"{count} {kind}" for kind, count in sorted(by_reason.items(), key=lambda item: -item[1]))
            parts.append(f"<b>{counted(len(skipped), 'file')} skipped</b> ({kinds})")
        if ignored:
            parts.append(f"<b>{counted(len(ignored), 'file')} ignored</b> (not images)")
        self.skipped_label.setText("; ".join(parts) + ":" if parts else "No files were skipped.")
        rows = [(item.path, item.reason) for item in skipped] + [(path, IGNORED_REASON) for path in ignored]
        self.skipped_list.set_rows(rows)
