"""DPM-Solver++ in the window: chosen by clicks on Generate, its own step count, the timeline; Denoise from t."""

import numpy as np
import pytest
from PIL import Image
from PySide6.QtCore import Qt
from PySide6.QtWidgets import QApplication

from ddpm_studio.core.sampling.imaging import to_hwc
from tests.helpers.windows import open_generate_page

T = 50  # the tiny model's number of timesteps


@pytest.fixture
def page(window, tiny_model):
    return open_generate_page(window, tiny_model, count=2, seed=5)


def choose_by_clicks(qtbot, combo, data) -> None:
    """Open ``combo``'s list with a click and click the entry holding ``data``."""
    qtbot.mouseClick(combo, Qt.MouseButton.LeftButton)
    view = combo.view()
    qtbot.waitUntil(view.isVisible, timeout=5_000)
    qtbot.wait(QApplication.doubleClickInterval() + 50)  # the open list ignores a release as quick as a double click
    index = view.model().index(combo.findData(data), 0)
    view.scrollTo(index)
    rect = view.visualRect(index)
    qtbot.mouseClick(view.viewport(), Qt.MouseButton.LeftButton, pos=rect.center())
    qtbot.waitUntil(lambda: not view.isVisible(), timeout=5_000)
    assert combo.currentData() == data


def test_choose_the_solver_generate_and_scrub_the_timeline(qtbot, page, tmp_path):
    assert page.sampler() == "ddpm" and not page.steps_spin.isEnabled()  # the window still starts with DDPM
    choose_by_clicks(qtbot, page.sampler_box, "dpm-solver++")
    assert "ODE solver" in page.sampling.sampler_note.text()
    assert page.steps_spin.isEnabled() and page.steps_spin.value() == 20  # the solver's own default
    assert not page.variance_box.isEnabled() and not page.sampling.eta_spin.isEnabled()

    page.steps_spin.setFocus()
    qtbot.keyClick(page.steps_spin, Qt.Key.Key_A, Qt.KeyboardModifier.ControlModifier)
    qtbot.keyClicks(page.steps_spin, "8")
    assert page.steps_spin.value() == 8
    qtbot.mouseClick(page.generate_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: page.result is not None and page.runner is None, timeout=60_000)

    result = page.result
    assert result.metadata["sampler"] == "dpm-solver++" and result.metadata["steps"] == "8"
    assert "DPM-Solver++ 8 steps" in page.status_label.text()
    timeline = page.timeline
    # Eight model calls: eight x_t frames from t = T, then the image.
    assert timeline.frame_count() == 9
    assert result.trajectory.timesteps[0] == T and result.trajectory.timesteps[-1] == 0
    assert np.array_equal(timeline.x_t_view.image(), to_hwc(result.images[0]))

    # Scrub with the slider's keys: Home is x_T, each Right one solver step on.
    timeline.setFocus()
    qtbot.keyClick(timeline, Qt.Key.Key_Home)
    assert timeline.current_frame() == 0 and timeline.position_label.text() == f"t = {T} · frame 1 of 9"
    noise = timeline.x_t_view.image().copy()
    shown_t = []
    for _ in range(8):
        qtbot.keyClick(timeline, Qt.Key.Key_Right)
        shown_t.append(timeline.current_t())
    assert shown_t == result.trajectory.timesteps[1:]
    assert shown_t[-1] == 0 and not np.array_equal(timeline.x_t_view.image(), noise)

    strip = page.export_timeline(tmp_path / "solver", "strip")
    with Image.open(strip) as picture:
        assert picture.text["sampler"] == "dpm-solver++"

    # DDIM keeps its own count, and the solver's comes back with it.
    choose_by_clicks(qtbot, page.sampler_box, "ddim")
    assert page.steps_spin.value() == T  # DDIM's 50, within the tiny model's T
    assert page.sampling.eta_spin.isEnabled()
    choose_by_clicks(qtbot, page.sampler_box, "dpm-solver++")
    assert page.steps_spin.value() == 8


def test_denoise_from_t_runs_the_solver_from_that_x_t(qtbot, window, tiny_model):
    page = window.noising_page
    window.tabs.setCurrentWidget(page)
    window.library.open(tiny_model)
    assert page.model_chooser.select(tiny_model)
    page.set_t(30)
    QApplication.processEvents()
    page.sampler_box.setCurrentIndex(page.sampler_box.findData("dpm-solver++"))
    page.steps_spin.setValue(6)
    start = page.model_image_view.image().copy()
    qtbot.mouseClick(page.denoise_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: page.result is not None and page.runner is None, timeout=60_000)

    result = page.result
    assert result.metadata["sampler"] == "dpm-solver++" and result.metadata["start_t"] == "30"
    assert result.trajectory.timesteps[0] == 30 and len(result.trajectory) == 7
    assert np.array_equal(page.timeline.x_t_view.image(), start)  # the solver starts from the x_t shown
