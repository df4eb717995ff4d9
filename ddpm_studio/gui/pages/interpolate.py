"""The Interpolate page: the paper's Figs. 8 and 9, two pictures mixed in x_t and taken back to images by a model.

Both pictures are noised to step t with the same noise draw, mixed as (1 − λ) x_t + λ x_t', and each
mix runs the reverse process with the same reverse noise (``core.explore.run_interpolation`` in a job
thread). The strip shows a frame per λ; clicking one plays its trajectory on the timeline. Moving t and
interpolating again shows Fig. 9: at t = 0 the frames are a pixel blend, near t = T new samples.
"""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import Qt
from PySide6.QtGui import QKeyEvent
from PySide6.QtWidgets import QFileDialog, QHBoxLayout, QLabel, QPushButton, QSlider, QSpinBox, QWidget

from ddpm_studio.core.data.demo import make_demo_images
from ddpm_studio.core.data.folders import SkipImage, load_image
from ddpm_studio.core.errors import UserError
from ddpm_studio.core.explore.forecast import interpolation_cost
from ddpm_studio.core.explore.interpolation import (
    InterpolationProgress,
    InterpolationRequest,
    InterpolationResult,
    export_interpolation,
    run_interpolation,
)
from ddpm_studio.core.model.store import ModelInfo
from ddpm_studio.core.sampling.cost import ExperimentCost
from ddpm_studio.core.sampling.imaging import to_hwc
from ddpm_studio.core.system.devices import beside_a_window, choose_device
from ddpm_studio.gui.context import StudioContext
from ddpm_studio.gui.drops import accept_files, any_paths
from ddpm_studio.gui.jobs.workers import JobRunner
from ddpm_studio.gui.pages.page import Page
from ddpm_studio.gui.style import MUTED_TEXT_STYLE, hold_size, make_bold
from ddpm_studio.gui.widgets.interpolation_strip import InterpolationStrip
from ddpm_studio.gui.widgets.picture_slot import PictureSlot
from ddpm_studio.gui.widgets.sampling_panel import MAX_SEED, SamplingControls, settings_column
from ddpm_studio.gui.widgets.stacked_box import stacked_box
from ddpm_studio.gui.widgets.timeline import Timeline
from ddpm_studio.paths import SAMPLE_PICTURE

WORKING_SIZE = 128  # the pictures' size while no model is chosen
T_EXPLANATION = "t = 0: a pixel blend; t = T: a new sample. The paper's Fig. 8 uses t = 500 of 1000."
EXPORT_SIZE = 128  # exported frames are enlarged (nearest neighbour) to at least this many pixels



def two_files_at_most(paths: list[Path]) -> bool:
    """A drop on this page fills B with one picture, or A and B with two."""
    return len(paths) <= 2 and all(path.is_file() for path in paths)


class InterpolatePage(Page):
    def __init__(self, context: StudioContext, parent: QWidget | None = None):
        super().__init__(context, parent, job_name="interpolation")
        self.model_info: ModelInfo | None = None
        self.sources: dict[str, tuple[str, object]] = {"A": ("file", SAMPLE_PICTURE), "B": ("demo", 1)}
        self.result: InterpolationResult | None = None
        self._build()
        self.setAcceptDrops(True)
        self.sampling.restore_settings()
        self._on_model_changed(self.model_chooser.current_path())

    # --- layout ----------------------------------------------------------------------------------------
    def _build(self) -> None:
        self.slots = {name: PictureSlot(name, self.image_folder) for name in ("A", "B")}
        for name, slot in self.slots.items():
            slot.fileChosen.connect(lambda path, name=name: self.set_source(name, ("file", Path(path))))
        pictures = QHBoxLayout()
        pictures.addWidget(self.slots["A"], 1)
        pictures.addWidget(self.slots["B"], 1)
        self.demo_button = QPushButton("Two demo images")
        self.demo_button.setToolTip("Two pictures of the demo dataset, the kind the demo model was trained on")
        self.demo_button.clicked.connect(self.use_demo_images)
        hint = QLabel("Open or drop a picture on A and on B (two files dropped on the page fill both).")
        hint.setWordWrap(True)
        hint.setStyleSheet(MUTED_TEXT_STYLE)
        pictures_box = stacked_box("1 · Two pictures", pictures, self.demo_button, hint)

        self.sampling = SamplingControls(self.context, self.jobs, "interpolate", "Interpolate", with_variance=True,
                                         steps_tooltip="DDIM's number of steps from t down to 0")
        self.model_chooser, self.sampler_box = self.sampling.model_chooser, self.sampling.sampler_box
        self.interpolate_button, self.stop_button = self.sampling.run_button, self.jobs.stop_button
        self.progress_bar, self.status_label = self.jobs.progress_bar, self.jobs.status_label
        self.model_chooser.modelChanged.connect(self._on_model_changed)
        self.sampler_box.currentIndexChanged.connect(self._update_enabled)
        self.interpolate_button.clicked.connect(self.interpolate)
        model_box = stacked_box("2 · Model", self.model_chooser, self.sampling.sampler_form())

        self.t_slider = QSlider(Qt.Orientation.Horizontal)
        self.t_slider.setRange(0, 0)  # set to 0..T with the model; T/2 at first
        self.t_slider.setToolTip("How far both pictures are noised before they are mixed")
        self.t_slider.valueChanged.connect(self._on_t_changed)
        self.t_label = QLabel()
        make_bold(self.t_label)
        hold_size(self.t_label, "t = 00000 of 00000")
        t_row = QHBoxLayout()
        t_row.addWidget(QLabel("t"))
        t_row.addWidget(self.t_slider, 1)
        t_row.addWidget(self.t_label)
        t_note = QLabel(T_EXPLANATION)
        t_note.setWordWrap(True)
        t_note.setStyleSheet(MUTED_TEXT_STYLE)
        self.lambda_spin = QSpinBox()
        self.lambda_spin.setRange(2, 33)
        self.lambda_spin.setValue(9)
        self.lambda_spin.setPrefix("λ values: ")
        self.lambda_spin.setToolTip("Frames from λ = 0 (A) to λ = 1 (B), evenly spaced")
        self.lambda_spin.valueChanged.connect(self._update_enabled)
        self.seed_spin = QSpinBox()
        self.seed_spin.setRange(0, MAX_SEED)
        self.seed_spin.setPrefix("seed ")
        self.seed_spin.setToolTip("One noise draw for both pictures, and one reverse-noise stream for every λ")
        numbers = QHBoxLayout()
        numbers.addWidget(self.lambda_spin, 1)
        numbers.addWidget(self.seed_spin, 1)
        self.sampling.keep("lambdas", self.lambda_spin)
        self.sampling.keep("seed", self.seed_spin)
        run_box = stacked_box("3 · Interpolate at step t", t_row, t_note, numbers, self.sampling.run_layout())

        self.strip = InterpolationStrip("Choose two pictures and a model, then Interpolate: a frame per λ "
                                        "appears here, from A (λ = 0) to B (λ = 1).")
        self.strip.frameClicked.connect(self.show_frame)
        self.strip_caption = QLabel()
        self.strip_caption.setWordWrap(True)
        self.export_strip_button = QPushButton("Export strip…")
        self.export_strip_button.setToolTip("The frames side by side as one PNG, with λ, t and the seed in its text")
        self.export_strip_button.clicked.connect(lambda: self.choose_export_path("strip"))
        self.export_animation_button = QPushButton("Export animation…")
        self.export_animation_button.setToolTip("An animated GIF over λ, from A to B and back")
        self.export_animation_button.clicked.connect(lambda: self.choose_export_path("gif"))
        export_row = QHBoxLayout()
        export_row.addWidget(self.strip_caption, 1)
        export_row.addWidget(self.export_strip_button)
        export_row.addWidget(self.export_animation_button)
        strip_box = stacked_box("The strip · x̄_t = (1 − λ) x_t(A) + λ x_t(B), denoised; click a frame",
                                self.strip, export_row)
        self.timeline = Timeline("Click a frame of the strip to watch\nits mix go from t back to an image.")
        timeline_box = stacked_box("Timeline · the frame's reverse process from t to 0", (self.timeline, 1))
        right = QWidget()
        right_layout = QHBoxLayout(right)
        right_layout.setContentsMargins(0, 0, 0, 0)
        column = stacked_box("", strip_box, (timeline_box, 1))
        column.setFlat(True)
        right_layout.addWidget(column)
        settings_column(self, right, pictures_box, model_box, run_box)

    # --- settings --------------------------------------------------------------------------------------
    def save_settings(self) -> None:
        self.sampling.save_settings()

    def image_folder(self) -> str:
        return str(self.context.settings.value("last_image_dir", "") or Path.home())

    # --- the pictures ----------------------------------------------------------------------------------
    def picture_size(self) -> tuple[int, int]:
        """The size and channels the pictures are decoded at: the model's, else a working size in RGB."""
        if self.model_info is None:
            return WORKING_SIZE, 3
        return self.model_info.unet.image_size, self.model_info.unet.image_channels

    def set_source(self, name: str, source: tuple[str, object]) -> bool:
        """Use ``source`` (("file", path) or ("demo", index)) as picture ``name``; False, with a sentence, if not."""
        size, channels = self.picture_size()
        kind, value = source
        try:
            if kind == "demo":
                picture = make_demo_images(value + 1, size=size)[value]  # RGB: the engine converts as training does
                caption = f"Demo image {value + 1}"
            else:
                decoded, _ = load_image(Path(value), size, channels)
                picture = to_hwc(decoded)
                caption = Path(value).name + (" (the sample picture)" if Path(value) == SAMPLE_PICTURE else "")
        except SkipImage as error:
            self.slots[name].show_error(f"{Path(value).name} cannot be used ({error.reason}).")
            return False
        if kind == "file" and Path(value) != SAMPLE_PICTURE:
            self.context.settings.setValue("last_image_dir", str(Path(value).parent))
        self.sources[name] = source
        self.slots[name].set_picture(picture, caption)
        self._update_enabled()
        return True

    def use_demo_images(self) -> None:
        self.set_source("A", ("demo", 0))
        self.set_source("B", ("demo", 1))

    def handle_drop(self, paths: list[Path]) -> None:
        files = [path for path in paths if path.is_file()]
        if len(files) == 2:
            self.set_source("A", ("file", files[0]))
            self.set_source("B", ("file", files[1]))
        elif len(files) == 1:
            self.set_source("B", ("file", files[0]))

    def dragEnterEvent(self, event) -> None:
        accept_files(event, two_files_at_most)

    def dropEvent(self, event) -> None:
        paths = accept_files(event, any_paths)
        if paths:
            self.handle_drop(paths)

    # --- the model and t -------------------------------------------------------------------------------
    def _on_model_changed(self, _path) -> None:
        """Fit t's range to the model's T (keeping t's place in the process; T/2 at first) and decode again."""
        info = self.model_chooser.current_info()
        old_fraction = self.t_slider.value() / self.t_slider.maximum() if self.t_slider.maximum() else 0.5
        self.model_info = info
        self.sampling.fit_to_model()
        total = info.schedule.num_timesteps if info is not None else 1000
        self.t_slider.blockSignals(True)
        self.t_slider.setRange(0, total)
        self.t_slider.setValue(round(old_fraction * total))
        self.t_slider.blockSignals(False)
        for name, source in list(self.sources.items()):
            self.set_source(name, source)
        self._on_t_changed(self.t_slider.value())

    def current_t(self) -> int:
        return self.t_slider.value()

    def set_t(self, t: int) -> None:
        self.t_slider.setValue(t)

    def _on_t_changed(self, t: int) -> None:
        self.t_label.setText(f"t = {t} of {self.t_slider.maximum()}")
        self._update_enabled()

    def _update_enabled(self) -> None:
        running = self.jobs.is_running()
        ready = all(slot.picture is not None for slot in self.slots.values())
        self.sampling.update_enabled(can_run=self.model_info is not None and ready)
        self.sampling.show_cost(self.lambda_spin.value(), start_t=max(self.current_t() - 1, 0))
        for widget in (self.demo_button, self.t_slider, self.lambda_spin, self.seed_spin,
                       *(slot.open_button for slot in self.slots.values())):
            widget.setEnabled(not running)
        has_result = self.result is not None and not running
        self.export_strip_button.setEnabled(has_result)
        self.export_animation_button.setEnabled(has_result)

    def set_status(self, text: str, error: bool = False) -> None:
        self.jobs.set_status(text, error)

    # --- interpolating ---------------------------------------------------------------------------------
    def request(self) -> InterpolationRequest:
        sampler = self.sampling.sampler()
        return InterpolationRequest(
            model_path=self.model_chooser.current_path(), a=self.slots["A"].picture, b=self.slots["B"].picture,
            t=self.current_t(), steps=self.lambda_spin.value(), seed=self.seed_spin.value(), sampler=sampler,
            sampler_steps=self.sampling.ddpm_steps() if sampler == "ddpm" else self.sampling.steps_spin.value(),
            eta=self.sampling.eta(), variance=self.sampling.variance() if sampler == "ddpm" else None,
            clip=self.model_info.sampling_defaults["clip"] if self.model_info is not None else True,
        )

    def interpolate(self) -> JobRunner | None:
        """Interpolate A and B at the slider's t; returns the job (None if it cannot start)."""
        if self.jobs.is_running():
            return None
        if self.model_info is None or any(slot.picture is None for slot in self.slots.values()):
            self.set_status("Choose a model and two pictures first.", error=True)
            return None
        request = self.request()
        try:
            request.validate(self.model_info.schedule.num_timesteps)
        except UserError as error:
            self.set_status(str(error), error=True)
            return None
        info, t = self.model_info, request.t
        forecast = t > 0 and choose_device("auto").type == "cpu"

        def events():
            if forecast:
                yield interpolation_cost(request, info)  # in the worker: the first count of a network takes a moment
            yield from beside_a_window(run_interpolation(request))

        self.timeline.clear()
        return self.run_job(
            events, name="interpolation", status=f"Interpolating at t = {t}…", progress_format="%v of %m model calls",
            progress_types=(InterpolationProgress,), on_progress=self._on_progress, on_event=self._on_event,
            on_done=self._on_done,
        )

    def stop(self) -> None:
        self.jobs.stop()

    def _on_progress(self, progress: InterpolationProgress) -> None:
        self.jobs.show_progress(progress.done, progress.total)
        self.set_status(f"Interpolating: {progress.done:,} of {progress.total:,} model calls.")

    def _on_event(self, event) -> None:
        if isinstance(event, ExperimentCost):
            self.set_status(event.describe() + (" It takes minutes: Stop ends it." if event.seconds > 60 else ""))
        elif isinstance(event, InterpolationResult):
            self.jobs.finish_progress()
            self.show_result(event)

    def _on_done(self, stopped: bool) -> None:
        if stopped:
            self.set_status("Stopped; the strip shows the last finished run." if self.result is not None else
                            "Stopped.")

    def show_result(self, result: InterpolationResult) -> None:
        self.result = result
        self.strip.set_frames(result.frames, result.lambdas)
        what = ("a pixel blend: no model call at t = 0" if result.t == 0 else
                f"noised to t = {result.t}, mixed, denoised with the same noise for every λ")
        self.strip_caption.setText(f"{len(result.frames)} frames at t = {result.t}, seed {result.metadata['seed']}: "
                                   f"{what}.")
        self.set_status(f"Interpolated at t = {result.t}. Click a frame to follow it on the timeline.")
        self._update_enabled()

    def show_frame(self, index: int) -> None:
        """Open frame ``index`` of the strip on the timeline."""
        sampling = None if self.result is None else self.result.sampling
        if sampling is None or index not in sampling.trajectory.image_indices:
            self.set_status("At t = 0 the frames are pixel blends: there is no reverse process to follow.")
            return
        self.timeline.set_trajectory(sampling.trajectory, index)
        self.strip.select(index)
        self.timeline.setFocus()
        self.set_status(f"On the timeline: λ = {self.result.lambdas[index]:.2f}, from t = {self.result.t} to 0.")

    # --- exporting -------------------------------------------------------------------------------------
    def choose_export_path(self, kind: str) -> None:
        if self.result is None:
            return
        folder = Path(self.context.settings.value("last_save_dir", str(Path.home())))
        name = f"interpolation_t{self.result.t:04d}_seed{self.result.metadata['seed']}"
        if kind == "strip":
            path, _ = QFileDialog.getSaveFileName(self, "Export the strip", str(folder / f"{name}.png"),
                                                  "PNG image (*.png)")
        else:
            path, _ = QFileDialog.getSaveFileName(self, "Export the animation over λ", str(folder / f"{name}.gif"),
                                                  "Animated GIF (*.gif)")
        if path:
            self.context.settings.setValue("last_save_dir", str(Path(path).parent))
            self.export(Path(path), kind)

    def export(self, path: Path | str, kind: str = "strip") -> Path | None:
        """The strip as a PNG ("strip") or the frames as a GIF over λ ("gif"); returns the file written."""
        if self.result is None:
            return None
        scale = max(1, EXPORT_SIZE // self.result.frames[0].shape[0])
        return self.export_file(lambda: export_interpolation(self.result, path, kind, scale))

    # --- keys ------------------------------------------------------------------------------------------
    def keyPressEvent(self, event: QKeyEvent) -> None:
        """Space and arrows that no child used drive the timeline."""
        if not self.timeline.handle_key(event):
            super().keyPressEvent(event)
