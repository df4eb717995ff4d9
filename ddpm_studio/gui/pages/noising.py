"""The Noising page: drop any picture, scrub t to watch the forward process noise it, and let a model denoise it back.

x_t comes from ``core.noising.ForwardProcessView`` (the closed form with one fixed noise draw),
so scrubbing costs one multiply-add per pixel. "Denoise from t" runs the reverse process of
the chosen model from that very x_t in a job thread and plays it on the shared timeline.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import QSize, Qt
from PySide6.QtGui import QKeyEvent, QPalette
from PySide6.QtWidgets import (
    QFileDialog,
    QGraphicsItem,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QSlider,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from ddpm_studio.core.data.folders import SkipImage, load_image
from ddpm_studio.core.diffusion.noising import ForwardProcessView, ScheduleCurves
from ddpm_studio.core.diffusion.process import SampleStep
from ddpm_studio.core.diffusion.schedule import NoiseSchedule
from ddpm_studio.core.model.store import ModelInfo
from ddpm_studio.core.sampling.imaging import to_hwc, to_uint8
from ddpm_studio.core.sampling.job import SamplingRequest, SamplingResult
from ddpm_studio.gui.context import StudioContext
from ddpm_studio.gui.drops import accept_files, any_paths, one_file
from ddpm_studio.gui.jobs.workers import JobRunner
from ddpm_studio.gui.pages.page import Page
from ddpm_studio.gui.session_memory import remember_picture, reopen_picture
from ddpm_studio.gui.style import ERROR_TEXT_STYLE, MUTED_TEXT_STYLE, WARNING_TEXT_STYLE, hold_size, make_bold
from ddpm_studio.gui.widgets.image_view import ImageView
from ddpm_studio.gui.widgets.sampling_panel import MAX_SEED, SamplingControls, settings_column
from ddpm_studio.gui.widgets.stacked_box import stacked_box
from ddpm_studio.gui.widgets.timeline import Timeline
from ddpm_studio.paths import SAMPLE_PICTURE

MINIMUM_PLOT_HEIGHT = 120  # each schedule plot
WORKING_SIZE = 128  # the large view's resolution, and the only one when no model is chosen
DEFAULT_SCHEDULE_STEPS = 1000  # without a model: the paper's linear schedule
IMAGE_FILTER = "Images (*.png *.jpg *.jpeg *.bmp *.gif *.webp *.tif *.tiff)"


def live_pictures(event: object) -> tuple[np.ndarray, np.ndarray, int] | None:
    """x_t, x0_hat and the paper's t of a denoising step, as pictures (worker thread, only for events shown)."""
    if not isinstance(event, SampleStep):
        return None
    return to_hwc(to_uint8(event.x_t)[0]), to_hwc(to_uint8(event.x0_hat)[0]), event.t + 1


class SchedulePlot(pg.PlotWidget):
    """A small plot of one schedule quantity over t, with a draggable cursor at the current t."""

    def __init__(self, y_label: str, parent: QWidget | None = None):
        palette = QWidget().palette()
        background = palette.color(QPalette.ColorRole.Base)
        foreground = palette.color(QPalette.ColorRole.Text)
        super().__init__(parent, background=background)
        self.setMinimumHeight(MINIMUM_PLOT_HEIGHT)
        self.setMenuEnabled(False)
        self.setMouseEnabled(x=False, y=False)
        self.hideButtons()
        # No grid: the axes draw it, so each move of the cursor would repaint both axes as well.
        for side in ("left", "bottom"):
            axis = self.getAxis(side)
            axis.setPen(foreground)
            axis.setTextPen(foreground)
        self.setLabel("left", y_label)
        self.setLabel("bottom", "t")
        self.curve = self.plot(pen=pg.mkPen((33, 150, 243), width=2))
        # The axes and the curve only change with the schedule: kept as pixmaps, a move of the cursor
        # that touches them copies pixels instead of drawing them again.
        for item in (self.getAxis("left"), self.getAxis("bottom"), self.curve.curve):
            item.setCacheMode(QGraphicsItem.CacheMode.DeviceCoordinateCache)
        self.cursor = pg.InfiniteLine(angle=90, movable=True, pen=pg.mkPen((229, 57, 53), width=2),
                                      hoverPen=pg.mkPen((229, 57, 53), width=4))
        self.addItem(self.cursor)

    def sizeHint(self) -> QSize:
        # Small by preference: the settings column scrolls at its preferred height, and grows the plots into
        # whatever height the window has beyond it.
        return QSize(300, MINIMUM_PLOT_HEIGHT)

    def set_curve(self, timesteps: np.ndarray, values: np.ndarray) -> None:
        self.curve.setData(timesteps, values)
        self.setXRange(0, float(timesteps[-1]), padding=0.02)
        self.cursor.setBounds((0, float(timesteps[-1])))


class NoisingPage(Page):
    def __init__(self, context: StudioContext, parent: QWidget | None = None):
        super().__init__(context, parent, job_name="denoising")
        self.source_path: Path | None = None
        self.working_picture: np.ndarray | None = None  # uint8 (C, 128, 128)
        self.model_picture: np.ndarray | None = None  # uint8 (C, S, S) at the model's resolution
        self.working_view: ForwardProcessView | None = None
        self.model_view: ForwardProcessView | None = None
        self.model_info: ModelInfo | None = None
        self.schedule = NoiseSchedule.linear(DEFAULT_SCHEDULE_STEPS)
        self.result: SamplingResult | None = None
        self._can_denoise_at_t = False  # t > 0 when the enabled state was last set
        self._offered_sample = False
        self._build()
        self.setAcceptDrops(True)
        self._restore_settings()
        self._on_model_changed(self.model_chooser.current_path())

    # --- layout ----------------------------------------------------------------------------------------
    def _build(self) -> None:
        self.open_button = QPushButton("Open image…")
        self.open_button.clicked.connect(self.choose_image)
        self.source_label = QLabel("Or drop any picture on this page.")
        self.source_label.setWordWrap(True)
        self.image_message = QLabel()
        self.image_message.setWordWrap(True)
        self.image_message.setStyleSheet(ERROR_TEXT_STYLE)
        self.image_message.hide()
        picture_box = stacked_box("1 · Picture", self.open_button, self.source_label, self.image_message)

        self.alpha_bar_plot = SchedulePlot("ᾱ_t")
        self.log_snr_plot = SchedulePlot("log SNR")
        self.alpha_bar_plot.cursor.sigPositionChanged.connect(self._on_cursor_moved)
        self.log_snr_plot.cursor.sigPositionChanged.connect(self._on_cursor_moved)
        self.alpha_bar_label = QLabel()
        self.log_snr_label = QLabel()
        hold_size(self.alpha_bar_label, "ᾱ_t, the share of x_0's variance left: 0.0000")
        hold_size(self.log_snr_label, "log SNR = log(ᾱ_t / (1 − ᾱ_t)): −00.00")
        self.schedule_label = QLabel()
        self.schedule_label.setWordWrap(True)
        schedule_box = stacked_box("Schedule", self.schedule_label, self.alpha_bar_label, (self.alpha_bar_plot, 1),
                                   self.log_snr_label, (self.log_snr_plot, 1))

        self.sampling = SamplingControls(self.context, self.jobs, "noising", "Denoise from t", with_variance=True,
                                         with_classes=True, steps_tooltip="DDIM's number of steps from t down to 0")
        # The widgets by name, as the page shows them.
        self.model_chooser, self.sampler_box = self.sampling.model_chooser, self.sampling.sampler_box
        self.steps_spin, self.denoise_button = self.sampling.steps_spin, self.sampling.run_button
        self.variance_box = self.sampling.variance_box
        self.stop_button, self.progress_bar = self.jobs.stop_button, self.jobs.progress_bar
        self.status_label = self.jobs.status_label
        self.status_label.setText("Choose a model, set t, then denoise: the model runs the reverse process from "
                                  "this x_t.")
        self.model_chooser.modelChanged.connect(self._on_model_changed)
        self.sampler_box.currentIndexChanged.connect(self._update_enabled)
        self.denoise_button.clicked.connect(self.denoise)
        denoise_box = stacked_box("3 · Denoise with a model", self.model_chooser, self.sampling.sampler_form(),
                                  self.sampling.run_layout())

        # The forward process: x_t at the working size and at the model's resolution, and the t slider.
        self.working_image_view = ImageView("Open or drop a picture.", f"x_t at {WORKING_SIZE}×{WORKING_SIZE}")
        self.model_image_view = ImageView("Choose a model (step 3) to see x_t at the resolution it works at.",
                                          "x_t at the model's resolution")
        views = QHBoxLayout()
        views.addWidget(self.working_image_view, 1)
        views.addWidget(self.model_image_view, 1)
        self.t_slider = QSlider(Qt.Orientation.Horizontal)
        self.t_slider.setRange(0, 0)
        self.t_slider.setToolTip("t = 0 is the picture; t = T is (almost) pure noise")
        self.t_slider.valueChanged.connect(self._on_t_changed)
        self.t_label = QLabel()
        make_bold(self.t_label)
        hold_size(self.t_label, "t = 00000 of 00000 · √ᾱ_t = 0.000")
        self.seed_spin = QSpinBox()
        self.seed_spin.setRange(0, MAX_SEED)
        self.seed_spin.setPrefix("noise seed ")
        self.seed_spin.setToolTip("The noise ε is drawn once from this seed, so every t uses the same ε")
        self.seed_spin.valueChanged.connect(self._rebuild_views)
        slider_row = QHBoxLayout()
        slider_row.addWidget(QLabel("t"))
        slider_row.addWidget(self.t_slider, 1)
        slider_row.addWidget(self.t_label)
        slider_row.addWidget(self.seed_spin)
        forward_box = stacked_box("2 · Noise it: x_t = √ᾱ_t · x_0 + √(1 − ᾱ_t) · ε, drag t", (views, 1), slider_row)

        self.timeline = Timeline("Denoise from t (step 3) to watch the model\ntake this x_t back to an image.")
        self.reverse_caption = QLabel()  # whose reverse process is shown, and whether it is the chosen model's
        self.reverse_caption.setWordWrap(True)
        self.reverse_caption.hide()
        reverse_box = stacked_box("The model's reverse process, from t down to 0", self.reverse_caption,
                                  (self.timeline, 1))

        right = QVBoxLayout()
        right.addWidget(forward_box, 1)
        right.addWidget(reverse_box, 1)
        settings_column(self, right, picture_box, (schedule_box, 1), denoise_box)

    # --- settings --------------------------------------------------------------------------------------
    def _restore_settings(self) -> None:
        settings = self.context.settings
        self.sampling.restore_settings()
        self.seed_spin.blockSignals(True)
        self.seed_spin.setValue(int(settings.value("noising/seed", 0)))
        self.seed_spin.blockSignals(False)

    def save_settings(self) -> None:
        self.sampling.save_settings()
        self.context.settings.setValue("noising/seed", self.seed_spin.value())
        remember_picture(self.context.settings, self.source_path)

    # --- the picture -------------------------------------------------------------------------------------
    def showEvent(self, event) -> None:
        super().showEvent(event)
        if not self._offered_sample and self.source_path is None:
            self._offered_sample = True
            # The user's last picture, else the sample picture.
            reopen_picture(self.context.settings, self.load_image, self.source_label.setText)

    def image_folder(self) -> str:
        """Where Open starts: the folder of the picture shown (opened, dropped or reopened at start), else the
        folder of the last one opened, else the home folder."""
        if self.source_path is not None and self.source_path != SAMPLE_PICTURE:
            return str(self.source_path.parent)
        return str(self.context.settings.value("last_image_dir", "") or Path.home())

    def choose_image(self) -> None:
        file, _ = QFileDialog.getOpenFileName(self, "Choose a picture to noise", self.image_folder(), IMAGE_FILTER)
        if file:
            self.context.settings.setValue("last_image_dir", str(Path(file).parent))
            self.load_image(Path(file))

    def handle_drop(self, paths: list[Path]) -> None:
        if len(paths) != 1 or not paths[0].is_file():
            self.show_image_error("Drop one picture file here; folders of images belong on the Dataset page.")
            return
        self.load_image(paths[0])

    def dragEnterEvent(self, event) -> None:
        # One file is this page's to explain or show; folders go on to the window, which opens models and datasets.
        accept_files(event, one_file)

    def dropEvent(self, event) -> None:
        paths = accept_files(event, any_paths)  # handle_drop explains what else was dropped
        if paths:
            self.handle_drop(paths)

    def load_image(self, path: Path | str) -> bool:
        """Decode a picture at the working size (and the model's resolution); False, with a sentence, if unusable."""
        path = Path(path)
        self._offered_sample = True
        try:
            pictures = self._decode(path)
        except SkipImage as error:
            self.show_image_error(f"{path.name} cannot be noised ({error.reason}).")
            return False
        self.source_path = path
        self.working_picture, self.model_picture = pictures
        self.image_message.hide()
        self.source_label.setText(f"{path.name}" + (" (the sample picture)" if path == SAMPLE_PICTURE else "")
                                  + ". Open or drop another to change it.")
        self.source_label.setToolTip(str(path))
        self._rebuild_views()
        return True

    def _decode(self, path: Path) -> tuple[np.ndarray, np.ndarray | None]:
        channels = self.model_info.unet.image_channels if self.model_info else 3
        working, _ = load_image(path, WORKING_SIZE, channels)
        model = None
        if self.model_info is not None:
            model, _ = load_image(path, self.model_info.unet.image_size, channels)
        return working, model

    def show_image_error(self, sentence: str) -> None:
        self.image_message.setText(sentence)
        self.image_message.show()

    # --- the forward process -----------------------------------------------------------------------------
    def _on_model_changed(self, _path) -> None:
        info = self.model_chooser.current_info()
        # Keep t at the same point of the process when T changes; start a third of the way in.
        old_fraction = self.t_slider.value() / self.t_slider.maximum() if self.t_slider.maximum() else 1 / 3
        self.model_info = info
        if info is None:
            self.schedule = NoiseSchedule.linear(DEFAULT_SCHEDULE_STEPS)
        else:
            self.schedule = NoiseSchedule.from_config(info.schedule)
        total = self.schedule.num_timesteps
        config = self.schedule.config
        self.schedule_label.setText(
            f"{config.kind.capitalize()} schedule, T = {total}" + (f", from {info.name}." if info else
                                                                  " (the paper's; choose a model for its own).")
        )
        self.sampling.set_max_steps(total)
        if self.source_path is not None:
            try:
                self.working_picture, self.model_picture = self._decode(self.source_path)
            except SkipImage as error:
                self.show_image_error(f"{self.source_path.name} cannot be noised ({error.reason}).")
        self.t_slider.blockSignals(True)
        self.t_slider.setRange(0, total)
        self.t_slider.setValue(round(old_fraction * total))
        self.t_slider.blockSignals(False)
        self._rebuild_views()
        self._update_enabled()
        self._show_reverse_caption()

    def _rebuild_views(self) -> None:
        """New fixed noise and closed forms for the current picture, schedule and seed; then redraw."""
        seed = self.seed_spin.value()
        self.working_view = None if self.working_picture is None else ForwardProcessView(
            self.working_picture, self.schedule, seed)
        self.model_view = None if self.model_picture is None else ForwardProcessView(
            self.model_picture, self.schedule, seed)
        curves = self.curves = ScheduleCurves.of(self.schedule)
        self.alpha_bar_plot.set_curve(curves.timesteps, curves.alpha_bar)
        self.log_snr_plot.set_curve(curves.snr_timesteps, curves.log_snr)
        self.model_image_view.caption = (f"x_t at {self.model_info.unet.image_size}×{self.model_info.unet.image_size}, "
                                         "what the model sees" if self.model_info else "x_t at the model's resolution")
        if self.model_view is None:
            self.model_image_view.set_image(None)
        self._on_t_changed(self.t_slider.value())
        self._update_enabled()  # a picture (or none) at the model's resolution decides whether Denoise can run

    def current_t(self) -> int:
        return self.t_slider.value()

    def set_t(self, t: int) -> None:
        self.t_slider.setValue(t)

    def _on_t_changed(self, t: int) -> None:
        if self.working_view is not None:
            self.working_image_view.set_image(self.working_view.x_t(t))
        if self.model_view is not None:
            self.model_image_view.set_image(self.model_view.x_t(t))
        curves = self.curves
        alpha_bar = curves.alpha_bar[t]
        self.t_label.setText(f"t = {t} of {self.schedule.num_timesteps} · √ᾱ_t = {np.sqrt(alpha_bar):.3f}")
        self.alpha_bar_label.setText(f"ᾱ_t, the share of x_0's variance left: {alpha_bar:.4f}")
        self.log_snr_label.setText("log SNR = log(ᾱ_t / (1 − ᾱ_t)): " +
                                   ("∞ at t = 0" if t == 0 else f"{curves.log_snr[t - 1]:.2f}"))
        for plot in (self.alpha_bar_plot, self.log_snr_plot):
            plot.cursor.blockSignals(True)
            plot.cursor.setValue(t)
            plot.cursor.blockSignals(False)
        if (t > 0) != self._can_denoise_at_t:  # only t = 0 changes what can run
            self._update_enabled()
        else:
            self.sampling.show_cost(1, start_t=max(t - 1, 0))

    def _on_cursor_moved(self, line) -> None:
        self.t_slider.setValue(round(line.value()))

    # --- denoising -----------------------------------------------------------------------------------------
    def _update_enabled(self) -> None:
        running = self.jobs.is_running()
        self._can_denoise_at_t = self.current_t() > 0
        self.sampling.update_enabled(can_run=self.model_view is not None and self._can_denoise_at_t)
        self.sampling.show_cost(1, start_t=max(self.current_t() - 1, 0))
        for widget in (self.open_button, self.seed_spin):
            widget.setEnabled(not running)

    def denoise(self) -> JobRunner | None:
        """Run the chosen model's reverse process from the x_t shown; returns the job (None if it cannot start)."""
        if self.jobs.is_running():
            return None
        path, t = self.model_chooser.current_path(), self.current_t()
        if path is None or self.model_view is None:
            self.set_status("Choose a model and a picture first.", error=True)
            return None
        if t < 1:
            self.set_status("At t = 0 there is no noise to remove: move t to the right first.", error=True)
            return None
        request = SamplingRequest(
            model_path=path, num_images=1, seed=self.seed_spin.value(), sampler=self.sampling.sampler(),
            steps=min(self.steps_spin.value(), t), eta=self.sampling.eta(), variance=self.sampling.variance(),
            x_start=self.model_view.x_t_tensor(t), start_t=t - 1,
        )
        self.result = None
        self.timeline.clear()
        self._show_reverse_caption()
        return self.sampling.run(request, "denoising", f"Denoising from t = {t} with {path.name}…",
                                 image_from=live_pictures, on_image=self._on_live_pictures, on_result=self._on_result,
                                 on_done=self._on_done)

    def stop(self) -> None:
        self.jobs.stop()

    def set_status(self, text: str, error: bool = False) -> None:
        self.jobs.set_status(text, error)

    def _on_live_pictures(self, pictures) -> None:
        x_t, x0_hat, t = pictures
        self.timeline.show_pictures(x_t, x0_hat, f"t = {t}")

    def _on_result(self, result: SamplingResult) -> None:
        self.result = result
        start = result.trajectory.timesteps[0]
        self.timeline.set_trajectory(result.trajectory, 0, frame=0)
        self._show_reverse_caption()
        self.set_status(f"Denoised from t = {start} ({result.request.describe()}). Press space or Play to watch.")
        self.timeline.setFocus()

    def _on_done(self, stopped: bool) -> None:
        if stopped:
            self.set_status("Stopped.")

    def _show_reverse_caption(self) -> None:
        """Say whose reverse process the timeline shows; in warning colour when it is not the chosen model's."""
        if self.result is None:
            self.reverse_caption.hide()
            return
        request = self.result.request
        shown = f"{request.model_path.name}'s, from t = {self.result.trajectory.timesteps[0]} ({request.describe()})"
        chosen = self.model_chooser.current_path()
        if chosen is not None and Path(chosen).resolve() == Path(request.model_path).resolve():
            self.reverse_caption.setText(f"Shown: {shown}.")
            self.reverse_caption.setStyleSheet(MUTED_TEXT_STYLE)
        else:
            instead = (f"; Denoise from t runs {chosen.name}'s" if chosen is not None else "")
            self.reverse_caption.setText(f"Shown: {shown}, not the chosen model's{instead}.")
            self.reverse_caption.setStyleSheet(WARNING_TEXT_STYLE)
        self.reverse_caption.show()

    def keyPressEvent(self, event: QKeyEvent) -> None:
        """Space and arrows that no child used drive the timeline."""
        if not self.timeline.handle_key(event):
            super().keyPressEvent(event)
