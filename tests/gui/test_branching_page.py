"""Branching on the Generate page (the paper's Fig. 7): real clicks on an image, the timeline and "Branch from here"."""

from pathlib import Path

import numpy as np
import pytest
from PySide6.QtCore import Qt

from ddpm_studio.core.explore.branching import fig7_steps
from ddpm_studio.gui.pages.generate import DETERMINISTIC_NOTE
from tests.helpers.windows import open_generate_page

T = 50  # the tiny model's number of timesteps
SHOTS = Path("/tmp/work/shots")


@pytest.fixture
def page(window, tiny_model):
    page = open_generate_page(window, tiny_model, count=2, seed=5)
    page.sampler_box.setCurrentIndex(page.sampler_box.findData("ddpm"))
    return page


def wait_for_the_job(qtbot, page) -> None:
    qtbot.waitUntil(lambda: page.runner is None, timeout=120_000)


def generate_and_click(qtbot, page, image: int) -> None:
    """Generate, then click ``image`` in the grid: the timeline shows it at t = 0."""
    page.generate()
    wait_for_the_job(qtbot, page)
    grid = page.grid
    qtbot.mouseClick(grid.viewport(), Qt.MouseButton.LeftButton, pos=grid.visualItemRect(grid.item(image)).center())
    assert page.timeline.image_index == image


def move_timeline(qtbot, page, frames: int) -> None:
    """From t = T, step the timeline ``frames`` frames towards the image with the arrow key."""
    qtbot.keyClick(page.timeline, Qt.Key.Key_Home)
    for _ in range(frames):
        qtbot.keyClick(page.timeline, Qt.Key.Key_Right)


def test_branch_from_here_shows_a_row_of_n_finals_under_its_t(qtbot, page):
    generate_and_click(qtbot, page, image=1)
    assert not page.branch_button.isEnabled()  # at t = 0 there is nothing left to branch
    assert "t > 0" in page.branch_note.text()
    move_timeline(qtbot, page, 20)
    t = page.timeline.current_t()
    assert t == T - 20 and page.branch_button.isEnabled()
    shown_x_t = page.timeline.x_t_view.image().copy()
    page.branch_count_spin.setValue(4)
    qtbot.mouseClick(page.branch_button, Qt.MouseButton.LeftButton)
    assert page.runner is not None and page.stop_button.isEnabled() and not page.generate_button.isEnabled()
    wait_for_the_job(qtbot, page)

    (view,) = page.branch_rows.views
    row = view.row
    assert row.t == t and len(row.finals) == 4 == len(view.final_tiles)
    assert view.title.text() == f"t = {t} · {row.decided:.0%} decided"
    assert 0.0 <= row.decided <= 1.0
    explanation = page.branch_rows.explanation
    assert explanation.isVisible() and "100% = all the same image" in explanation.text()
    # The row branches from the very x_t the timeline showed: the Generate run's chain, re-run exactly.
    assert np.array_equal(row.x_t, shown_x_t)
    assert page.branch_result is not None and page.branch_result.rows[0].t == t

    # A second step, nearer the image, goes below: rows run from the noisiest t down.
    move_timeline(qtbot, page, 40)
    qtbot.mouseClick(page.branch_button, Qt.MouseButton.LeftButton)
    wait_for_the_job(qtbot, page)
    assert page.branch_rows.timesteps() == [t, T - 40]
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.window().resize(1400, 900)
    qtbot.wait(50)
    page.window().grab().save(str(SHOTS / "explore_branching.png"))


def test_fig7_runs_the_papers_four_steps_at_once(qtbot, page):
    generate_and_click(qtbot, page, image=0)
    page.branch_count_spin.setValue(2)
    qtbot.mouseClick(page.fig7_button, Qt.MouseButton.LeftButton)
    wait_for_the_job(qtbot, page)
    assert page.branch_rows.timesteps() == fig7_steps(T)
    assert all(len(view.final_tiles) == 2 for view in page.branch_rows.views)
    assert page.status_label.text().startswith("Branched: t = ")


def test_stop_keeps_the_rows_already_finished(qtbot, page):
    generate_and_click(qtbot, page, image=0)
    page.branch_count_spin.setValue(4)
    qtbot.mouseClick(page.fig7_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: len(page.branch_rows.views) >= 1, timeout=120_000)
    assert page.stop_button.isEnabled() and page.progress_bar.value() > 0
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.window().resize(1400, 900)
    page.window().grab().save(str(SHOTS / "explore_branching_running.png"))
    qtbot.mouseClick(page.stop_button, Qt.MouseButton.LeftButton)
    wait_for_the_job(qtbot, page)
    kept = page.branch_rows.timesteps()
    assert 1 <= len(kept) < 4 and kept == fig7_steps(T)[: len(kept)]
    assert page.branch_result is None
    assert page.status_label.text() == f"Stopped: the {len(kept)} row{'s' if len(kept) > 1 else ''} finished are kept."


def test_a_deterministic_sampler_says_why_it_cannot_branch(qtbot, page):
    generate_and_click(qtbot, page, image=0)
    move_timeline(qtbot, page, 10)
    page.sampler_box.setCurrentIndex(page.sampler_box.findData("ddim"))
    page.sampling.eta_spin.setValue(0.0)
    assert not page.branch_button.isEnabled() and not page.fig7_button.isEnabled()
    assert page.branch_button.toolTip() == DETERMINISTIC_NOTE == page.branch_note.text()
    page.sampling.eta_spin.setValue(0.5)
    assert page.branch_button.isEnabled() and page.branch_note.text() != DETERMINISTIC_NOTE
    page.sampler_box.setCurrentIndex(page.sampler_box.findData("dpm-solver++"))
    assert not page.branch_button.isEnabled() and page.branch_note.text() == DETERMINISTIC_NOTE
