"""``ddpm-studio evaluate --rate-distortion``: Table 4's line, three PNG plots and the record, in one pass with --nll;
bad held-out folders are one sentence."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from PIL import Image

from ddpm_studio import cli
from ddpm_studio.core.data.demo import make_demo_images


@pytest.fixture(scope="module")
def place(tmp_path_factory, tiny_model) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("rate_distortion")
    for name, size, mode in (("held-out", 16, "RGB"), ("large", 32, "RGB"), ("gray", 16, "L")):
        (root / name).mkdir()
        for index, image in enumerate(make_demo_images(4, size=size, seed=9)):
            Image.fromarray(image).convert(mode).save(root / name / f"{index}.png")
    (root / "empty").mkdir()
    shutil.copytree(tiny_model, root / "model")
    return {path.name: path for path in root.iterdir()}


def test_rate_distortion_and_nll_share_one_pass_and_write_table_plots_and_record(place, capsys):
    figures = place["model"].parent / "figures"
    status = cli.main(["evaluate", str(place["model"]), str(place["held-out"]), "--rate-distortion", "--nll",
                       "--num-images", "3", "--figures", str(figures)])
    captured = capsys.readouterr()
    assert status == 0, captured.err
    assert captured.err.count("NLL:") >= 1 and "Reverse steps" in captured.out and "NLL bound" in captured.out
    records = json.loads((place["model"] / "model.json").read_text())["evaluations"]
    nll, rd = records[-1], records[-2]
    assert nll["metric"] == "nll_bpd" and rd["metric"] == "rate_distortion"
    T = 50
    assert [row["reverse_steps"] for row in rd["table"]] == [50, 45, 40, 35, 30, 25, 20, 15, 10, 5]
    # after every reverse step the rate is the whole bound without L_0, from the same pass
    assert rd["value"] == pytest.approx(nll["value"] - nll["L_0"], abs=1e-4)
    assert rd["table"][0]["t"] == 1 and rd["table"][-1]["t"] == T - 5 + 1
    rates = [row["rate_bpd"] for row in rd["table"]]
    assert rates == sorted(rates, reverse=True)
    for name in ("rate_distortion_distortion.png", "rate_distortion_rate.png", "rate_distortion_curve.png"):
        with Image.open(figures / name) as image:
            assert image.size == (560, 400) and len(image.getcolors(1 << 16)) > 2
    assert cli.main(["info", str(place["model"])]) == 0
    assert "Rate-distortion 50: " in capsys.readouterr().out


BAD = {
    "no images": (["{empty}"], "empty"),
    "no folder": (["{empty}/nothing"], "No folder of images"),
    "no data": ([], "needs a folder of held-out images"),
    "another resolution": (["{large}"], "is 32x32 but this model works at 16x16"),
    "another channel count": (["{gray}"], "has 1 colour channel but this model has 3"),
}


@pytest.mark.parametrize("case", BAD)
def test_bad_held_out_folders_are_one_line(place, case, capsys):
    data, fragment = BAD[case]
    before = (place["model"] / "model.json").read_text()
    argv = ["evaluate", str(place["model"]), *[arg.format(**{k: str(v) for k, v in place.items()}) for arg in data],
            "--rate-distortion"]
    status = cli.main(argv)
    captured = capsys.readouterr()
    assert status == 2, captured
    errors = [line for line in captured.err.splitlines() if line.startswith("ddpm-studio: error: ")]
    assert len(errors) == 1 and fragment in errors[0], captured.err
    assert (place["model"] / "model.json").read_text() == before
