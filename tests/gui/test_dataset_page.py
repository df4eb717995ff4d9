"""The Dataset page: drops and scans in the background, the usable and skipped files, errors, the demo dataset."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from PySide6.QtCore import Qt

from ddpm_studio.core.data.demo import README_NAME
from ddpm_studio.core.model import store as model_store
from ddpm_studio.gui.pages import dataset as dataset_page
from ddpm_studio.gui.pages.dataset import sample_indices
from tests.helpers.drops import send_drop

SCAN_TIMEOUT_MS = 30_000


def skipped_rows(page) -> list[tuple[str, str]]:
    """The skipped list as shown: (file name, reason) per row."""
    items = [page.skipped_list.topLevelItem(row) for row in range(page.skipped_list.topLevelItemCount())]
    return [(item.text(0), item.text(1)) for item in items]


def write_png(path: Path, size: int = 24, seed: int = 0) -> Path:
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path


@pytest.fixture
def mixed_folder(tmp_path) -> Path:
    """Three good PNGs, a truncated PNG and a text file named like a JPEG."""
    folder = tmp_path / "mixed"
    folder.mkdir()
    for index in range(3):
        write_png(folder / f"good_{index}.png", seed=index)
    whole = write_png(tmp_path / "whole.png", size=64, seed=9).read_bytes()
    (folder / "broken.png").write_bytes(whole[: len(whole) // 3])
    (folder / "notes.jpg").write_text("not a picture at all\n")
    return folder


def drop_paths(target, paths: list[Path]) -> None:
    assert send_drop(target, paths)


def wait_for_scan(qtbot, page) -> None:
    qtbot.waitUntil(lambda: not page.is_scanning(), timeout=SCAN_TIMEOUT_MS)


def test_dropping_a_folder_scans_it_and_lists_the_skipped_files(window, qtbot, mixed_folder):
    page = window.dataset_page
    assert page.stack.currentWidget() is page.drop_zone  # the first step is what an empty page shows
    with qtbot.waitSignal(page.datasetReady, timeout=SCAN_TIMEOUT_MS) as ready:
        drop_paths(window, [mixed_folder])
    result = ready.args[0]
    wait_for_scan(qtbot, page)

    assert window.tabs.currentWidget() is page
    assert [path.name for path in result.files] == ["good_0.png", "good_1.png", "good_2.png"]
    assert result.sources == [mixed_folder]
    assert page.thumbnails.count() == 3
    reasons = dict(skipped_rows(page))
    assert set(reasons) == {"broken.png", "notes.jpg"}
    assert reasons["broken.png"].startswith("damaged")
    assert reasons["notes.jpg"].startswith("not an image")
    assert page.skipped_list.topLevelItem(0).toolTip(0).startswith(str(mixed_folder))
    assert "3 usable images" in page.summary_label.text()
    assert "24×24" in page.summary_label.text()
    assert page.error_label.isHidden()
    assert window.train_page.dataset is result  # handed to the Train page


def test_dropping_several_image_files_scans_just_those(window, qtbot, mixed_folder):
    page = window.dataset_page
    files = [mixed_folder / "good_0.png", mixed_folder / "good_2.png"]
    with qtbot.waitSignal(page.datasetReady, timeout=SCAN_TIMEOUT_MS) as ready:
        drop_paths(window, files)
    assert ready.args[0].files == files
    wait_for_scan(qtbot, page)
    assert page.skipped_box.isHidden()


@pytest.mark.parametrize("contents", ["empty", "broken"])
def test_a_folder_without_usable_images_explains_why_and_hands_nothing_on(window, qtbot, tmp_path, contents):
    folder = tmp_path / "nothing"
    folder.mkdir()
    if contents == "broken":
        (folder / "a.png").write_bytes(b"")
        (folder / "b.jpg").write_text("text")
    page = window.dataset_page
    with qtbot.assertNotEmitted(page.datasetReady):
        page.scan([folder])
        wait_for_scan(qtbot, page)
        qtbot.waitUntil(lambda: page.last_scan is not None)
    assert page.error_label.isVisible()
    message = page.error_label.text()
    assert message.startswith("No usable images in")
    if contents == "empty":
        assert "folder is empty" in message
    else:
        assert "1 empty" in message and "1 not an image" in message
    assert window.train_page.dataset is None
    assert not window.train_page.start_button.isEnabled()


def test_two_folders_without_images_dropped_in_turn_each_name_their_own(window, qtbot, tmp_path, cache_folder):
    empty, text_only = tmp_path / "e", tmp_path / "t"
    empty.mkdir()
    text_only.mkdir()
    (text_only / "a.txt").write_text("hi\n")
    page = window.dataset_page
    for folder in (empty, text_only):
        drop_paths(window, [folder])
        wait_for_scan(qtbot, page)
        qtbot.waitUntil(lambda folder=folder: page.last_scan is not None and page.last_scan.sources == [folder])
    message = page.error_label.text()
    assert page.error_label.isVisible()
    assert message.startswith(f"No usable images in {text_only}: 1 file found") and str(empty) not in message
    assert skipped_rows(page) == [("a.txt", dataset_page.IGNORED_REASON)]  # the list beside it agrees


def test_a_missing_folder_gives_a_message_not_a_crash(window, qtbot, tmp_path):
    page = window.dataset_page
    page.scan([tmp_path / "no-such-folder"])
    wait_for_scan(qtbot, page)
    qtbot.waitUntil(page.error_label.isVisible)
    assert "No such file or folder" in page.error_label.text()


def test_changing_the_resolution_rescans_at_the_new_size(window, qtbot, mixed_folder):
    page = window.dataset_page
    with qtbot.waitSignal(page.datasetReady, timeout=SCAN_TIMEOUT_MS):
        page.scan([mixed_folder])
    assert page.result.image_size == 32
    with qtbot.waitSignal(page.datasetReady, timeout=SCAN_TIMEOUT_MS) as ready:
        page.resolution_combo.setCurrentIndex(page.resolution_combo.findData(16))
    assert ready.args[0].image_size == 16
    assert tuple(ready.args[0].images.shape[1:]) == (3, 16, 16)
    with qtbot.waitSignal(page.datasetReady, timeout=SCAN_TIMEOUT_MS) as ready:
        page.channels_combo.setCurrentIndex(page.channels_combo.findData(1))
    assert tuple(ready.args[0].images.shape[1:]) == (1, 16, 16)
    wait_for_scan(qtbot, page)
    assert window.train_page.form.resolution_combo.currentData() == 16  # the Train page follows the dataset
    assert window.train_page.form.channels_combo.currentData() == 1


def test_a_large_folder_shows_an_even_sample_and_says_so(window, qtbot, mixed_folder, monkeypatch):
    monkeypatch.setattr(dataset_page, "THUMBNAIL_SAMPLE", 2)
    page = window.dataset_page
    with qtbot.waitSignal(page.datasetReady, timeout=SCAN_TIMEOUT_MS):
        page.scan([mixed_folder])
    assert page.thumbnails.count() == 2
    assert page.sample_label.text().startswith("Showing 2 of 3 images")
    assert list(sample_indices(1000, 256)[[0, -1]]) == [0, 999]
    assert len(sample_indices(1000, 256)) == 256
    assert list(sample_indices(5, 256)) == [0, 1, 2, 3, 4]


def test_the_demo_dataset_is_drawn_once_beside_the_models_then_scanned(window, qtbot, monkeypatch, tmp_path):
    assert dataset_page.demo_dataset_dir() == model_store.default_user_models_dir().parent / "demo-dataset"
    folder = tmp_path / "demo-dataset"
    monkeypatch.setattr(dataset_page, "demo_dataset_dir", lambda: folder)
    page = window.dataset_page
    page.demo_count = 12
    with qtbot.waitSignal(page.datasetReady, timeout=SCAN_TIMEOUT_MS) as ready:
        qtbot.mouseClick(page.drop_zone.demo_button, Qt.MouseButton.LeftButton)
    assert len(ready.args[0].files) == 12
    assert (folder / README_NAME).is_file()
    wait_for_scan(qtbot, page)
    first_written = (folder / "shape_00000.png").stat().st_mtime_ns

    page.demo_count = 20  # already there: used as it is, not drawn again
    with qtbot.waitSignal(page.datasetReady, timeout=SCAN_TIMEOUT_MS) as ready:
        qtbot.mouseClick(page.demo_button, Qt.MouseButton.LeftButton)
    assert len(ready.args[0].files) == 12
    assert (folder / "shape_00000.png").stat().st_mtime_ns == first_written
    wait_for_scan(qtbot, page)


def test_stop_ends_drawing_the_demo_dataset_and_keeps_the_last_dataset(
    window, qtbot, monkeypatch, tmp_path, mixed_folder
):
    page = window.dataset_page
    with qtbot.waitSignal(page.datasetReady, timeout=SCAN_TIMEOUT_MS) as ready:
        page.scan([mixed_folder])
    kept = ready.args[0]
    folder = tmp_path / "demo-dataset"
    monkeypatch.setattr(dataset_page, "demo_dataset_dir", lambda: folder)
    page.demo_count = 100_000  # far too many to finish before Stop
    with qtbot.assertNotEmitted(page.datasetReady):
        page.use_demo_dataset()
        assert page.scan_row.isVisible() and page.stop_button.isEnabled()
        qtbot.waitUntil(lambda: folder.is_dir() and any(folder.iterdir()), timeout=SCAN_TIMEOUT_MS)
        qtbot.mouseClick(page.stop_button, Qt.MouseButton.LeftButton)
        wait_for_scan(qtbot, page)
    assert not (folder / README_NAME).exists()  # incomplete, so the next click draws it again
    assert len(list(folder.glob("shape_*.png"))) < 100_000
    assert page.result is kept
    assert page.scan_row.isHidden()
    assert window.train_page.dataset is kept


def test_train_on_these_images_shows_the_train_page(window, qtbot, mixed_folder):
    page = window.dataset_page
    with qtbot.waitSignal(page.datasetReady, timeout=SCAN_TIMEOUT_MS):
        page.scan([mixed_folder])
    wait_for_scan(qtbot, page)
    qtbot.mouseClick(page.next_button, Qt.MouseButton.LeftButton)
    assert window.tabs.currentWidget() is window.train_page
    assert window.train_page.start_button.isEnabled()


def test_files_that_are_not_images_are_counted_and_listed(window, qtbot, mixed_folder):
    """A notes.txt is neither an image nor silently forgotten: the summary counts it, the list names it."""
    (mixed_folder / "notes.txt").write_text("where these pictures come from\n")
    (mixed_folder / "sub").mkdir()
    (mixed_folder / "sub" / "labels.csv").write_text("file,label\n")
    page = window.dataset_page
    for attempt in ("decoded", "from the cache"):  # the second scan opens the cached images
        with qtbot.waitSignal(page.datasetReady, timeout=SCAN_TIMEOUT_MS) as ready:
            drop_paths(window, [mixed_folder])
        wait_for_scan(qtbot, page)
        assert sorted(path.name for path in ready.args[0].ignored) == ["labels.csv", "notes.txt"], attempt
        assert "2 other files ignored: not images" in page.summary_label.text()
        reasons = dict(skipped_rows(page))
        assert set(reasons) == {"broken.png", "notes.jpg", "notes.txt", "labels.csv"}
        assert reasons["notes.txt"].startswith("ignored: not an image file")
        assert "2 files skipped" in page.skipped_label.text() and "2 files ignored" in page.skipped_label.text()
        assert page.skipped_box.isVisible()


def test_the_skipped_list_shows_whole_names_and_reasons_at_the_default_size(window, qtbot, mixed_folder):
    from PySide6.QtWidgets import QApplication

    long_name = "a_rather_long_file_name_of_a_broken_picture_from_the_old_camera.png"
    (mixed_folder / long_name).write_bytes(b"not a png")
    (mixed_folder / "notes.txt").write_text("not an image file\n")
    page = window.dataset_page
    qtbot.waitExposed(window)
    with qtbot.waitSignal(page.datasetReady, timeout=SCAN_TIMEOUT_MS):
        drop_paths(window, [mixed_folder])
    wait_for_scan(qtbot, page)
    QApplication.processEvents()
    table = page.skipped_list
    assert not table.horizontalScrollBar().isVisible()  # nothing to scroll sideways to
    seen = table.viewport().rect()
    metrics = table.fontMetrics()
    for row in range(table.topLevelItemCount()):
        item = table.topLevelItem(row)
        name_cell = table.visualItemRect(item)
        assert seen.left() <= name_cell.left() and name_cell.right() <= seen.right()
        reason_cell = table.visualRect(table.indexFromItem(item, 1))
        assert reason_cell.right() <= seen.right() + 1, item.text(0)  # the reason ends inside the list
        margin = table.text_margin()
        wrapped = metrics.boundingRect(reason_cell.adjusted(margin, 0, -margin, 0), Qt.TextFlag.TextWordWrap,
                                       item.text(1))
        assert wrapped.height() <= reason_cell.height() + 1, item.text(1)  # every line of it is shown
        assert table.columnWidth(0) >= min(metrics.horizontalAdvance("broken.png"), 1)
    assert table.columnWidth(0) <= table.viewport().width() * 0.45 + 1  # a long name leaves the reason room
    names = [table.topLevelItem(row).toolTip(0) for row in range(table.topLevelItemCount())]
    assert str(mixed_folder / long_name) in names  # its whole path, where the name is shortened


def test_grey_images_scanned_as_colour_get_a_hint_that_rescans_them_grey(window, qtbot, tmp_path):
    folder = tmp_path / "digits"
    folder.mkdir()
    for index in range(4):
        pixels = np.random.default_rng(index).integers(0, 256, (24, 24), dtype=np.uint8)
        Image.fromarray(pixels, "L").save(folder / f"digit_{index}.png")
    page = window.dataset_page
    page.set_scan_settings(16, 3)
    with qtbot.waitSignal(page.datasetReady, timeout=SCAN_TIMEOUT_MS):
        drop_paths(window, [folder])
    wait_for_scan(qtbot, page)
    assert page.grayscale_hint.isVisible() and "grayscale" in page.grayscale_hint.text()
    with qtbot.waitSignal(page.datasetReady, timeout=SCAN_TIMEOUT_MS) as ready:
        page.grayscale_hint.linkActivated.emit("grayscale")  # what a click on the link sends
    wait_for_scan(qtbot, page)
    assert ready.args[0].channels == 1 and page.channels() == 1
    assert not page.grayscale_hint.isVisible()


def test_colour_images_get_no_grey_hint(window, qtbot, mixed_folder):
    page = window.dataset_page
    with qtbot.waitSignal(page.datasetReady, timeout=SCAN_TIMEOUT_MS):
        drop_paths(window, [mixed_folder])
    wait_for_scan(qtbot, page)
    assert not page.grayscale_hint.isVisible()


def test_the_status_bar_names_the_dataset_folder_not_the_cache_entry(window, qtbot, mixed_folder, cache_folder):
    page = window.dataset_page
    messages = []
    window.statusBar().messageChanged.connect(messages.append)
    for _attempt in ("decoded", "from the cache"):
        with qtbot.waitSignal(page.datasetReady, timeout=SCAN_TIMEOUT_MS):
            drop_paths(window, [mixed_folder])
        wait_for_scan(qtbot, page)
    shown = [message for message in messages if message]
    assert shown and not any(str(cache_folder) in message for message in shown)
    assert any(message.startswith(f"{mixed_folder}: ") and "decoded into the dataset cache" in message
               for message in shown)
    assert window.statusBar().currentMessage() == (
        f"{mixed_folder}: 3 usable images, 2 skipped; opened from the dataset cache.")
