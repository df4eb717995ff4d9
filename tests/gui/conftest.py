"""GUI fixtures: a studio window with private settings and model folders, and a guard against leftover threads."""

from pathlib import Path

import pytest
from PySide6.QtCore import QSettings, QTimer
from PySide6.QtWidgets import QApplication

from ddpm_studio.gui.jobs.workers import JobRunner
from tests.helpers.windows import add_window


@pytest.fixture(autouse=True)
def no_leftover_threads_or_timers(qapp):
    """Fail any test that leaves a job thread running or an active QTimer on a live window."""
    yield
    QApplication.processEvents()
    running = [runner.name for runner in list(JobRunner.running) if runner.is_running()]
    for runner in list(JobRunner.running):
        runner.stop()
        runner.wait(30_000)
    assert not running, f"test left job threads running: {running}"
    active = []
    for widget in QApplication.topLevelWidgets():
        if widget.isVisible():
            continue  # a window still open belongs to a test that is checking it; closed ones must be quiet
        active += [timer.objectName() or repr(timer) for timer in widget.findChildren(QTimer) if timer.isActive()]
    assert not active, f"test left timers running on closed windows: {active}"


@pytest.fixture(scope="session")
def demo_folder(tmp_path_factory) -> Path:
    """A small folder of demo-dataset PNGs (16 px), shared read-only."""
    from ddpm_studio.core.data.demo import create_demo_dataset

    folder = tmp_path_factory.mktemp("shapes") / "shapes"
    create_demo_dataset(folder, count=24, size=16)
    return folder


@pytest.fixture
def settings(tmp_path) -> QSettings:
    return QSettings(str(tmp_path / "settings.ini"), QSettings.Format.IniFormat)


@pytest.fixture
def models_dir(tmp_path) -> Path:
    folder = tmp_path / "models"
    folder.mkdir()
    return folder


@pytest.fixture
def window(qtbot, settings, models_dir, user_models_dir):
    """The whole studio window over empty private model folders; closed without asking at the end."""
    from ddpm_studio.gui.main_window import MainWindow
    from ddpm_studio.gui.model_library import ModelLibrary

    library = ModelLibrary([models_dir, user_models_dir])
    main_window = MainWindow(settings=settings, library=library)
    add_window(qtbot, main_window)
    main_window.show()
    yield main_window
    main_window.confirm_close = False
    main_window.close()
    qtbot.waitUntil(lambda: main_window.closed, timeout=60_000)  # running jobs stop first, with the event loop
