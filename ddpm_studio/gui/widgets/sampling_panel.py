"""What the Generate and Noising pages share: choosing a model and a sampler, and running the sampler.

``SamplingControls`` makes the widgets (each page lays them out its own way), remembers them
in the settings under the page's prefix, enables them as the job allows, and runs
``core.sampling.run_sampling`` through the page's job controller with its progress on the bar.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from PySide6.QtCore import Qt
from PySide6.QtWidgets import (
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QFrame,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QScrollArea,
    QSlider,
    QSpinBox,
    QStyle,
    QVBoxLayout,
    QWidget,
)

from ddpm_studio.core.diffusion.dpm_solver import DEFAULT_STEPS as DPM_SOLVER_STEPS
from ddpm_studio.core.diffusion.process import SampleStep
from ddpm_studio.core.sampling.cost import SamplingCost, cpu_sampling_cost
from ddpm_studio.core.sampling.guidance import MAX_GUIDANCE, class_names, model_passes
from ddpm_studio.core.sampling.job import SamplingRequest, SamplingResult, run_sampling
from ddpm_studio.core.system.devices import beside_a_window, choose_device
from ddpm_studio.gui.context import StudioContext
from ddpm_studio.gui.jobs.controller import JobController
from ddpm_studio.gui.jobs.workers import JobRunner
from ddpm_studio.gui.style import (
    ACTION_BUTTON_HEIGHT,
    MUTED_TEXT_STYLE,
    SETTINGS_PANEL_WIDTH,
    WARNING_TEXT_STYLE,
    make_bold,
)
from ddpm_studio.gui.widgets.model_chooser import ModelChooser
from ddpm_studio.gui.widgets.stacked_box import BoxItem, add_items

SAMPLERS = (("DDPM: every step", "ddpm"), ("DDIM: fewer steps", "ddim"), ("DPM-Solver++: 10-25 steps", "dpm-solver++"))
SAMPLER_NOTES = {
    "ddpm": "The paper's ancestral sampler: one model call per timestep, fresh noise at each.",
    "ddim": "The same model in fewer, evenly spaced steps; deterministic at η = 0.",
    "dpm-solver++": "An ODE solver for the same model: 10-25 calls give what DDIM needs 50-100 for.",
}
STEPS_OF_SAMPLERS = {"ddim": 50, "dpm-solver++": DPM_SOLVER_STEPS}  # the samplers the steps apply to, and defaults
VARIANCES = (("Fixed large (σ² = β_t)", "fixed_large"), ("Fixed small (σ² = β̃_t)", "fixed_small"))
LEARNED_VARIANCE = ("Learned (the model's σ_t²)", "learned")  # offered only for a model that learned it
MAX_SEED = 2**31 - 1
ALL_CLASSES = -1  # the class box's entry for a grid with one row per class
GUIDANCE_STEPS_PER_UNIT = 10  # the slider moves w in steps of 0.1
GUIDANCE_NOTE = "ε̃ = (1 + w) ε(x_t, c) − w ε(x_t, ∅); 0 is plain conditional sampling."
COSTED_SIZE = 128  # models at least this large get a time forecast on the CPU (a 256 px call takes seconds there)


def settings_column(page: QWidget, right: QWidget | QHBoxLayout | QVBoxLayout, *items: BoxItem) -> QVBoxLayout:
    """Lay ``page`` out as a fixed-width column of settings beside ``right``; returns the column's layout.

    ``items`` fill the column from the top, then a stretch unless one of them takes the room left
    (given as (item, stretch)). The column scrolls when the window is too short for it: squeezed
    instead, its word-wrapped explanations lost their first and last lines.
    """
    column = QWidget()
    column.setFixedWidth(SETTINGS_PANEL_WIDTH)
    column_layout = QVBoxLayout(column)
    column_layout.setContentsMargins(0, 0, 0, 0)
    scroll = QScrollArea()
    scroll.setWidget(column)
    scroll.setWidgetResizable(True)
    scroll.setFrameShape(QFrame.Shape.NoFrame)
    scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
    # Room for the scroll bar beside the column, so that it never covers the column's right edge.
    scroll.setFixedWidth(SETTINGS_PANEL_WIDTH + scroll.style().pixelMetric(QStyle.PixelMetric.PM_ScrollBarExtent))
    layout = QHBoxLayout(page)
    layout.addWidget(scroll)
    if isinstance(right, QWidget):
        layout.addWidget(right, 1)
    else:
        layout.addLayout(right, 1)
    add_items(column_layout, items)
    if items and not any(isinstance(item, tuple) for item in items):
        column_layout.addStretch(1)
    return column_layout


class SamplingControls:
    """The model chooser, the sampler, DDIM's steps, optionally the variance and DDPM's steps, and the run button."""

    def __init__(self, context: StudioContext, jobs: JobController, settings_prefix: str, run_text: str,
                 steps_tooltip: str, with_variance: bool, with_classes: bool = False, with_all_classes: bool = False):
        self.context = context
        self.with_classes = with_classes or with_all_classes  # pages whose runs take a class and w
        self.with_all_classes = with_all_classes
        self.jobs = jobs
        self.prefix = settings_prefix
        self.model_chooser = ModelChooser(context.library, context.settings)
        self.sampler_box = QComboBox()
        for label, name in SAMPLERS:
            self.sampler_box.addItem(label, name)
        self.sampler_note = QLabel(SAMPLER_NOTES[self.sampler()])  # one line on the chosen sampler
        self.sampler_note.setWordWrap(True)
        self.sampler_note.setStyleSheet(MUTED_TEXT_STYLE)
        self.steps_spin = QSpinBox()
        self.steps_spin.setRange(1, 1000)
        self.steps_spin.setValue(50)
        self.steps_spin.setToolTip(steps_tooltip)
        self._ddim_steps_tooltip = steps_tooltip
        # The spin shows the chosen sampler's own count: DDIM's and DPM-Solver++'s are kept apart.
        self._steps_of = dict(STEPS_OF_SAMPLERS)
        self._stepped_sampler: str | None = None  # whose count the spin shows
        self.sampler_box.currentIndexChanged.connect(self._sampler_changed)
        self.eta_spin = QDoubleSpinBox()
        self.eta_spin.setRange(0.0, 1.0)
        self.eta_spin.setSingleStep(0.1)
        self.eta_spin.setDecimals(2)
        self.eta_spin.setToolTip("DDIM's η: 0 is deterministic; 1 adds the noise of ancestral sampling with β̃_t")
        self.variance_box: QComboBox | None = None
        self.ddpm_steps_spin: QSpinBox | None = None
        if with_variance:
            self.ddpm_steps_spin = QSpinBox()
            self.ddpm_steps_spin.setRange(1, 1000)
            self.ddpm_steps_spin.setValue(1000)
            self.ddpm_steps_spin.setToolTip("Ancestral steps: T is every step (the paper's Algorithm 2); fewer respace "
                                            "the process onto that many timesteps, where a learned variance pays off")
            self.variance_box = QComboBox()
            for label, name in VARIANCES:
                self.variance_box.addItem(label, name)
            self.variance_box.setToolTip("The variance of each ancestral step: β_t (the paper's CIFAR-10 choice) or "
                                         "the posterior's β̃_t")
        self._build_class_panel()
        self.run_button = QPushButton(run_text)
        self.run_button.setMinimumHeight(ACTION_BUTTON_HEIGHT)
        make_bold(self.run_button)
        self.cost_label = QLabel()  # a forecast when a large model would be slow on the CPU
        self.cost_label.setWordWrap(True)
        self.cost_label.setStyleSheet(WARNING_TEXT_STYLE)
        self.cost_label.hide()
        self.estimates = JobController(jobs.page, "sampling estimate", with_controls=False)
        self._costed: set = set()  # architectures whose forecast is cheap now (counted and measured once)
        self._page_spins: dict[str, QSpinBox] = {}  # the page's own numbers kept with these settings (see keep)
        self.model_chooser.picker.modelChanged.connect(self._model_changed)

    def _build_class_panel(self) -> None:
        """The class and the guidance weight, shown only for a class-conditional model."""
        self.class_box = QComboBox()
        self.class_box.setToolTip("The class to generate (the model was trained on these folders)")
        self.guidance_slider = QSlider(Qt.Orientation.Horizontal)
        self.guidance_slider.setRange(0, int(MAX_GUIDANCE * GUIDANCE_STEPS_PER_UNIT))
        self.guidance_slider.setPageStep(GUIDANCE_STEPS_PER_UNIT)
        self.guidance_slider.setToolTip("Classifier-free guidance weight w: larger is more typical of the class, "
                                        "less varied; each step costs one model call of twice the batch")
        self.guidance_value = QLabel()
        self.guidance_slider.valueChanged.connect(self._guidance_changed)
        self.guidance_note = QLabel(GUIDANCE_NOTE)
        self.guidance_note.setWordWrap(True)
        self.guidance_note.setStyleSheet(MUTED_TEXT_STYLE)
        guidance_row = QHBoxLayout()
        guidance_row.addWidget(self.guidance_slider, 1)
        guidance_row.addWidget(self.guidance_value)
        self.class_panel = QWidget()
        form = QFormLayout(self.class_panel)
        form.setContentsMargins(0, 0, 0, 0)
        form.addRow("Class", self.class_box)
        form.addRow("Guidance", guidance_row)
        form.addRow(self.guidance_note)
        self._guidance_changed()
        self.class_panel.hide()

    # --- layout ------------------------------------------------------------------------------------
    def sampler_form(self) -> QFormLayout:
        form = QFormLayout()
        form.addRow(self.class_panel)
        form.addRow("Sampler", self.sampler_box)
        form.addRow(self.sampler_note)
        form.addRow("Steps", self.steps_spin)
        form.addRow("DDIM η", self.eta_spin)
        if self.variance_box is not None:
            form.addRow("DDPM steps", self.ddpm_steps_spin)
            form.addRow("Variance", self.variance_box)
        return form

    def run_layout(self) -> QVBoxLayout:
        """The run and Stop buttons, the progress bar and the status line."""
        buttons = QHBoxLayout()
        buttons.addWidget(self.run_button, 2)
        buttons.addWidget(self.jobs.stop_button, 1)
        layout = QVBoxLayout()
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.cost_label)
        layout.addLayout(buttons)
        layout.addWidget(self.jobs.progress_bar)
        layout.addWidget(self.jobs.status_box)
        return layout

    # --- state -------------------------------------------------------------------------------------
    def sampler(self) -> str:
        return self.sampler_box.currentData()

    def eta(self) -> float:
        return self.eta_spin.value()

    def variance(self) -> str:
        return self.variance_box.currentData() if self.variance_box is not None else "fixed_large"

    def guidance(self) -> float:
        return self.guidance_slider.value() / GUIDANCE_STEPS_PER_UNIT

    def chosen_class(self) -> int | None:
        """The class index, ``ALL_CLASSES``, or None for an unconditional model."""
        return self.class_box.currentData() if self.class_box.count() else None

    def class_count(self) -> int:
        return sum(1 for row in range(self.class_box.count()) if self.class_box.itemData(row) != ALL_CLASSES)

    def apply_classes(self, request: SamplingRequest) -> SamplingRequest:
        """Give ``request`` the chosen class and w; "All classes" makes one row of ``num_images`` per class."""
        chosen = self.chosen_class()
        if chosen is None:
            return request
        request.guidance = self.guidance()
        if chosen == ALL_CLASSES:
            per_class = request.num_images
            request.classes = [label for label in range(self.class_count()) for _ in range(per_class)]
            request.num_images = len(request.classes)
        else:
            request.classes = [chosen]
        return request

    def offer_classes(self, info) -> None:
        """Fill the class box with the model's classes (keeping the chosen name), or hide it for an
        unconditional model."""
        names = class_names(info) if info is not None and self.with_classes else []
        before = self.class_box.currentText()
        self.class_box.blockSignals(True)
        self.class_box.clear()
        for index, name in enumerate(names):
            self.class_box.addItem(name, index)
        if names and self.with_all_classes:
            self.class_box.addItem("All classes", ALL_CLASSES)
        self.class_box.setCurrentIndex(max(0, self.class_box.findText(before)))
        self.class_box.blockSignals(False)
        self.class_panel.setVisible(bool(names))

    def _guidance_changed(self) -> None:
        self.guidance_value.setText(f"w = {self.guidance():.1f}")

    def ddpm_steps(self) -> int | None:
        """DDPM's respaced step count, None for every step."""
        if self.ddpm_steps_spin is None or self.ddpm_steps_spin.value() >= self.ddpm_steps_spin.maximum():
            return None
        return self.ddpm_steps_spin.value()

    def set_max_steps(self, num_timesteps: int) -> None:
        self.steps_spin.setMaximum(num_timesteps)
        if self.ddpm_steps_spin is not None:
            every_step = self.ddpm_steps_spin.value() >= self.ddpm_steps_spin.maximum()
            self.ddpm_steps_spin.setMaximum(num_timesteps)
            if every_step:
                self.ddpm_steps_spin.setValue(num_timesteps)

    def fit_to_model(self) -> None:
        """Fit the steps and the variances offered to the chosen model (none chosen: leave them)."""
        info = self.model_chooser.current_info()
        if info is not None:
            self.set_max_steps(info.schedule.num_timesteps)
            self.offer_learned_variance(info.unet.learned_variance)
        self.offer_classes(info)

    def offer_learned_variance(self, learned: bool) -> None:
        """Offer "learned" only for a model that learned its variance (its sampling defaults then choose it)."""
        if self.variance_box is None:
            return
        index = self.variance_box.findData(LEARNED_VARIANCE[1])
        if learned and index < 0:
            self.variance_box.addItem(*LEARNED_VARIANCE)
        elif not learned and index >= 0:
            self.variance_box.removeItem(index)

    def update_enabled(self, can_run: bool) -> None:
        """Enable the widgets for the job's state; ``can_run``: whether the page has what a run needs."""
        running = self.jobs.is_running()
        sampler = self.sampler()
        self.steps_spin.setEnabled(sampler in STEPS_OF_SAMPLERS and not running)
        self.eta_spin.setEnabled(sampler == "ddim" and not running)
        if self.variance_box is not None:
            self.variance_box.setEnabled(sampler == "ddpm" and not running)
            self.ddpm_steps_spin.setEnabled(sampler == "ddpm" and not running)
        self.run_button.setEnabled(not running and can_run)
        self.model_chooser.setEnabled(not running)
        self.sampler_box.setEnabled(not running)
        self.class_box.setEnabled(not running)
        self.guidance_slider.setEnabled(not running)

    def show_cost(self, images: int, start_t: int | None = None) -> None:
        """Forecast, in the background, how long a run takes when a large model would sample on the CPU."""
        info = self.model_chooser.current_info()
        if info is None or info.unet.image_size < COSTED_SIZE or choose_device("auto").type != "cpu":
            self.cost_label.hide()
            return
        steps = start_t + 1 if start_t is not None else info.schedule.num_timesteps
        calls = min(self.steps_spin.value(), steps) if self.sampler() in STEPS_OF_SAMPLERS else steps
        config = info.unet
        chosen = self.chosen_class()
        passes = model_passes(None if chosen is None else [chosen], self.guidance())  # guided: twice the batch
        if chosen == ALL_CLASSES:
            images *= self.class_count()
        if config in self._costed:  # only arithmetic left: no thread needed
            self._show_cost_result(cpu_sampling_cost(config, images, calls, passes))
            return
        self._costed.add(config)

        def estimate():
            yield cpu_sampling_cost(config, images, calls, passes)

        self.estimates.run(estimate, on_event=self._show_cost_result)

    def _sampler_changed(self) -> None:
        """Explain the chosen sampler, and show its own step count in the spin (keeping the last one's)."""
        sampler = self.sampler()
        self.sampler_note.setText(SAMPLER_NOTES[sampler])
        if sampler not in STEPS_OF_SAMPLERS:
            return
        if self._stepped_sampler is not None:
            self._steps_of[self._stepped_sampler] = self.steps_spin.value()
        self._stepped_sampler = sampler
        self.steps_spin.setValue(self._steps_of[sampler])
        self.steps_spin.setToolTip(self._ddim_steps_tooltip if sampler == "ddim" else
                                   "DPM-Solver++'s model calls: 10 for a quick look, 20-25 for the finished images")

    def _model_changed(self, _path) -> None:
        """A model brings its own sampling variance (an imported model's scheduler chose it), and its classes."""
        info = self.model_chooser.current_info()
        self.offer_classes(info)
        if info is not None and self.variance_box is not None:
            self.variance_box.setCurrentIndex(max(0, self.variance_box.findData(info.sampling_defaults["variance"])))

    def _show_cost_result(self, cost: SamplingCost) -> None:
        self.cost_label.setText(cost.describe())
        self.cost_label.setVisible(cost.slow)

    def restore_settings(self) -> None:
        settings, prefix = self.context.settings, self.prefix
        self._steps_of["ddim"] = int(settings.value(f"{prefix}/ddim_steps", STEPS_OF_SAMPLERS["ddim"]))
        self._steps_of["dpm-solver++"] = int(settings.value(f"{prefix}/dpm_solver_steps", DPM_SOLVER_STEPS))
        self._stepped_sampler = None  # the counts just read win over the spin's
        self.sampler_box.setCurrentIndex(max(0, self.sampler_box.findData(settings.value(f"{prefix}/sampler", "ddpm"))))
        self._sampler_changed()  # also when the index stayed
        try:
            self.eta_spin.setValue(float(settings.value(f"{prefix}/eta", 0.0)))
        except (TypeError, ValueError):
            pass  # a damaged settings file: keep 0
        if self.variance_box is not None:
            variance = settings.value(f"{prefix}/variance", "fixed_large")
            self.variance_box.setCurrentIndex(max(0, self.variance_box.findData(variance)))
            self.ddpm_steps_spin.setValue(int(settings.value(f"{prefix}/ddpm_steps", self.ddpm_steps_spin.maximum())))
        model = settings.value(f"{prefix}/model", "")
        if model and Path(model).is_dir():
            self.model_chooser.picker.select(model)
        try:
            self.guidance_slider.setValue(int(settings.value(f"{prefix}/guidance", 0)))
        except (TypeError, ValueError):
            pass  # a damaged settings file: keep 0
        chosen = self.class_box.findText(str(settings.value(f"{prefix}/class", "")))
        if chosen >= 0:
            self.class_box.setCurrentIndex(chosen)
        for name, spin in self._page_spins.items():
            spin.setValue(int(settings.value(f"{prefix}/{name}", spin.value())))

    def keep(self, name: str, spin: QSpinBox) -> None:
        """Restore and save the page's ``spin`` (a count, a seed) with these settings, as ``name`` under the prefix.

        Its value when this is called is its default.
        """
        self._page_spins[name] = spin

    def save_settings(self) -> None:
        settings, prefix = self.context.settings, self.prefix
        settings.setValue(f"{prefix}/sampler", self.sampler())
        if self._stepped_sampler is not None:
            self._steps_of[self._stepped_sampler] = self.steps_spin.value()
        settings.setValue(f"{prefix}/ddim_steps", self._steps_of["ddim"])
        settings.setValue(f"{prefix}/dpm_solver_steps", self._steps_of["dpm-solver++"])
        settings.setValue(f"{prefix}/eta", self.eta())
        settings.setValue(f"{prefix}/guidance", self.guidance_slider.value())
        if self.class_box.count():
            settings.setValue(f"{prefix}/class", self.class_box.currentText())
        if self.variance_box is not None:
            settings.setValue(f"{prefix}/variance", self.variance())
            settings.setValue(f"{prefix}/ddpm_steps", self.ddpm_steps_spin.value())
        path = self.model_chooser.current_path()
        settings.setValue(f"{prefix}/model", str(path) if path else "")
        for name, spin in self._page_spins.items():
            settings.setValue(f"{prefix}/{name}", spin.value())

    # --- running -----------------------------------------------------------------------------------
    def run(
        self,
        request: SamplingRequest,
        name: str,
        status: str,
        image_from: Callable[[object], object | None],
        on_image: Callable[[object], None],
        on_result: Callable[[SamplingResult], None],
        on_step: Callable[[SampleStep], None] | None = None,
        on_error: Callable[[str], None] | None = None,
        on_done: Callable[[bool], None] | None = None,
    ) -> JobRunner:
        """Sample ``request`` as the page's job; each step moves the bar, the result goes to ``on_result``."""

        def progress(step: SampleStep) -> None:
            self.jobs.show_progress(step.step + 1, step.num_steps)
            if on_step is not None:
                on_step(step)

        def event(value) -> None:
            if isinstance(value, SamplingResult):
                self.jobs.finish_progress()
                on_result(value)

        info = self.model_chooser.current_info()
        if info is not None:
            request.clip = info.sampling_defaults["clip"]  # the model's own (an import's scheduler chose it)
        if request.classes is None and request.x_start is not None:  # denoise-from-t: "turn this into class c"
            self.apply_classes(request)
        self.model_chooser.clear_error()
        return self.jobs.run(
            lambda: beside_a_window(run_sampling(request)), name=name, status=status, progress_format="%v of %m steps",
            progress_types=(SampleStep,), image_from=image_from, on_progress=progress, on_event=event,
            on_image=on_image, on_error=on_error, on_done=on_done,
        )
