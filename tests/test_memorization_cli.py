"""``ddpm-studio evaluate MODEL DATA --memorization`` end to end on a tiny model whose model.json names a folder of
real PNGs: the report, the grid of closest pairs, the record that info shows; and the refusals, one line each."""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ddpm_studio import cli
from ddpm_studio.cli.arguments import add_evaluate_arguments
from ddpm_studio.core.data.cache import open_cached_dataset
from ddpm_studio.core.data.demo import make_demo_images
from ddpm_studio.core.evaluation.memorization import DEFAULT_SAMPLES, pair_gap
from ddpm_studio.core.evaluation.metrics import STANDIN, create_feature_extractor

ERROR_PREFIX = "ddpm-studio: error: "


def write_pngs(folder: Path, images, mode: str | None = None) -> Path:
    folder.mkdir(parents=True)
    for index, image in enumerate(images):
        picture = Image.fromarray(image)
        (picture.convert(mode) if mode else picture).save(folder / f"{index:03d}.png")
    return folder


def point_dataset_at(model: Path, folders: list[Path]) -> None:
    config = model / "model.json"
    data = json.loads(config.read_text())
    data["dataset"]["paths"] = [str(folder.resolve()) for folder in folders]
    config.write_text(json.dumps(data))


@pytest.fixture(scope="module")
def place(tmp_path_factory, tiny_model) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("memorization")
    write_pngs(root / "train", make_demo_images(30, size=16, seed=1))
    write_pngs(root / "held-out", make_demo_images(12, size=16, seed=2))
    write_pngs(root / "grey", make_demo_images(4, size=16, seed=3), mode="L")
    write_pngs(root / "small", make_demo_images(4, size=8, seed=4))
    (root / "empty").mkdir()
    shutil.copytree(tiny_model, root / "model")
    point_dataset_at(root / "model", [root / "train"])
    shutil.copytree(tiny_model, root / "orphan")
    point_dataset_at(root / "orphan", [root / "gone"])
    return {path.name: path for path in root.iterdir()}


def test_memorization_reports_draws_the_grid_and_records_it(place, capsys, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(place["empty"]))  # no Inception weights: pixels only, and one line says so
    status = cli.main(["evaluate", str(place["model"]), str(place["held-out"]), "--memorization", "--num", "6",
                       "--steps", "3", "--batch-size", "4"])
    captured = capsys.readouterr()
    assert status == 0, captured.err
    out = captured.out
    assert out.startswith("Nearest neighbours in pixel space only: ") and "RMS per pixel on the [0, 255] scale" in out
    assert "samples (6)" in out and "held-out (12)" in out and "Copies by pixels:" in out
    assert "--inception-weights" in out.splitlines()[0] and "Copies by inception" not in out.lower()
    grid_path = place["model"] / "memorization.png"
    grid = np.asarray(Image.open(grid_path))
    gap = pair_gap(16)  # 6 pairs, two a row: sample | 1 px | nearest training image, the pairs set apart
    assert grid.shape == (gap + 3 * (16 + gap), gap + 2 * (2 * 16 + 1 + gap), 3)
    record = json.loads((place["model"] / "model.json").read_text())["evaluations"][-1]
    assert record["metric"] == "memorization_copies" and record["n"] == 6 and record["reference_n"] == 12
    assert 0.0 <= record["value"] <= 1.0 and record["value"] == record["copies"] / 6
    assert record["reference"]["p5"] == pytest.approx(record["threshold"])
    assert record["samples"]["p1"] <= record["samples"]["p50"] <= record["samples"]["p95"]

    assert cli.main(["info", str(place["model"])]) == 0
    info = capsys.readouterr().out
    assert "Evaluations" in info and "Copies" in info and "6 samples" in info


@pytest.mark.parametrize("case", ["empty", "grey", "small", "gone", "no data"])
def test_refusals_are_one_sentence(place, case, capsys):
    model = place["orphan" if case == "gone" else "model"]
    data = [] if case == "no data" else [str(place["held-out" if case == "gone" else case])]
    status = cli.main(["evaluate", str(model), *data, "--memorization", "--num", "2", "--steps", "2"])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert status == 2 and len(lines) == 1 and lines[0].startswith(ERROR_PREFIX), err
    expected = {"empty": "empty", "grey": "greyscale", "small": "below the model's 16x16", "gone": "is gone",
                "no data": "held-out images"}[case]
    assert expected in lines[0], lines[0]


def test_training_images_stand_in_for_a_folder_that_is_gone(place, capsys, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(place["empty"]))
    args = [str(place["orphan"]), str(place["held-out"]), "--memorization", "--num", "3", "--steps", "2",
            "--batch-size", "4"]
    assert cli.main(["evaluate", *args]) == 2
    assert "--training-images FOLDER" in capsys.readouterr().err
    status = cli.main(["evaluate", *args, "--training-images", str(place["train"])])
    captured = capsys.readouterr()
    assert status == 0, captured.err
    # the held-out row is the pixel RMS of each held-out image to its nearest image of the folder given
    train = [e for e in open_cached_dataset([place["train"]], 16, 3)][-1].images.numpy().astype(np.float64)
    held = [e for e in open_cached_dataset([place["held-out"]], 16, 3)][-1].images.numpy().astype(np.float64)
    rms = np.sqrt(((held[:, None] - train[None]) ** 2).mean(axis=(2, 3, 4))).min(1)
    reference_row = next(line for line in captured.out.splitlines() if line.startswith("held-out (12)"))
    assert f"p50 {np.percentile(rms, 50):6.2f}" in reference_row, reference_row
    record = json.loads((place["orphan"] / "model.json").read_text())["evaluations"][-1]
    assert record["training_images"] == [str(place["train"])]
    assert cli.main(["evaluate", *args, "--training-images", str(place["empty"] / "nowhere")]) == 2
    assert "No folder of training images at" in capsys.readouterr().err


def test_with_the_standin_extractor_feature_neighbours_are_reported_and_recorded(place, capsys, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(place["empty"]))
    status = cli.main(["evaluate", str(place["model"]), str(place["held-out"]), "--memorization", "--num", "4",
                       "--steps", "2", "--batch-size", "4", "--feature-extractor", STANDIN])
    out = capsys.readouterr().out
    assert status == 0
    lines = out.splitlines()
    assert lines[0] == f"Nearest neighbours by pixels and by {STANDIN} features."
    assert "pixel space only" not in out and "Copies by pixels: " in out
    feature_rows = [line for line in lines if line.startswith(f"Nearest training image by {STANDIN} features")]
    assert feature_rows == [f"Nearest training image by {STANDIN} features, Euclidean distance between feature "
                            "vectors:"]
    # the held-out row's median is the float64 brute force over the stand-in features of the cached images
    extractor = create_feature_extractor(STANDIN, "cpu")
    cached = [e for e in open_cached_dataset([place["train"]], 16, 3)][-1]
    held = [e for e in open_cached_dataset([place["held-out"]], 16, 3)][-1]
    train_features = extractor(cached.images)[0].numpy().astype(np.float64)
    held_features = extractor(held.images)[0].numpy().astype(np.float64)
    nearest = np.sqrt(((held_features[:, None] - train_features[None]) ** 2).sum(2)).min(1)
    reference_row = lines[lines.index(feature_rows[0]) + 2]
    assert reference_row.startswith("held-out (12)") and f"p50 {np.percentile(nearest, 50):6.2f}" in reference_row
    record = json.loads((place["model"] / "model.json").read_text())["evaluations"][-1]
    assert record["n"] == 4 and record["features"]["extractor"] == f"{STANDIN} features"
    assert record["features"]["reference"]["p50"] == pytest.approx(np.percentile(nearest, 50), abs=1e-9)
    assert cli.main(["info", str(place["model"])]) == 0
    assert f"by {STANDIN} features: " in capsys.readouterr().out


def test_memorization_draws_its_own_default_not_fids(place, capsys):
    status = cli.main(["evaluate", str(place["model"]), str(place["held-out"]), "--memorization", "--steps", "1",
                       "--batch-size", "500", "--no-record"])
    out = capsys.readouterr().out
    assert status == 0 and f"samples ({DEFAULT_SAMPLES})" in out and DEFAULT_SAMPLES == 1_000
    parser = argparse.ArgumentParser()
    add_evaluate_arguments(parser)
    assert parser.parse_args(["model"]).num is None  # each measurement takes its own default
    help_text = " ".join(parser.format_help().split())
    assert "FID/KID/IS (default 10000;" in help_text and "--memorization (default 1000)" in help_text
