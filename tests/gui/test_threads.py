"""Closing the window while work runs: it asks first, stops every job, waits for its thread, and a training run is saved."""

from PySide6.QtWidgets import QApplication, QMessageBox

from ddpm_studio.core import model_store
from ddpm_studio.core.data import load_dataset
from ddpm_studio.core.demo_data import README_NAME
from ddpm_studio.gui import dataset_page
from ddpm_studio.gui.workers import JobRunner

RUN_TIMEOUT_MS = 60_000


def answer_questions(monkeypatch, answer) -> list[str]:
    """Make QMessageBox.question return ``answer`` and record what was asked."""
    asked = []

    def question(parent, title, text, *args, **kwargs):
        asked.append(text)
        return answer

    monkeypatch.setattr(QMessageBox, "question", staticmethod(question))
    return asked


def start_long_run(window, demo_folder):
    result = load_dataset([demo_folder], 16)
    result.sources = [demo_folder]
    window.dataset_page.show_result(result)
    page = window.train_page
    page.form.preset_combo.setCurrentIndex(page.form.preset_combo.findData("tiny"))
    page.form.steps_spin.setValue(100_000)
    page.form.batch_spin.setValue(4)
    page.form.preview_count_spin.setValue(0)
    page.start_training()
    return page


def running_jobs() -> list[str]:
    return [runner.name for runner in list(JobRunner.running) if runner.is_running()]


def test_closing_while_training_asks_and_no_keeps_training(window, qtbot, monkeypatch, demo_folder):
    page = start_long_run(window, demo_folder)
    qtbot.waitUntil(lambda: page.loss_plot.point_count() >= 2, timeout=RUN_TIMEOUT_MS)
    asked = answer_questions(monkeypatch, QMessageBox.StandardButton.No)

    window.close()
    assert len(asked) == 1 and "training" in asked[0]
    assert window.isVisible()
    seen = page.current_step
    qtbot.waitUntil(lambda: page.current_step > seen + 2, timeout=RUN_TIMEOUT_MS)  # it goes on

    page.stop_training()
    qtbot.waitUntil(lambda: not page.is_training(), timeout=RUN_TIMEOUT_MS)
    assert running_jobs() in ([], ["memory estimate"])


def test_closing_while_training_with_yes_stops_saves_and_leaves_no_thread(window, qtbot, monkeypatch, demo_folder):
    page = start_long_run(window, demo_folder)
    qtbot.waitUntil(lambda: page.loss_plot.point_count() >= 3, timeout=RUN_TIMEOUT_MS)
    asked = answer_questions(monkeypatch, QMessageBox.StandardButton.Yes)
    seen = page.current_step

    window.close()  # returns once the run has stopped and saved
    assert len(asked) == 1
    assert not window.isVisible()
    assert running_jobs() == []
    assert not page.loss_plot.redraw_timer.isActive()
    info = model_store.read_model_info(page.run_path)
    assert info.step >= seen
    assert model_store.load_model(page.run_path).info.step == info.step
    assert len(model_store.load_loss_history(page.run_path)) == info.step
    QApplication.processEvents()  # the queued end-of-run signals arrive after the close, harmlessly


def test_closing_while_scanning_stops_the_scan(window, qtbot, monkeypatch, tmp_path):
    folder = tmp_path / "demo-dataset"
    monkeypatch.setattr(dataset_page, "demo_dataset_dir", lambda: folder)
    window.dataset_page.demo_count = 100_000
    window.dataset_page.use_demo_dataset()
    qtbot.waitUntil(lambda: folder.is_dir() and any(folder.iterdir()), timeout=RUN_TIMEOUT_MS)
    asked = answer_questions(monkeypatch, QMessageBox.StandardButton.Yes)

    window.close()
    assert len(asked) == 1 and "scanning" in asked[0]
    assert running_jobs() == []
    assert not (folder / README_NAME).exists()


def test_closing_an_idle_window_asks_nothing(window, qtbot, monkeypatch):
    qtbot.waitUntil(lambda: running_jobs() == [], timeout=RUN_TIMEOUT_MS)  # the memory estimate has ended
    asked = answer_questions(monkeypatch, QMessageBox.StandardButton.No)
    window.close()
    assert asked == []
    assert not window.isVisible()
