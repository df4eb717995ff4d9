"""The training settings as a form: widgets ↔ ``TrainingConfig`` ↔ the saved settings.

The Train page lays the form out and adds its own rows (the model's name); the form knows
which widget shows which setting, what a preset suggests, and how the settings are remembered.
"""

from __future__ import annotations

import math

from PySide6.QtCore import QSettings, Qt, Signal
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QSpinBox,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from ddpm_studio.core.diffusion.schedule import SCHEDULE_KINDS
from ddpm_studio.core.model.unet import PRESETS
from ddpm_studio.core.system.devices import PRECISIONS
from ddpm_studio.core.training.config import FORM_CONTROLS, TrainingConfig
from ddpm_studio.gui.pages.dataset import CHANNEL_CHOICES, RESOLUTIONS
from ddpm_studio.gui.style import MUTED_TEXT_STYLE
from ddpm_studio.gui.widgets.log_spin_box import LogStepSpinBox

DEFAULT_PRESET = "small"
# A first run on a CPU: long enough to learn the demo shapes, with previews and checkpoints along the way.
FIRST_RUN = {"steps": 5000, "preview_every": 250, "checkpoint_every": 500}
VARIANCE_CHOICES = (("Fixed (L_simple)", "fixed"), ("Learned (L_hybrid, Nichol & Dhariwal)", "learned"))
# The TrainingConfig fields the form shows, each in the control its declaration names (config.py); the rest
# come from the preset.
FORM_FIELDS = tuple(FORM_CONTROLS)
# How a step saves memory: shown (and kept by a resumed run), not remembered between sessions.
MEMORY_SAVING_SETTINGS = ("accumulate", "micro_batch", "checkpoint_activations")
# Remembered between sessions; the preset apart, the resolution, channels and classes are the dataset's.
REMEMBERED_SETTINGS = tuple(name for name in FORM_FIELDS
                            if name not in ("preset", "image_size", "image_channels", "classes",
                                            *MEMORY_SAVING_SETTINGS))
NOT_LABELLED = "Needs a labelled dataset: a folder with two or more class subfolders of images."
# Shown by code of their own: the preset (and its description), an unusual resolution, and the micro-batches (a
# number of them, or the check box "as large as fits").
SHOWN_APART = ("preset", "image_size", "accumulate", "micro_batch")


def select_data(combo: QComboBox, value) -> None:
    """Choose the item whose data (or else text) is ``value``; nothing happens when there is none."""
    index = combo.findData(value)
    if index < 0:
        index = combo.findText(str(value))
    if index >= 0:
        combo.setCurrentIndex(index)


def control_value(widget: QWidget):
    """The value a control shows: a combo box's item data (or else text), a check box's state, a spin box's value."""
    if isinstance(widget, QComboBox):
        data = widget.currentData()
        return widget.currentText() if data is None else data
    if isinstance(widget, QCheckBox):
        return widget.isChecked()
    return widget.value()


def show_value(widget: QWidget, value) -> None:
    if isinstance(widget, QComboBox):
        select_data(widget, value)
    elif isinstance(widget, QCheckBox):
        widget.setChecked(value)
    else:
        widget.setValue(value)


def spin_box(minimum: int, maximum: int, single_step: int = 1, tooltip: str = "") -> QSpinBox:
    spin = QSpinBox()
    spin.setRange(minimum, maximum)
    spin.setSingleStep(single_step)
    if tooltip:
        spin.setToolTip(tooltip)
    return spin


class TrainingForm(QWidget):
    """``changed()`` whenever a setting changes; ``config()`` reads the form, ``fill(config)`` shows one."""

    changed = Signal()

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.resolution_follows_preset = True  # until a dataset chooses the resolution
        self.preset_combo = QComboBox()
        for name, preset in PRESETS.items():
            self.preset_combo.addItem(name, name)
            self.preset_combo.setItemData(self.preset_combo.count() - 1, preset.description,
                                          Qt.ItemDataRole.ToolTipRole)
        self.preset_description = QLabel()
        self.preset_description.setWordWrap(True)
        self.preset_description.setStyleSheet(MUTED_TEXT_STYLE)
        self.resolution_combo = QComboBox()
        for size in RESOLUTIONS:
            self.resolution_combo.addItem(f"{size} × {size} px", size)
        self.channels_combo = QComboBox()
        for label, channels in CHANNEL_CHOICES:
            self.channels_combo.addItem(label, channels)
        self.batch_spin = spin_box(1, 4096)
        self.learning_rate_spin = LogStepSpinBox(1e-7, 0.5)
        self.learning_rate_spin.setToolTip("Adam's learning rate; the arrows halve or double it.")
        self.steps_spin = spin_box(1, 100_000_000, 1000, "Total optimisation steps; a resumed run continues up to "
                                   "this number.")
        self.steps_spin.setGroupSeparatorShown(True)
        self.ema_spin = LogStepSpinBox(0.0, 0.999999, complement=True)
        self.ema_spin.setToolTip("Decay of the weights' moving average used for sampling (the paper: 0.9999).")

        self.labelled = False  # whether the chosen dataset has classes (set_labelled)
        self.classes_check = QCheckBox("Condition on classes")
        self.label_dropout_spin = QDoubleSpinBox()
        self.label_dropout_spin.setRange(0.0, 0.95)
        self.label_dropout_spin.setSingleStep(0.05)
        self.label_dropout_spin.setDecimals(2)
        self.label_dropout_spin.setPrefix("label dropout ")
        self.label_dropout_spin.setToolTip("The share of labels replaced by the null label in training, so that one "
                                           "network is also unconditional, for guided sampling (Ho & Salimans: 0.1).")
        self.classes_hint = QLabel(NOT_LABELLED)
        self.classes_hint.setWordWrap(True)
        self.classes_hint.setStyleSheet(MUTED_TEXT_STYLE)
        classes_row = QHBoxLayout()
        classes_row.addWidget(self.classes_check)
        classes_row.addWidget(self.label_dropout_spin, 1)
        self.classes_check.toggled.connect(self._show_class_state)

        self.rows = QFormLayout()  # the page may add rows of its own
        self.rows.setFieldGrowthPolicy(QFormLayout.FieldGrowthPolicy.AllNonFixedFieldsGrow)
        for label, widget in (("Preset", self.preset_combo), ("", self.preset_description),
                              ("Resolution", self.resolution_combo), ("Channels", self.channels_combo),
                              ("Batch size", self.batch_spin), ("Learning rate", self.learning_rate_spin),
                              ("Steps", self.steps_spin), ("EMA decay", self.ema_spin),
                              ("Classes", classes_row), ("", self.classes_hint)):
            self.rows.addRow(label, widget)
        self._show_class_state()

        self.advanced_button = QToolButton()
        self.advanced_button.setText("Advanced")
        self.advanced_button.setCheckable(True)
        self.advanced_button.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextBesideIcon)
        self.advanced_button.setArrowType(Qt.ArrowType.RightArrow)
        self.advanced_button.setStyleSheet("QToolButton { border: none; }")
        self.advanced_box = QWidget()
        self.precision_combo = QComboBox()
        self.precision_combo.addItems(list(PRECISIONS))
        self.precision_combo.setToolTip("auto: bfloat16 autocast where the device computes it natively, else float32.")
        self.schedule_combo = QComboBox()
        self.schedule_combo.addItems(list(SCHEDULE_KINDS))
        self.timesteps_spin = spin_box(2, 100_000, tooltip="T, the number of diffusion steps (the paper: 1000).")
        self.variance_combo = QComboBox()
        for label, name in VARIANCE_CHOICES:
            self.variance_combo.addItem(label, name)
        self.variance_combo.setToolTip("Fixed: the paper's L_simple, σ_t² chosen when sampling. Learned: the network "
                                       "also outputs σ_t² between β̃_t and β_t, trained with L_simple + 0.001 L_vlb; "
                                       "it samples well in fewer respaced DDPM steps and gives a tighter likelihood "
                                       "bound.")
        self.preview_every_spin = spin_box(1, 10_000_000, 100)
        self.preview_count_spin = spin_box(0, 64, tooltip="Images in each preview grid, sampled at a fixed seed "
                                           "(0: no previews).")
        self.checkpoint_every_spin = spin_box(1, 10_000_000, 500, "Steps between checkpoints (one is also saved "
                                              "every 10 minutes, and on Stop).")
        self.eval_every_spin = spin_box(0, 10_000_000, 1000, "Steps between KID measurements of the EMA weights "
                                        "(1,000 DDIM samples against the dataset; needs the eval extra and the "
                                        "Inception weights). It costs about as much as sampling 1,000 images: "
                                        "`ddpm-studio bench` tells how much.")
        self.eval_every_spin.setSpecialValueText("off")
        self.accumulate_spin = spin_box(1, 1024, tooltip="Reach the batch size in this many micro-batches per step "
                                        "(gradient accumulation): the same training, in less memory.")
        self.auto_micro_batch_check = QCheckBox("As large as fits")
        self.auto_micro_batch_check.setToolTip("When training starts, take the largest micro-batch that the memory "
                                               "estimate fits in what the device has available.")
        self.auto_micro_batch_check.toggled.connect(lambda auto: self.accumulate_spin.setEnabled(not auto))
        self.checkpoint_check = QCheckBox("Recompute in the backward pass")
        self.checkpoint_check.setToolTip("Activation checkpointing: residual blocks keep only their inputs and "
                                         "recompute the rest for the gradients. Less memory, more compute.")
        micro_batches = QHBoxLayout()
        micro_batches.addWidget(self.accumulate_spin)
        micro_batches.addWidget(self.auto_micro_batch_check, 1)
        self.advanced_rows = QFormLayout(self.advanced_box)
        self.advanced_rows.setContentsMargins(0, 0, 0, 0)
        for label, widget in (("Precision", self.precision_combo), ("Noise schedule", self.schedule_combo),
                              ("Timesteps T", self.timesteps_spin), ("Variance σ_t²", self.variance_combo),
                              ("Preview every", self.preview_every_spin),
                              ("Preview images", self.preview_count_spin),
                              ("Checkpoint every", self.checkpoint_every_spin),
                              ("KID every", self.eval_every_spin), ("Micro-batches", micro_batches),
                              ("Activations", self.checkpoint_check)):
            self.advanced_rows.addRow(label, widget)
        self.advanced_box.hide()
        self.advanced_button.toggled.connect(self._toggle_advanced)

        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addLayout(self.rows)
        layout.addWidget(self.advanced_button)
        layout.addWidget(self.advanced_box)

        for combo in (self.resolution_combo, self.channels_combo, self.precision_combo, self.schedule_combo,
                      self.variance_combo):
            combo.currentIndexChanged.connect(self.changed)
        self.preset_combo.currentIndexChanged.connect(self._preset_changed)
        for spin in self.value_widgets():
            if isinstance(spin, (QSpinBox, QDoubleSpinBox, LogStepSpinBox)):
                spin.valueChanged.connect(self.changed)
            elif isinstance(spin, QCheckBox):
                spin.toggled.connect(self.changed)

    def value_widgets(self) -> list[QWidget]:
        """Every widget that shows a setting."""
        return [getattr(self, control) for control in FORM_CONTROLS.values()]

    def set_labelled(self, labelled: bool, description: str = "") -> None:
        """The chosen dataset has classes (``description``: its one line about them) or not; without them the class
        controls are off, and say why."""
        self.labelled = labelled
        self.classes_hint.setText(description if labelled else NOT_LABELLED)
        self._show_class_state()

    def _show_class_state(self) -> None:
        if not self.labelled and self.classes_check.isChecked():
            self.classes_check.setChecked(False)  # toggled: back here once more, unchecked
            return
        self.classes_check.setEnabled(self.labelled)
        self.label_dropout_spin.setEnabled(self.labelled and self.classes_check.isChecked())
        why = "" if self.labelled else NOT_LABELLED
        self.classes_check.setToolTip(why or "Train one network that is both class-conditional and unconditional "
                                             "(the classes are the dataset's subfolders).")

    def _toggle_advanced(self, shown: bool) -> None:
        self.advanced_box.setVisible(shown)
        self.advanced_button.setArrowType(Qt.ArrowType.DownArrow if shown else Qt.ArrowType.RightArrow)

    # --- widgets ↔ TrainingConfig ----------------------------------------------------------------
    def preset(self) -> str:
        return str(self.preset_combo.currentData())

    def config(self) -> TrainingConfig:
        """The training settings as shown."""
        shown = {name: control_value(getattr(self, control)) for name, control in FORM_CONTROLS.items()}
        auto = shown["micro_batch"]  # the check box: micro-batches as large as fit
        shown.update(accumulate=1 if auto else shown["accumulate"], micro_batch="auto" if auto else None)
        return TrainingConfig.for_preset(shown.pop("preset"), **shown)

    def use_micro_batches(self, count: int) -> None:
        """Reach the batch size in ``count`` micro-batches (the answer to a run that would not fit)."""
        self.auto_micro_batch_check.setChecked(False)
        self.accumulate_spin.setValue(count)

    def shown_settings(self) -> dict:
        """The settings the form shows, by TrainingConfig field (what a resumed run is asked to use)."""
        config = self.config()
        return {name: getattr(config, name) for name in FORM_FIELDS}

    def fill(self, config: TrainingConfig) -> None:
        """Show ``config`` (a stored run's, or saved settings); ``changed`` once at the end."""
        widgets = self.value_widgets()
        for widget in widgets:
            widget.blockSignals(True)
        select_data(self.preset_combo, config.preset)
        self.preset_description.setText(PRESETS[self.preset()].description)
        self.select_size(config.image_size)
        for name, control in FORM_CONTROLS.items():
            if name not in SHOWN_APART:
                show_value(getattr(self, control), getattr(config, name))
        # A run split by --micro-batch M shows as its number of micro-batches at its batch size.
        auto = config.micro_batch == "auto"
        split = (config.accumulate if config.micro_batch in (None, "auto")
                 else math.ceil(config.batch_size / config.micro_batch))
        self.accumulate_spin.setValue(1 if auto else split)
        self.accumulate_spin.setEnabled(not auto)
        self.auto_micro_batch_check.setChecked(auto)
        for widget in widgets:
            widget.blockSignals(False)
        self._show_class_state()  # a stored run's classes show only where the dataset has them
        self.changed.emit()

    def select_size(self, size: int) -> None:
        """Show ``size`` as the resolution, adding it to the list if a model or dataset uses an unusual one."""
        if self.resolution_combo.findData(size) < 0:
            shown = {int(self.resolution_combo.itemData(i)) for i in range(self.resolution_combo.count())}
            sizes = sorted(shown | {size})
            self.resolution_combo.insertItem(sizes.index(size), f"{size} × {size} px", size)
        select_data(self.resolution_combo, size)

    def select_channels(self, channels: int) -> None:
        select_data(self.channels_combo, channels)

    def _preset_changed(self) -> None:
        """A preset brings its suggested batch size and learning rate; the resolution stays the dataset's."""
        suggested = TrainingConfig.for_preset(self.preset())
        self.preset_description.setText(PRESETS[self.preset()].description)
        self.preset_combo.setToolTip(PRESETS[self.preset()].description)
        for widget, value in ((self.batch_spin, suggested.batch_size),
                              (self.learning_rate_spin, suggested.learning_rate)):
            widget.blockSignals(True)
            widget.setValue(value)
            widget.blockSignals(False)
        if self.resolution_follows_preset:
            self.select_size(suggested.image_size)
        self.changed.emit()

    # --- TrainingConfig ↔ saved settings ---------------------------------------------------------
    def restore(self, settings: QSettings) -> None:
        preset = str(settings.value("train/preset", DEFAULT_PRESET))
        config = TrainingConfig.for_preset(preset if preset in PRESETS else DEFAULT_PRESET, **FIRST_RUN)
        for key in REMEMBERED_SETTINGS:
            stored = settings.value(f"train/{key}")
            if stored is not None:
                try:
                    setattr(config, key, type(getattr(config, key))(stored))
                except (TypeError, ValueError):
                    pass  # a damaged settings file: keep the default
        self.fill(config)
        self.advanced_button.setChecked(str(settings.value("train/advanced", "false")).lower() == "true")

    def save(self, settings: QSettings) -> None:
        config = self.config()
        settings.setValue("train/preset", config.preset)
        for key in REMEMBERED_SETTINGS:
            settings.setValue(f"train/{key}", getattr(config, key))
        settings.setValue("train/advanced", self.advanced_button.isChecked())
