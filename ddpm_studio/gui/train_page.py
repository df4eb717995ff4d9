"""The Train page: settings, Start / Stop / Resume, a live loss curve, speed and ETA, and preview grids.

A run is core's ``train`` (or ``train_from_folder`` when the chosen resolution differs from
the scanned dataset's) run through the page's job controller. Stopping closes the iterator, and the
trainer's cleanup saves a checkpoint into the model folder, which a later Resume continues.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import numpy as np
from PySide6.QtCore import Qt, Signal, Slot
from PySide6.QtGui import QValidator
from PySide6.QtWidgets import (
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QFrame,
    QGridLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QScrollArea,
    QSizePolicy,
    QSpinBox,
    QSplitter,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from ..core import model_store
from ..core.data import ScanProgress, ScanResult
from ..core.errors import UserError
from ..core.imaging import make_grid
from ..core.devices import choose_device, device_memory_bytes, use_bf16
from ..core.memory import estimate_training_memory
from ..core.model_store import ModelError
from ..core.schedule import SCHEDULE_KINDS
from ..core.training import (
    PRECISIONS,
    CheckpointEvent,
    FailedEvent,
    FinishedEvent,
    PreviewEvent,
    StartedEvent,
    StepEvent,
    TrainingConfig,
    merge_step_events,
    threads_beside_a_window,
    train,
    train_from_folder,
)
from ..core.unet import PRESETS
from .context import StudioContext
from .dataset_page import CHANNEL_CHOICES, RESOLUTIONS
from .image_view import ImageView
from .jobs import JobController
from .loss_plot import LossPlot
from .model_library import ModelPicker
from .page import Page
from .style import ACTION_BUTTON_HEIGHT, MUTED_TEXT_STYLE, WARNING_TEXT_STYLE, error_box

DEFAULT_PRESET = "small"
# A first run on a CPU: long enough to learn the demo shapes, with previews and checkpoints along the way.
FIRST_RUN = {"steps": 5000, "preview_every": 250, "checkpoint_every": 500}
REMEMBERED_SETTINGS = ("batch_size", "learning_rate", "steps", "ema_decay", "precision", "schedule", "num_timesteps",
                       "preview_every", "preview_count", "checkpoint_every")
# An estimate above this share of the device's memory gets a warning.
MEMORY_WARNING_SHARE = 0.8
NAME_PATTERN = re.compile(r"[^A-Za-z0-9._-]+")


def format_bytes(count: int) -> str:
    if count >= 2**30:
        return f"{count / 2**30:.1f} GiB"
    return f"{count / 2**20:.0f} MiB"


def format_duration(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    if hours:
        return f"{hours} h {minutes:02d} min"
    if minutes:
        return f"{minutes} min {seconds:02d} s"
    return f"{seconds} s"


def folder_name_for(sources: list[Path]) -> str:
    """A model name from the dataset's folder: its name, or the folder of the files given."""
    if not sources:
        return "model"
    source = Path(sources[0])
    name = source.name if source.is_dir() else source.parent.name
    return NAME_PATTERN.sub("-", name).strip("-.") or "model"


def unique_name(base: str, folder: Path) -> str:
    """``base``, or ``base-2``, ``base-3``… whichever is not yet a folder in ``folder``."""
    candidate, number = base, 2
    while (folder / candidate).exists():
        candidate, number = f"{base}-{number}", number + 1
    return candidate


class LogStepSpinBox(QDoubleSpinBox):
    """A number spin box that steps by factors: a learning rate by x2, an EMA decay by 0.9 → 0.99 → 0.999."""

    def __init__(self, minimum: float, maximum: float, complement: bool = False, parent: QWidget | None = None):
        super().__init__(parent)
        self.complement = complement  # step 1 - value instead of value
        self.setDecimals(10)
        self.setRange(minimum, maximum)
        self.setKeyboardTracking(False)

    def textFromValue(self, value: float) -> str:
        return f"{value:.6g}"

    def valueFromText(self, text: str) -> float:
        try:
            return float(text)
        except ValueError:
            return self.value()

    def validate(self, text: str, position: int):
        try:
            float(text)
            return QValidator.State.Acceptable, text, position
        except ValueError:
            return QValidator.State.Intermediate, text, position

    def stepBy(self, steps: int) -> None:
        value = self.value()
        if self.complement:
            self.setValue(1.0 - (1.0 - value) * 10.0 ** (-steps))
        else:
            self.setValue(value * 2.0**steps)


class TrainPage(Page):
    """Trains a model on the dataset from the Dataset page; ``modelSaved(path)`` after each save."""

    modelSaved = Signal(object)  # Path of the model folder just written

    def __init__(self, context: StudioContext, parent: QWidget | None = None):
        super().__init__(context, parent, job_name="training", stopping_text="Stopping after this step and saving…")
        self.estimates = JobController(self, "memory estimate", with_controls=False)
        self.dataset: ScanResult | None = None
        self.run_path: Path | None = None
        self.started_step = 0
        self.started_time = 0.0
        self.current_step = 0
        self.total_steps = 0
        self._name_edited = False
        self._estimate_wanted = False
        self._shut_down = False  # after shutdown() no new background work starts
        self._loaded_model: Path | None = None  # the model whose curve and settings are shown for Resume
        self._build()
        self._restore_settings()
        self._suggest_name()
        self._settings_changed()

    # --- layout -----------------------------------------------------------------------------------
    def _build(self) -> None:
        settings_panel = self._build_settings()
        run_panel = self._build_run_panel()
        scroll = QScrollArea()
        scroll.setWidget(settings_panel)
        scroll.setWidgetResizable(True)
        scroll.setFrameShape(QFrame.Shape.NoFrame)
        scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        scroll.setMinimumWidth(settings_panel.sizeHint().width() + 16)
        splitter = QSplitter(Qt.Orientation.Horizontal)
        splitter.addWidget(scroll)
        splitter.addWidget(run_panel)
        splitter.setStretchFactor(0, 0)
        splitter.setStretchFactor(1, 1)
        splitter.setCollapsible(0, False)
        layout = QVBoxLayout(self)
        layout.addWidget(splitter)

    def _build_settings(self) -> QWidget:
        self.dataset_label = QLabel()
        self.dataset_label.setWordWrap(True)

        self.preset_combo = QComboBox()
        for name, preset in PRESETS.items():
            self.preset_combo.addItem(name, name)
            self.preset_combo.setItemData(self.preset_combo.count() - 1, preset.description, Qt.ItemDataRole.ToolTipRole)
        self.preset_description = QLabel()
        self.preset_description.setWordWrap(True)
        self.preset_description.setStyleSheet(MUTED_TEXT_STYLE)
        self.resolution_combo = QComboBox()
        for size in RESOLUTIONS:
            self.resolution_combo.addItem(f"{size} × {size} px", size)
        self.channels_combo = QComboBox()
        for label, channels in CHANNEL_CHOICES:
            self.channels_combo.addItem(label, channels)
        self.batch_spin = QSpinBox()
        self.batch_spin.setRange(1, 4096)
        self.learning_rate_spin = LogStepSpinBox(1e-7, 0.5)
        self.learning_rate_spin.setToolTip("Adam's learning rate; the arrows halve or double it.")
        self.steps_spin = QSpinBox()
        self.steps_spin.setRange(1, 100_000_000)
        self.steps_spin.setSingleStep(1000)
        self.steps_spin.setGroupSeparatorShown(True)
        self.steps_spin.setToolTip("Total optimisation steps; a resumed run continues up to this number.")
        self.ema_spin = LogStepSpinBox(0.0, 0.999999, complement=True)
        self.ema_spin.setToolTip("Decay of the weights' moving average used for sampling (the paper: 0.9999).")
        self.name_edit = QLineEdit()
        self.name_edit.setToolTip(f"The model folder's name, in {model_store.default_user_models_dir()}")
        self.name_edit.textEdited.connect(self._name_was_edited)

        form = QFormLayout()
        form.setFieldGrowthPolicy(QFormLayout.FieldGrowthPolicy.AllNonFixedFieldsGrow)
        form.addRow("Preset", self.preset_combo)
        form.addRow("", self.preset_description)
        form.addRow("Resolution", self.resolution_combo)
        form.addRow("Channels", self.channels_combo)
        form.addRow("Batch size", self.batch_spin)
        form.addRow("Learning rate", self.learning_rate_spin)
        form.addRow("Steps", self.steps_spin)
        form.addRow("EMA decay", self.ema_spin)
        form.addRow("Model name", self.name_edit)

        self.advanced_button = QToolButton()
        self.advanced_button.setText("Advanced")
        self.advanced_button.setCheckable(True)
        self.advanced_button.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextBesideIcon)
        self.advanced_button.setArrowType(Qt.ArrowType.RightArrow)
        self.advanced_button.setStyleSheet("QToolButton { border: none; }")
        self.advanced_box = QWidget()
        self.precision_combo = QComboBox()
        self.precision_combo.addItems(list(PRECISIONS))
        self.precision_combo.setToolTip("auto: bfloat16 autocast on GPUs that support it, else float32.")
        self.schedule_combo = QComboBox()
        self.schedule_combo.addItems(list(SCHEDULE_KINDS))
        self.timesteps_spin = QSpinBox()
        self.timesteps_spin.setRange(2, 100_000)
        self.timesteps_spin.setToolTip("T, the number of diffusion steps (the paper: 1000).")
        self.preview_every_spin = QSpinBox()
        self.preview_every_spin.setRange(1, 10_000_000)
        self.preview_every_spin.setSingleStep(100)
        self.preview_count_spin = QSpinBox()
        self.preview_count_spin.setRange(0, 64)
        self.preview_count_spin.setToolTip("Images in each preview grid, sampled at a fixed seed (0: no previews).")
        self.checkpoint_every_spin = QSpinBox()
        self.checkpoint_every_spin.setRange(1, 10_000_000)
        self.checkpoint_every_spin.setSingleStep(500)
        self.checkpoint_every_spin.setToolTip("Steps between checkpoints (one is also saved every 10 minutes, and on Stop).")
        advanced_form = QFormLayout(self.advanced_box)
        advanced_form.setContentsMargins(0, 0, 0, 0)
        advanced_form.addRow("Precision", self.precision_combo)
        advanced_form.addRow("Noise schedule", self.schedule_combo)
        advanced_form.addRow("Timesteps T", self.timesteps_spin)
        advanced_form.addRow("Preview every", self.preview_every_spin)
        advanced_form.addRow("Preview images", self.preview_count_spin)
        advanced_form.addRow("Checkpoint every", self.checkpoint_every_spin)
        self.advanced_box.hide()
        self.advanced_button.toggled.connect(self._toggle_advanced)

        self.memory_label = QLabel("Memory: estimating…")
        self.memory_label.setWordWrap(True)
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

        new_box = QGroupBox("New model")
        new_layout = QVBoxLayout(new_box)
        new_layout.addWidget(self.dataset_label)
        new_layout.addLayout(form)
        new_layout.addWidget(self.advanced_button)
        new_layout.addWidget(self.advanced_box)
        new_layout.addWidget(self.memory_label)
        new_layout.addLayout(buttons)
        new_layout.addWidget(self.start_hint)

        self.resume_picker = ModelPicker(self.context.library, resumable_only=True)
        self.resume_picker.activated.connect(lambda _index: self.show_model(self.resume_picker.current_path()))
        self.resume_button = QPushButton("Resume")
        self.resume_button.setToolTip("Continue training the chosen model up to Steps.")
        self.resume_button.clicked.connect(self.resume_training)
        self.resume_hint = QLabel()
        self.resume_hint.setWordWrap(True)
        resume_box = QGroupBox("Continue a saved model")
        resume_layout = QVBoxLayout(resume_box)
        resume_row = QHBoxLayout()
        resume_row.addWidget(self.resume_picker, 1)
        resume_row.addWidget(self.resume_button)
        resume_layout.addLayout(resume_row)
        resume_layout.addWidget(self.resume_hint)
        self.resume_picker.modelChanged.connect(lambda _path: self._update_enabled())

        panel = QWidget()
        panel.setMinimumWidth(330)
        layout = QVBoxLayout(panel)
        layout.setContentsMargins(0, 0, 4, 0)
        layout.addWidget(new_box)
        layout.addWidget(resume_box)
        layout.addStretch(1)

        for combo in (self.resolution_combo, self.channels_combo, self.precision_combo, self.schedule_combo):
            combo.currentIndexChanged.connect(self._settings_changed)
        self.preset_combo.currentIndexChanged.connect(self._preset_changed)
        for spin in (self.batch_spin, self.steps_spin, self.timesteps_spin, self.preview_every_spin,
                     self.preview_count_spin, self.checkpoint_every_spin, self.learning_rate_spin, self.ema_spin):
            spin.valueChanged.connect(self._settings_changed)
        self.name_edit.textChanged.connect(self._update_enabled)
        self.context.library.changed.connect(self._update_enabled)  # a model folder may have taken the name
        return panel

    def _build_run_panel(self) -> QWidget:
        self.step_value = QLabel("–")
        self.speed_value = QLabel("–")
        self.eta_value = QLabel("–")
        self.loss_value = QLabel("–")
        self.device_value = QLabel("–")
        stats = QGridLayout()
        stats.setHorizontalSpacing(18)
        for column, (title, value) in enumerate(
            (("Step", self.step_value), ("Speed", self.speed_value), ("Time left", self.eta_value),
             ("Loss", self.loss_value), ("Device", self.device_value))
        ):
            caption = QLabel(title)
            caption.setStyleSheet(MUTED_TEXT_STYLE)
            value.setStyleSheet("font-size: 13pt; font-weight: 600;")
            value.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
            stats.addWidget(caption, 0, column)
            stats.addWidget(value, 1, column)
            stats.setColumnStretch(column, 1)
        self.progress_bar = self.jobs.progress_bar
        self.jobs.idle_format = "%p%"
        self.jobs.reset_progress()
        self.status_label = self.jobs.status_label
        self.status_label.setText("No run yet.")
        self.status_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.error_label = error_box()

        self.loss_plot = LossPlot()
        self.preview_view = ImageView("Preview images appear here during training, sampled at a fixed seed.",
                                      caption="Preview")
        self.preview_view.setMinimumWidth(220)
        plots = QSplitter(Qt.Orientation.Horizontal)
        plots.addWidget(self.loss_plot)
        plots.addWidget(self.preview_view)
        plots.setStretchFactor(0, 3)
        plots.setStretchFactor(1, 2)
        plots.setSizes([600, 360])

        panel = QWidget()
        panel.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Expanding)
        layout = QVBoxLayout(panel)
        layout.setContentsMargins(4, 0, 0, 0)
        layout.addLayout(stats)
        layout.addWidget(self.progress_bar)
        layout.addWidget(self.status_label)
        layout.addWidget(self.error_label)
        layout.addWidget(plots, 1)
        return panel

    def _toggle_advanced(self, shown: bool) -> None:
        self.advanced_box.setVisible(shown)
        self.advanced_button.setArrowType(Qt.ArrowType.DownArrow if shown else Qt.ArrowType.RightArrow)

    # --- settings ---------------------------------------------------------------------------------
    @staticmethod
    def _select(combo: QComboBox, value) -> None:
        index = combo.findData(value)
        if index < 0:
            index = combo.findText(str(value))
        if index >= 0:
            combo.setCurrentIndex(index)

    def _select_size(self, size: int) -> None:
        """Show ``size`` as the resolution, adding it to the list if a model or dataset uses an unusual one."""
        if self.resolution_combo.findData(size) < 0:
            sizes = sorted({int(self.resolution_combo.itemData(i)) for i in range(self.resolution_combo.count())} | {size})
            self.resolution_combo.insertItem(sizes.index(size), f"{size} × {size} px", size)
        self._select(self.resolution_combo, size)

    def _restore_settings(self) -> None:
        settings = self.context.settings
        preset = str(settings.value("train/preset", DEFAULT_PRESET))
        config = TrainingConfig.for_preset(preset if preset in PRESETS else DEFAULT_PRESET, **FIRST_RUN)
        for key in REMEMBERED_SETTINGS:
            stored = settings.value(f"train/{key}")
            if stored is not None:
                try:
                    setattr(config, key, type(getattr(config, key))(stored))
                except (TypeError, ValueError):
                    pass  # a damaged settings file: keep the default
        self.fill_settings(config)
        self.advanced_button.setChecked(str(settings.value("train/advanced", "false")).lower() == "true")

    def save_settings(self) -> None:
        config = self.config()
        settings = self.context.settings
        settings.setValue("train/preset", config.preset)
        for key in REMEMBERED_SETTINGS:
            settings.setValue(f"train/{key}", getattr(config, key))
        settings.setValue("train/advanced", self.advanced_button.isChecked())

    def preset(self) -> str:
        return str(self.preset_combo.currentData())

    def config(self) -> TrainingConfig:
        """The training settings as shown."""
        return TrainingConfig.for_preset(
            self.preset(),
            image_size=int(self.resolution_combo.currentData()),
            image_channels=int(self.channels_combo.currentData()),
            batch_size=self.batch_spin.value(),
            learning_rate=self.learning_rate_spin.value(),
            steps=self.steps_spin.value(),
            ema_decay=self.ema_spin.value(),
            precision=self.precision_combo.currentText(),
            schedule=self.schedule_combo.currentText(),
            num_timesteps=self.timesteps_spin.value(),
            preview_every=self.preview_every_spin.value(),
            preview_count=self.preview_count_spin.value(),
            checkpoint_every=self.checkpoint_every_spin.value(),
        )

    def fill_settings(self, config: TrainingConfig) -> None:
        """Show ``config`` in the widgets (a stored run's, or saved settings)."""
        widgets = [self.preset_combo, self.resolution_combo, self.channels_combo, self.precision_combo,
                   self.schedule_combo, self.batch_spin, self.learning_rate_spin, self.steps_spin, self.ema_spin,
                   self.timesteps_spin, self.preview_every_spin, self.preview_count_spin, self.checkpoint_every_spin]
        for widget in widgets:
            widget.blockSignals(True)
        self._select(self.preset_combo, config.preset)
        self.preset_description.setText(PRESETS[self.preset()].description)
        self._select_size(config.image_size)
        self._select(self.channels_combo, config.image_channels)
        self._select(self.precision_combo, config.precision)
        self._select(self.schedule_combo, config.schedule)
        self.batch_spin.setValue(config.batch_size)
        self.learning_rate_spin.setValue(config.learning_rate)
        self.steps_spin.setValue(config.steps)
        self.ema_spin.setValue(config.ema_decay)
        self.timesteps_spin.setValue(config.num_timesteps)
        self.preview_every_spin.setValue(config.preview_every)
        self.preview_count_spin.setValue(config.preview_count)
        self.checkpoint_every_spin.setValue(config.checkpoint_every)
        for widget in widgets:
            widget.blockSignals(False)
        self._settings_changed()

    def _preset_changed(self) -> None:
        """A preset brings its suggested batch size and learning rate; the resolution stays the dataset's."""
        suggested = TrainingConfig.for_preset(self.preset())
        self.preset_description.setText(PRESETS[self.preset()].description)
        self.preset_combo.setToolTip(PRESETS[self.preset()].description)
        for widget, value in ((self.batch_spin, suggested.batch_size), (self.learning_rate_spin, suggested.learning_rate)):
            widget.blockSignals(True)
            widget.setValue(value)
            widget.blockSignals(False)
        if self.dataset is None:
            self._select_size(suggested.image_size)
        self._settings_changed()

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
        base = folder_name_for(list(self.dataset.sources)) if self.dataset is not None else "model"
        self.name_edit.setText(unique_name(base, self.models_dir()))

    def set_dataset(self, result: ScanResult) -> None:
        """The Dataset page scanned images: train on them, at their resolution unless changed here."""
        self.dataset = result
        if not self.is_training():
            self._select_size(result.image_size)
            self._select(self.channels_combo, result.channels)
            self._name_edited = False
            self._suggest_name()
        self._update_enabled()

    # --- memory estimate --------------------------------------------------------------------------
    def _request_estimate(self) -> None:
        """Estimate in the background: the first estimate makes torch load its meta kernels (seconds)."""
        if self._shut_down:
            return
        if self.estimates.is_running():
            self._estimate_wanted = True  # estimated again when this one ends
            return
        self._estimate_wanted = False
        try:
            config = self.config()
            unet_config = config.unet_config()
        except UserError as error:
            self.memory_label.setText(f"Memory: cannot estimate ({error})")
            self.memory_label.setStyleSheet(WARNING_TEXT_STYLE)
            return
        batch_size = config.batch_size
        bf16 = use_bf16(config.precision, choose_device("auto"))
        dataset_images = len(self.dataset.files) if self.dataset is not None else 0

        def estimate():
            yield estimate_training_memory(unet_config, batch_size, bf16, dataset_images)

        self.estimates.run(estimate, on_event=self._show_estimate,
                           on_done=lambda _stopped: self._estimate_wanted and self._request_estimate())

    @Slot(object)
    def _show_estimate(self, estimate) -> None:
        device = choose_device("auto")
        available = device_memory_bytes(device)
        where = "GPU" if device.type == "cuda" else "CPU"
        text = f"Memory: ≈ {format_bytes(estimate.total_bytes)} on the {where} ({estimate.parameters:,} parameters)"
        if available and estimate.total_bytes > MEMORY_WARNING_SHARE * available:
            text += (f". That is more than this {'GPU' if where == 'GPU' else 'computer'} has to spare "
                     f"({format_bytes(available)} in all): lower the batch size or choose a smaller preset.")
            self.memory_label.setStyleSheet(WARNING_TEXT_STYLE)
        else:
            self.memory_label.setStyleSheet("")
        self.memory_label.setText(text)

    # --- state --------------------------------------------------------------------------------------
    def is_training(self) -> bool:
        return self.jobs.is_running()

    def _update_enabled(self) -> None:
        training = self.is_training()
        for widget in (self.preset_combo, self.resolution_combo, self.channels_combo, self.batch_spin,
                       self.learning_rate_spin, self.steps_spin, self.ema_spin, self.name_edit, self.advanced_box,
                       self.resume_picker):
            widget.setEnabled(not training)
        if self.dataset is None:
            self.dataset_label.setText("<b>No dataset yet.</b> Load images on the <b>1 · Dataset</b> page first.")
        else:
            count = len(self.dataset.files)
            size = self.dataset.image_size
            self.dataset_label.setText(
                f"<b>Dataset:</b> {count:,} images at {size}×{size} from {folder_name_for(list(self.dataset.sources))}"
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

    def _start_blocker(self) -> str | None:
        """Why Start cannot run now, in a sentence; None when it can."""
        if self.dataset is None:
            return "Start needs a dataset: drop a folder on the window, or use the demo dataset on the Dataset page."
        try:
            self.config().validate()
        except UserError as error:
            return str(error)
        name = self.name_edit.text().strip()
        if not name:
            return "Give the model a name."
        if NAME_PATTERN.search(name) or name.startswith("."):
            return "Use only letters, digits, '.', '_' and '-' in the model name."
        if (self.models_dir() / name).exists():
            return f"A model named {name} already exists; choose another name, or continue it below."
        return None

    # --- running ------------------------------------------------------------------------------------
    def start_training(self) -> None:
        """Train a new model on the loaded dataset."""
        reason = self._start_blocker()
        if reason is not None:
            self.show_error(reason)
            return
        config = self.config()
        out_dir = self.models_dir() / self.name_edit.text().strip()
        dataset = self.dataset
        threads = threads_beside_a_window()
        if (dataset.image_size, dataset.channels) == (config.image_size, config.image_channels):
            summary = dataset.summary()
            summary["paths"] = [str(Path(path).resolve()) for path in dataset.sources]
            images = dataset.images
            make_iterator = lambda: train(config, images, out_dir, summary, cpu_threads=threads)  # noqa: E731
        else:
            sources = list(dataset.sources)
            make_iterator = lambda: train_from_folder(sources, config, out_dir, cpu_threads=threads)  # noqa: E731
        self.loss_plot.clear()
        self.preview_view.set_image(None)
        self._launch(make_iterator, out_dir, f"Training {out_dir.name}…")

    def resume_training(self) -> None:
        """Continue the chosen model up to Steps, on the loaded dataset if it fits, else on its own images."""
        path = self.resume_picker.current_path()
        if path is None:
            return
        if self._loaded_model != path:
            self.show_model(path)
        try:
            info = model_store.read_model_info(path)
        except ModelError as error:
            self.show_error(str(error))
            return
        config = TrainingConfig.from_dict(info.training)
        ui = self.config()
        for key in ("batch_size", "learning_rate", "steps", "ema_decay", "precision", "preview_every",
                    "preview_count", "checkpoint_every"):
            setattr(config, key, getattr(ui, key))
        if config.steps <= info.step:
            self.show_error(f"{info.name} has trained {info.step:,} steps already; set Steps above that to continue.")
            return
        unet = info.unet
        dataset = self.dataset
        threads = threads_beside_a_window()
        if dataset is not None and (dataset.image_size, dataset.channels) == (unet.image_size, unet.image_channels):
            images = dataset.images
            make_iterator = lambda: train(config, images, path, resume=True, cpu_threads=threads)  # noqa: E731
        else:
            paths = [Path(p) for p in info.dataset.get("paths", [])]
            if not paths or not all(p.exists() for p in paths):
                self.show_error(
                    f"The images {info.name} was trained on are not found; load a dataset on the Dataset page "
                    f"(it is rescanned at {unet.image_size}×{unet.image_size}) and press Resume again."
                )
                return
            make_iterator = lambda: train_from_folder(paths, config, path, resume=True,  # noqa: E731
                                                      cpu_threads=threads)
        self._launch(make_iterator, path, f"Resuming {info.name} from step {info.step:,}…")

    def _launch(self, make_iterator, out_dir: Path, message: str) -> None:
        self.error_label.hide()
        self.run_path = out_dir
        self.current_step = 0
        self.total_steps = 0
        for label in (self.step_value, self.speed_value, self.eta_value, self.loss_value):
            label.setText("–")
        self.run_job(make_iterator, name=f"training {out_dir.name}", status=message,
                     progress_types=(StepEvent, ScanProgress), merge=merge_step_events, on_progress=self._on_progress,
                     on_event=self._on_event, on_error=self.show_error, on_done=self._on_done)

    def stop_training(self) -> None:
        """Stop after the current step; the trainer saves the model as it closes."""
        self.jobs.stop()

    def shutdown(self) -> None:
        self._shut_down = True  # no new memory estimates
        self.loss_plot.stop()

    # --- events of the run --------------------------------------------------------------------------
    @Slot(object)
    def _on_progress(self, event) -> None:
        if isinstance(event, ScanProgress):
            self.status_label.setText(f"Scanning the images at the chosen resolution: {event.done:,} of {event.total:,}")
            return
        self.loss_plot.append(event.losses)
        self.current_step, self.total_steps = event.step, event.total_steps
        self.progress_bar.setRange(0, event.total_steps)
        self.progress_bar.setValue(event.step)
        self.step_value.setText(f"{event.step:,} / {event.total_steps:,}")
        if event.steps_per_second:
            self.speed_value.setText(f"{event.steps_per_second:.1f} steps/s · {event.images_per_second:,.0f} img/s")
        elapsed = time.monotonic() - self.started_time
        done = event.step - self.started_step
        if done > 0 and elapsed > 0:
            self.eta_value.setText(format_duration(elapsed / done * (event.total_steps - event.step)))
        if event.losses:
            self.loss_value.setText(f"{event.losses[-1]:.4g}")

    @Slot(object)
    def _on_event(self, event) -> None:
        if isinstance(event, StartedEvent):
            self.started_step, self.started_time = event.step, time.monotonic()
            self.total_steps = event.total_steps
            self.device_value.setText(event.device if event.dtype == "float32" else f"{event.device} · {event.dtype}")
            self.loss_plot.set_history(event.loss_history)
            self.progress_bar.setRange(0, event.total_steps)
            self.progress_bar.setValue(event.step)
            self.step_value.setText(f"{event.step:,} / {event.total_steps:,}")
            self.status_label.setText(f"Training {event.path.name}: {event.parameters:,} parameters, saved in {event.path}")
        elif isinstance(event, ScanResult):
            self.status_label.setText(f"Scanned {len(event.files):,} images at {event.image_size} px; training starts.")
        elif isinstance(event, PreviewEvent):
            self.preview_view.set_image(make_grid(event.images, padding=1))
            self.preview_view.set_caption(f"Preview at step {event.step:,} (fixed seed)")
        elif isinstance(event, CheckpointEvent):
            self.status_label.setText(f"Saved a checkpoint at step {event.step:,} in {event.path}")
            self.modelSaved.emit(event.path)
        elif isinstance(event, FinishedEvent):
            self.status_label.setText(f"Finished {event.step:,} steps. The model is saved in {event.path}")
        elif isinstance(event, FailedEvent):
            self.show_error(event.reason)

    def _on_done(self, stopped: bool) -> None:
        path = self.run_path
        saved = path is not None and (path / model_store.CONFIG_FILE).is_file()
        if stopped:
            self.status_label.setText(
                f"Stopped at step {self.current_step:,}; saved in {path}. Resume continues it." if saved
                else "Stopped before the first step; nothing was saved."
            )
        if saved:
            self.modelSaved.emit(path)
            self.context.library.refresh()
            self.resume_picker.select(path)
            self._loaded_model = path
            steps = self.steps_spin.value()
            self.resume_hint.setText(
                f"{path.name}: {self.current_step:,} steps trained. "
                + (f"Resume continues it up to {steps:,} steps." if self.current_step < steps
                   else "To continue it, raise Steps, then Resume.")
            )
            self.context.show_message(f"Model saved: {path.name} at step {self.current_step:,}.")
        self._name_edited = False
        self._suggest_name()

    def show_error(self, message: str) -> None:
        self.error_label.setText(message)
        self.error_label.show()

    # --- reopening a model --------------------------------------------------------------------------
    def show_model(self, path: Path | None) -> None:
        """Show a saved model's curve and settings, ready to Resume."""
        if path is None or self.is_training():
            return
        try:
            info = model_store.read_model_info(path)
            history = model_store.load_loss_history(path)
        except ModelError as error:
            self.show_error(str(error))
            return
        self._loaded_model = path
        self.error_label.hide()
        self.loss_plot.set_history(history)
        config = TrainingConfig.from_dict(info.training)
        if config.steps <= info.step:
            config.steps = info.step + max(config.steps, 1000)
        self.fill_settings(config)
        self.step_value.setText(f"{info.step:,}")
        self.loss_value.setText(f"{info.last_loss:.4g}" if info.last_loss is not None else "–")
        self.resume_hint.setText(f"{info.name}: {info.step:,} steps trained; Resume continues up to Steps ({config.steps:,}).")
        preview = path / model_store.PREVIEW_FILE
        self.preview_view.set_image(_read_png(preview) if preview.is_file() else None)
        self.preview_view.set_caption(f"Last preview of {info.name}" if preview.is_file() else "Preview")


def _read_png(path: Path) -> np.ndarray | None:
    from PIL import Image

    try:
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB"))
    except OSError:
        return None

