"""The Generate page: sampling into a grid, the timeline over a trajectory, stopping, saving, exporting, bad models."""

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from PySide6.QtCore import Qt

from ddpm_studio.core.diffusion.process import SampleStep
from ddpm_studio.core.sampling.imaging import to_hwc, to_uint8
from ddpm_studio.gui.pages.generate import preview_picture
from tests.helpers.windows import open_generate_page

T = 50  # the tiny model's number of timesteps


@pytest.fixture
def page(window, tiny_model):
    return open_generate_page(window, tiny_model, count=3, seed=11)


def generate(qtbot, page):
    runner = page.generate()
    assert runner is not None
    qtbot.waitUntil(lambda: page.runner is None, timeout=60_000)
    return runner


def test_generate_fills_the_grid_and_puts_the_first_image_on_the_timeline(qtbot, page):
    generate(qtbot, page)
    result = page.result
    assert result is not None and page.grid.count() == 3 == len(result.images)
    assert page.results_stack.currentWidget() is page.grid

    timeline = page.timeline
    assert timeline.image_index == 0 and timeline.frame_count() == T + 1
    assert result.trajectory.timesteps[0] == T and result.trajectory.timesteps[-1] == 0
    # It opens on the final image: the last frame is exactly the generated picture.
    assert timeline.current_frame() == T
    assert np.array_equal(timeline.x_t_view.image(), to_hwc(result.images[0]))

    # The first frame is the seeded noise x_T itself.
    timeline.set_frame(0)
    noise = torch.randn((3, 3, 16, 16), generator=torch.Generator().manual_seed(11))
    first = timeline.x_t_view.image()
    assert np.array_equal(first, to_hwc(to_uint8(noise)[0]))
    assert 85 < first.std() < 115  # clipped N(0, 1) in 0..255
    assert timeline.position_label.text() == f"t = {T} · frame 1 of {T + 1}"

    shown = timeline.x_t_view.image().copy()
    timeline.set_frame(30)
    assert not np.array_equal(timeline.x_t_view.image(), shown)
    assert timeline.current_t() == result.trajectory.timesteps[30]


def test_clicking_an_image_puts_it_on_the_timeline_and_keys_drive_it(qtbot, page):
    generate(qtbot, page)
    grid = page.grid
    rect = grid.visualItemRect(grid.item(2))
    qtbot.mouseClick(grid.viewport(), Qt.MouseButton.LeftButton, pos=rect.center())
    timeline = page.timeline
    assert timeline.image_index == 2
    assert np.array_equal(timeline.x_t_view.image(), to_hwc(page.result.images[2]))
    assert page.timeline_caption.text() == "Image 3 of 3"

    qtbot.keyClick(timeline, Qt.Key.Key_Home)
    assert timeline.current_frame() == 0
    qtbot.keyClick(timeline, Qt.Key.Key_Right)
    assert timeline.current_frame() == 1
    qtbot.keyClick(timeline, Qt.Key.Key_Left)
    assert timeline.current_frame() == 0
    qtbot.keyClick(timeline, Qt.Key.Key_Space)
    assert timeline.is_playing()
    qtbot.waitUntil(lambda: timeline.current_frame() > 2, timeout=5_000)
    qtbot.keyClick(page, Qt.Key.Key_Space)  # keys that reach the page drive the timeline too
    assert not timeline.is_playing()
    page.hide()
    assert not timeline.timer.isActive()


def test_playing_runs_to_the_end_and_stops_its_timer(qtbot, page):
    generate(qtbot, page)
    timeline = page.timeline
    timeline.speed_box.setCurrentIndex(timeline.speed_box.count() - 1)
    timeline.play()  # from the end, play starts again at x_T
    assert timeline.current_frame() == 0
    qtbot.waitUntil(lambda: not timeline.is_playing(), timeout=10_000)
    assert timeline.current_frame() == T


def test_ddim_enables_its_steps_and_samples_fewer_frames(qtbot, page):
    assert not page.steps_spin.isEnabled() and page.variance_box.isEnabled()
    page.sampler_box.setCurrentIndex(page.sampler_box.findData("ddim"))
    assert page.steps_spin.isEnabled() and not page.variance_box.isEnabled()
    assert page.steps_spin.maximum() == T
    page.steps_spin.setValue(10)
    generate(qtbot, page)
    assert page.result.metadata["sampler"] == "ddim" and page.timeline.frame_count() == 11


def test_the_live_preview_shows_x_t_or_x0_hat_as_chosen(qtbot, page):
    x_t, x0_hat = -torch.ones(3, 3, 16, 16), torch.ones(3, 3, 16, 16)
    event = SampleStep(0, T, T - 1, x_t, x0_hat, x_t)
    assert preview_picture(event, "x_t").shape == (38, 38, 3)  # 2 x 2 grid with 2 px padding
    assert preview_picture(event, "x_t")[2:18, 2:18].max() == 0
    assert preview_picture(event, "x0_hat")[2:18, 2:18].min() == 255
    assert preview_picture(page.result, "x_t") is None

    page.preview_x0.setChecked(True)
    assert page._preview_kind == ["x0_hat"]
    generate(qtbot, page)
    assert page.preview_view.image() is not None and page.preview_view.image().shape == (38, 38, 3)


def test_stop_ends_sampling_without_a_result(qtbot, page):
    page.count_spin.setValue(64)
    page.generate()
    assert page.stop_button.isEnabled() and not page.generate_button.isEnabled()
    page.stop()
    qtbot.waitUntil(lambda: page.runner is None, timeout=60_000)
    assert page.result is None
    assert "Stopped" in page.status_label.text()
    assert page.generate_button.isEnabled() and not page.stop_button.isEnabled()


def test_save_writes_pngs_with_metadata(qtbot, page, tmp_path):
    assert not page.save_all_button.isEnabled()
    generate(qtbot, page)
    paths = page.save_images(tmp_path / "all")
    assert len(paths) == 4 and all(path.is_file() for path in paths)
    with Image.open(paths[1]) as image:
        assert image.size == (16, 16)
        assert image.text["seed"] == "11" and image.text["model"] == "tiny" and image.text["sampler"] == "ddpm"
        assert image.text["index"] == "1"
        assert np.array_equal(np.asarray(image), to_hwc(page.result.images[1]))

    page.grid.clearSelection()
    assert page.save_images(tmp_path / "none", selected_only=True) == []
    assert "Select images" in page.status_label.text()
    page.grid.item(0).setSelected(True)
    page.grid.item(2).setSelected(True)
    assert page.save_selected_button.isEnabled()
    paths = page.save_images(tmp_path / "some", selected_only=True)
    assert [path.name.rsplit("_", 1)[1] for path in paths] == ["000.png", "002.png", "grid.png"]


def test_export_writes_an_animation_and_a_strip(qtbot, page, tmp_path):
    generate(qtbot, page)
    page.show_on_timeline(1)
    gif = page.export_timeline(tmp_path / "trajectory.gif", "gif")
    with Image.open(gif) as animation:
        assert animation.n_frames == T + 1 and animation.size == ((2 * 16 + 3) * 4, (16 + 2) * 4)  # x_t | x0_hat
    strip = page.export_timeline(tmp_path / "trajectory", "strip")
    assert strip.suffix == ".png" and strip.is_file()
    with Image.open(strip) as picture:
        assert picture.width > picture.height  # ten frames wide, two rows high
        assert picture.text["rows"] == "x_t, x0_hat"


def test_a_damaged_model_json_gives_a_message(qtbot, window, tiny_model, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(tiny_model, broken)
    (broken / "model.json").write_text("{ not json", encoding="utf-8")
    page = window.generate_page
    window.tabs.setCurrentWidget(page)
    assert not page.select_model(broken)
    chooser = page.model_chooser
    assert "model.json" in chooser.error_text() and "damaged" in chooser.error_text()
    assert chooser.message.isVisible() and chooser.message.text() == chooser.error_text()
    assert not page.generate_button.isEnabled()


def test_damaged_weights_are_refused_when_the_model_is_chosen(qtbot, window, tiny_model, tmp_path):
    broken = tmp_path / "truncated"
    shutil.copytree(tiny_model, broken)
    weights = broken / "ema.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    page = window.generate_page
    window.tabs.setCurrentWidget(page)
    assert not page.select_model(broken)  # the weights file's header is checked as the folder is opened
    message = page.model_chooser.error_text()
    assert "ema.safetensors" in message and "damaged" in message
    assert page.model_chooser.current_path() is None and not page.generate_button.isEnabled()


def test_another_models_weights_give_a_message_at_generate_time(qtbot, window, tiny_model, tmp_path):
    foreign = tmp_path / "foreign"
    shutil.copytree(tiny_model, foreign)
    shutil.copy(Path(__file__).resolve().parents[2] / "models" / "demo" / "ema.safetensors",
                foreign / "ema.safetensors")
    page = window.generate_page
    window.tabs.setCurrentWidget(page)
    assert page.select_model(foreign)  # a whole file: only the network built from model.json tells it is not this one's
    generate(qtbot, page)
    assert page.result is None
    message = page.status_label.text()
    assert "ema.safetensors does not match the network model.json describes" in message
    assert "time_mlp.0.weight" in message
    assert page.status_label.isVisible()
    assert page.generate_button.isEnabled()


def test_unreadable_folders_in_the_models_folder_are_named(qtbot, window, tiny_model, models_dir):
    broken = models_dir / "half-copied"
    shutil.copytree(tiny_model, broken)
    (broken / "model.json").write_bytes(b"\x00" * 10)
    window.library.refresh()
    chooser = window.generate_page.model_chooser
    assert chooser.picker.usable_count() == 0 and chooser.picker.itemText(0) == "half-copied (unusable)"
    assert "half-copied" in chooser.message.text() and "model.json" in chooser.message.toolTip()


def test_ddim_eta_is_typed_in_and_reaches_the_sampler_and_tooltips_name_seed_and_sampler(qtbot, page):
    eta = page.sampling.eta_spin
    assert not eta.isEnabled()  # DDPM: eta means nothing
    page.sampler_box.setCurrentIndex(page.sampler_box.findData("ddim"))
    assert eta.isEnabled()
    page.steps_spin.setValue(5)
    eta.lineEdit().selectAll()
    qtbot.keyClicks(eta.lineEdit(), "0.5")
    qtbot.keyClick(eta.lineEdit(), Qt.Key.Key_Return)
    assert eta.value() == pytest.approx(0.5)
    generate(qtbot, page)
    assert page.result.request.eta == pytest.approx(0.5)
    tip = page.grid.item(1).toolTip()
    assert "Image 2 of 3" in tip and "seed 11" in tip and "DDIM 5 steps, eta 0.5" in tip


def test_while_sampling_the_results_say_so_and_the_status_gives_speed_and_time_left(qtbot, page):
    page.count_spin.setValue(16)
    qtbot.mouseClick(page.generate_button, Qt.MouseButton.LeftButton)
    assert page.results_hint.text().startswith("Sampling…")
    qtbot.waitUntil(lambda: "steps/s" in page.status_label.text() and "left" in page.status_label.text(),
                    timeout=60_000)
    qtbot.waitUntil(lambda: page.runner is None, timeout=60_000)
    assert page.result is not None


def test_a_selected_thumbnail_is_framed_not_tinted(qtbot, page):
    from PySide6.QtGui import QIcon

    generate(qtbot, page)
    item = page.grid.item(0)
    rect = page.grid.visualItemRect(item)
    qtbot.mouseClick(page.grid.viewport(), Qt.MouseButton.LeftButton, pos=rect.center())
    assert item.isSelected()
    icon = item.icon()
    assert icon.pixmap(96, QIcon.Mode.Selected).toImage() == icon.pixmap(96, QIcon.Mode.Normal).toImage()


def test_sixteen_images_fit_the_grid_at_the_default_window_size(qtbot, window, page):
    assert window.size().width() == 1280 and window.size().height() == 860  # the size a first start opens at
    qtbot.waitExposed(window)
    page.sampler_box.setCurrentIndex(page.sampler_box.findData("ddim"))
    page.steps_spin.setValue(2)
    page.count_spin.setValue(16)
    generate(qtbot, page)
    qtbot.wait(50)  # the grid's layout of its items
    grid = page.grid
    seen = grid.viewport().rect()
    assert grid.count() == 16
    assert all(seen.contains(grid.visualItemRect(grid.item(row))) for row in range(16))
    assert not grid.verticalScrollBar().isVisible()
    assert grid.thumbnail_size >= 64  # still large enough to see

    page.count_spin.setValue(256)  # more than ever fit: the smallest thumbnails, and a scroll bar
    page.sampler_box.setCurrentIndex(page.sampler_box.findData("ddim"))
    page.steps_spin.setValue(1)
    generate(qtbot, page)
    assert grid.thumbnail_size == grid.smallest_size


def test_the_grid_says_which_model_drew_it_after_a_switch_and_a_stop(qtbot, window, page, tiny_model, models_dir):
    other = models_dir / "other"
    shutil.copytree(tiny_model, other)
    window.library.refresh()
    page.count_spin.setValue(2)
    generate(qtbot, page)
    caption = page.results_caption
    assert caption.isVisible() and caption.text().startswith("2 images from tiny (")
    assert "not from the chosen model" not in caption.text()

    assert page.select_model(other)
    assert "2 images from tiny" in caption.text()
    assert "not from the chosen model: Generate samples other" in caption.text()

    page.sampler_box.setCurrentIndex(page.sampler_box.findData("ddpm"))
    page.count_spin.setValue(256)  # every one of T steps at 256 images: it cannot end before Stop
    qtbot.mouseClick(page.generate_button, Qt.MouseButton.LeftButton)
    qtbot.mouseClick(page.stop_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: page.runner is None, timeout=60_000)
    assert page.result.request.model_path == tiny_model  # the grid still holds tiny's images
    assert caption.text().startswith("The run of other was stopped: the grid still shows the last finished images, "
                                     "2 images from tiny")
    from ddpm_studio.gui.style import WARNING_TEXT_STYLE

    assert caption.styleSheet() == WARNING_TEXT_STYLE  # in the grid's own box, in the colour of a warning
