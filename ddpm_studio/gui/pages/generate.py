"""The Generate page: sample images from a model with live previews, then follow any of them on the timeline.

Sampling runs ``core.sampling.run_sampling`` in a job thread. The worker converts at most four
previews a second (x_t or x0_hat of the whole batch, as the user chooses); the result brings
the images and their recorded trajectories, which the timeline plays without recomputing.
"""

from __future__ import annotations

import random
import time
from pathlib import Path

import numpy as np
from PySide6.QtCore import Qt
from PySide6.QtGui import QKeyEvent
from PySide6.QtWidgets import (
    QButtonGroup,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QRadioButton,
    QSpinBox,
    QSplitter,
    QStackedWidget,
    QVBoxLayout,
    QWidget,
)

from ddpm_studio.core.diffusion.process import SampleStep
from ddpm_studio.core.errors import UserError
from ddpm_studio.core.sampling.imaging import make_grid, to_hwc, to_uint8
from ddpm_studio.core.sampling.job import (
    SamplingRequest,
    SamplingResult,
    export_trajectory,
    sample_file_stem,
    save_samples,
)
from ddpm_studio.gui.context import StudioContext
from ddpm_studio.gui.formatting import counted, format_duration
from ddpm_studio.gui.jobs.workers import JobRunner
from ddpm_studio.gui.pages.page import Page
from ddpm_studio.gui.style import MUTED_TEXT_STYLE, WARNING_TEXT_STYLE
from ddpm_studio.gui.widgets.image_view import ImageView, ThumbnailGrid
from ddpm_studio.gui.widgets.sampling_panel import MAX_SEED, SamplingControls, settings_column
from ddpm_studio.gui.widgets.timeline import Timeline

IDLE_RESULTS_HINT = "Choose a model, then click Generate.\nThe finished images appear here."


def preview_picture(event: object, kind: str) -> np.ndarray | None:
    """The batch's x_t or x0_hat as one grid (runs in the worker thread, only for the events shown)."""
    if not isinstance(event, SampleStep):
        return None
    return make_grid(to_uint8(event.x0_hat if kind == "x0_hat" else event.x_t))


class GeneratePage(Page):
    def __init__(self, context: StudioContext, parent: QWidget | None = None):
        super().__init__(context, parent, job_name="sampling")
        self.result: SamplingResult | None = None
        self._running_request: SamplingRequest | None = None  # the run under way, to name it if it is stopped
        self._sampling_started: tuple[float, int | None] = (0.0, None)  # (when, step) the rate is counted from
        self._preview_kind = ["x_t"]  # read by the worker thread; a list so the closure sees changes
        self._build()
        self._restore_settings()
        self._update_enabled()

    # --- layout ----------------------------------------------------------------------------------------
    def _build(self) -> None:
        self.sampling = SamplingControls(
            self.context, self.jobs, "generate", "Generate", with_variance=True,
            steps_tooltip="DDIM's number of denoising steps, evenly spaced over t = T..1",
        )
        # The widgets by name, as the page shows them.
        self.model_chooser, self.sampler_box = self.sampling.model_chooser, self.sampling.sampler_box
        self.steps_spin, self.variance_box = self.sampling.steps_spin, self.sampling.variance_box
        self.generate_button, self.stop_button = self.sampling.run_button, self.jobs.stop_button
        self.progress_bar, self.status_label = self.jobs.progress_bar, self.jobs.status_label
        self.model_chooser.modelChanged.connect(self._on_model_changed)
        self.sampler_box.currentIndexChanged.connect(self._update_enabled)
        model_box = QGroupBox("1 · Model")
        QVBoxLayout(model_box).addWidget(self.model_chooser)
        sampler_box = QGroupBox("2 · Sampler")
        sampler_box.setLayout(self.sampling.sampler_form())

        self.count_spin = QSpinBox()
        self.count_spin.setRange(1, 256)
        self.count_spin.setValue(16)
        self.count_spin.valueChanged.connect(self._update_enabled)  # the CPU forecast depends on it
        self.sampling.steps_spin.valueChanged.connect(self._update_enabled)
        self.seed_spin = QSpinBox()
        self.seed_spin.setRange(0, MAX_SEED)
        self.seed_spin.setToolTip("The same seed, model and sampler give the same images")
        self.sampling.keep("count", self.count_spin)
        self.sampling.keep("seed", self.seed_spin)
        self.random_seed_button = QPushButton("Random")
        self.random_seed_button.setToolTip("Pick a new random seed")
        self.random_seed_button.clicked.connect(self.randomize_seed)
        seed_row = QHBoxLayout()
        seed_row.addWidget(self.seed_spin, 1)
        seed_row.addWidget(self.random_seed_button)
        images_box = QGroupBox("3 · Images")
        images_form = QFormLayout(images_box)
        images_form.addRow("Number", self.count_spin)
        images_form.addRow("Seed", seed_row)

        self.generate_button.setDefault(True)
        self.generate_button.clicked.connect(self.generate)

        # Results: the grid of finished images (a hint until there are some).
        self.results_hint = QLabel(IDLE_RESULTS_HINT)
        self.results_hint.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.results_hint.setEnabled(False)
        self.grid = ThumbnailGrid(thumbnail_size=96, smallest_size=48)  # smaller, when that shows every image
        self.grid.imageActivated.connect(self.show_on_timeline)
        self.grid.itemSelectionChanged.connect(self._update_enabled)
        self.results_stack = QStackedWidget()
        self.results_stack.addWidget(self.results_hint)
        self.results_stack.addWidget(self.grid)
        self.save_selected_button = QPushButton("Save selected…")
        self.save_selected_button.clicked.connect(lambda: self.choose_save_folder(selected_only=True))
        self.save_all_button = QPushButton("Save all…")
        self.save_all_button.clicked.connect(lambda: self.choose_save_folder(selected_only=False))
        save_row = QHBoxLayout()
        save_row.addWidget(QLabel("PNGs with seed, model and sampler:"))
        save_row.addStretch(1)
        save_row.addWidget(self.save_selected_button)
        save_row.addWidget(self.save_all_button)
        self.results_caption = QLabel()  # which model and settings drew the images in the grid
        self.results_caption.setWordWrap(True)
        self.results_caption.hide()
        results_box = QGroupBox("Results · click an image to follow it on the timeline")
        results_layout = QVBoxLayout(results_box)
        results_layout.addWidget(self.results_caption)
        results_layout.addWidget(self.results_stack, 1)
        results_layout.addLayout(save_row)

        # The process: the whole batch live while sampling, then one image's timeline.
        self.preview_x_t = QRadioButton("x_t")
        self.preview_x0 = QRadioButton("predicted x_0 (the model's guess of the final images)")
        self.preview_x_t.setChecked(True)
        self.preview_group = QButtonGroup(self)
        self.preview_group.addButton(self.preview_x_t)
        self.preview_group.addButton(self.preview_x0)
        self.preview_x0.toggled.connect(self._on_preview_kind)
        preview_row = QHBoxLayout()
        preview_row.addWidget(QLabel("Show"))
        preview_row.addWidget(self.preview_x_t)
        preview_row.addWidget(self.preview_x0)
        preview_row.addStretch(1)
        self.preview_view = ImageView("Starting…")
        preview_panel = QWidget()
        preview_layout = QVBoxLayout(preview_panel)
        preview_layout.setContentsMargins(0, 0, 0, 0)
        preview_layout.addLayout(preview_row)
        preview_layout.addWidget(self.preview_view, 1)

        self.timeline = Timeline("Generate, then click an image\nto watch it go from noise x_T to x_0.")
        self.export_animation_button = QPushButton("Export animation…")
        self.export_animation_button.setToolTip("This image's trajectory as an animated GIF or WebP")
        self.export_animation_button.clicked.connect(lambda: self.choose_export_path("animation"))
        self.export_strip_button = QPushButton("Export strip…")
        self.export_strip_button.setToolTip("Ten frames of x_t above the same frames of the predicted x_0, as one PNG")
        self.export_strip_button.clicked.connect(lambda: self.choose_export_path("strip"))
        self.timeline_caption = QLabel("No image on the timeline yet.")
        export_row = QHBoxLayout()
        export_row.addWidget(self.timeline_caption, 1)
        export_row.addWidget(self.export_animation_button)
        export_row.addWidget(self.export_strip_button)
        self.timeline_panel = QWidget()
        timeline_layout = QVBoxLayout(self.timeline_panel)
        timeline_layout.setContentsMargins(0, 0, 0, 0)
        timeline_layout.addWidget(self.timeline, 1)
        timeline_layout.addLayout(export_row)

        self.process_stack = QStackedWidget()
        self.process_stack.addWidget(self.timeline_panel)
        self.process_stack.addWidget(preview_panel)
        self.process_box = QGroupBox()
        QVBoxLayout(self.process_box).addWidget(self.process_stack)
        self.show_process("timeline")

        right = QSplitter(Qt.Orientation.Vertical)
        right.setChildrenCollapsible(False)
        right.addWidget(results_box)
        right.addWidget(self.process_box)
        right.setStretchFactor(0, 2)
        right.setStretchFactor(1, 3)
        right.setSizes([300, 480])  # two rows of thumbnails above, the timeline as large as the rest allows
        settings_column(self, right, model_box, sampler_box, images_box, self.sampling.run_layout())

    # --- settings --------------------------------------------------------------------------------------
    def _restore_settings(self) -> None:
        settings = self.context.settings
        self.sampling.restore_settings()  # with the count and the seed
        self.preview_x0.setChecked(settings.value("generate/preview", "x_t") == "x0_hat")

    def save_settings(self) -> None:
        settings = self.context.settings
        self.sampling.save_settings()
        settings.setValue("generate/preview", self._preview_kind[0])

    # --- choosing ----------------------------------------------------------------------------------------
    def select_model(self, path: Path | str) -> bool:
        return self.model_chooser.select(path)

    def handle_drop(self, paths: list[Path]) -> None:
        if len(paths) == 1 and paths[0].is_dir():
            self.select_model(paths[0])

    def randomize_seed(self) -> None:
        self.seed_spin.setValue(random.randint(0, MAX_SEED))

    def _on_model_changed(self, _path) -> None:
        self.sampling.fit_to_model()
        self._show_results_caption()
        self._update_enabled()

    def _on_preview_kind(self) -> None:
        self._preview_kind[0] = "x0_hat" if self.preview_x0.isChecked() else "x_t"

    def sampler(self) -> str:
        return self.sampling.sampler()

    def request(self) -> SamplingRequest:
        """What the settings ask for."""
        return SamplingRequest(
            model_path=self.model_chooser.current_path(),
            num_images=self.count_spin.value(),
            seed=self.seed_spin.value(),
            sampler=self.sampler(),
            steps=self.steps_spin.value(),
            eta=self.sampling.eta(),
            variance=self.sampling.variance(),
            ddpm_steps=self.sampling.ddpm_steps(),
        )

    def _update_enabled(self) -> None:
        running = self.jobs.is_running()
        self.sampling.update_enabled(can_run=self.model_chooser.current_path() is not None)
        self.sampling.show_cost(self.count_spin.value())
        for widget in (self.count_spin, self.seed_spin, self.random_seed_button):
            widget.setEnabled(not running)
        has_result = self.result is not None
        self.save_all_button.setEnabled(has_result)
        self.save_selected_button.setEnabled(has_result and bool(self.grid.selected_indices()))
        has_timeline = self.timeline.trajectory is not None
        self.export_animation_button.setEnabled(has_timeline)
        self.export_strip_button.setEnabled(has_timeline)

    def set_status(self, text: str, error: bool = False) -> None:
        self.jobs.set_status(text, error)

    # --- sampling ----------------------------------------------------------------------------------------
    def generate(self) -> JobRunner | None:
        """Start sampling with the current settings; returns the job (None if nothing could start)."""
        if self.jobs.is_running():
            return None
        request = self.request()
        if request.model_path is None:
            self.set_status("Choose a model first.", error=True)
            return None
        try:
            request.validate()
        except UserError as error:
            self.set_status(str(error), error=True)
            return None
        preview_kind = self._preview_kind
        if self.result is None:
            self.results_hint.setText("Sampling…\nThe finished images appear here.")
        self._sampling_started = (time.monotonic(), None)  # the clock starts at the first step, after the model loads
        self.preview_view.set_image(None)
        self.preview_view.placeholder = "Starting…"
        self.show_process("preview")
        self._running_request = request
        return self.sampling.run(
            request, "sampling", f"Loading {request.model_path.name}…",
            image_from=lambda event: preview_picture(event, preview_kind[0]), on_image=self.preview_view.set_image,
            on_result=self.show_result, on_step=self._on_step, on_error=self._on_failed, on_done=self._on_done,
        )

    def stop(self) -> None:
        self.jobs.stop()

    def _on_step(self, event: SampleStep) -> None:
        text = f"Sampling: step {event.step + 1} of {event.num_steps}, t = {event.t + 1}"
        now = time.monotonic()
        started, first_step = self._sampling_started
        if first_step is None:
            self._sampling_started = (now, event.step)
        elif event.step > first_step and now > started:
            rate = (event.step - first_step) / (now - started)
            text += f" · {rate:.1f} steps/s · {format_duration((event.num_steps - event.step - 1) / rate)} left"
        self.set_status(text + ".")

    def _on_failed(self, message: str) -> None:
        self.set_status(message, error=True)
        self.show_process("timeline")

    def _on_done(self, stopped: bool) -> None:
        if self.result is None:
            self.results_hint.setText(IDLE_RESULTS_HINT)
        if stopped:
            self.set_status("Stopped before the end; the images shown are unfinished."
                            if self.result is None else "Stopped; the grid shows the last finished images.")
            if self.result is not None:
                self.show_process("timeline")
                self._show_results_caption(stopped_run=self._running_request)
        self._running_request = None

    def _show_results_caption(self, stopped_run: SamplingRequest | None = None) -> None:
        """Name the model and settings of the images in the grid; in warning colour when they are not what the
        page now shows: another model is chosen, or a run was stopped before it replaced them."""
        if self.result is None:
            self.results_caption.hide()
            return
        request = self.result.request
        drawn = (f"{counted(len(self.result.images), 'image')} from {self.result.metadata['model']} "
                 f"({request.describe()}, seed {request.seed})")
        chosen = self.model_chooser.current_path()
        same_model = chosen is not None and Path(chosen).resolve() == Path(request.model_path).resolve()
        if stopped_run is not None:
            text = (f"The run of {stopped_run.model_path.name} was stopped: the grid still shows the last "
                    f"finished images, {drawn}.")
        elif not same_model:
            text = f"The grid shows {drawn}, not from the chosen model" + (
                f": Generate samples {chosen.name}." if chosen is not None else ".")
        else:
            self.results_caption.setText(f"{drawn}.")
            self.results_caption.setStyleSheet(MUTED_TEXT_STYLE)
            self.results_caption.show()
            return
        self.results_caption.setText(text)
        self.results_caption.setStyleSheet(WARNING_TEXT_STYLE)
        self.results_caption.show()

    def show_result(self, result: SamplingResult) -> None:
        """Show finished images in the grid and the first one on the timeline."""
        self.result = result
        images = [to_hwc(image) for image in result.images]
        tips = [f"Image {index + 1} of {len(images)} · seed {result.metadata['seed']} · {result.request.describe()}: "
                f"the same seed, number of images and sampler draw it again" for index in range(len(images))]
        self.grid.set_images(images, tips)
        self.results_stack.setCurrentWidget(self.grid)
        self._show_results_caption()
        self.show_process("timeline")
        self.set_status(f"{counted(len(images), 'image')} from {result.metadata['model']} "
                        f"({result.request.describe()}, seed {result.request.seed}).")
        self.show_on_timeline(0)

    def show_process(self, which: str) -> None:
        """The lower panel: "preview" (the batch, live, while sampling) or "timeline" (one image, recorded)."""
        if which == "preview":
            self.timeline.pause()
            self.process_stack.setCurrentIndex(1)
            self.process_box.setTitle("Sampling · the whole batch, live")
        else:
            self.process_stack.setCurrentWidget(self.timeline_panel)
            self.process_box.setTitle("Timeline · from noise x_T to image x_0")

    def show_on_timeline(self, index: int) -> None:
        if self.result is None or index not in self.result.trajectory.image_indices:
            return
        self.timeline.set_trajectory(self.result.trajectory, index)
        if not self.jobs.is_running():
            self.show_process("timeline")
        self.timeline_caption.setText(f"Image {index + 1} of {len(self.result.images)}")
        if self.grid.currentRow() != index:
            self.grid.setCurrentRow(index)
        self.timeline.setFocus()
        self._update_enabled()

    # --- saving ------------------------------------------------------------------------------------------
    def choose_save_folder(self, selected_only: bool) -> None:
        start = self.context.settings.value("last_save_dir", str(Path.home()))
        folder = QFileDialog.getExistingDirectory(self, "Save the images in…", start)
        if folder:
            self.context.settings.setValue("last_save_dir", folder)
            self.save_images(Path(folder), selected_only)

    def save_images(self, folder: Path | str, selected_only: bool = False) -> list[Path]:
        """PNGs of all images (or the selected ones) and their grid, with metadata; returns the paths."""
        if self.result is None:
            return []
        indices = self.grid.selected_indices() if selected_only else None
        if selected_only and not indices:
            self.set_status("Select images in the grid first (Ctrl+click for several).", error=True)
            return []
        try:
            paths = save_samples(self.result, folder, indices)
        except OSError as error:
            self.set_status(f"Could not save in {folder}: {error.strerror or error}.", error=True)
            return []
        self.set_status(f"Saved {counted(len(paths) - 1, 'image')} and their grid in {folder}.")
        self.context.show_message(f"Saved {counted(len(paths) - 1, 'image')} in {folder}.")
        return paths

    def choose_export_path(self, kind: str) -> None:
        if self.result is None or self.timeline.image_index is None:
            return
        folder = Path(self.context.settings.value("last_save_dir", str(Path.home())))
        name = f"{sample_file_stem(self.result)}_image{self.timeline.image_index + 1:03d}_trajectory"
        if kind == "strip":
            path, _ = QFileDialog.getSaveFileName(self, "Export the trajectory as a strip", str(folder / f"{name}.png"),
                                                  "PNG image (*.png)")
        else:
            path, chosen = QFileDialog.getSaveFileName(self, "Export the trajectory as an animation",
                                                       str(folder / f"{name}.gif"),
                                                       "Animated GIF (*.gif);;Animated WebP (*.webp)")
            if path and Path(path).suffix.lower() not in (".gif", ".webp"):
                path += ".webp" if "webp" in chosen.lower() else ".gif"
        if path:
            self.context.settings.setValue("last_save_dir", str(Path(path).parent))
            self.export_timeline(Path(path), "strip" if kind == "strip" else Path(path).suffix.lower().lstrip("."))

    def export_timeline(self, path: Path | str, kind: str = "gif") -> Path | None:
        """Export the trajectory of the image on the timeline ("gif", "webp" or "strip"); returns the file."""
        if self.result is None or self.timeline.image_index is None:
            return None
        try:
            written = export_trajectory(self.result, self.timeline.image_index, path, kind)
        except (OSError, UserError) as error:
            self.set_status(f"Could not export: {getattr(error, 'strerror', None) or error}.", error=True)
            return None
        self.set_status(f"Exported {written.name}.")
        self.context.show_message(f"Exported {written}.")
        return written

    # --- keys --------------------------------------------------------------------------------------------
    def keyPressEvent(self, event: QKeyEvent) -> None:
        """Space and arrows that no child used drive the timeline, wherever the focus is on this page."""
        if not self.timeline.handle_key(event):
            super().keyPressEvent(event)
