"""After a restart the window is where the user left it: the last dataset, the Noising picture, the model to resume.

Each test builds a window over a settings file, does the thing with real drops and keys, closes it (which saves
the settings), then builds a second window over the same file and looks.
"""

import shutil

import numpy as np
import pytest
from PIL import Image
from PySide6.QtCore import Qt
from PySide6.QtWidgets import QApplication

from ddpm_studio.core.data.folders import load_image
from ddpm_studio.core.model import store as model_store
from ddpm_studio.gui.pages.noising import WORKING_SIZE
from ddpm_studio.gui.session_memory import RESUME_KEY
from ddpm_studio.paths import SAMPLE_PICTURE
from tests.helpers.drops import send_drop
from tests.helpers.windows import add_window

SCAN_TIMEOUT_MS = 30_000


@pytest.fixture
def open_window(qtbot, settings, models_dir, user_models_dir):
    """``open_window()`` builds and shows a studio window over the test's settings file; all are closed at the end."""
    from ddpm_studio.gui.main_window import MainWindow
    from ddpm_studio.gui.model_library import ModelLibrary

    windows = []

    def open_one():
        window = MainWindow(settings=settings, library=ModelLibrary([models_dir, user_models_dir]))
        add_window(qtbot, window)
        window.show()
        windows.append(window)
        return window

    yield open_one
    for window in windows:
        close(window)


def close(window) -> None:
    """Close as the user does (the window saves its settings), without the question about running work."""
    window.confirm_close = False
    window.close()


def wait_for_scan(qtbot, window) -> None:
    qtbot.waitUntil(lambda: not window.dataset_page.is_scanning(), timeout=SCAN_TIMEOUT_MS)


def write_pictures(folder, count: int = 3, size: int = 24):
    folder.mkdir(parents=True, exist_ok=True)
    for index in range(count):
        pixels = np.random.default_rng(index).integers(0, 256, (size, size, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"picture_{index}.png")
    return folder


def test_the_last_dataset_comes_back_at_the_resolution_it_was_scanned_at(qtbot, open_window, tmp_path):
    folder = write_pictures(tmp_path / "flowers")
    first = open_window()
    first.dataset_page.set_scan_settings(16, 1)
    with qtbot.waitSignal(first.dataset_page.datasetReady, timeout=SCAN_TIMEOUT_MS):
        assert send_drop(first, [folder])
    wait_for_scan(qtbot, first)
    first.dataset_page.set_scan_settings(64, 3)  # changed after the scan, never scanned at: not what comes back
    close(first)

    second = open_window()
    train = second.train_page
    qtbot.waitUntil(lambda: train.dataset is not None, timeout=SCAN_TIMEOUT_MS)  # scanned in the background
    wait_for_scan(qtbot, second)
    assert [path.resolve() for path in train.dataset.sources] == [folder.resolve()]
    assert len(train.dataset.files) == 3
    assert (train.dataset.image_size, train.dataset.channels) == (16, 1)
    assert (second.dataset_page.image_size(), second.dataset_page.channels()) == (16, 1)
    assert "3 images at 16×16 from flowers" in train.dataset_label.text()
    assert train.start_button.isEnabled()
    assert second.dataset_page.stack.currentIndex() == 1 and second.dataset_page.note_label.isHidden()


def test_a_dataset_gone_or_unusable_is_one_quiet_line_and_comes_back_when_it_does(qtbot, open_window, tmp_path):
    folder = write_pictures(tmp_path / "on-a-usb-stick")
    first = open_window()
    with qtbot.waitSignal(first.dataset_page.datasetReady, timeout=SCAN_TIMEOUT_MS):
        assert send_drop(first, [folder])
    wait_for_scan(qtbot, first)
    close(first)

    shutil.move(folder, tmp_path / "elsewhere")  # the stick is unplugged
    gone = open_window()
    page = gone.dataset_page
    assert not page.is_scanning() and QApplication.activeModalWidget() is None
    assert page.note_label.isVisible() and "is no longer there" in page.note_label.text()
    assert str(folder) in page.note_label.text()
    assert page.error_label.isHidden() and page.stack.currentWidget() is page.drop_zone
    assert gone.train_page.dataset is None
    close(gone)

    folder.mkdir()
    (folder / "notes.txt").write_text("the pictures were moved\n")  # there again, but nothing usable in it
    unusable = open_window()
    page = unusable.dataset_page
    qtbot.waitUntil(lambda: page.note_label.isVisible(), timeout=SCAN_TIMEOUT_MS)
    wait_for_scan(qtbot, unusable)
    assert "has no usable images any more" in page.note_label.text()
    assert page.error_label.isHidden() and page.stack.currentWidget() is page.drop_zone
    assert unusable.train_page.dataset is None and QApplication.activeModalWidget() is None
    close(unusable)

    shutil.rmtree(folder)
    shutil.move(tmp_path / "elsewhere", folder)  # plugged in again: nothing was forgotten meanwhile
    back = open_window()
    qtbot.waitUntil(lambda: back.train_page.dataset is not None, timeout=SCAN_TIMEOUT_MS)
    wait_for_scan(qtbot, back)
    assert len(back.train_page.dataset.files) == 3 and back.dataset_page.note_label.isHidden()


def test_the_noising_picture_comes_back_and_the_sample_stands_in_when_it_is_gone(qtbot, open_window, tmp_path):
    if not SAMPLE_PICTURE.is_file():
        pytest.skip("the project has no sample picture")
    picture = tmp_path / "cat.png"
    Image.fromarray(np.full((160, 200, 3), (200, 30, 90), dtype=np.uint8)).save(picture)
    first = open_window()
    first.tabs.setCurrentWidget(first.noising_page)
    assert first.noising_page.source_path == SAMPLE_PICTURE
    assert send_drop(first.noising_page, [picture])
    assert first.noising_page.source_path == picture
    close(first)

    second = open_window()
    page = second.noising_page
    assert second.tabs.currentWidget() is page  # the tab is remembered too, so the page is shown at once
    assert page.source_path == picture
    np.testing.assert_array_equal(page.working_picture, load_image(picture, WORKING_SIZE, 3)[0])
    assert page.source_label.text().startswith("cat.png.")
    close(second)

    picture.unlink()
    third = open_window()
    page = third.noising_page
    assert page.source_path == SAMPLE_PICTURE and page.working_image_view.image() is not None
    assert "cat.png, the picture from last time, is no longer there" in page.source_label.text()
    assert page.image_message.isHidden()


def test_the_model_to_resume_comes_back_with_its_curve_and_preview(qtbot, open_window, models_dir, tiny_model):
    for name in ("first", "second"):
        shutil.copytree(tiny_model, models_dir / name)
    first = open_window()
    first.tabs.setCurrentWidget(first.train_page)
    page = first.train_page
    assert page.resume_picker.current_path() == models_dir / "first"
    assert page.loss_plot.point_count() == 0  # on a first start nothing was picked: no curve yet
    page.resume_picker.setFocus()
    qtbot.keyClick(page.resume_picker, Qt.Key.Key_Down)  # the user picks the second model
    assert page.resume_picker.current_path() == models_dir / "second"
    assert page.loss_plot.point_count() == 12
    page.form.steps_spin.setValue(777)  # and then asks for more steps
    close(first)

    second = open_window()
    page = second.train_page
    assert second.tabs.currentWidget() is page
    assert page.resume_picker.current_path() == models_dir / "second"
    np.testing.assert_allclose(page.loss_plot.losses(), model_store.load_loss_history(models_dir / "second"))
    assert page.preview_view.image() is not None  # the model's last preview, without picking it again
    assert page.form.steps_spin.value() == 777  # the form keeps what the user left in it
    assert "12 steps trained; Resume continues up to Steps (777)" in page.resume_hint.text()
    assert page.resume_button.isEnabled()
    close(second)

    shutil.rmtree(models_dir / "second")  # deleted meanwhile: the list's own choice, and no curve
    third = open_window()
    assert third.train_page.resume_picker.current_path() == models_dir / "first"
    assert third.train_page.loss_plot.point_count() == 0
    assert str(models_dir / "second") in str(third.settings.value(RESUME_KEY))  # still remembered
