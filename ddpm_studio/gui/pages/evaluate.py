"""The Evaluate page: FID, KID and IS of a model's samples against a dataset, and the model's record of them.

The job is ``core.evaluation.run_evaluation`` (sampling, Inception features, the metrics) run
through the page's job controller, so it has a progress bar and Stop like every job; the
results land in the model's ``model.json`` and the table shows that history, ``--nll``
results included.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from PySide6.QtCore import Qt, QTimer
from PySide6.QtWidgets import (
    QAbstractItemView,
    QCheckBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QPushButton,
    QSpinBox,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from ddpm_studio.core.errors import UserError
from ddpm_studio.core.evaluation.inception import MetricsUnavailable
from ddpm_studio.core.evaluation.metrics import INCEPTION, METRIC_EXPLANATIONS, METRIC_NAMES, METRICS
from ddpm_studio.core.evaluation.quality import (
    FID_MINIMUM,
    EvaluationProgress,
    EvaluationRequest,
    EvaluationResult,
    run_evaluation,
)
from ddpm_studio.core.model import store as model_store
from ddpm_studio.core.system.devices import beside_a_window
from ddpm_studio.gui.context import StudioContext
from ddpm_studio.gui.jobs.workers import JobRunner
from ddpm_studio.gui.pages.page import Page
from ddpm_studio.gui.style import MUTED_TEXT_STYLE, error_box
from ddpm_studio.gui.widgets.sampling_panel import MAX_SEED, SamplingControls, settings_column
from ddpm_studio.gui.widgets.wheel_guard import enclosing_scroll_area

INCEPTION_WEIGHTS_SETTING = "evaluate/inception_weights"
TABLE_COLUMNS = ("Date", "Metric", "Value", "±", "N", "Sampler", "Model step", "Compared with")
# How this page's sentences about the Inception weights name its own field (the command names its option).
WINDOW_WEIGHTS_WORDS = ("The Inception field's file", "choose it with the Choose… button beside Inception, above")


def inception_weights_setting(settings) -> Path | None:
    """The Inception weights file chosen in the window, or None for torch's cache."""
    value = str(settings.value(INCEPTION_WEIGHTS_SETTING, "") or "")
    return Path(value) if value else None


def table_row(record: dict) -> list[str]:
    """One evaluation record as the table's cells."""
    value, std = record.get("value"), record.get("std", record.get("standard_error"))
    metric = str(record.get("metric"))
    name = METRIC_NAMES.get(metric, "NLL (bits/dim)" if metric == "nll_bpd" else metric)
    sampler = f"{str(record.get('sampler')).upper()} {record.get('steps')}" if record.get("sampler") else "–"
    return [
        str(record.get("date", ""))[:16].replace("T", " "),
        name + (" · training" if record.get("during_training") else ""),
        f"{value:.4g}" if isinstance(value, (int, float)) else str(value),
        f"{std:.2g}" if isinstance(std, (int, float)) else "",
        str(record.get("n", "")),
        sampler,
        str(record.get("model_step", "")),
        str(record.get("data", "")),
    ]


def path_row(placeholder: str, tooltip: str, choose: Callable[[], None]) -> tuple[QLineEdit, QHBoxLayout]:
    """A path field with its "Choose…" button, which calls ``choose``."""
    edit = QLineEdit()
    edit.setPlaceholderText(placeholder)
    edit.setToolTip(tooltip)
    button = QPushButton("Choose…")
    button.clicked.connect(choose)
    row = QHBoxLayout()
    row.addWidget(edit, 1)
    row.addWidget(button)
    return edit, row


class EvaluatePage(Page):
    def __init__(self, context: StudioContext, parent: QWidget | None = None):
        super().__init__(context, parent, job_name="evaluation")
        self.feature_extractor = INCEPTION  # the tests run the same path with the stand-in extractor
        self.last_result: EvaluationResult | None = None
        self._build()
        self._restore_settings()
        self.show_history()
        self._update_enabled()

    # --- layout ----------------------------------------------------------------------------------------
    def _build(self) -> None:
        self.sampling = SamplingControls(self.context, self.jobs, "evaluate", "Evaluate", with_variance=True,
                                         steps_tooltip="DDIM's number of denoising steps for the samples")
        self.model_chooser, self.sampler_box = self.sampling.model_chooser, self.sampling.sampler_box
        self.evaluate_button, self.stop_button = self.sampling.run_button, self.jobs.stop_button
        self.progress_bar, self.status_label = self.jobs.progress_bar, self.jobs.status_label
        self.model_chooser.modelChanged.connect(self._on_model_changed)
        self.sampler_box.currentIndexChanged.connect(self._update_enabled)
        self.evaluate_button.clicked.connect(self.evaluate)
        model_box = QGroupBox("1 · Model")
        QVBoxLayout(model_box).addWidget(self.model_chooser)

        self.data_edit, data_row = path_row("The model's own dataset",
                                            "The images to compare with, decoded exactly as training decodes them",
                                            self.choose_data_folder)
        self.weights_edit, weights_row = path_row("torch's cache (downloaded there when online)",
                                                  "weights-inception-2015-12-05-6726825d.pth, torch-fidelity's FID "
                                                  "Inception", self.choose_weights_file)
        data_box = QGroupBox("2 · Compare with")
        data_form = QFormLayout(data_box)
        data_form.addRow("Images", data_row)
        data_form.addRow("Inception", weights_row)
        # Why the metrics cannot run, beside the control that can fix it: the weights file here, the packages
        # under "3 · Metrics". The column scrolls to it, so that it is read where the user is looking.
        self.weights_problem = error_box()
        data_form.addRow(self.weights_problem)
        self.weights_edit.textChanged.connect(self.weights_problem.hide)
        self.packages_problem = error_box()

        metrics_box = QGroupBox("3 · Metrics")
        metrics_layout = QVBoxLayout(metrics_box)
        metrics_layout.addWidget(self.packages_problem)
        self.metric_boxes: dict[str, QCheckBox] = {}
        for metric in METRICS:
            box = QCheckBox(METRIC_NAMES[metric])
            box.setChecked(metric == "kid")
            box.toggled.connect(self._update_enabled)
            explanation = QLabel(METRIC_EXPLANATIONS[metric])
            explanation.setWordWrap(True)
            explanation.setStyleSheet(MUTED_TEXT_STYLE)
            metrics_layout.addWidget(box)
            metrics_layout.addWidget(explanation)
            self.metric_boxes[metric] = box
        self.count_spin = QSpinBox()
        self.count_spin.setRange(2, 100_000)
        self.count_spin.setSingleStep(500)
        self.count_spin.setValue(1000)
        self.count_spin.setToolTip(f"Samples to draw. FID needs {FID_MINIMUM:,} or more (50,000 for a paper's number); "
                                   "KID is meaningful from a few hundred")
        self.count_spin.valueChanged.connect(self._update_enabled)
        self.seed_spin = QSpinBox()
        self.seed_spin.setRange(0, MAX_SEED)
        self.sampling.keep("count", self.count_spin)
        self.sampling.keep("seed", self.seed_spin)
        counts = QFormLayout()
        counts.addRow("Samples", self.count_spin)
        counts.addRow("Seed", self.seed_spin)
        metrics_layout.addLayout(counts)
        self.fid_warning = QLabel()
        self.fid_warning.setWordWrap(True)
        self.fid_warning.setStyleSheet(MUTED_TEXT_STYLE)
        metrics_layout.addWidget(self.fid_warning)
        sampler_box = QGroupBox("4 · Sampler")
        sampler_box.setLayout(self.sampling.sampler_form())

        self.table = QTableWidget(0, len(TABLE_COLUMNS))
        self.table.setHorizontalHeaderLabels(TABLE_COLUMNS)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.verticalHeader().hide()
        header = self.table.horizontalHeader()
        header.setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        header.setStretchLastSection(True)
        self.history_hint = QLabel()
        self.history_hint.setStyleSheet(MUTED_TEXT_STYLE)
        history_box = QGroupBox("The model's evaluations, oldest first (kept in its model.json)")
        history_layout = QVBoxLayout(history_box)
        history_layout.addWidget(self.table, 1)
        history_layout.addWidget(self.history_hint)

        settings_column(self, history_box, model_box, data_box, metrics_box, sampler_box, self.sampling.run_layout())

    # --- settings --------------------------------------------------------------------------------------
    def _restore_settings(self) -> None:
        settings = self.context.settings
        self.sampling.restore_settings()  # with the count and the seed
        self.weights_edit.setText(str(settings.value(INCEPTION_WEIGHTS_SETTING, "") or ""))
        for metric, box in self.metric_boxes.items():
            box.setChecked(str(settings.value(f"evaluate/{metric}", "true" if metric == "kid" else "false")) == "true")

    def save_settings(self) -> None:
        settings = self.context.settings
        self.sampling.save_settings()
        settings.setValue(INCEPTION_WEIGHTS_SETTING, self.weights_edit.text().strip())
        for metric, box in self.metric_boxes.items():
            settings.setValue(f"evaluate/{metric}", "true" if box.isChecked() else "false")

    # --- choosing ----------------------------------------------------------------------------------------
    def select_model(self, path: Path | str) -> bool:
        return self.model_chooser.select(path)

    def handle_drop(self, paths: list[Path]) -> None:
        if len(paths) == 1 and paths[0].is_dir():
            if (paths[0] / model_store.CONFIG_FILE).is_file():
                self.select_model(paths[0])
            else:
                self.data_edit.setText(str(paths[0]))

    def choose_data_folder(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Images to compare with")
        if folder:
            self.data_edit.setText(folder)

    def choose_weights_file(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "FID Inception weights", "", "PyTorch weights (*.pth)")
        if path:
            self.weights_edit.setText(path)
            self.context.settings.setValue(INCEPTION_WEIGHTS_SETTING, path)

    def _on_model_changed(self, _path) -> None:
        self.sampling.fit_to_model()
        self.show_history()
        self._update_enabled()

    def chosen_metrics(self) -> tuple[str, ...]:
        return tuple(metric for metric, box in self.metric_boxes.items() if box.isChecked())

    def request(self) -> EvaluationRequest:
        """What the settings ask for."""
        data = self.data_edit.text().strip()
        weights = self.weights_edit.text().strip()
        return EvaluationRequest(
            model_path=self.model_chooser.current_path(), data_paths=[Path(data)] if data else [],
            metrics=self.chosen_metrics(), num_samples=self.count_spin.value(), sampler=self.sampling.sampler(),
            steps=self.sampling.steps_spin.value() if self.sampling.sampler() in ("ddim", "dpm-solver++")
            else self.sampling.ddpm_steps(),
            variance=self.sampling.variance(), seed=self.seed_spin.value(), feature_extractor=self.feature_extractor,
            inception_weights=Path(weights) if weights else None,
        )

    def _update_enabled(self) -> None:
        can_run = self.model_chooser.current_path() is not None and bool(self.chosen_metrics())
        self.sampling.update_enabled(can_run=can_run)
        running = self.jobs.is_running()
        for widget in (self.data_edit, self.weights_edit, self.count_spin, self.seed_spin, *self.metric_boxes.values()):
            widget.setEnabled(not running)
        too_few = self.metric_boxes["fid"].isChecked() and self.count_spin.value() < FID_MINIMUM
        self.fid_warning.setText(f"FID from fewer than {FID_MINIMUM:,} samples is biased upward and not comparable "
                                 "with published values; KID suits small sets." if too_few else "")

    # --- the history -------------------------------------------------------------------------------------
    def show_history(self) -> None:
        """The chosen model's evaluation records in the table."""
        info = self.model_chooser.current_info()
        records = model_store.evaluations(info) if info is not None else []
        self.table.setRowCount(len(records))
        for row, record in enumerate(records):
            for column, text in enumerate(table_row(record)):
                item = QTableWidgetItem(text)
                item.setToolTip(model_store.describe_evaluation(record))
                if column in (2, 3, 4, 6):
                    item.setTextAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
                self.table.setItem(row, column, item)
        if info is None:
            self.history_hint.setText("Choose a model to see its evaluations.")
        elif not records:
            self.history_hint.setText(f"{info.name} has not been evaluated yet.")
        else:
            self.history_hint.setText(f"{len(records)} evaluation{'s' if len(records) != 1 else ''} of {info.name}.")

    # --- running -----------------------------------------------------------------------------------------
    def evaluate(self) -> JobRunner | None:
        """Start the evaluation the settings describe; returns the job (None if nothing could start)."""
        if self.jobs.is_running():
            return None
        request = self.request()
        if request.model_path is None:
            self._on_error("Choose a model first.", [])
            return None
        try:
            request.validate()
        except UserError as error:
            self._on_error(str(error), [])
            return None
        self.save_settings()
        self.model_chooser.clear_error()
        self.weights_problem.hide()
        self.packages_problem.hide()
        unavailable: list[str] = []  # what the metrics lack, when they cannot run: set in the worker, before on_error

        def evaluation():
            try:
                yield from beside_a_window(run_evaluation(request))
            except MetricsUnavailable as error:
                unavailable.append(error.needs)
                raise MetricsUnavailable(error.worded(*WINDOW_WEIGHTS_WORDS), error.needs) from None

        return self.run_job(evaluation, status=f"Evaluating {request.model_path.name}…",
                            progress_types=(EvaluationProgress,), on_progress=self._on_progress,
                            on_event=self._on_event, on_error=lambda message: self._on_error(message, unavailable),
                            on_done=self._on_done)

    def _on_error(self, message: str, unavailable: list[str]) -> None:
        """A failure: what the metrics lack goes beside its control, anything else on the status line; in view."""
        if unavailable:
            problem, place = ((self.weights_problem, "2 · Compare with") if unavailable[0] == "weights"
                              else (self.packages_problem, "3 · Metrics"))
            problem.setText(message)
            problem.show()
            self.jobs.set_status(f"Nothing was evaluated: see {place}.", error=True)
        else:
            problem = self.jobs.status_box
            self.jobs.set_status(message, error=True)
        self._bring_into_view(problem)

    def _bring_into_view(self, widget: QWidget) -> None:
        """Scroll the settings column to ``widget`` once the column's layout has made room for it."""
        column = enclosing_scroll_area(widget)
        if column is not None:
            QTimer.singleShot(0, column, lambda: column.ensureWidgetVisible(widget, 0, 8))

    def _on_progress(self, event: EvaluationProgress) -> None:
        self.progress_bar.setFormat(f"{event.phase.capitalize()}: %v of %m")
        self.jobs.show_progress(event.done, event.total)
        self.jobs.set_status(f"{event.phase.capitalize()}" + (f" · {event.detail}" if event.detail else ""))

    def _on_event(self, event) -> None:
        if isinstance(event, EvaluationResult):
            self.last_result = event
            self.jobs.finish_progress()
            summary = "; ".join(model_store.describe_evaluation(record).split(";")[0] for record in event.records)
            cached = " (dataset features from the cache)" if event.reference_from_cache else ""
            self.jobs.set_status(f"{summary}{cached}. Recorded in {event.model_path.name}/model.json.")
            self.context.library.refresh()
            self.show_history()

    def _on_done(self, stopped: bool) -> None:
        if stopped:
            self.jobs.reset_progress()
            self.jobs.set_status("Stopped; nothing was recorded.")
