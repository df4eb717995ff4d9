"""The Evaluate page: a run with the stand-in extractor fills the history table and the model's record, Stop
records nothing, missing Inception weights are one sentence; the Train page draws KID on its second axis."""

import json
import shutil
import sys
from pathlib import Path

import pytest

from ddpm_studio.core.evaluation.metrics import METRIC_EXPLANATIONS, STANDIN
from ddpm_studio.core.model import store as model_store
from ddpm_studio.core.training.events import EvaluationEvent
from ddpm_studio.gui.model_library import entry_tooltip
from ddpm_studio.gui.pages.evaluate import TABLE_COLUMNS


@pytest.fixture
def model(tiny_model, tmp_path) -> Path:
    return Path(shutil.copytree(tiny_model, tmp_path / "tiny-eval"))


@pytest.fixture
def page(window, model, demo_folder, tmp_path, monkeypatch):
    monkeypatch.setenv("DDPM_STUDIO_CACHE", str(tmp_path / "cache"))
    window.library.open(model)
    page = window.evaluate_page
    window.tabs.setCurrentWidget(page)
    assert page.select_model(model)
    page.data_edit.setText(str(demo_folder))
    page.count_spin.setValue(12)
    page.sampler_box.setCurrentIndex(page.sampler_box.findData("ddim"))
    page.sampling.steps_spin.setValue(3)
    return page


def test_explanations_are_shown_one_line_each(page):
    texts = [label.text() for label in page.findChildren(type(page.history_hint))]
    for metric in ("fid", "kid", "is"):
        assert METRIC_EXPLANATIONS[metric] in texts
    assert "lower is better" in METRIC_EXPLANATIONS["fid"] and "higher is better" in METRIC_EXPLANATIONS["is"]


def test_a_short_window_scrolls_the_settings_instead_of_cutting_the_explanations(qtbot, page, window):
    """Squeezed into a short window, the word-wrapped explanations lost their first and last lines."""
    window.resize(1280, 600)
    qtbot.wait(100)
    labels = [label for label in page.findChildren(type(page.history_hint))
              if label.text() in METRIC_EXPLANATIONS.values()]
    assert len(labels) == 3
    for label in labels:
        assert label.height() >= label.heightForWidth(label.width()), label.text()
    from PySide6.QtWidgets import QScrollArea

    column = page.findChild(QScrollArea)
    assert column.isAncestorOf(labels[0]) and column.verticalScrollBar().maximum() > 0  # the rest is a scroll away


def test_evaluating_fills_the_table_and_the_model_record(qtbot, page, model, window, tmp_path):
    page.feature_extractor = STANDIN
    page.metric_boxes["fid"].setChecked(True)
    assert "biased upward" in page.fid_warning.text()  # 12 samples are far too few for FID
    assert page.evaluate() is not None
    assert not page.evaluate_button.isEnabled() and page.stop_button.isEnabled()
    qtbot.waitUntil(lambda: page.runner is None, timeout=120_000)
    assert page.last_result is not None, page.status_label.text()
    records = json.loads((model / "model.json").read_text())["evaluations"]
    assert [r["metric"] for r in records] == ["fid", "kid"] and records[0]["n"] == 12
    assert page.table.rowCount() == 2 and page.table.columnCount() == len(TABLE_COLUMNS)
    assert page.table.item(0, 1).text() == "FID" and page.table.item(1, 1).text() == "KID"
    assert page.table.item(1, 2).text() == f"{records[1]['value']:.4g}"
    assert page.table.item(0, 7).text() == records[0]["data"]
    assert "FID" in page.status_label.text() and "Recorded" in page.status_label.text()
    entry = next(e for e in window.library.usable() if e.path == model)
    assert "KID" in entry_tooltip(entry)  # the model library shows the latest of each metric
    page.grab().save(str(tmp_path / "evaluate.png"))


def test_stop_records_nothing(qtbot, page, model):
    page.feature_extractor = STANDIN
    page.count_spin.setValue(5000)
    page.sampler_box.setCurrentIndex(page.sampler_box.findData("ddpm"))
    assert page.evaluate() is not None
    qtbot.waitUntil(lambda: "Sampling" in page.status_label.text(), timeout=60_000)
    page.stop_button.click()
    qtbot.waitUntil(lambda: page.runner is None, timeout=60_000)
    assert page.status_label.text() == "Stopped; nothing was recorded."
    assert model_store.evaluations(model_store.read_model_info(model)) == []


def assert_in_view(qtbot, label) -> None:
    """``label`` is shown whole, word-wrapped, inside the visible part of the settings column."""
    from PySide6.QtCore import QRect

    from ddpm_studio.gui.widgets.wheel_guard import enclosing_scroll_area

    viewport = enclosing_scroll_area(label).viewport()

    def in_view() -> bool:
        top_left = label.mapTo(viewport, label.rect().topLeft())
        return label.isVisible() and viewport.rect().contains(QRect(top_left, label.size()))

    qtbot.waitUntil(in_view)
    assert label.wordWrap() and label.height() >= label.heightForWidth(label.width())  # no line cut off


def test_missing_inception_weights_are_one_sentence_beside_the_inception_field(qtbot, page, window, tmp_path,
                                                                                 monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("DDPM_STUDIO_OFFLINE", "1")
    page.evaluate()
    qtbot.waitUntil(lambda: page.runner is None, timeout=60_000)
    text = page.weights_problem.text()
    assert "weights-inception-2015-12-05-6726825d.pth" in text and "bug" not in text
    assert "Choose… button beside Inception" in text and "--inception-weights" not in text  # the page's field
    assert_in_view(qtbot, page.weights_problem)
    assert "2 · Compare with" in page.status_label.text()
    page.grab().save(str(tmp_path / "evaluate-missing-weights.png"))

    page.weights_edit.setText(str(tmp_path / "no.pth"))  # a file named in the field that is not there
    assert page.weights_problem.isHidden()  # the field changed: the old sentence goes
    page.evaluate()
    qtbot.waitUntil(lambda: page.runner is None, timeout=60_000)
    assert page.weights_problem.text().startswith(f"The Inception field's file {tmp_path / 'no.pth'}: no such file")
    assert_in_view(qtbot, page.weights_problem)


def test_missing_evaluation_packages_are_said_under_metrics(qtbot, page, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch_fidelity", None)  # what an import finds without the eval extra
    page.evaluate()
    qtbot.waitUntil(lambda: page.runner is None, timeout=60_000)
    assert 'pip install -e ".[eval]"' in page.packages_problem.text()
    assert_in_view(qtbot, page.packages_problem)
    assert page.weights_problem.isHidden() and "3 · Metrics" in page.status_label.text()


def test_train_page_plots_kid_on_a_second_axis(window, model):
    monitor = window.train_page.monitor
    monitor.show_event(EvaluationEvent(step=8, metric="kid", value=0.05, std=0.01, n=100))
    monitor.show_event(EvaluationEvent(step=4, metric="kid", value=0.09, std=0.01, n=100))
    plot = monitor.loss_plot
    plot.redraw()
    assert plot.kid_steps == [4, 8] and plot.kid_values == [0.09, 0.05]
    assert list(plot.kid_curve.getData()[1]) == [0.09, 0.05]
    assert "KID 0.09" in monitor.status_label.text()
    model_store.append_evaluation(model, {"metric": "kid", "value": 0.2, "n": 10, "data": "d", "date": "x",
                                          "sampler": "ddim", "steps": 5, "model_step": 6, "during_training": True})
    info = model_store.read_model_info(model)
    monitor.show_saved_model(info, model_store.load_loss_history(model), None)
    assert plot.kid_steps == [6] and plot.kid_values == [0.2]


def test_dpm_solver_takes_the_steps_of_the_steps_box(page):
    """With DPM-Solver++ chosen, the evaluation samples in the Steps box's count (it sent DDPM's steps before)."""
    page.sampler_box.setCurrentIndex(page.sampler_box.findData("dpm-solver++"))
    page.sampling.steps_spin.setValue(7)
    request = page.request()
    assert (request.sampler, request.steps) == ("dpm-solver++", 7)
