"""Following a training run: step, speed, time left, loss and device, the progress bar and status line,
the loss curve and the latest preview grid. The Train page feeds it the run's events."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from PySide6.QtCore import Qt
from PySide6.QtWidgets import QGridLayout, QLabel, QSizePolicy, QSplitter, QVBoxLayout, QWidget

from ddpm_studio.core.data.folders import ScanProgress, ScanResult
from ddpm_studio.core.model import store as model_store
from ddpm_studio.core.model.store import ModelInfo
from ddpm_studio.core.sampling.imaging import make_grid
from ddpm_studio.core.training import events
from ddpm_studio.gui.formatting import counted, format_duration
from ddpm_studio.gui.jobs.controller import JobController
from ddpm_studio.gui.style import MUTED_TEXT_STYLE, error_box
from ddpm_studio.gui.widgets.image_view import ImageView
from ddpm_studio.gui.widgets.loss_plot import LossPlot

PREVIEW_PLACEHOLDER = "Preview images appear here during training, sampled at a fixed seed."


class TrainingMonitor(QWidget):
    """The right-hand side of the Train page; ``current_step`` is the last step reported."""

    def __init__(self, jobs: JobController, parent: QWidget | None = None):
        super().__init__(parent)
        self.jobs = jobs
        self.started_step = 0
        self.started_time = 0.0
        self.current_step = 0
        self.total_steps = 0
        self.preview_step: int | None = None  # the step of the preview shown
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
        self.progress_bar = jobs.progress_bar
        jobs.idle_format = "%p%"
        jobs.reset_progress()
        self.status_label = jobs.status_label
        self.status_label.setText("No run yet.")
        self.status_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        jobs.status_box.lines = 1  # a wide line here; it grows when a text needs a second one
        jobs.status_box.make_room()
        self.error_label = error_box()

        self.loss_plot = LossPlot()
        self.preview_view = ImageView(PREVIEW_PLACEHOLDER,
                                      caption="Preview")
        self.preview_view.setMinimumWidth(220)
        plots = QSplitter(Qt.Orientation.Horizontal)
        plots.addWidget(self.loss_plot)
        plots.addWidget(self.preview_view)
        plots.setStretchFactor(0, 3)
        plots.setStretchFactor(1, 2)
        plots.setSizes([600, 360])

        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Expanding)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(4, 0, 0, 0)
        layout.addLayout(stats)
        layout.addWidget(self.progress_bar)
        layout.addWidget(jobs.status_box)
        layout.addWidget(self.error_label)
        layout.addWidget(plots, 1)

    def reset(self, new_model: bool) -> None:
        """Before a run: clear the numbers (and, for a new model, the curve and preview)."""
        self.error_label.hide()
        self.current_step = 0
        self.total_steps = 0
        for label in (self.step_value, self.speed_value, self.eta_value, self.loss_value):
            label.setText("–")
        if new_model:
            self.loss_plot.clear()
            self.preview_step = None
            self.preview_view.set_image(None)
            self.preview_view.placeholder = PREVIEW_PLACEHOLDER
            self.preview_view.setToolTip("")

    def show_error(self, message: str) -> None:
        self.error_label.setText(message)
        self.error_label.show()

    def show_progress(self, event: events.StepEvent | ScanProgress) -> None:
        if isinstance(event, ScanProgress):
            self.status_label.setText(f"Scanning the images at the chosen resolution: {event.done:,} of "
                                      f"{event.total:,}")
            return
        self.loss_plot.append(event.losses)
        self.current_step, self.total_steps = event.step, event.total_steps
        self.jobs.show_progress(event.step, event.total_steps)
        self.step_value.setText(f"{event.step:,} / {event.total_steps:,}")
        if event.steps_per_second:
            self.speed_value.setText(f"{event.steps_per_second:.1f} steps/s · {event.images_per_second:,.0f} img/s")
        elapsed = time.monotonic() - self.started_time
        done = event.step - self.started_step
        if done > 0 and elapsed > 0:
            self.eta_value.setText(format_duration(elapsed / done * (event.total_steps - event.step)))
        if event.losses:
            self.loss_value.setText(f"{event.losses[-1]:.4g}")

    def show_event(self, event: object) -> None:
        """Every event of a run that is not progress: its start, scan result, previews, saves and end."""
        if isinstance(event, events.StartedEvent):
            self.started_step, self.started_time = event.step, time.monotonic()
            self.total_steps = event.total_steps
            self.device_value.setText(event.device if event.dtype == "float32" else f"{event.device} · {event.dtype}")
            self.loss_plot.set_history(event.loss_history)
            self.jobs.show_progress(event.step, event.total_steps)
            self.step_value.setText(f"{event.step:,} / {event.total_steps:,}")
            self.status_label.setText(f"Training {event.path.name}: {event.parameters:,} parameters, saved in "
                                      f"{event.path}")
        elif isinstance(event, ScanResult):
            self.status_label.setText(f"Scanned {counted(len(event.files), 'image')} at {event.image_size} px; "
                                      "training starts.")
        elif isinstance(event, events.PreviewEvent):
            self.preview_step = event.step
            self.preview_view.set_image(make_grid(event.images, padding=1))
            self.preview_view.set_caption(f"Preview at step {event.step:,} (fixed seed)")
        elif isinstance(event, events.EvaluationEvent):
            self.loss_plot.add_kid(event.step, event.value)
            self.status_label.setText(f"KID {event.value:.4g} ± {event.std:.2g} at step {event.step:,} "
                                      f"({event.n:,} EMA samples; lower is better)")
        elif isinstance(event, events.CheckpointEvent):
            self.status_label.setText(f"Saved a checkpoint at step {event.step:,} in {event.path}")
        elif isinstance(event, events.FinishedEvent):
            self.status_label.setText(f"Finished {counted(event.step, 'step')}. The model is saved in {event.path}")
        elif isinstance(event, events.FailedEvent):
            self.status_label.setText(f"Training ended early at step {event.step:,}.")
            self.show_error(event.reason)

    def run_ended(self) -> None:
        """Nothing runs now: a speed or a time left would no longer be true, and a preview older than the
        last step says that it is."""
        for label in (self.speed_value, self.eta_value):
            label.setText("–")
        if self.preview_step is not None and self.current_step > self.preview_step:
            self.preview_view.set_caption(f"Preview at step {self.preview_step:,} (fixed seed); "
                                          f"the run stopped at step {self.current_step:,}")

    def show_saved_model(self, info: ModelInfo, history: np.ndarray, preview: np.ndarray | None,
                         preview_problem: str = "", planned_steps: int | None = None) -> None:
        """A saved model's curve, step (of the ``planned_steps`` it was trained towards) and loss, its progress
        and a line that says what is shown, and its last preview (or the sentence that says why there is none)."""
        self.error_label.hide()
        self.loss_plot.set_history(history)
        self.loss_plot.set_kid_history(training_kid(info))
        self.current_step = info.step
        planned = max(planned_steps or info.step, info.step)
        self.step_value.setText(f"{info.step:,} / {planned:,}")
        self.loss_value.setText(f"{info.last_loss:.4g}" if info.last_loss is not None else "–")
        self.jobs.show_progress(info.step, planned)
        self.status_label.setText(f"{info.name}: {counted(info.step, 'step')} of {planned:,} trained, saved in "
                                  f"{info.path}" + (". Resume continues it." if info.step < planned else "."))
        self.preview_step = last_preview_step(info.path) if preview is not None else None
        self.preview_view.set_image(preview)
        if preview is None:
            caption = "No preview" if preview_problem else "Preview"
        elif self.preview_step is None:
            caption = f"Last preview of {info.name}"
        else:
            caption = f"Last preview of {info.name}, at step {self.preview_step:,}" + (
                f" of {info.step:,}" if self.preview_step < info.step else "")
        self.preview_view.set_caption(caption)
        self.preview_view.placeholder = preview_problem or PREVIEW_PLACEHOLDER
        self.preview_view.setToolTip(preview_problem)


def last_preview_step(folder: Path) -> int | None:
    """The step of a model's latest preview grid, from the names of its previews (step_0001000.png); None if none."""
    steps = []
    for path in (folder / model_store.PREVIEW_DIR).glob("step_*.png"):
        try:
            steps.append(int(path.stem.removeprefix("step_")))
        except ValueError:
            continue  # a file of another name
    return max(steps, default=None)


def training_kid(info: ModelInfo) -> list[tuple[int, float]]:
    """(step, KID) of the measurements made during training, from the model's evaluation records."""
    return [(int(record["model_step"]), float(record["value"])) for record in model_store.evaluations(info)
            if record.get("metric") == "kid" and record.get("during_training")
            and isinstance(record.get("model_step"), int) and isinstance(record.get("value"), (int, float))]
