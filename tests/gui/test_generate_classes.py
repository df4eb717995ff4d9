"""Generate with a class-conditional model: the class chooser and guidance slider, one row per class for
"All classes", and Branch from here keeping the run's class and w; nothing of it for an unconditional model."""

from pathlib import Path

import numpy as np
import pytest
from PySide6.QtCore import Qt

from ddpm_studio.core.sampling.job import SamplingRequest, sample_images
from ddpm_studio.core.system.devices import choose_device
from ddpm_studio.gui.widgets.image_view import ThumbnailGrid
from ddpm_studio.gui.widgets.sampling_panel import GUIDANCE_NOTE
from tests.helpers.class_models import CLASS_NAMES, write_class_model
from tests.helpers.windows import open_generate_page

SHOTS = Path("/tmp/work/shots")


def choose_with_keys(qtbot, combo, text: str) -> None:
    """Pick ``text`` in ``combo`` with the arrow keys, as a user tabbing through the form would."""
    combo.setFocus()
    qtbot.keyClick(combo, Qt.Key.Key_Home)
    while combo.currentText() != text:
        before = combo.currentIndex()
        qtbot.keyClick(combo, Qt.Key.Key_Down)
        assert combo.currentIndex() != before, f"{text} is not offered"


def generate(qtbot, page) -> None:
    qtbot.mouseClick(page.generate_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: page.runner is None, timeout=120_000)


def test_a_class_and_a_weight_draw_that_class_guided(qtbot, window, tmp_path):
    model = write_class_model(tmp_path / "models" / "classes")
    page = open_generate_page(window, model, count=3, seed=5)
    window.resize(1400, 900)
    sampling = page.sampling
    assert sampling.class_panel.isVisible()
    offered = [sampling.class_box.itemText(row) for row in range(sampling.class_box.count())]
    assert offered == [*CLASS_NAMES, "All classes"]
    assert sampling.guidance_note.text() == GUIDANCE_NOTE
    choose_with_keys(qtbot, sampling.class_box, "squares")
    sampling.guidance_slider.setFocus()
    qtbot.keyClick(sampling.guidance_slider, Qt.Key.Key_PageUp)  # one page: w = 1
    qtbot.keyClick(sampling.guidance_slider, Qt.Key.Key_PageUp)
    qtbot.keyClick(sampling.guidance_slider, Qt.Key.Key_Right)  # and a step: 2.1
    assert sampling.guidance_value.text() == "w = 2.1"
    choose_with_keys(qtbot, page.sampler_box, "DDIM: fewer steps")
    page.steps_spin.setValue(4)
    generate(qtbot, page)

    run = page.result.request
    assert (run.classes, run.guidance, len(page.result.images)) == ([1], 2.1, 3)
    expected = sample_images(SamplingRequest(model_path=model, num_images=3, seed=5, sampler="ddim", steps=4,
                                             classes=[1], guidance=2.1)).images
    assert np.array_equal(page.result.images.numpy(), expected.numpy())
    assert "class squares, w = 2.1" in page.grid.item(0).toolTip()
    assert page.timeline_caption.text() == "Image 1 of 3 · class squares, w = 2.1"
    # The timeline shows that run's trajectory, and Branch from here keeps its class and w.
    assert np.array_equal(page.timeline.x_t_view.image(), page.result.images[0].permute(1, 2, 0).numpy())
    branch = page.branch_request([10])
    assert (branch.classes, branch.guidance, branch.image_class()) == ([1], 2.1, [1])
    SHOTS.mkdir(parents=True, exist_ok=True)
    qtbot.wait(50)
    window.grab().save(str(SHOTS / "generate_class.png"))

    choose_with_keys(qtbot, sampling.class_box, "All classes")
    page.count_spin.setValue(4)
    generate(qtbot, page)
    run = page.result.request
    assert run.classes == [0] * 4 + [1] * 4 + [2] * 4 and page.grid.count() == 12
    grid = page.grid
    tops = [grid.visualItemRect(grid.item(index)).top() for index in range(12)]
    assert [len(set(tops[row * 4:(row + 1) * 4])) for row in range(3)] == [1, 1, 1]  # one row per class
    assert len(set(tops)) == 3
    assert "class stripes" in grid.item(11).toolTip()
    # Each row is named, in class order, left of its first thumbnail and level with it.
    captions = [label for label in grid.caption_labels if label.isVisible()]
    assert [label.toolTip() for label in captions] == CLASS_NAMES
    assert [label.text() for label in captions] == CLASS_NAMES and all(label.font().bold() for label in captions)
    for row, label in enumerate(captions):
        thumbnail = grid.visualItemRect(grid.item(row * 4)).translated(grid.viewport().geometry().topLeft())
        assert label.geometry().right() < thumbnail.left()
        assert abs(label.geometry().center().y() - thumbnail.center().y()) <= 1
    qtbot.wait(50)
    window.grab().save(str(SHOTS / "generate_all_classes.png"))
    page.grab().save(str(SHOTS / "generate_all_classes2.png"))
    # A run of one class has no row names.
    choose_with_keys(qtbot, sampling.class_box, "circles")
    generate(qtbot, page)
    assert grid.row_length is None and not any(label.isVisible() for label in grid.caption_labels)


def test_an_unconditional_model_shows_no_class_chooser(qtbot, window, tiny_model):
    page = open_generate_page(window, tiny_model, count=1, seed=0)
    assert not page.sampling.class_panel.isVisible()
    assert page.request().classes is None


def test_denoise_from_t_turns_the_picture_into_the_chosen_class(qtbot, window, tmp_path):
    model = write_class_model(tmp_path / "models" / "classes")
    page = window.noising_page
    window.tabs.setCurrentWidget(page)
    window.library.open(model)
    assert page.model_chooser.select(model)
    sampling = page.sampling
    assert sampling.class_panel.isVisible()
    offered = [sampling.class_box.itemText(row) for row in range(sampling.class_box.count())]
    assert offered == CLASS_NAMES  # one picture in, one class out: no "All classes" here
    choose_with_keys(qtbot, sampling.class_box, "stripes")
    sampling.guidance_slider.setFocus()
    qtbot.keyClick(sampling.guidance_slider, Qt.Key.Key_PageUp)
    page.set_t(12)
    start = page.model_view.x_t_tensor(12)
    qtbot.mouseClick(page.denoise_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: page.runner is None, timeout=120_000)
    run = page.result.request
    assert (run.classes, run.guidance, page.result.metadata["class"]) == ([2], 1.0, "stripes")
    expected = sample_images(SamplingRequest(model_path=model, num_images=1, seed=run.seed, sampler=run.sampler,
                                             steps=run.steps, eta=run.eta, variance=run.variance, x_start=start,
                                             start_t=11, classes=[2], guidance=1.0)).images
    assert np.array_equal(page.result.images.numpy(), expected.numpy())


def test_row_names_are_elided_and_follow_the_scrolled_rows(qtbot):
    grid = ThumbnailGrid(thumbnail_size=48)
    qtbot.addWidget(grid)
    grid.resize(500, 200)
    grid.show()
    names = ["a_folder_name_far_too_long_for_the_column", *[f"class {row}" for row in range(1, 10)]]
    grid.row_length, grid.row_captions = 3, names
    grid.set_images([np.full((16, 16, 3), 8 * index, np.uint8) for index in range(30)])
    qtbot.wait(20)
    labels = grid.caption_labels
    assert labels[0].text().endswith("…") and labels[0].toolTip() == names[0]
    assert labels[1].text() == "class 1"
    assert labels[0].isVisible() and not labels[9].isVisible()  # only the rows in sight are named
    grid.verticalScrollBar().setValue(grid.verticalScrollBar().maximum())
    qtbot.wait(20)
    assert not labels[0].isVisible() and labels[9].isVisible()
    bottom = grid.visualItemRect(grid.item(27)).translated(grid.viewport().geometry().topLeft())
    assert abs(labels[9].geometry().center().y() - bottom.center().y()) <= 1


@pytest.mark.skipif(choose_device("auto").type != "cpu", reason="the forecast is for CPU-only machines")
def test_the_cpu_forecast_counts_the_doubled_batch_of_guidance(qtbot, window, tmp_path):
    model = write_class_model(tmp_path / "models" / "big", image_size=128)
    page = open_generate_page(window, model, count=2, seed=0)
    sampling = page.sampling
    cost = sampling.cost_label
    qtbot.waitUntil(lambda: "On the CPU this takes about" in cost.text(), timeout=60_000)
    assert "guidance" not in cost.text()  # w = 0: one pass
    sampling.guidance_slider.setValue(15)
    qtbot.waitUntil(lambda: "each of twice the batch for guidance" in cost.text(), timeout=10_000)
    sampling.guidance_slider.setValue(0)
    qtbot.waitUntil(lambda: "guidance" not in cost.text(), timeout=10_000)


def test_pages_whose_runs_take_no_class_offer_none(qtbot, window, tmp_path):
    model = write_class_model(tmp_path / "models" / "classes")
    window.library.open(model)
    for page in (window.interpolate_page, window.evaluate_page):
        window.tabs.setCurrentWidget(page)
        assert page.model_chooser.select(model)
        assert not page.sampling.class_panel.isVisible() and page.sampling.class_box.count() == 0
