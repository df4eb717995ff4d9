"""``ddpm-studio evaluate --nll`` and the learned-variance options of train and sample, through the same main()
as the command: results, the record in model.json shown by info, and bad input as one line with status 2."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from PIL import Image

from ddpm_studio import cli
from ddpm_studio.core.data.demo import make_demo_images
from ddpm_studio.core.model import store as model_store


@pytest.fixture(scope="module")
def place(tmp_path_factory, tiny_model) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("evaluate")
    (root / "held-out").mkdir()
    for index, image in enumerate(make_demo_images(5, size=16, seed=9)):
        Image.fromarray(image).save(root / "held-out" / f"{index}.png")
    (root / "empty").mkdir()
    shutil.copytree(tiny_model, root / "model")
    return {path.name: path for path in root.iterdir()}


def test_evaluate_nll_prints_the_bound_with_its_split_and_records_it(place, capsys):
    status = cli.main(["evaluate", str(place["model"]), str(place["held-out"]), "--nll", "--num-images", "3",
                       "--timesteps", "4", "--batch-size", "2"])
    captured = capsys.readouterr()
    assert status == 0, captured.err
    assert "NLL" in captured.err and "term" in captured.err  # the progress bar
    lines = {line.split()[0]: line for line in captured.out.splitlines() if line.strip()}
    value, error = (float(word) for word in lines["NLL"].replace("±", " ").split()[2:4])
    assert 0 < value < 20 and error > 0 and "bits/dim" in lines["NLL"]
    assert "L_0" in captured.out and "sum" in captured.out and "L_T" in captured.out
    records = json.loads((place["model"] / "model.json").read_text())["evaluations"]
    record = records[-1]
    assert record["metric"] == "nll_bpd" and record["n"] == 3 and record["timesteps"] == 4
    assert record["value"] == pytest.approx(value, abs=1e-4) and record["data"] == str(place["held-out"].resolve())
    assert record["value"] == pytest.approx(record["L_0"] + record["sum_L_t-1"] + record["L_T"], abs=1e-5)
    assert {"date", "standard_error", "variance"} <= set(record)

    assert cli.main(["info", str(place["model"])]) == 0
    info = capsys.readouterr().out
    assert "Evaluations" in info and f"NLL {record['value']:.3f}" in info and "Variance     fixed" in info


BAD = {
    "nothing to measure": (["evaluate", "{model}", "{held-out}"], "Choose what to measure"),
    "timesteps not a number": (["evaluate", "{model}", "{held-out}", "--nll", "--timesteps", "some"],
                               "'all' or a number"),
    "timesteps over T": (["evaluate", "{model}", "{held-out}", "--nll", "--timesteps", "50"], "between 1 and 49"),
    "no images": (["evaluate", "{model}", "{empty}", "--nll"], "empty"),
    "no folder": (["evaluate", "{model}", "{empty}/nothing", "--nll"], "No folder of images"),
    "learned variance of a fixed model": (["evaluate", "{model}", "{held-out}", "--nll", "--variance", "learned"],
                                          "did not learn its variance"),
    "sample a fixed model with learned": (["sample", "{model}", "--sampler", "ddpm", "--variance", "learned",
                                           "--out", "{empty}/s"], "did not learn its variance"),
    "respaced ddpm with zero steps": (["sample", "{model}", "--sampler", "ddpm", "--steps", "0", "--out", "{empty}/s"],
                                      "at least 1 step"),
    "resume with another variance": (["train", "--resume", "--out", "{model}", "--variance", "learned",
                                      "--steps", "99"], "cannot change when resuming"),
}


@pytest.mark.parametrize("case", BAD)
def test_bad_input_is_one_line_and_status_2(place, case, capsys):
    argv, fragment = BAD[case]
    before = (place["model"] / "model.json").read_text()
    status = cli.main([arg.format(**{k: str(v) for k, v in place.items()}) for arg in argv])
    captured = capsys.readouterr()
    assert status == 2, captured
    errors = [line for line in captured.err.splitlines() if line.startswith("ddpm-studio: error: ")]
    assert len(errors) == 1 and fragment in errors[0], captured.err
    assert (place["model"] / "model.json").read_text() == before
    assert not (place["empty"] / "s").exists()


def test_learned_variance_trains_and_samples_in_respaced_ddpm_steps(place, tmp_path, capsys):
    out = tmp_path / "learned"
    assert cli.main(["train", str(place["held-out"]), "--out", str(out), "--preset", "tiny", "--steps", "2",
                     "--timesteps", "20", "--preview-count", "0", "--variance", "learned"]) == 0
    info = model_store.read_model_info(out)
    assert info.unet.learned_variance and info.training["variance"] == "learned"
    assert cli.main(["sample", str(out), "--sampler", "ddpm", "--steps", "5", "--num", "2",
                     "--out", str(tmp_path / "samples")]) == 0
    grid = next((tmp_path / "samples").glob("*_grid.png"))
    assert "ddpm5" in grid.name
    assert Image.open(grid).text["variance"] == "learned" and Image.open(grid).text["steps"] == "5"
    capsys.readouterr()
