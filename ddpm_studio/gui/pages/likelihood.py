"""The Likelihood page: the bound on -log p of held-out images, in bits/dim, and where the model spends its bits.

It runs ``core.likelihood`` in the page's job (progress, Stop) and plots the per-timestep terms
L_{t-1} against t as they arrive: the paper's rate picture (Ho et al. 2020, section 4.3). The
result is appended to the model's ``model.json`` in the worker, and the library is refreshed so
that the model's tooltip, and the Evaluate page's history, show it.

The same pass gives the rate-distortion curve along the reverse chain (section 4.3, Fig. 5), drawn in
the second tab from the same progress events, so a stopped job keeps its partial curves. Its cursor
shows x_t and x0_hat of one held-out image; that model call runs in a second, quiet job (one call of
the ddpm-cifar10 preset takes about 0.3 s on one CPU thread, too slow for the GUI thread while dragging).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyqtgraph as pg
from PySide6.QtWidgets import (
    QComboBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QSpinBox,
    QTabWidget,
    QVBoxLayout,
    QWidget,
)

from ddpm_studio.core.data.folders import ScanProgress, ScanResult
from ddpm_studio.core.errors import UserError
from ddpm_studio.core.evaluation.likelihood import (
    LikelihoodProgress,
    LikelihoodRequest,
    LikelihoodResult,
    choose_images,
    evaluate_likelihood_of_folder,
)
from ddpm_studio.core.evaluation.rate_distortion import (
    NULL_LABEL_NOTE,
    check_held_out_images,
    rate_distortion_curve,
    rate_distortion_of,
)
from ddpm_studio.core.evaluation.receiver import ReceiverView, prior_bpd, receiver_job
from ddpm_studio.core.model import store as model_store
from ddpm_studio.core.model.store import LoadedModel, load_model
from ddpm_studio.core.sampling.imaging import to_hwc
from ddpm_studio.core.system.devices import beside_a_window, choose_device
from ddpm_studio.gui.context import StudioContext
from ddpm_studio.gui.formatting import counted
from ddpm_studio.gui.jobs.controller import JobController
from ddpm_studio.gui.pages.page import Page
from ddpm_studio.gui.style import ACTION_BUTTON_HEIGHT, MUTED_TEXT_STYLE, make_bold
from ddpm_studio.gui.widgets.loss_plot import show_plot_frame
from ddpm_studio.gui.widgets.model_chooser import ModelChooser
from ddpm_studio.gui.widgets.rate_distortion_plots import RateDistortionPanel
from ddpm_studio.gui.widgets.sampling_panel import settings_column

TIMESTEP_CHOICES = (("Every timestep (exact sum)", "all"), ("K random t per image (unbiased)", "sampled"))
VARIANCE_CHOICES = (("The model's own", None), ("Fixed large (β_t)", "fixed_large"),
                    ("Fixed small (β̃_t)", "fixed_small"))


@dataclass
class NoRateDistortion:
    """The held-out images are not of the model's resolution or channel count: the bound is still measured (on
    the images as training would decode them), the rate-distortion curve is not (``why``, one sentence)."""

    why: str


def evaluation_job(model_path: Path, data: Path, request: LikelihoodRequest):
    """The evaluation's events; first the loaded model (the cursor's view uses it too). The bound, and the
    rate-distortion curve of the same pass, are recorded in the model folder before the result is passed on,
    as ``evaluate --nll --rate-distortion`` records them."""
    model = load_model(model_path, choose_device(request.device))
    yield model
    curve_possible = True
    for event in evaluate_likelihood_of_folder(model_path, [data], request, model):
        if isinstance(event, ScanResult) and len(event.images):
            try:
                check_held_out_images(event, model.image_shape)
            except UserError as error:
                curve_possible = False
                yield NoRateDistortion(str(error))
        if isinstance(event, LikelihoodResult):
            where = str(data.resolve())
            model_store.append_evaluation(model_path, event.record(where))
            curve = rate_distortion_of(event) if curve_possible else None
            if curve is not None:
                model_store.append_evaluation(model_path, curve.record(
                    where, event.timesteps, model.info.step, null_label=bool(model.info.unet.num_classes)))
        yield event


SUPERSCRIPTS = str.maketrans("-0123456789", "⁻⁰¹²³⁴⁵⁶⁷⁸⁹")


def power_of_ten(exponent: float) -> str:
    """A log axis' tick as a power of ten, "10⁻⁵", or "2·10⁻⁵" between decades: one notation for every tick."""
    decade = math.floor(exponent + 1e-9)
    mantissa = round(10 ** (exponent - decade), 6)
    if mantissa >= 10:
        decade, mantissa = decade + 1, 1.0
    power = "10" + str(decade).translate(SUPERSCRIPTS)
    return power if mantissa == 1 else f"{mantissa:g}·{power}"


class PowerOfTenAxis(pg.AxisItem):
    """A log axis labelled 10⁻⁴, 10⁻⁵, … throughout (pyqtgraph's own writes 0.0001 beside 10⁻⁵)."""

    def logTickStrings(self, values, scale, spacing):  # noqa: N802 (pyqtgraph's name)
        return [power_of_ten(value + math.log10(scale)) for value in values]


class RatePlot(pg.PlotWidget):
    """L_{t-1} in bits/dim against t on a log axis; L_0 at t = 1 marked apart."""

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent, background="w", axisItems={"left": PowerOfTenAxis("left")})
        self.setLogMode(x=False, y=True)
        self.showGrid(x=True, y=True, alpha=0.25)
        self.setLabel("bottom", "t")
        self.setLabel("left", "bits/dim")
        self.setTitle("Per-timestep terms of the bound: L_0 at t = 1, L_(t-1) above it", color="#333", size="10pt")
        self.terms = self.plot([], [], pen=pg.mkPen("#1f5fa8", width=2), connect="finite")
        self.samples = self.plot([], [], pen=None, symbol="o", symbolSize=5, symbolBrush="#1f5fa8", symbolPen=None)
        self.decoder = self.plot([], [], pen=None, symbol="s", symbolSize=9, symbolBrush="#c0392b", symbolPen=None)
        self.legend = self.addLegend(offset=(-10, 10))
        self.empty_text = pg.TextItem("The terms appear here, t by t, as the evaluation runs.", color=(120, 120, 120),
                                      anchor=(0.5, 0.5))
        self.addItem(self.empty_text, ignoreBounds=True)
        self.empty_text.setPos(0.5, 0.5)  # the middle of the empty view
        self._show_empty(True)

    def _show_empty(self, empty: bool) -> None:
        self.empty_text.setVisible(empty)
        show_plot_frame(self.getPlotItem(), not empty)

    def is_empty(self) -> bool:
        return self.empty_text.isVisible()

    def show_terms(self, per_timestep_bpd: np.ndarray, every_timestep: bool) -> None:
        t = np.arange(1, len(per_timestep_bpd) + 1, dtype=np.float64)
        values = np.where(per_timestep_bpd > 0, per_timestep_bpd, np.nan)  # a log axis shows only positive terms
        kl = values.copy()
        kl[0] = np.nan
        # every term: a line; a random sample of t: points, as each t holds only a few draws
        self.terms.setData(t, kl if every_timestep else np.full_like(kl, np.nan))
        finite = np.isfinite(kl)
        self.samples.setData(t[finite], kl[finite]) if not every_timestep else self.samples.setData([], [])
        self.decoder.setData(t[:1], values[:1]) if np.isfinite(values[0]) else self.decoder.setData([], [])
        self._show_legend(every_timestep)
        self._show_empty(False)

    def _show_legend(self, every_timestep: bool) -> None:
        """One entry for each kind of mark drawn: the line (or points) of L_(t-1), and L_0."""
        self.legend.clear()
        if every_timestep:
            self.legend.addItem(self.terms, "L_(t-1), every t (KL terms)")
        else:
            self.legend.addItem(self.samples, "L_(t-1), sampled t (KL terms)")
        self.legend.addItem(self.decoder, "L_0 (decoder)")

    def clear_terms(self) -> None:
        for item in (self.terms, self.samples, self.decoder):
            item.setData([], [])
        self._show_empty(True)


class LikelihoodPage(Page):
    """Choose a model and a folder of held-out images, then Evaluate: bits/dim with its error, split and plot."""

    def __init__(self, context: StudioContext, parent: QWidget | None = None):
        super().__init__(context, parent, job_name="likelihood")
        self.result: LikelihoodResult | None = None
        self._every_timestep = True
        # the cursor's x_t and x0_hat: one model call at a time, the newest step asked for next
        self.view_jobs = JobController(self, "rate-distortion view", with_controls=False)
        self._view_model: LoadedModel | None = None
        self._held_out = None  # the image the cursor shows, uint8 (C, H, W), from the scan
        self._evaluated = None  # the images the pass evaluates
        self._first_batch: tuple[float, int] | None = None  # L_T (bits/dim) and size of the pass's first batch
        self._no_curve: str | None = None  # why this pass draws no rate-distortion curve
        self._pending_step: int | None = None
        self.receiver: ReceiverView | None = None
        self._build()
        self._restore_settings()
        self._update_enabled()

    # --- layout ----------------------------------------------------------------------------------------
    def _build(self) -> None:
        self.model_chooser = ModelChooser(self.context.library, self.context.settings)
        self.model_chooser.modelChanged.connect(self._on_model_changed)
        model_box = QGroupBox("1 · Model")
        QVBoxLayout(model_box).addWidget(self.model_chooser)

        self.data_edit = QLineEdit()
        self.data_edit.setPlaceholderText("A folder of held-out images (or drop one here)")
        self.data_edit.textChanged.connect(self._update_enabled)
        self.data_button = QPushButton("Choose…")
        self.data_button.clicked.connect(self.choose_data_folder)
        data_row = QHBoxLayout()
        data_row.addWidget(self.data_edit, 1)
        data_row.addWidget(self.data_button)
        data_box = QGroupBox("2 · Held-out images")
        data_box.setLayout(data_row)

        self.count_spin = QSpinBox()
        self.count_spin.setRange(1, 1_000_000)
        self.count_spin.setValue(64)
        self.count_spin.setToolTip("Images picked at random from the folder (seed 0); the error shrinks as 1/√N")
        self.timesteps_combo = QComboBox()
        for label, name in TIMESTEP_CHOICES:
            self.timesteps_combo.addItem(label, name)
        self.timesteps_combo.setToolTip("All T terms per image is exact but costs T model calls per image; K random "
                                        "timesteps give an unbiased estimate (L_0 and L_T always exact)")
        self.timesteps_combo.currentIndexChanged.connect(self._update_enabled)
        self.k_spin = QSpinBox()
        self.k_spin.setRange(1, 100_000)
        self.k_spin.setValue(50)
        self.variance_combo = QComboBox()
        for label, name in VARIANCE_CHOICES:
            self.variance_combo.addItem(label, name)
        self.variance_combo.setToolTip("σ_t² of the reverse steps: a learned model's own, or β_t for the others")
        settings_box = QGroupBox("3 · Negative log-likelihood bound")
        form = QFormLayout(settings_box)
        form.addRow("Images", self.count_spin)
        form.addRow("Terms", self.timesteps_combo)
        form.addRow("K", self.k_spin)
        form.addRow("Variance", self.variance_combo)

        self.evaluate_button = QPushButton("Evaluate")
        self.evaluate_button.setMinimumHeight(ACTION_BUTTON_HEIGHT)
        make_bold(self.evaluate_button)
        self.evaluate_button.clicked.connect(self.evaluate)
        buttons = QHBoxLayout()
        buttons.addWidget(self.evaluate_button, 2)
        buttons.addWidget(self.jobs.stop_button, 1)
        self.jobs.idle_format = "No evaluation running"
        self.jobs.reset_progress()

        self.result_label = QLabel("Choose a model and a folder of images it did not train on, then Evaluate.")
        self.result_label.setWordWrap(True)
        self.history_label = QLabel()
        self.history_label.setWordWrap(True)
        self.history_label.setStyleSheet(MUTED_TEXT_STYLE)
        self.plot = RatePlot()
        self.rate_distortion = RateDistortionPanel()
        self.rate_distortion.stepChanged.connect(self._on_step)
        self.plot_tabs = QTabWidget()
        self.plot_tabs.setDocumentMode(True)
        self.plot_tabs.addTab(self.plot, "Terms per timestep")
        self.plot_tabs.addTab(self.rate_distortion, "Rate–distortion (Fig. 5)")
        right = QVBoxLayout()
        right.addWidget(self.result_label)
        right.addWidget(self.plot_tabs, 1)
        right.addWidget(self.history_label)

        column = settings_column(self, right)
        for box in (model_box, data_box, settings_box):
            column.addWidget(box)
        column.addLayout(buttons)
        column.addWidget(self.jobs.progress_bar)
        column.addWidget(self.jobs.status_box)
        column.addStretch(1)

    # --- settings ----------------------------------------------------------------------------------------
    def _restore_settings(self) -> None:
        settings = self.context.settings
        self.data_edit.setText(str(settings.value("likelihood/data", "")))
        self.count_spin.setValue(int(settings.value("likelihood/count", 64)))
        terms = settings.value("likelihood/terms", "all")
        self.timesteps_combo.setCurrentIndex(max(0, self.timesteps_combo.findData(terms)))
        self.k_spin.setValue(int(settings.value("likelihood/k", 50)))
        model = settings.value("likelihood/model", "")
        if model and Path(model).is_dir():
            self.model_chooser.picker.select(model)
        self._on_model_changed(None)

    def save_settings(self) -> None:
        settings = self.context.settings
        settings.setValue("likelihood/data", self.data_edit.text())
        settings.setValue("likelihood/count", self.count_spin.value())
        settings.setValue("likelihood/terms", self.timesteps_combo.currentData())
        settings.setValue("likelihood/k", self.k_spin.value())
        path = self.model_chooser.current_path()
        settings.setValue("likelihood/model", str(path) if path else "")

    # --- choosing ----------------------------------------------------------------------------------------
    def choose_data_folder(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Folder of held-out images", self.data_edit.text())
        if folder:
            self.data_edit.setText(folder)

    def handle_drop(self, paths: list[Path]) -> None:
        """A model folder chooses the model; any other folder is the held-out data."""
        for path in paths:
            if (path / model_store.CONFIG_FILE).is_file():
                self.model_chooser.select(path)
            elif path.is_dir():
                self.data_edit.setText(str(path))

    def _on_model_changed(self, _path) -> None:
        info = self.model_chooser.current_info()
        if info is not None:
            self.k_spin.setMaximum(max(1, info.schedule.num_timesteps - 1))
            records = [model_store.describe_evaluation(r) for r in model_store.evaluations(info)[-5:]]
            self.history_label.setText("Recorded: " + "\n".join(records) if records else "No evaluation recorded yet.")
        conditional = info is not None and info.unet.num_classes > 0
        notes = [f"No rate-distortion curve: {self._no_curve} The bound is still measured."] if self._no_curve else []
        if conditional:
            notes.append(f"Note: {NULL_LABEL_NOTE}; so is the rate-distortion curve.")
        self.rate_distortion.set_note(" ".join(notes))
        self._update_enabled()

    def request(self) -> LikelihoodRequest:
        sampled = self.timesteps_combo.currentData() == "sampled"
        return LikelihoodRequest(num_images=self.count_spin.value(), timesteps=self.k_spin.value() if sampled else None,
                                 variance=self.variance_combo.currentData())

    def _update_enabled(self) -> None:
        running = self.jobs.is_running()
        for widget in (self.model_chooser, self.data_edit, self.data_button, self.count_spin, self.timesteps_combo,
                       self.variance_combo):
            widget.setEnabled(not running)
        self.k_spin.setEnabled(not running and self.timesteps_combo.currentData() == "sampled")
        can_run = self.model_chooser.current_path() is not None and bool(self.data_edit.text().strip())
        self.evaluate_button.setEnabled(not running and can_run)

    # --- running ---------------------------------------------------------------------------------------
    def evaluate(self):
        model_path = self.model_chooser.current_path()
        data = Path(self.data_edit.text().strip())
        if model_path is None:
            return None
        if not data.is_dir():
            self.jobs.set_status(f"No folder of images at {data}.", error=True)
            return None
        request = self.request()
        self.result = None
        self._every_timestep = request.timesteps is None
        self.plot.clear_terms()
        self.rate_distortion.clear()
        self._view_model = self._held_out = self._evaluated = self._first_batch = self.receiver = None
        self._pending_step = None
        self._no_curve = None
        self._on_model_changed(None)  # the tab's note, back to the model's own
        self.result_label.setText("Evaluating…")
        return self.run_job(
            lambda: beside_a_window(evaluation_job(model_path, data, request)), status=f"Reading the images in {data}…",
            progress_format="%p% of the terms", progress_types=(LikelihoodProgress, ScanProgress),
            on_progress=self._on_progress, on_event=self._on_event, on_done=self._on_done,
        )

    def _on_progress(self, event) -> None:
        if isinstance(event, ScanProgress):
            self.jobs.show_progress(0, 1)
            return
        self.jobs.show_progress(event.done, event.total)
        self.jobs.set_status(f"{event.done:,} of {event.total:,} terms ({counted(event.images_done, 'image')} done).")
        self.plot.show_terms(event.per_timestep_bpd, self._every_timestep)
        self._show_rate_distortion(event)

    def _on_event(self, event) -> None:
        if isinstance(event, LoadedModel):
            self._view_model = event
            self._on_step_ready()
        elif isinstance(event, ScanResult) and len(event.images):
            request = self.request()
            self._evaluated = choose_images(event.images, request.num_images, request.seed)
            if not self._no_curve:  # no receiver's view of images the curve refused
                self._held_out = self._evaluated[0]  # the first image evaluated
                self.rate_distortion.show_original(to_hwc(self._held_out))
                self._on_step_ready()
        elif isinstance(event, NoRateDistortion):
            self._no_curve = event.why
            self.rate_distortion.clear()
            self._on_model_changed(None)  # the tab's note says why
        elif isinstance(event, LikelihoodResult):
            self.result = event
            self.jobs.finish_progress()
            self.plot.show_terms(event.per_timestep_bpd, self._every_timestep)
            self._show_rate_distortion(event)
            self.result_label.setText(describe_result(event))

    def _show_rate_distortion(self, event) -> None:
        if self._no_curve:
            return
        curve = rate_distortion_of(event)
        if curve is None and np.isfinite(event.per_timestep_bpd).any() and self._first_batch_prior() is not None:
            # the pass reports L_T after each batch; within the first one it is this closed form of the same images
            prior, images = self._first_batch_prior()
            curve = rate_distortion_curve(event.per_timestep_bpd, prior, event.per_timestep_rmse,
                                          event.per_timestep_rmse_se, images)
        if curve is not None:
            self.rate_distortion.show_curve(curve)

    def _first_batch_prior(self) -> tuple[float, int] | None:
        """L_T in bits/dim of the pass's first batch, as ``evaluate_likelihood`` computes it, and its size."""
        if self._first_batch is None and self._view_model is not None and self._evaluated is not None:
            first = self._evaluated[:self.request().batch_size]
            self._first_batch = prior_bpd(self._view_model, first), len(first)
        return self._first_batch

    # --- the cursor's view -----------------------------------------------------------------------------
    def _on_step(self, steps: int) -> None:
        """The cursor moved: compute its view now, or after the one being computed."""
        self._pending_step = steps
        self._on_step_ready()

    def _on_step_ready(self) -> None:
        if not self.view_jobs.is_running():
            self._start_view()

    def _start_view(self) -> None:
        steps = self._pending_step
        if steps is None or self._view_model is None or self._held_out is None:
            return  # kept until the model and the image have come
        self._pending_step = None
        model, image = self._view_model, self._held_out
        self.view_jobs.run(lambda: beside_a_window(receiver_job(model, image, steps)), on_event=self._on_view,
                           on_error=self._on_view_error, on_done=lambda _stopped: self._start_view())

    def _on_view(self, view: ReceiverView) -> None:
        self.receiver = view
        self.rate_distortion.show_receiver(view.steps, view.noisy, view.estimate)

    def _on_view_error(self, message: str) -> None:
        self.jobs.set_status(f"Could not show the receiver's view: {message}", error=True)

    def _on_done(self, stopped: bool) -> None:
        if self.result is not None:
            self.jobs.set_status("Recorded in the model's model.json.")
            self.context.library.refresh()  # the tooltip and this page's history show the new record
            self._on_model_changed(None)
        elif stopped:
            self.jobs.set_status("Stopped; nothing was recorded.")
            self.result_label.setText("Stopped before the end: the partial per-t terms and rate–distortion curves "
                                      "are shown, no total.")


def describe_result(result: LikelihoodResult) -> str:
    error = "" if result.standard_error != result.standard_error else f" ± {result.standard_error:.3f}"
    terms = "all timesteps" if result.timesteps is None else f"{result.timesteps} random t per image"
    return (f"<b>{result.bits_per_dim:.3f}{error} bits/dim</b> on {counted(result.num_images, 'image')} ({terms}, "
            f"{result.variance.replace('_', ' ')} variance)<br>"
            # the precision of the record's own line (model_store.describe_evaluation), so the two agree
            f"L_0 {result.decoder_bpd:.3f} + Σ L_(t-1) {result.kl_bpd:.3f} + L_T {result.prior_bpd:.4f}")
