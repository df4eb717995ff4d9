"""The Generate page: sample images from a model with live previews, then follow any of them on the timeline.

Sampling runs ``core.sampling.run_sampling`` in a job thread. The worker converts at most four
previews a second (x_t or x0_hat of the whole batch, as the user chooses); the result brings
the images and their recorded trajectories, which the timeline plays without recomputing.

Below the timeline, "Branch from here" runs ``core.explore.run_branching`` from the x_t the timeline
shows (the paper's Fig. 7): N continuations from one shared x_t, one row per step t, each with how
much of the final image is already decided there.
"""

from __future__ import annotations

import random
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
from ddpm_studio.core.explore.branching import (
    BranchProgress,
    BranchRequest,
    BranchResult,
    BranchRow,
    fig7_steps,
    run_branching,
)
from ddpm_studio.core.explore.forecast import branching_cost
from ddpm_studio.core.model.store import ModelInfo, read_model_info
from ddpm_studio.core.sampling.cost import ExperimentCost
from ddpm_studio.core.sampling.imaging import make_grid, to_hwc, to_uint8
from ddpm_studio.core.sampling.job import (
    SamplingRequest,
    SamplingResult,
    export_trajectory,
    image_class_metadata,
    sample_file_stem,
    save_samples,
)
from ddpm_studio.core.system.devices import beside_a_window, choose_device
from ddpm_studio.gui.context import StudioContext
from ddpm_studio.gui.formatting import RateClock, counted
from ddpm_studio.gui.jobs.workers import JobRunner
from ddpm_studio.gui.pages.evaluate import inception_weights_setting
from ddpm_studio.gui.pages.page import Page
from ddpm_studio.gui.style import MUTED_TEXT_STYLE, WARNING_TEXT_STYLE
from ddpm_studio.gui.widgets.branch_rows import BranchRows
from ddpm_studio.gui.widgets.image_view import ImageView, ThumbnailGrid
from ddpm_studio.gui.widgets.neighbours import NeighboursPanel
from ddpm_studio.gui.widgets.sampling_panel import MAX_SEED, SamplingControls, settings_column
from ddpm_studio.gui.widgets.timeline import Timeline

IDLE_RESULTS_HINT = "Choose a model, then click Generate.\nThe finished images appear here."
DETERMINISTIC_NOTE = ("Deterministic: every continuation would be the same image; choose DDPM or DDIM with "
                      "η > 0 to branch.")
BRANCH_HINT = ("Click an image, move the timeline to a step t, then \"Branch from here\": N continuations "
               "from that one x_t show what is already decided at t (the paper's Fig. 7).")


def class_of(result: SamplingResult, index: int) -> str:
    """" · class c, w = ..." for an image of a class-conditional run, else nothing."""
    if result.request.classes is None:
        return ""
    named = {**result.metadata, **image_class_metadata(result, index)}
    return f" · class {named['class']}, w = {named['guidance']}"


def preview_picture(event: object, kind: str) -> np.ndarray | None:
    """The batch's x_t or x0_hat as one grid (runs in the worker thread, only for the events shown)."""
    if not isinstance(event, SampleStep):
        return None
    return make_grid(to_uint8(event.x0_hat if kind == "x0_hat" else event.x_t))


class GeneratePage(Page):
    def __init__(self, context: StudioContext, parent: QWidget | None = None):
        super().__init__(context, parent, job_name="sampling")
        self.result: SamplingResult | None = None
        self.result_info: ModelInfo | None = None  # the model folder that drew the result (its T, its network)
        self.branch_result: BranchResult | None = None
        self._branch_source: tuple | None = None  # what the rows shown branch from (model, seed, batch, image, sampler)
        self._running_request: SamplingRequest | None = None  # the run under way, to name it if it is stopped
        self.clock = RateClock()  # steps/s and time left of the current job
        self._preview_kind = ["x_t"]  # read by the worker thread; a list so the closure sees changes
        self._build()
        self._restore_settings()
        self._update_enabled()

    # --- layout ----------------------------------------------------------------------------------------
    def _build(self) -> None:
        self.sampling = SamplingControls(
            self.context, self.jobs, "generate", "Generate", with_variance=True, with_all_classes=True,
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
        self.sampling.class_box.currentIndexChanged.connect(self._update_enabled)  # guidance doubles the calls
        self.sampling.guidance_slider.valueChanged.connect(self._update_enabled)
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
        self.grid.imageActivated.connect(self.image_clicked)
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
        self.neighbours = NeighboursPanel()  # beside the timeline: the clicked image's nearest training images
        timeline_row = QHBoxLayout()
        timeline_row.addWidget(self.timeline, 3)
        timeline_row.addWidget(self.neighbours, 1)
        timeline_layout.addLayout(timeline_row, 1)
        timeline_layout.addLayout(export_row)

        self.process_stack = QStackedWidget()
        self.process_stack.addWidget(self.timeline_panel)
        self.process_stack.addWidget(preview_panel)
        self.process_box = QGroupBox()
        QVBoxLayout(self.process_box).addWidget(self.process_stack)
        self.show_process("timeline")

        right = QSplitter(Qt.Orientation.Vertical)
        right.setChildrenCollapsible(False)
        # The timeline and the branches from it share the lower pane: the thumbnails keep theirs.
        lower = QSplitter(Qt.Orientation.Vertical)
        lower.setChildrenCollapsible(False)
        lower.addWidget(self.process_box)
        lower.addWidget(self._build_branches_box())
        lower.setStretchFactor(0, 3)
        lower.setStretchFactor(1, 2)
        lower.setSizes([280, 220])  # the timeline above about two rows of branches
        right.addWidget(results_box)
        right.addWidget(lower)
        right.setStretchFactor(0, 2)
        right.setStretchFactor(1, 3)
        right.setSizes([300, 480])  # two rows of thumbnails above, the timeline as large as the rest allows
        settings_column(self, right, model_box, sampler_box, images_box, self.sampling.run_layout())

    def _build_branches_box(self) -> QGroupBox:
        """"Branch from here" with its N, "Fig. 7", a line on what they do now, and the rows."""
        self.branch_button = QPushButton("Branch from here")
        self.branch_button.clicked.connect(self.branch_here)
        self.branch_count_spin = QSpinBox()
        self.branch_count_spin.setRange(1, 64)
        self.branch_count_spin.setValue(8)
        self.branch_count_spin.setPrefix("N = ")
        self.branch_count_spin.setToolTip("Continuations per step: each runs from the shared x_t to 0 with its own "
                                          "noise")
        self.branch_count_spin.valueChanged.connect(self._update_branch_controls)
        self.sampling.keep("branches", self.branch_count_spin)
        self.fig7_button = QPushButton("Fig. 7")
        self.fig7_button.clicked.connect(self.branch_fig7)
        self.clear_branches_button = QPushButton("Clear")
        self.clear_branches_button.setToolTip("Remove the rows")
        self.clear_branches_button.clicked.connect(self.clear_branches)
        buttons = QHBoxLayout()
        buttons.addWidget(self.branch_button)
        buttons.addWidget(self.branch_count_spin)
        buttons.addWidget(self.fig7_button)
        buttons.addStretch(1)
        buttons.addWidget(self.clear_branches_button)
        self.branch_note = QLabel(BRANCH_HINT)
        self.branch_note.setWordWrap(True)
        self.branch_note.setStyleSheet(MUTED_TEXT_STYLE)
        self.branch_rows = BranchRows("No branches yet.")
        self.timeline.slider.valueChanged.connect(self._update_branch_controls)
        self.sampling.eta_spin.valueChanged.connect(self._update_branch_controls)
        box = QGroupBox("Branches · what is already decided at step t")
        layout = QVBoxLayout(box)
        layout.addLayout(buttons)
        layout.addWidget(self.branch_note)
        layout.addWidget(self.branch_rows, 1)
        return box

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
        """What the settings ask for (with a class-conditional model's class and w)."""
        return self.sampling.apply_classes(SamplingRequest(
            model_path=self.model_chooser.current_path(),
            num_images=self.count_spin.value(),
            seed=self.seed_spin.value(),
            sampler=self.sampler(),
            steps=self.steps_spin.value(),
            eta=self.sampling.eta(),
            variance=self.sampling.variance(),
            ddpm_steps=self.sampling.ddpm_steps(),
        ))

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
        self._update_branch_controls()

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
        self.clock.start()  # the clock starts at the first step, after the model loads
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
        timing = self.clock.left(event.step + 1, event.num_steps)
        if timing is not None:
            text += f" · {timing[0]:.1f} steps/s · {timing[1]} left"
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
        self.result_info = read_model_info(result.request.model_path)
        if self._branch_source is not None and self._branch_source[:3] != (
                str(result.request.model_path), result.request.seed, len(result.images)):
            self.clear_branches()  # they branch from another run's images
        images = [to_hwc(image) for image in result.images]
        tips = [f"Image {index + 1} of {len(images)}{class_of(result, index)} · seed {result.metadata['seed']} · "
                f"{result.request.describe()}: the same seed, number of images and sampler draw it again"
                for index in range(len(images))]
        classes = result.request.classes
        self.grid.row_length = classes.count(classes[0]) if classes is not None and len(classes) > 1 else None
        self.grid.row_captions = ([image_class_metadata(result, first)["class"]
                                   for first in range(0, len(images), self.grid.row_length)]
                                  if self.grid.row_length else [])
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
        self.timeline_caption.setText(f"Image {index + 1} of {len(self.result.images)}{class_of(self.result, index)}")
        if self.result_info is not None:
            self.neighbours.set_model(self.result_info)  # its search waits for a click (image_clicked)
        if self.grid.currentRow() != index:
            self.grid.setCurrentRow(index)
        self.timeline.setFocus()
        self._update_enabled()

    def image_clicked(self, index: int) -> None:
        """A click on a sample: it goes on the timeline, and its nearest training images are searched."""
        self.show_on_timeline(index)
        if self.result is not None and self.result_info is not None and 0 <= index < len(self.result.images):
            self.neighbours.show_sample(self.result_info, self.result.images[index], f"image {index + 1}",
                                        inception_weights_setting(self.context.settings))

    # --- branching: the paper's Fig. 7 -------------------------------------------------------------------
    def branch_blocker(self) -> str | None:
        """Why no branching run can start with these settings (None: one can), in the words the page shows."""
        sampler = self.sampler()
        if sampler == "dpm-solver++" or (sampler == "ddim" and self.sampling.eta() == 0):
            return DETERMINISTIC_NOTE
        if self.result is None or self.result_info is None or self.timeline.image_index is None:
            return BRANCH_HINT
        return None

    def _update_branch_controls(self) -> None:
        running, blocker, t = self.jobs.is_running(), self.branch_blocker(), self.timeline.current_t()
        at_step = t is not None and t >= 1
        self.branch_button.setEnabled(not running and blocker is None and at_step)
        self.fig7_button.setEnabled(not running and blocker is None)
        self.branch_count_spin.setEnabled(not running)
        self.clear_branches_button.setEnabled(not running and bool(self.branch_rows.views))
        deterministic = blocker == DETERMINISTIC_NOTE
        self.branch_button.setToolTip(DETERMINISTIC_NOTE if deterministic else
                                      "N continuations from the x_t the timeline shows, each with its own noise")
        self.fig7_button.setToolTip(DETERMINISTIC_NOTE if deterministic else
                                    "The paper's Fig. 7: branch at t = T, 3T/4, T/2 and T/4 in one run")
        if running:
            return  # the line shows the run's forecast meanwhile
        if blocker is not None:
            text = blocker
        elif not at_step:
            text = "Move the timeline to a step t > 0 to branch there (t = 0 is the finished image), or click Fig. 7."
        else:
            text = (f"Branch image {self.timeline.image_index + 1} at t = {t}: "
                    f"{counted(self.branch_count_spin.value(), 'continuation')} from its x_t, each with its own noise.")
        self.branch_note.setText(text)
        self.branch_note.setStyleSheet(WARNING_TEXT_STYLE if deterministic else MUTED_TEXT_STYLE)

    def branch_request(self, at: list[int]) -> BranchRequest:
        """Branch the image on the timeline at ``at``: its Generate run's chain, this page's sampler."""
        run, sampler = self.result.request, self.sampler()
        return BranchRequest(
            model_path=Path(run.model_path), at=at, num=self.branch_count_spin.value(), seed=run.seed,
            sampler=sampler, steps=self.sampling.ddpm_steps() if sampler == "ddpm" else self.steps_spin.value(),
            eta=self.sampling.eta() if sampler == "ddim" else 1.0,
            variance=self.sampling.variance() if sampler == "ddpm" else None, clip=run.clip,
            image=self.timeline.image_index, batch_size=len(self.result.images), classes=run.classes,
            guidance=run.guidance,
        )

    def branch_here(self) -> JobRunner | None:
        """Branch at the timeline's t; returns the job (None if it cannot start)."""
        t = self.timeline.current_t()
        if t is None or t < 1:
            self.set_status("Move the timeline to a step t > 0 first.", error=True)
            return None
        return self.start_branching([t])

    def branch_fig7(self) -> JobRunner | None:
        """The paper's four branch steps, scaled to the model's T, in one run."""
        if self.result_info is None:
            return None
        return self.start_branching(fig7_steps(self.result_info.schedule.num_timesteps))

    def start_branching(self, at: list[int]) -> JobRunner | None:
        if self.jobs.is_running() or self.branch_blocker() is not None:
            return None
        request = self.branch_request(at)
        try:
            request.validate(self.result_info.schedule.num_timesteps)
        except UserError as error:
            self.set_status(str(error), error=True)
            return None
        source = (str(request.model_path), request.seed, request.batch_size, request.image, request.sampler,
                  request.steps, request.eta, request.variance, request.num)
        if source != self._branch_source:
            self.branch_rows.clear_rows()  # rows of another chain or sampler would not belong to the same figure
            self._branch_source = source
        self.branch_result = None
        info, on_cpu = self.result_info, choose_device("auto").type == "cpu"

        def events():
            if on_cpu:
                yield branching_cost(request, info)  # in the worker: the first count of a network takes a moment
            yield from beside_a_window(run_branching(request))

        self.clock.start()
        where = ", ".join(str(t) for t in at)
        return self.run_job(
            events, name="branching", status=f"Branching image {request.image + 1} at t = {where}…",
            progress_format="%v of %m model calls", progress_types=(BranchProgress,),
            on_progress=self._on_branch_progress, on_event=self._on_branch_event, on_done=self._on_branch_done,
        )

    def _on_branch_progress(self, progress: BranchProgress) -> None:
        self.jobs.show_progress(progress.done, progress.total)
        text = f"Branching, {progress.what}: {progress.done:,} of {progress.total:,} model calls"
        timing = self.clock.left(progress.done, progress.total)
        if timing is not None:
            text += f" · {timing[1]} left"
        self.set_status(text + ".")

    def _on_branch_event(self, event) -> None:
        if isinstance(event, ExperimentCost):
            minutes = " It takes minutes: Stop keeps the rows already finished." if event.seconds > 60 else ""
            self.branch_note.setText(event.describe() + minutes)
            self.branch_note.setStyleSheet(WARNING_TEXT_STYLE if event.slow else MUTED_TEXT_STYLE)
            self.set_status(event.describe() + minutes)
        elif isinstance(event, BranchRow):
            self.branch_rows.add_row(event)
        elif isinstance(event, BranchResult):
            self.branch_result = event
            self.jobs.finish_progress()
            decided = ", ".join(f"t = {row.t}: {row.decided:.0%}" for row in event.rows)
            self.set_status(f"Branched: {decided} decided.")

    def _on_branch_done(self, stopped: bool) -> None:
        if stopped:
            self.set_status(f"Stopped: the {counted(len(self.branch_rows.views), 'row')} finished are kept.")
        self._update_enabled()

    def clear_branches(self) -> None:
        self.branch_rows.clear_rows()
        self._branch_source = None
        self.branch_result = None
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
            paths = save_samples(self.result, folder, indices, columns=None if indices else self.grid.row_length)
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
        return self.export_file(lambda: export_trajectory(self.result, self.timeline.image_index, path, kind))

    # --- keys --------------------------------------------------------------------------------------------
    def keyPressEvent(self, event: QKeyEvent) -> None:
        """Space and arrows that no child used drive the timeline, wherever the focus is on this page."""
        if not self.timeline.handle_key(event):
            super().keyPressEvent(event)
