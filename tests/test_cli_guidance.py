"""``ddpm-studio sample --class / --all-classes / --guidance`` on a tiny class-conditional model, and its refusals."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from ddpm_studio import cli
from ddpm_studio.core.data.demo import write_demo_dataset
from ddpm_studio.core.evaluation.metrics import STANDIN
from ddpm_studio.core.explore.branching import BranchRequest, BranchResult, run_branching
from ddpm_studio.core.model.store import read_model_info
from ddpm_studio.core.sampling.guidance import class_mix
from ddpm_studio.core.sampling.job import SamplingRequest, sample_images
from tests.helpers.class_models import CLASS_NAMES, write_class_model
from tests.helpers.cli_commands import assert_one_error_line

FAST = ["--sampler", "ddim", "--steps", "3", "--device", "cpu", "--precision", "fp32"]


@pytest.fixture(scope="module")
def class_model(tmp_path_factory):
    return write_class_model(tmp_path_factory.mktemp("models") / "classes")


def saved_images(out):
    return sorted(path for path in out.glob("*.png") if path.stem[-3:].isdigit())


def test_class_by_name_and_guidance_are_in_every_png(class_model, tmp_path):
    out = tmp_path / "squares"
    assert cli.main(["sample", str(class_model), "--class", "squares", "--guidance", "2.5", "--num", "2",
                     "--out", str(out), *FAST]) == 0
    paths = saved_images(out)
    assert len(paths) == 2
    for path in paths + [out / f"{paths[0].stem[:-4]}_grid.png"]:
        text = Image.open(path).text
        assert (text["class"], text["class_index"], text["guidance"]) == ("squares", "1", "2.5"), path
    # The same images as the engine makes for label 1 with w = 2.5, and unlike w = 0.
    guided = sample_images(SamplingRequest(model_path=class_model, num_images=2, sampler="ddim", steps=3,
                                           device="cpu", precision="fp32", classes=[1], guidance=2.5)).images
    assert np.array_equal(np.stack([np.asarray(Image.open(p)) for p in paths]), guided.permute(0, 2, 3, 1).numpy())
    plain = sample_images(SamplingRequest(model_path=class_model, num_images=2, sampler="ddim", steps=3,
                                          device="cpu", precision="fp32", classes=[1])).images
    assert not np.array_equal(plain.numpy(), guided.numpy())


def test_all_classes_makes_one_row_a_class(class_model, tmp_path, capsys):
    out = tmp_path / "all"
    assert cli.main(["sample", str(class_model), "--all-classes", "--num", "2", "--out", str(out), *FAST]) == 0
    paths = saved_images(out)
    assert [Image.open(p).text["class"] for p in paths] == [name for name in CLASS_NAMES for _ in range(2)]
    assert [Image.open(p).text["guidance"] for p in paths] == ["0"] * 6
    grid_path = out / f"{paths[0].stem[:-4]}_grid.png"
    grid = Image.open(grid_path)
    side = 16 + 2
    assert grid.size == (2 * side + 2, 3 * side + 2)  # 2 columns, 3 rows (one a class), 2 px padding
    # Row r, column k of the grid is image 2r + k, of class r: the rows are in class order.
    pixels = np.asarray(grid)
    for index, path in enumerate(paths):
        row, column = divmod(index, 2)
        cell = pixels[2 + row * side: 2 + row * side + 16, 2 + column * side: 2 + column * side + 16]
        assert np.array_equal(cell, np.asarray(Image.open(path))), (row, column)
        assert Image.open(path).text["class"] == CLASS_NAMES[row]
    assert grid.text["rows"] == ",".join(CLASS_NAMES)
    printed = capsys.readouterr().out
    assert (f"The grid {grid_path.name} has one row a class, top to bottom: 1 circles, 2 squares, 3 stripes."
            in printed.splitlines())


def test_guidance_without_a_class_is_refused(class_model, tmp_path, capsys):
    out = tmp_path / "x"
    assert cli.main(["sample", str(class_model), "--guidance", "2", "--num", "1", "--out", str(out), *FAST]) == 2
    assert_one_error_line(capsys.readouterr().err, "Guidance needs a class: give --class NAME or --all-classes.")
    assert not out.exists()
    assert cli.main(["explore", "branch", str(class_model), "--guidance", "2", "--at", "8", "--num", "1",
                     "--out", str(out), "--device", "cpu"]) == 2
    assert_one_error_line(capsys.readouterr().err, "Guidance needs a class: give --class NAME.")
    assert not out.exists()
    # w = 0 without a class stays the unconditional (null label) model, as before.
    assert cli.main(["sample", str(class_model), "--num", "1", "--out", str(out), *FAST]) == 0


@pytest.mark.parametrize("extra, fragment", [
    (["--class", "hexagons"], "its classes are circles, squares, stripes"),
    (["--class", "7"], "no class '7'"),
    (["--class", "0", "--guidance", "-1"], "guidance weight must lie in [0, 10]"),
    (["--class", "0", "--all-classes"], "not both"),
])
def test_bad_class_options_are_one_sentence(class_model, tmp_path, capsys, extra, fragment):
    assert cli.main(["sample", str(class_model), "--num", "1", "--out", str(tmp_path / "x"), *FAST, *extra]) == 2
    assert_one_error_line(capsys.readouterr().err, fragment)
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("extra", [["--class", "0"], ["--all-classes"], ["--guidance", "2"]])
def test_an_unconditional_model_refuses_class_options(tiny_model, tmp_path, capsys, extra):
    assert cli.main(["sample", str(tiny_model), "--num", "1", "--out", str(tmp_path / "x"), *FAST, *extra]) == 2
    assert_one_error_line(capsys.readouterr().err, "is not class-conditional")


def test_class_mix_follows_the_dataset_counts(class_model, tiny_model):
    assert class_mix(read_model_info(tiny_model), 4) is None
    info = read_model_info(class_model)  # counts 30, 20, 10
    assert class_mix(info, 12) == [0] * 6 + [1] * 4 + [2] * 2
    assert [class_mix(info, 7).count(c) for c in range(3)] == [4, 2, 1]  # 3.5, 2.33, 1.17: largest remainder


def test_kid_of_a_class_model_samples_the_class_mix_and_says_so(class_model, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("DDPM_STUDIO_CACHE", str(tmp_path / "cache"))
    list(write_demo_dataset(tmp_path / "shapes", count=12, size=16, seed=2))
    status = cli.main(["evaluate", str(class_model), str(tmp_path / "shapes"), "--kid", "--num", "6",
                       "--batch-size", "4", "--steps", "2", "--guidance", "1.5", "--device", "cpu",
                       "--feature-extractor", STANDIN, "--no-record"])
    out = capsys.readouterr().out
    assert status == 0
    assert "Samples follow the dataset's class mix (circles 3, squares 2, stripes 1), guidance w = 1.5." in out
    assert any(line.startswith("KID ") for line in out.splitlines())


def test_guidance_for_an_unconditional_models_quality_is_refused(tiny_model, tmp_path, capsys):
    list(write_demo_dataset(tmp_path / "shapes", count=4, size=16, seed=2))
    assert cli.main(["evaluate", str(tiny_model), str(tmp_path / "shapes"), "--kid", "--num", "4", "--guidance", "1",
                     "--device", "cpu", "--feature-extractor", STANDIN, "--no-record"]) == 2
    assert_one_error_line(capsys.readouterr().err, "is not class-conditional")


def test_branching_continues_with_the_chains_class_and_weight(class_model):
    def finals(**classes):
        request = BranchRequest(model_path=class_model, at=[8], num=2, seed=4, device="cpu", precision="fp32",
                                **classes)
        result = [event for event in run_branching(request) if isinstance(event, BranchResult)][0]
        return np.stack(result.rows[0].finals), result.metadata

    guided, metadata = finals(classes=[2], guidance=3.0)
    assert (metadata["class"], metadata["guidance"]) == ("stripes", "3")
    plain, _ = finals(classes=[2])
    other, _ = finals(classes=[0], guidance=3.0)
    again, _ = finals(classes=[2], guidance=3.0)
    assert np.array_equal(guided, again)
    assert not np.array_equal(guided, plain) and not np.array_equal(guided, other)
