"""The Dataset page with a labelled folder: dropped for real, it shows the classes, their counts, a
thumbnail row per class and the line about top-level images; an unlabelled folder shows none of it."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from PySide6.QtWidgets import QLabel

from ddpm_studio.gui.widgets.class_rows import MAX_HEIGHT, MAX_ROWS, THUMBNAILS_PER_ROW
from tests.helpers.drops import send_drop

SCAN_TIMEOUT_MS = 30_000
SHOTS = Path("/tmp/work/shots")
COLOURS = {"cat": (220, 60, 40), "dog": (40, 170, 60), "owl": (50, 80, 220)}


def write_picture(path: Path, colour: tuple[int, int, int], shade: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.zeros((24, 24, 3), dtype=np.uint8)
    pixels[:] = np.clip(np.array(colour) * (0.5 + 0.05 * shade), 0, 255).astype(np.uint8)
    pixels[6 + shade % 10: 14 + shade % 10, 6:18] = 255  # a white bar that moves, so thumbnails differ
    Image.fromarray(pixels).save(path)


@pytest.fixture
def labelled_folder(tmp_path) -> Path:
    """cat 5, dog 3, owl 12 (more than a row shows), and two images at the top level."""
    root = tmp_path / "pets"
    for name, count in (("cat", 5), ("dog", 3), ("owl", 12)):
        for index in range(count):
            write_picture(root / name / f"{index:02d}.png", COLOURS[name], index)
    for index in range(2):
        write_picture(root / f"loose_{index}.png", (128, 128, 128), index)
    return root


def drop_and_wait(window, qtbot, paths: list[Path]):
    page = window.dataset_page
    with qtbot.waitSignal(page.datasetReady, timeout=SCAN_TIMEOUT_MS) as ready:
        assert send_drop(window, paths)
    qtbot.waitUntil(lambda: not page.is_scanning(), timeout=SCAN_TIMEOUT_MS)
    return ready.args[0]


def row_caption(row) -> str:
    return row.findChild(QLabel, "classCaption").text()


def row_thumbnails(row) -> int:
    return sum(1 for label in row.findChildren(QLabel) if label.pixmap() is not None and not label.pixmap().isNull())


def test_a_dropped_labelled_folder_shows_its_classes_with_a_row_each(window, qtbot, labelled_folder, cache_folder):
    window.resize(1100, 760)
    window.show()
    result = drop_and_wait(window, qtbot, [labelled_folder])
    page = window.dataset_page
    assert result.class_names == ["cat", "dog", "owl"] and result.class_counts() == [5, 3, 12]

    assert page.classes_label.isVisible() and page.class_rows.isVisible()
    line = page.classes_label.text()
    assert line == result.describe_classes()
    assert "cat 5, dog 3, owl 12" in line and "2 images outside the class folders are kept without a class" in line
    captions = [row_caption(row) for row in page.class_rows.rows]
    assert captions == ["<b>cat</b><br>5 images", "<b>dog</b><br>3 images", "<b>owl</b><br>12 images",
                        "<b>(no class: top level)</b><br>2 images"]
    assert [row_thumbnails(row) for row in page.class_rows.rows] == [5, 3, THUMBNAILS_PER_ROW, 2]
    assert page.class_rows.more_label.isHidden()
    qtbot.wait(50)
    viewport = page.class_rows.viewport()
    for row in page.class_rows.rows:  # every row in sight, whole: the box is as tall as its rows
        top_left = row.mapTo(viewport, row.rect().topLeft())
        assert row.height() >= 40 and viewport.rect().contains(row.rect().translated(top_left))
    assert "22 usable images" in page.summary_label.text()

    SHOTS.mkdir(parents=True, exist_ok=True)
    qtbot.wait(50)
    assert window.grab().save(str(SHOTS / "dataset_classes.png"))


def test_many_classes_show_a_bounded_number_of_rows_and_say_how_many_more(window, qtbot, tmp_path, cache_folder):
    root = tmp_path / "many"
    for index in range(MAX_ROWS + 5):
        write_picture(root / f"class_{index:02d}" / "a.png", (10 * index, 100, 200 - 5 * index), index)
    result = drop_and_wait(window, qtbot, [root])
    page = window.dataset_page
    assert len(result.class_names) == MAX_ROWS + 5
    assert len(page.class_rows.rows) == MAX_ROWS
    assert row_caption(page.class_rows.rows[-1]).startswith(f"<b>class_{MAX_ROWS - 1:02d}</b>")
    assert not page.class_rows.more_label.isHidden()
    assert page.class_rows.more_label.text() == "and 5 more classes"
    assert page.class_rows.height() <= MAX_HEIGHT and page.thumbnails.isVisible()  # rows scroll; the grid stays
    window.resize(1100, 760)
    window.show()
    qtbot.wait(50)
    SHOTS.mkdir(parents=True, exist_ok=True)
    assert window.grab().save(str(SHOTS / "dataset_classes_many.png"))


def test_an_unlabelled_folder_after_a_labelled_one_shows_no_classes(window, qtbot, labelled_folder, tmp_path,
                                                                     cache_folder):
    drop_and_wait(window, qtbot, [labelled_folder])
    plain = tmp_path / "plain"
    for index in range(3):
        write_picture(plain / f"{index}.png", (90, 90, 90), index)
    result = drop_and_wait(window, qtbot, [plain])
    page = window.dataset_page
    assert not result.labelled
    assert page.classes_label.isHidden() and page.class_rows.isHidden()
    assert page.class_rows.rows == []
    assert page.thumbnails.count() == 3
