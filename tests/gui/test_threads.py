"""Closing the window while work runs: it asks first, stops every job, keeps painting while it waits for
their threads ("Saving…" over the pages), a training run is saved, then the window closes."""

import threading

from PySide6.QtCore import QTimer
from PySide6.QtWidgets import QApplication, QMessageBox

from ddpm_studio.core.data.demo import README_NAME
from ddpm_studio.core.data.folders import load_dataset
from ddpm_studio.core.model import store as model_store
from ddpm_studio.core.training.state import ModelFolderWriter
from ddpm_studio.gui.jobs.workers import JobRunner
from ddpm_studio.gui.pages import dataset as dataset_page

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
    page.form.checkpoint_every_spin.setValue(100_000)  # the one save is the one on closing
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

    window.close()  # returns at once; the window closes when the run has stopped and saved
    assert len(asked) == 1
    qtbot.waitUntil(lambda: window.closed, timeout=RUN_TIMEOUT_MS)
    assert not window.isVisible()
    assert running_jobs() == []
    assert not page.loss_plot.redraw_timer.isActive()
    info = model_store.read_model_info(page.run_path)
    assert info.step == page.current_step >= seen  # the last step trained is the one saved
    assert model_store.load_model(page.run_path).info.step == info.step
    assert len(model_store.load_loss_history(page.run_path)) == info.step
    QApplication.processEvents()  # late signals of the ended run arrive after the close, harmlessly


def test_closing_while_training_shows_saving_and_keeps_its_event_loop_running_until_saved(window, qtbot, monkeypatch,
                                                                                       demo_folder):
    """The run's last checkpoint is held up in the job's thread, as a big model's would be while it is written: the
    window says "Saving…", and its own event loop goes on (timers fire, the window repaints) until the save is let
    through. How long the GUI thread stalls meanwhile is measured by benchmarks/close_latency.py, never here."""
    real_save = ModelFolderWriter.save_checkpoint
    saving, let_through = threading.Event(), threading.Event()

    def held_save(writer, state):
        saving.set()
        let_through.wait(RUN_TIMEOUT_MS / 1000)  # in the job's thread; a GUI thread waiting here would hang the test
        real_save(writer, state)

    monkeypatch.setattr(ModelFolderWriter, "save_checkpoint", held_save)
    page = start_long_run(window, demo_folder)
    qtbot.waitUntil(lambda: page.loss_plot.point_count() >= 3, timeout=RUN_TIMEOUT_MS)
    runner = page.runner
    asked = answer_questions(monkeypatch, QMessageBox.StandardButton.Yes)

    try:
        window.close()
        assert len(asked) == 1 and window.isVisible()
        assert window.closing.isVisible() and window.closing.title.text() == "Saving…"
        assert "Saving the training run before closing" in window.closing.sentence.text()
        assert page.run_path.name in window.closing.sentence.text()
        assert not window.tabs.isEnabled()
        qtbot.waitUntil(saving.is_set, timeout=RUN_TIMEOUT_MS)

        fired = []
        QTimer.singleShot(0, lambda: fired.append("timer"))
        qtbot.waitUntil(lambda: fired == ["timer"], timeout=RUN_TIMEOUT_MS)  # the GUI thread runs while the job saves
        assert not window.closing.grab().isNull()  # and paints
        assert runner.is_running() and window.isVisible() and not window.closed
        window.close()  # a second click while saving changes nothing
        assert len(asked) == 1 and window.isVisible()
    finally:
        let_through.set()  # also when a check above failed: the run then saves and the window closes
    qtbot.waitUntil(lambda: window.closed, timeout=RUN_TIMEOUT_MS)
    assert not window.isVisible() and running_jobs() == []
    info = model_store.read_model_info(page.run_path)
    assert info.step == page.current_step >= 3
    assert len(model_store.load_loss_history(page.run_path)) == info.step
    assert (page.run_path / model_store.STATE_FILE).is_file()


def test_closing_while_scanning_stops_the_scan(window, qtbot, monkeypatch, tmp_path):
    folder = tmp_path / "demo-dataset"
    monkeypatch.setattr(dataset_page, "demo_dataset_dir", lambda: folder)
    window.dataset_page.demo_count = 100_000
    window.dataset_page.use_demo_dataset()
    qtbot.waitUntil(lambda: folder.is_dir() and any(folder.iterdir()), timeout=RUN_TIMEOUT_MS)
    asked = answer_questions(monkeypatch, QMessageBox.StandardButton.Yes)

    window.close()
    assert len(asked) == 1 and "scanning" in asked[0]
    qtbot.waitUntil(lambda: window.closed, timeout=RUN_TIMEOUT_MS)
    assert running_jobs() == []
    assert not (folder / README_NAME).exists()


def test_closing_an_idle_window_asks_nothing(window, qtbot, monkeypatch):
    qtbot.waitUntil(lambda: running_jobs() == [], timeout=RUN_TIMEOUT_MS)  # the memory estimate has ended
    asked = answer_questions(monkeypatch, QMessageBox.StandardButton.No)
    window.close()
    assert asked == []
    assert not window.isVisible()


def test_a_job_that_does_not_stop_is_named_and_the_window_closes_anyway(window, qtbot, monkeypatch, capsys):
    from ddpm_studio.gui.jobs import closing

    release = threading.Event()

    def stubborn():
        yield "started"
        release.wait(30)  # deaf to the stop request until the test lets it go
        yield "late"

    started = []
    window.dataset_page.run_job(stubborn, name="stubborn job", on_event=started.append)
    qtbot.waitUntil(lambda: started == ["started"], timeout=RUN_TIMEOUT_MS)
    monkeypatch.setattr(closing, "NOTICE_MS", 100)
    window.closing.timeout_ms = 300
    window.confirm_close = False
    try:
        window.close()
        assert window.isVisible() and window.closing.title.text() == "Closing…"
        qtbot.waitUntil(lambda: window.closing.title.text() == "Closing anyway", timeout=RUN_TIMEOUT_MS)
        assert "stubborn job did not stop within 0.3 s" in window.closing.sentence.text()
        qtbot.waitUntil(lambda: window.closed, timeout=RUN_TIMEOUT_MS)
        assert not window.isVisible() and window.closing.left_behind == ["stubborn job"]
        assert "ddpm-studio: stubborn job did not stop" in capsys.readouterr().err
    finally:
        release.set()
    qtbot.waitUntil(lambda: running_jobs() == [], timeout=RUN_TIMEOUT_MS)
