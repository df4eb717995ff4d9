"""``ddpm-studio explore branch`` and ``explore interpolate`` end to end on the tiny model: the files, the numbers,
the PNGs' text chunks, and one line with exit status 2 for what cannot be done."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ddpm_studio.cli import main
from ddpm_studio.core.explore.branching import BranchRequest, BranchResult, run_branching, seed_for
from tests.helpers.cli_commands import assert_one_error_line


def png(path: Path) -> tuple[np.ndarray, dict[str, str]]:
    with Image.open(path) as image:
        return np.asarray(image), dict(image.text)


@pytest.fixture
def pictures(tmp_path) -> tuple[Path, Path]:
    rng = np.random.default_rng(0)
    a, b = tmp_path / "a.png", tmp_path / "b.jpg"
    Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(a)
    Image.fromarray(rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)).save(b)  # resized as training resizes
    return a, b


def test_branch_writes_continuations_grids_the_figure_and_the_numbers(tiny_model, tmp_path, capsys):
    out = tmp_path / "branching"
    assert main(["explore", "branch", str(tiny_model), "--at", "50,25", "--num", "3", "--seed", "2",
                 "--out", str(out)]) == 0
    assert "Branching at 16 px on this CPU: about" in capsys.readouterr().out
    numbers = json.loads((out / "branching.json").read_text())
    assert [row["t"] for row in numbers["rows"]] == [50, 25] and numbers["num"] == 3 and numbers["finished"]
    assert numbers["reference_spread"] > 0
    for row in numbers["rows"]:
        assert row["seeds"] == [seed_for(2, row["t"], k) for k in range(3)]
        assert row["decided"] == pytest.approx(max(0.0, min(1.0, 1 - row["spread"] / numbers["reference_spread"])))
    pixels, text = png(out / "t0025_k1.png")
    assert pixels.shape == (16, 16, 3)
    assert (text["model"], text["seed"], text["sampler"], text["t"], text["branch"]) == ("tiny", "2", "ddpm", "25", "1")
    assert text["branch_seed"] == str(seed_for(2, 25, 1))
    assert png(out / "t0050_grid.png")[1]["t"] == "50"
    figure, text = png(out / "branching.png")
    assert figure.shape[:2] == (4 * 2 * (16 + 4), 4 * (5 * 16 + 6 * 2))  # 2 rows of x_t, x0_hat, 3 finals; x4
    assert text["at"] == "50,25"
    # The PNGs are the engine's rows, and the same request gives them again.
    result = list(run_branching(BranchRequest(tiny_model, at=[50, 25], num=3, seed=2)))[-1]
    assert isinstance(result, BranchResult)
    assert np.array_equal(result.rows[1].finals[1], pixels)


def test_interpolate_writes_frames_the_strip_and_the_animation(tiny_model, tmp_path, pictures):
    out = tmp_path / "one"
    assert main(["explore", "interpolate", str(tiny_model), *map(str, pictures), "--t", "25", "--steps", "3",
                 "--seed", "4", "--sampler", "ddim", "--sampler-steps", "5", "--out", str(out)]) == 0
    names = sorted(path.name for path in out.iterdir())
    assert names == ["interpolation.gif", "interpolation.png", "lambda_0.00.png", "lambda_0.50.png",
                     "lambda_1.00.png"]
    frame, text = png(out / "lambda_0.50.png")
    assert frame.shape == (16, 16, 3)
    assert (text["model"], text["seed"], text["sampler"], text["t"], text["lambda"]) == ("tiny", "4", "ddim", "25",
                                                                                         "0.5")
    with Image.open(out / "interpolation.gif") as animation:
        assert animation.n_frames == 4  # 0, 0.5, 1, then back through 0.5


def test_interpolate_over_several_t_writes_the_fig9_grid_with_the_pixel_blend_at_t_0(tiny_model, tmp_path,
                                                                                     pictures):
    out = tmp_path / "fig9"
    assert main(["explore", "interpolate", str(tiny_model), *map(str, pictures), "--t", "0,50", "--steps", "3",
                 "--sampler-steps", "4", "--out", str(out)]) == 0
    a, _ = png(out / "t0000_lambda_0.00.png")
    b, _ = png(out / "t0000_lambda_1.00.png")
    blend, text = png(out / "t0000_lambda_0.50.png")
    assert np.array_equal(a, np.asarray(Image.open(pictures[0])))
    assert np.array_equal(blend, np.round((a.astype(float) + b) / 2).astype(np.uint8))
    assert text["t"] == "0" and text["lambda"] == "0.5"
    assert (out / "t0050_lambda_0.50.png").exists() and (out / "t0050_interpolation.gif").exists()
    grid, text = png(out / "interpolation.png")
    assert grid.shape[:2] == (4 * 2 * 20, 4 * (5 * 16 + 6 * 2))  # one row per t: A, 3 frames, B
    assert text["t"] == "0,50"


@pytest.mark.parametrize("arguments, fragment", [
    (["branch", "MODEL", "--at", "51"], "must lie in 1..50"),
    (["branch", "MODEL", "--at", "10,20"], "strictly decreasing"),
    (["branch", "MODEL", "--sampler", "ddim", "--eta", "0"], "every continuation would be the same image"),
    (["branch", "MODEL", "--sampler", "dpm-solver++"], "DPM-Solver++ is deterministic"),
    (["interpolate", "MODEL", "A", "B", "--t", "51"], "must lie in 0..50"),
    (["interpolate", "MODEL", "A", "BROKEN"], "not an image"),
    (["interpolate", "MODEL", "A", "MISSING"], "unreadable"),
])
def test_bad_input_is_one_line_and_status_2(tiny_model, tmp_path, pictures, arguments, fragment, capsys):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a picture")
    paths = {"MODEL": str(tiny_model), "A": str(pictures[0]), "B": str(pictures[1]), "BROKEN": str(broken),
             "MISSING": str(tmp_path / "missing.png")}
    arguments = [paths.get(argument, argument) for argument in arguments]
    assert main(["explore", *arguments, "--out", str(tmp_path / "out")]) == 2
    assert_one_error_line(capsys.readouterr().err, fragment)
    assert not (tmp_path / "out").exists()  # refused before anything is written
