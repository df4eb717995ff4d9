"""The neighbours panel on the Generate page: a real click on a sample shows its nearest training images, the
same as a brute-force search over the decoded training set, by pixels and by (the stand-in's) features; Generate
alone starts no search; a model that records no training set gets one grey line; one whose dataset is gone, one
sentence."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from PySide6.QtCore import Qt

from ddpm_studio.core.data.demo import make_demo_images
from ddpm_studio.core.data.folders import load_dataset
from ddpm_studio.core.evaluation.metrics import STANDIN, create_feature_extractor
from ddpm_studio.gui.style import MUTED_TEXT_STYLE
from ddpm_studio.gui.widgets.neighbours import CLICK_HINT, NO_TRAINING_SET, PIXELS_ONLY_NOTE, SEARCH_NOTE
from tests.helpers.windows import open_generate_page

SHOT = Path("/tmp/work/shots/neighbours.png")
PANEL_SHOT = Path("/tmp/work/shots/neighbours2.png")


def model_trained_on(tiny_model: Path, root: Path, dataset: Path | None) -> Path:
    model = Path(shutil.copytree(tiny_model, root / "model"))
    config = model / "model.json"
    data = json.loads(config.read_text())
    data["dataset"]["paths"] = [str(dataset.resolve())] if dataset else []
    config.write_text(json.dumps(data))
    return model


def training_folder(root: Path) -> Path:
    dataset = root / "train"
    dataset.mkdir()
    for index, image in enumerate(make_demo_images(20, size=16, seed=4)):
        Image.fromarray(image).save(dataset / f"shape-{index:02d}.png")
    return dataset


def click_image(qtbot, page, index: int) -> None:
    page.runner is None or qtbot.waitUntil(lambda: page.runner is None, timeout=60_000)
    rect = page.grid.visualItemRect(page.grid.item(index))
    qtbot.mouseClick(page.grid.viewport(), Qt.MouseButton.LeftButton, pos=rect.center())


def generated(qtbot, window, model: Path, count: int, seed: int):
    page = open_generate_page(window, model, count=count, seed=seed)
    window.resize(1500, 950)
    assert page.generate() is not None
    qtbot.waitUntil(lambda: page.runner is None, timeout=60_000)
    return page


def rows_by_brute_force(rows: np.ndarray, query: np.ndarray, k: int, rms: bool) -> tuple[np.ndarray, np.ndarray]:
    squared = (rows.astype(np.float64) - query.astype(np.float64)) ** 2
    distances = np.sqrt(squared.mean(axis=1) if rms else squared.sum(axis=1))
    order = np.argsort(distances, kind="stable")[:k]
    return order, distances[order]


def test_clicking_a_sample_shows_its_nearest_training_images(qtbot, window, tiny_model, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "no-weights"))  # no Inception weights: pixels only
    dataset = training_folder(tmp_path)
    page = generated(qtbot, window, model_trained_on(tiny_model, tmp_path, dataset), count=3, seed=5)
    panel = page.neighbours

    click_image(qtbot, page, 2)
    assert "image 3" in panel.title.text() and panel.searches == 1
    qtbot.waitUntil(lambda: not panel.jobs.is_running(), timeout=30_000)
    result = panel.result
    training = load_dataset(dataset, 16, 3)
    order, distances = rows_by_brute_force(training.images.numpy().reshape(20, -1),
                                           page.result.images[2].numpy().reshape(-1), 6, rms=True)
    assert [path.name for path in result.files] == [Path(training.files[i]).name for i in order]
    np.testing.assert_allclose(result.distances, distances, atol=1e-9)
    assert panel.list.count() == 1 + len(result.files) == 7  # "By pixels", then a row each
    assert panel.list.item(0).text() == "By pixels · RMS on [0, 255]" and panel.feature_result is None
    assert panel.list.item(1).text() == f"1. {result.files[0].name} · {result.distances[0]:.1f}"
    assert panel.note.text() == PIXELS_ONLY_NOTE
    note = panel.note.toolTip()  # the whole sentence: only pixels, why, and how to get the weights
    assert note.startswith("Nearest neighbours in pixel space only: ") and "Inception field of the Evaluate" in note
    assert "\n" not in note
    assert not panel.jobs.progress_bar.isVisible() and panel.jobs.status_label.text() == ""
    SHOT.parent.mkdir(parents=True, exist_ok=True)
    assert window.grab().save(str(SHOT))


def test_generate_alone_starts_no_search(qtbot, window, tiny_model, tmp_path):
    page = generated(qtbot, window, model_trained_on(tiny_model, tmp_path, training_folder(tmp_path)), 3, seed=2)
    panel = page.neighbours
    qtbot.wait(200)  # a search would have started by now
    assert page.timeline.image_index == 0  # the first image is on the timeline ...
    assert panel.searches == 0 and not panel.jobs.is_running()  # ... and nothing was searched for it
    assert panel.note.text() == CLICK_HINT and panel.list.count() == 0 and panel.result is None


def test_feature_neighbours_with_the_standin_extractor(qtbot, window, tiny_model, tmp_path):
    dataset = training_folder(tmp_path)
    page = generated(qtbot, window, model_trained_on(tiny_model, tmp_path, dataset), count=3, seed=7)
    panel = page.neighbours
    panel.feature_extractor = STANDIN
    click_image(qtbot, page, 1)
    qtbot.waitUntil(lambda: not panel.jobs.is_running(), timeout=30_000)
    assert panel.result is not None and panel.feature_result is not None
    extractor = create_feature_extractor(STANDIN, torch.device("cpu"))
    training = load_dataset(dataset, 16, 3)
    train_features = extractor(training.images)[0].numpy()
    query = extractor(page.result.images[1][None])[0].numpy()[0]
    order, distances = rows_by_brute_force(train_features, query, 6, rms=False)
    found = panel.feature_result
    assert [path.name for path in found.files] == [Path(training.files[i]).name for i in order]
    np.testing.assert_allclose(found.distances, distances, atol=1e-5)
    assert panel.list.item(7).text() == f"By {STANDIN} features · Euclidean" and panel.list.count() == 14
    assert panel.note.text() == SEARCH_NOTE
    features = panel.cache["features"]

    click_image(qtbot, page, 0)  # the next click only searches: the training features are kept
    qtbot.waitUntil(lambda: not panel.jobs.is_running(), timeout=30_000)
    assert panel.cache["features"] is features and panel.searches == 2 and "image 1" in panel.title.text()
    PANEL_SHOT.parent.mkdir(parents=True, exist_ok=True)
    assert panel.grab().save(str(PANEL_SHOT))


def test_a_model_without_a_training_set_gets_one_grey_line_once(qtbot, window, tiny_model, tmp_path):
    page = generated(qtbot, window, model_trained_on(tiny_model, tmp_path, None), count=2, seed=1)
    panel = page.neighbours
    assert panel.note.text() == NO_TRAINING_SET and panel.note.styleSheet() == MUTED_TEXT_STYLE
    click_image(qtbot, page, 1)
    assert page.generate() is not None  # and again
    qtbot.waitUntil(lambda: page.runner is None, timeout=60_000)
    assert panel.searches == 0 and not panel.jobs.is_running() and panel.jobs.status_label.text() == ""
    assert panel.note.text() == NO_TRAINING_SET and panel.list.count() == 0


def test_a_model_whose_dataset_is_gone_says_so_in_one_line(qtbot, window, tiny_model, tmp_path):
    page = generated(qtbot, window, model_trained_on(tiny_model, tmp_path, tmp_path / "gone"), count=2, seed=1)
    panel = page.neighbours
    click_image(qtbot, page, 1)
    qtbot.waitUntil(lambda: not panel.jobs.is_running(), timeout=30_000)
    text = panel.jobs.status_label.text()
    assert "is gone" in text and "\n" not in text and panel.result is None and panel.list.count() == 0


def test_a_labelled_training_folder_names_each_neighbour_with_its_class_folder(qtbot, window, tiny_model, tmp_path):
    dataset = tmp_path / "labelled"
    for index, image in enumerate(make_demo_images(12, size=16, seed=6)):
        folder = dataset / ("even" if index % 2 == 0 else "odd")
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(folder / f"{index:02d}.png")
    page = generated(qtbot, window, model_trained_on(tiny_model, tmp_path, dataset), count=2, seed=3)
    panel = page.neighbours
    click_image(qtbot, page, 0)
    qtbot.waitUntil(lambda: not panel.jobs.is_running(), timeout=30_000)
    rows = [panel.list.item(row).text() for row in range(1, panel.list.count())]
    expected = [f"{path.parent.name}/{path.name}" for path in panel.result.files]
    assert [row.split(" · ")[0].split(". ", 1)[1] for row in rows] == expected
    assert all(name.split("/")[0] in ("even", "odd") for name in expected)
