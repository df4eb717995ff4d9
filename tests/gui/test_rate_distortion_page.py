"""The Likelihood page's rate-distortion tab (Fig. 5): the three curves of the same pass, one cursor moved by real
clicks and drags on any plot, and the receiver's x_t and x0_hat of a held-out PNG at the cursor's step."""

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from PySide6.QtCore import QPoint, Qt
from PySide6.QtTest import QTest
from PySide6.QtWidgets import QApplication

from ddpm_studio.core.evaluation.rate_distortion import NULL_LABEL_NOTE, rate_distortion_of
from tests.helpers.class_models import write_class_model

SHOT = Path("/tmp/work/shots/rate_distortion_page.png")


@pytest.fixture
def page(window, models_dir, tiny_model, demo_folder):
    folder = models_dir / "tiny-rd"
    shutil.copytree(tiny_model, folder)  # evaluating writes model.json: the shared model stays read-only
    window.library.refresh()
    page = window.likelihood_page
    window.tabs.setCurrentWidget(page)
    assert page.model_chooser.select(folder)
    page.data_edit.setText(str(demo_folder))
    page.plot_tabs.setCurrentWidget(page.rate_distortion)
    return page


def viewport_point(plot, x: float, y: float) -> QPoint:
    """Where on the plot's viewport the data point (x, y) is drawn."""
    QApplication.processEvents()
    return plot.mapFromScene(plot.scene_position(x, y))


def middle_y(plot) -> float:
    low, high = plot.getPlotItem().vb.viewRange()[1]
    return (low + high) / 2


def shown_images(page) -> tuple[np.ndarray, np.ndarray]:
    panel = page.rate_distortion
    return panel.noisy_view.image().copy(), panel.estimate_view.image().copy()


def wait_for_view(qtbot, page, steps: int) -> None:
    qtbot.waitUntil(lambda: page.receiver is not None and page.receiver.steps == steps
                    and not page.view_jobs.is_running(), timeout=30_000)


def test_three_curves_of_the_pass_and_a_cursor_moved_by_clicks_and_drags(qtbot, page):
    panel = page.rate_distortion
    page.count_spin.setValue(4)
    assert page.evaluate() is not None
    qtbot.waitUntil(lambda: page.runner is None, timeout=120_000)
    result = page.result
    assert result is not None
    curve = rate_distortion_of(result)
    T = curve.num_timesteps
    steps = curve.reverse_steps.astype(float)
    for plot, (x, y) in ((panel.distortion_plot, (steps, curve.distortion_rmse)),
                         (panel.rate_plot, (steps, curve.rate_bpd)),
                         (panel.curve_plot, (curve.rate_bpd, curve.distortion_rmse))):
        shown_x, shown_y = plot.line.getOriginalDataset()
        np.testing.assert_array_equal(shown_x, x)
        np.testing.assert_array_equal(shown_y, y)
    assert curve.rate_bpd[-1] == pytest.approx(result.prior_bpd)  # after one reverse step: L_T alone
    assert page._first_batch[0] == pytest.approx(result.prior_bpd)  # the partial curves' L_T is the pass's
    # the first view: the cursor after every step, on a real held-out PNG
    wait_for_view(qtbot, page, T)
    assert panel.original_view.image().shape == (16, 16, 3)
    first_noisy, first_estimate = shown_images(page)

    # a click on the distortion plot at 20 reverse steps moves all three cursors
    plot = panel.distortion_plot
    QTest.mouseClick(plot.viewport(), Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier,
                     viewport_point(plot, 20, middle_y(plot)))
    assert panel.step == 20
    rate, rmse, _ = curve.at_reverse_steps(20)
    assert panel.rate_plot.cursor.value() == 20 and panel.curve_plot.cursor.value() == pytest.approx(rate)
    text = panel.cursor_label.text()
    assert "20 of 50 reverse steps" in text and f"expected rate of {rate:.4g} bits/dim" in text
    assert f"distortion {rmse:.2f}" in text
    wait_for_view(qtbot, page, 20)
    noisy, estimate = shown_images(page)
    assert not np.array_equal(noisy, first_noisy) and not np.array_equal(estimate, first_estimate)
    assert "t = 31" in panel.noisy_view.caption

    # a drag of the rate plot's cursor from 20 to 35 reverse steps
    plot = panel.rate_plot
    y = middle_y(plot)
    viewport = plot.viewport()
    QTest.mousePress(viewport, Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier, viewport_point(plot, 20, y))
    for x in np.linspace(21, 35, 8):
        QTest.mouseMove(viewport, viewport_point(plot, float(x), y))
    QTest.mouseRelease(viewport, Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier,
                       viewport_point(plot, 35, y))
    assert abs(panel.step - 35) <= 1  # the drag's end, to the pixel
    dragged = panel.step
    assert panel.distortion_plot.cursor.value() == dragged and panel.rate_plot.cursor.value() == dragged
    rate, _, _ = curve.at_reverse_steps(dragged)
    assert f"{dragged} of 50 reverse steps" in panel.cursor_label.text()
    assert f"expected rate of {rate:.4g} bits/dim" in panel.cursor_label.text()
    wait_for_view(qtbot, page, dragged)
    assert not np.array_equal(shown_images(page)[0], noisy)

    # a click on the distortion-rate plot picks the step whose rate is nearest
    plot = panel.curve_plot
    target = curve.rate_bpd[T - 45]  # the rate after 45 steps
    QTest.mouseClick(plot.viewport(), Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier,
                     viewport_point(plot, float(target), middle_y(plot)))
    picked = panel.step
    assert abs(curve.rate_bpd[T - picked] - target) <= np.abs(np.diff(curve.rate_bpd)).max()  # to the pixel
    assert panel.distortion_plot.cursor.value() == picked
    wait_for_view(qtbot, page, picked)

    for plot in panel.plots():  # off the cursors: the screenshot shows them unhovered
        QTest.mouseMove(plot.viewport(), QPoint(2, 2))
    QApplication.processEvents()
    SHOT.parent.mkdir(parents=True, exist_ok=True)
    assert page.grab().save(str(SHOT))


def test_a_stopped_job_keeps_its_partial_curves_and_the_cursor(qtbot, page):
    panel = page.rate_distortion
    page.count_spin.setValue(24)  # 24 images x 50 terms: long enough to stop midway
    assert page.evaluate() is not None
    qtbot.waitUntil(lambda: panel.curve is not None, timeout=60_000)
    page.jobs.stop()
    qtbot.waitUntil(lambda: page.runner is None, timeout=60_000)
    curve = panel.curve
    assert page.result is None and curve is not None
    assert curve.measured[0] and not curve.measured.all()  # the terms come t = 1 upward: stopped midway
    _, y = panel.rate_plot.line.getOriginalDataset()
    np.testing.assert_array_equal(y, curve.rate_bpd)
    plot = panel.distortion_plot
    QTest.mouseClick(plot.viewport(), Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier,
                     viewport_point(plot, 10, middle_y(plot)))
    assert panel.step == 10
    assert ("no image has drawn this t" in panel.cursor_label.text()) == (not curve.measured[curve.num_timesteps - 10])
    wait_for_view(qtbot, page, 10)
    QTest.mouseClick(plot.viewport(), Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier,
                     viewport_point(plot, 50, middle_y(plot)))
    assert panel.step == 50 and "no image has drawn this t" not in panel.cursor_label.text()  # t = 1, measured first


def test_a_class_conditional_model_says_its_curve_is_of_the_null_label(page, window, models_dir):
    panel = page.rate_distortion
    assert panel.note_label.isHidden()
    folder = write_class_model(models_dir / "classes")
    window.library.refresh()
    assert page.model_chooser.select(folder)
    assert not panel.note_label.isHidden() and NULL_LABEL_NOTE in panel.note_label.text()


def test_held_out_images_of_another_resolution_get_the_bound_and_one_sentence_instead_of_a_curve(
        qtbot, page, tmp_path):
    import json

    from ddpm_studio.core.data.demo import make_demo_images
    from ddpm_studio.core.model import store as model_store

    larger = tmp_path / "larger"
    larger.mkdir()
    for index, image in enumerate(make_demo_images(3, size=24, seed=9)):
        Image.fromarray(image).save(larger / f"{index}.png")
    page.data_edit.setText(str(larger))
    page.count_spin.setValue(3)
    before = len(model_store.evaluations(page.model_chooser.current_info()))
    assert page.evaluate() is not None
    qtbot.waitUntil(lambda: page.runner is None, timeout=120_000)
    panel = page.rate_distortion
    assert page.result is not None and panel.curve is None  # the bound, and no curve
    assert not panel.note_label.isHidden()
    assert "No rate-distortion curve: 0.png is 24x24 but this model works at 16x16" in panel.note_label.text()
    records = json.loads((page.model_chooser.current_path() / model_store.CONFIG_FILE).read_text())["evaluations"]
    assert [r["metric"] for r in records[before:]] == ["nll_bpd"]
    assert page.receiver is None  # no receiver's view of an image the curve refused
