"""The Train page: settings, Start / Stop / Resume, a live loss curve, speed and ETA, and preview grids.

What a run trains on and into which folder is decided by ``core.run_plan``, as for the CLI;
the run goes through the page's job controller. Stopping closes the iterator, and the
trainer's cleanup saves a checkpoint into the model folder, which a later Resume continues.
"""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (
    QCheckBox,
    QFrame,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QScrollArea,
    QSplitter,
    QVBoxLayout,
    QWidget,
)

from ddpm_studio.core.data.folders import ScanProgress, ScanResult
from ddpm_studio.core.errors import UserError
from ddpm_studio.core.model import check as model_check
from ddpm_studio.core.model import store as model_store
from ddpm_studio.core.model.store import ModelError
from ddpm_studio.core.model.unet import PRESETS
from ddpm_studio.core.system.devices import threads_beside_a_window
from ddpm_studio.core.training import plan as run_plan
from ddpm_studio.core.training.config import FORM_CONTROLS, TRAINING_SETTINGS, TrainingConfig
from ddpm_studio.core.training.events import CheckpointEvent, StepEvent, merge_step_events
from ddpm_studio.core.training.plan import RESUMABLE_IN_WORDS, RunPlan, TrainingImagesMissing, model_name_for
from ddpm_studio.gui.context import StudioContext
from ddpm_studio.gui.formatting import counted
from ddpm_studio.gui.model_library import ModelPicker
from ddpm_studio.gui.pages.evaluate import inception_weights_setting
from ddpm_studio.gui.pages.page import Page
from ddpm_studio.gui.session_memory import remember_resume_model, reopen_resume_model
from ddpm_studio.gui.style import ACTION_BUTTON_HEIGHT, MUTED_TEXT_STYLE, WARNING_TEXT_STYLE
from ddpm_studio.gui.widgets.memory_guard import MemoryGuard
from ddpm_studio.gui.widgets.stacked_box import stacked_box
from ddpm_studio.gui.widgets.training_form import TrainingForm
from ddpm_studio.gui.widgets.training_monitor import TrainingMonitor


class TrainPage(Page):
    """Trains a model on the dataset from the Dataset page; ``modelSaved(path)`` after each save."""

    modelSaved = Signal(object)  # Path of the model folder just written

    def __init__(self, context: StudioContext, parent: QWidget | None = None):
        super().__init__(context, parent, job_name="training", stopping_text="Stopping after this step and saving…")
        self.dataset: ScanResult | None = None
        self.run_path: Path | None = None
        self._name_edited = False
        self._loaded_model: Path | None = None  # the model whose curve and settings are shown for Resume
        self._build()
        self.form.restore(self.context.settings)
        self._suggest_name()
        self._settings_changed()
        reopen_resume_model(self.context.settings, self.context.library, self.resume_picker,
                            lambda path: self.show_model(path, fill_form=False))

    # --- layout -----------------------------------------------------------------------------------
    def _build(self) -> None:
        settings_panel = self._build_settings()
        self.monitor = TrainingMonitor(self.jobs)
        # The run's widgets by name, as the page shows them.
        self.loss_plot, self.preview_view = self.monitor.loss_plot, self.monitor.preview_view
        self.progress_bar, self.status_label = self.monitor.progress_bar, self.monitor.status_label
        self.error_label, self.device_value = self.monitor.error_label, self.monitor.device_value
        scroll = QScrollArea()
        scroll.setWidget(settings_panel)
        scroll.setWidgetResizable(True)
        scroll.setFrameShape(QFrame.Shape.NoFrame)
        scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        scroll.setMinimumWidth(settings_panel.sizeHint().width() + 16)
        splitter = QSplitter(Qt.Orientation.Horizontal)
        splitter.addWidget(scroll)
        splitter.addWidget(self.monitor)
        splitter.setStretchFactor(0, 0)
        splitter.setStretchFactor(1, 1)
        splitter.setCollapsible(0, False)
        layout = QVBoxLayout(self)
        layout.addWidget(splitter)

    def _build_settings(self) -> QWidget:
        self.dataset_label = QLabel()
        self.dataset_label.setWordWrap(True)
        self.form = TrainingForm()
        # A fine-tune: the run starts from a model's EMA weights, with its architecture and schedule.
        self.init_check = QCheckBox("Start from")
        self.init_check.setToolTip("Fine-tune: start from the chosen model's weights (its architecture and noise "
                                   "schedule, a new optimizer, a folder of its own). Small datasets give noise "
                                   "or copies from scratch; starting from a trained model helps.")
        self.init_picker = ModelPicker(self.context.library)
        self.init_picker.setToolTip(self.init_check.toolTip())
        init_row = QHBoxLayout()
        init_row.addWidget(self.init_check)
        init_row.addWidget(self.init_picker, 1)
        self.form.rows.insertRow(0, "Weights", init_row)
        self.name_edit = QLineEdit()
        self.name_edit.setToolTip(f"The model folder's name, in {model_store.default_user_models_dir()}")
        self.name_edit.textEdited.connect(self._name_was_edited)
        self.form.rows.addRow("Model name", self.name_edit)

        self.memory_label = MemoryGuard(self)
        self.estimates = self.memory_label.estimates
        self.start_button = QPushButton("Start training")
        self.start_button.setMinimumHeight(ACTION_BUTTON_HEIGHT)
        self.start_button.setDefault(True)
        self.start_button.clicked.connect(self.start_training)
        self.stop_button = self.jobs.stop_button
        self.stop_button.setToolTip("Stop after the current step; the model is saved and can be resumed.")
        buttons = QHBoxLayout()
        buttons.addWidget(self.start_button, 2)
        buttons.addWidget(self.stop_button, 1)
        self.start_hint = QLabel()
        self.start_hint.setWordWrap(True)

        new_box = stacked_box("New model", self.dataset_label, self.form, self.memory_label, buttons, self.start_hint)

        self.resume_picker = ModelPicker(self.context.library, resumable_only=True)
        self.resume_picker.activated.connect(lambda _index: self.show_model(self.resume_picker.current_path()))
        self.resume_button = QPushButton("Resume")
        self.resume_button.setToolTip(f"Continue training the chosen model up to Steps; {RESUMABLE_IN_WORDS} "
                                      "can change, the rest stays the model's own.")
        self.resume_button.clicked.connect(self.resume_training)
        self.resume_hint = QLabel()
        self.resume_hint.setWordWrap(True)
        self.resume_rule = QLabel(f"Resuming keeps the model's own settings; only {RESUMABLE_IN_WORDS} can change.")
        self.resume_rule.setWordWrap(True)
        self.resume_rule.setStyleSheet(MUTED_TEXT_STYLE)
        resume_box = QGroupBox("Continue a saved model")
        resume_layout = QVBoxLayout(resume_box)
        resume_row = QHBoxLayout()
        resume_row.addWidget(self.resume_picker, 1)
        resume_row.addWidget(self.resume_button)
        resume_layout.addLayout(resume_row)
        resume_layout.addWidget(self.resume_hint)
        resume_layout.addWidget(self.resume_rule)
        self.resume_picker.modelChanged.connect(lambda _path: self._update_enabled())

        panel = QWidget()
        panel.setMinimumWidth(330)
        layout = QVBoxLayout(panel)
        layout.setContentsMargins(0, 0, 4, 0)
        layout.addWidget(new_box)
        layout.addWidget(resume_box)
        layout.addStretch(1)

        self.form.changed.connect(self._settings_changed)
        self.init_check.toggled.connect(self._settings_changed)
        self.init_picker.modelChanged.connect(lambda _path: self._settings_changed())
        self.name_edit.textChanged.connect(self._update_enabled)
        self.context.library.changed.connect(self._update_enabled)  # a model folder may have taken the name
        return panel

    # --- settings ---------------------------------------------------------------------------------
    def fine_tune_source(self) -> Path | None:
        """The model whose weights a new run starts from, when Start from is ticked."""
        return self.init_picker.current_path() if self.init_check.isChecked() else None

    def config(self) -> TrainingConfig:
        """The training settings as shown; a fine-tune takes its architecture and schedule from its model
        (ModelError when that model cannot be read), and the rest of what the form shows."""
        source = self.fine_tune_source()
        if source is None:
            return self.form.config()
        shown = self.form.config()
        return TrainingConfig.for_fine_tune(
            model_store.read_model_info(source),
            **{name: getattr(shown, name) for name in FORM_CONTROLS if TRAINING_SETTINGS[name].fine_tune != "model"},
        )

    def save_settings(self) -> None:
        self.form.save(self.context.settings)
        remember_resume_model(self.context.settings, self._loaded_model)

    def _name_was_edited(self, _text: str) -> None:
        self._name_edited = True

    def _settings_changed(self) -> None:
        self._request_estimate()
        self._update_enabled()

    def models_dir(self) -> Path:
        return model_store.default_user_models_dir()

    def _suggest_name(self) -> None:
        if self._name_edited and self.name_edit.text().strip():
            return
        base = model_name_for(list(self.dataset.sources)) if self.dataset is not None else "model"
        self.name_edit.setText(run_plan.unique_name(base, self.models_dir()))

    def set_dataset(self, result: ScanResult) -> None:
        """The Dataset page scanned images: train on them, at their resolution unless changed here."""
        self.dataset = result
        self.form.set_labelled(result.labels is not None, result.describe_classes())
        self.form.resolution_follows_preset = False
        if not self.is_training():
            self.form.select_size(result.image_size)
            self.form.select_channels(result.channels)
            self._name_edited = False
            self._suggest_name()
        self._update_enabled()

    # --- memory -------------------------------------------------------------------------------------
    def _request_estimate(self) -> None:
        self.memory_label.request(self.config, len(self.dataset.files) if self.dataset is not None else 0)

    def memory_allows(self, config: TrainingConfig, resuming: bool = False) -> bool:
        """True when the run fits, or the user chose to start anyway, in micro-batches that fit, or (a new run
        only: a resumed one keeps its batch size) with a batch size that fits."""
        return self.memory_label.allows(config, self.form.use_micro_batches,
                                        None if resuming else self.form.batch_spin.setValue)

    # --- state --------------------------------------------------------------------------------------
    def is_training(self) -> bool:
        return self.jobs.is_running()

    @property
    def current_step(self) -> int:
        return self.monitor.current_step

    def _update_enabled(self) -> None:
        training = self.is_training()
        for widget in (self.form, self.name_edit, self.resume_picker):
            widget.setEnabled(not training)
        self._show_fine_tune(training)
        if self.dataset is None:
            self.dataset_label.setText("<b>No dataset yet.</b> Load images on the <b>1 · Dataset</b> page first.")
        else:
            count = len(self.dataset.files)
            size = self.dataset.image_size
            self.dataset_label.setText(
                f"<b>Dataset:</b> {counted(count, 'image')} at {size}×{size} from "
                f"{model_name_for(list(self.dataset.sources))}"
                + (f"<br><span style='{WARNING_TEXT_STYLE}'>Fewer images than one batch "
                   f"({self.form.batch_spin.value():,}): each batch repeats them; a larger dataset generalises "
                   "better.</span>" if count < self.form.batch_spin.value() else "")
            )
        reason = self._start_blocker()
        self.start_button.setEnabled(not training and reason is None)
        if training:
            self.start_hint.setText("Training… Stop saves the model, and Resume continues it later.")
            self.start_hint.setStyleSheet("")
        elif reason is not None:
            self.start_hint.setText(reason)
            self.start_hint.setStyleSheet(WARNING_TEXT_STYLE if self.dataset is not None else "")
        else:
            self.start_hint.setText(f"Saves into {self.models_dir() / self.name_edit.text().strip()}")
            self.start_hint.setStyleSheet(MUTED_TEXT_STYLE)
        chosen = self.resume_picker.current_path()
        self.resume_button.setEnabled(not training and chosen is not None)
        if chosen is None:
            self.resume_hint.setText("Models you train appear here once saved, to continue them later.")
        elif chosen != self._loaded_model:
            self.resume_hint.setText("Choose a model to see its loss curve; Resume trains it on up to Steps.")

    def _show_fine_tune(self, training: bool) -> None:
        """A fine-tune keeps its model's architecture and schedule: show them, and lock their widgets."""
        source = self.fine_tune_source()
        self.init_picker.setEnabled(not training and self.init_check.isChecked())
        form = self.form
        for widget in (form.preset_combo, form.resolution_combo, form.channels_combo, form.schedule_combo,
                       form.timesteps_spin):
            widget.setEnabled(not training and source is None)
        if source is None:
            if form.preset() in PRESETS:
                form.preset_description.setText(PRESETS[form.preset()].description)
            return
        form.preset_description.setText(f"Fine-tune of {source.name}: its architecture, resolution and noise schedule.")
        try:
            info = model_store.read_model_info(source)
        except UserError:
            return
        widgets = (form.resolution_combo, form.channels_combo, form.schedule_combo, form.timesteps_spin)
        for widget in widgets:
            widget.blockSignals(True)
        form.select_size(info.unet.image_size)
        form.select_channels(info.unet.image_channels)
        form.schedule_combo.setCurrentText(info.schedule.kind)
        form.timesteps_spin.setValue(info.schedule.num_timesteps)
        for widget in widgets:
            widget.blockSignals(False)

    def _start_blocker(self) -> str | None:
        """Why Start cannot run now, in a sentence; None when it can."""
        if self.dataset is None:
            return "Start needs a dataset: drop a folder on the window, or use the demo dataset on the Dataset page."
        name = self.name_edit.text().strip()
        try:
            self.config().validate()
            run_plan.check_model_name(name)
        except UserError as error:
            return str(error)
        if (self.models_dir() / name).exists():
            free = run_plan.unique_name(name, self.models_dir())
            return f"A model named {name} already exists; choose another name ({free} is free), or continue it below."
        return None

    # --- running ------------------------------------------------------------------------------------
    def start_training(self) -> None:
        """Train a new model on the loaded dataset (rescanned if the resolution or channels differ)."""
        reason = self._start_blocker()
        if reason is not None:
            self.show_error(reason)
            return
        if not self.memory_allows(self.config()):
            return
        try:
            plan = run_plan.plan_new_run(self.config(), self.models_dir() / self.name_edit.text().strip(),
                                         scanned=self.dataset)
        except UserError as error:
            self.show_error(str(error))
            return
        self._launch(plan)

    def resume_training(self) -> None:
        """Continue the chosen model up to Steps, on the loaded dataset if it fits, else on its own images."""
        path = self.resume_picker.current_path()
        if path is None:
            return
        if self._loaded_model != path:
            self.show_model(path)
        plan = self._plan_resume(path)
        if plan is None or not self.memory_allows(plan.config, resuming=True):
            return
        plan = self._plan_resume(path)  # with the micro-batches the question may have chosen
        if plan is not None:
            self._launch(plan)

    def _plan_resume(self, path: Path) -> RunPlan | None:
        try:
            return run_plan.plan_resume(path, self.form.shown_settings(), scanned=self.dataset)
        except TrainingImagesMissing as error:
            self.show_error(f"{error} Load them, or other images of the same size, on the Dataset page and press "
                            "Resume again.")
        except UserError as error:
            self.show_error(str(error))
        return None

    def _launch(self, plan: RunPlan) -> None:
        self.run_path = plan.out_dir
        self.resume_hint.setText(f"Training {plan.out_dir.name}…")  # its step count changes as it runs
        self.monitor.reset(new_model=not plan.resume)
        threads = threads_beside_a_window()  # one core is left to the window, so that it keeps drawing
        weights = inception_weights_setting(self.context.settings)  # for KID during training, chosen on Evaluate
        self.run_job(lambda: plan.events(cpu_threads=threads, inception_weights=weights),
                     name=f"training {plan.out_dir.name}",
                     status=plan.describe(), progress_types=(StepEvent, ScanProgress), merge=merge_step_events,
                     on_progress=self.monitor.show_progress, on_event=self._on_event, on_error=self.show_error,
                     on_done=self._on_done)

    def stop_training(self) -> None:
        """Stop after the current step; the trainer saves the model as it closes."""
        self.jobs.stop()

    def shutdown(self) -> None:
        self.memory_label.shutdown()  # no new memory estimates
        self.loss_plot.stop()

    # --- events of the run --------------------------------------------------------------------------
    def _on_event(self, event) -> None:
        self.monitor.show_event(event)
        if isinstance(event, CheckpointEvent):
            self.modelSaved.emit(event.path)

    def _on_done(self, stopped: bool) -> None:
        self.monitor.run_ended()
        path = self.run_path
        saved = path is not None and (path / model_store.CONFIG_FILE).is_file()
        step = self.current_step
        if stopped:
            self.status_label.setText(
                f"Stopped at step {step:,}; saved in {path}. Resume continues it." if saved
                else "Stopped before the first step; nothing was saved."
            )
        if saved:
            self.modelSaved.emit(path)
            self.context.library.refresh()
            self.resume_picker.select(path)
            self._loaded_model = path
            steps = self.form.steps_spin.value()
            self.resume_hint.setText(
                f"{path.name}: {counted(step, 'step')} trained. "
                + (f"Resume continues it up to {steps:,} steps." if step < steps
                   else "To continue it, raise Steps, then Resume.")
            )
            self.context.show_message(f"Model saved: {path.name} at step {step:,}.")
        # The name stays as the user left it: Start then says that it is taken, and which name is free.

    def show_error(self, message: str) -> None:
        self.monitor.show_error(message)

    # --- reopening a model --------------------------------------------------------------------------
    def show_model(self, path: Path | None, fill_form: bool = True) -> None:
        """Show a saved model's curve and settings, ready to Resume (after a restart, ``fill_form`` False:
        the form keeps the settings the user left in it)."""
        if path is None or self.is_training():
            return
        try:
            info = model_store.read_model_info(path)
            history = model_store.load_loss_history(path)
        except UserError as error:
            self.show_error(str(error))
            return
        self._loaded_model = path
        config = TrainingConfig.from_dict(info.training)
        planned_steps = config.steps  # what it was trained towards, before a finished model's Steps are raised
        if config.steps <= info.step:
            config.steps = info.step + max(config.steps, 1000)
        if fill_form:
            self.form.fill(config)
        steps = self.form.steps_spin.value()
        preview, problem = None, ""
        if (path / model_store.PREVIEW_FILE).is_file():
            try:  # its size is checked before a pixel is decoded: a decompression bomb is refused at once
                preview = model_check.read_preview(path / model_store.PREVIEW_FILE)
            except ModelError as error:
                problem = str(error)
        self.monitor.show_saved_model(info, history, preview, problem, planned_steps)
        self.resume_hint.setText(f"{info.name}: {counted(info.step, 'step')} trained; " + (
            f"Resume continues up to Steps ({steps:,})." if steps > info.step
            else "to continue it, raise Steps, then Resume."))
