"""The Interpolate page (the paper's Figs. 8 and 9): two pictures, a t, a strip of λ frames opening on the timeline."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from PySide6.QtCore import QMimeData, QPointF, Qt, QUrl
from PySide6.QtGui import QDropEvent

from ddpm_studio.gui.pages.interpolate import T_EXPLANATION

T = 50  # the tiny model's number of timesteps
SHOTS = Path("/tmp/work/shots")


@pytest.fixture
def page(window, tiny_model):
    window.library.open(tiny_model)
    page = window.interpolate_page
    window.tabs.setCurrentWidget(page)
    assert page.model_chooser.select(tiny_model)
    page.sampler_box.setCurrentIndex(page.sampler_box.findData("ddpm"))
    return page


def interpolate(qtbot, page) -> None:
    qtbot.mouseClick(page.interpolate_button, Qt.MouseButton.LeftButton)
    assert page.runner is not None
    qtbot.waitUntil(lambda: page.runner is None, timeout=120_000)


def test_the_strip_has_a_frame_per_lambda_and_a_click_opens_it_on_the_timeline(qtbot, page, tmp_path):
    assert page.current_t() == T // 2 and page.lambda_spin.value() == 9  # the defaults: t = T/2, 9 values of λ
    assert all(slot.picture is not None for slot in page.slots.values())  # the sample picture and a demo image
    assert T_EXPLANATION.startswith("t = 0: a pixel blend; t = T: a new sample")
    page.lambda_spin.setValue(5)
    interpolate(qtbot, page)
    result = page.result
    assert result is not None and result.t == T // 2
    assert page.strip.lambdas() == ["λ = 0.00", "λ = 0.25", "λ = 0.50", "λ = 0.75", "λ = 1.00"]
    assert len(page.strip.tiles) == 5 == len(result.frames)

    qtbot.mouseClick(page.strip.tiles[2], Qt.MouseButton.LeftButton)
    timeline = page.timeline
    assert timeline.image_index == 2
    assert timeline.frame_count() == T // 2 + 1 and timeline.trajectory.timesteps[0] == T // 2
    assert np.array_equal(timeline.x_t_view.image(), result.frames[2])  # it opens on the frame itself, at t = 0

    strip = page.export(tmp_path / "strip.png", "strip")
    animation = page.export(tmp_path / "strip.gif", "gif")
    with Image.open(strip) as png:
        assert png.text["t"] == str(T // 2) and png.text["lambdas"].count(",") == 4
        assert png.width == (5 * 16 + 6 * 2) * 8  # five 16 px frames with 2 px gaps, enlarged 8 times
    with Image.open(animation) as gif:
        assert gif.n_frames == 8  # A to B and back: 5 + 3

    SHOTS.mkdir(parents=True, exist_ok=True)
    page.window().resize(1400, 900)
    qtbot.wait(50)
    page.window().grab().save(str(SHOTS / "explore_interpolation.png"))


def test_at_t_zero_the_strip_is_the_pixel_blend_and_has_no_timeline(qtbot, page):
    page.use_demo_images()
    page.set_t(0)
    page.lambda_spin.setValue(3)
    interpolate(qtbot, page)
    a, b = page.result.sources
    expected = np.round(0.5 * a.astype(np.float64) + 0.5 * b.astype(np.float64)).astype(np.uint8)
    assert np.array_equal(page.result.frames[1], expected)
    qtbot.mouseClick(page.strip.tiles[1], Qt.MouseButton.LeftButton)
    assert page.timeline.trajectory is None and "pixel blends" in page.status_label.text()


def test_a_picture_dropped_on_b_replaces_it(qtbot, page, tmp_path):
    path = tmp_path / "red.png"
    Image.fromarray(np.full((40, 30, 3), (200, 20, 20), np.uint8)).save(path)
    mime = QMimeData()
    mime.setUrls([QUrl.fromLocalFile(str(path))])
    slot = page.slots["B"]
    event = QDropEvent(QPointF(10, 10), Qt.DropAction.CopyAction, mime, Qt.MouseButton.LeftButton,
                       Qt.KeyboardModifier.NoModifier)
    slot.dropEvent(event)
    assert slot.caption.text() == "red.png"
    assert slot.picture.shape == (16, 16, 3) and np.all(slot.picture[..., 0] == 200)
    assert page.sources["B"] == ("file", path)
