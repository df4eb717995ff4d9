"""``ddpm-studio import`` and ``train --init-from`` end to end: a diffusers folder imports, describes itself and
samples; a fine-tune starts from a model; bad input is one line on stderr and status 2."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from ddpm_studio import cli
from ddpm_studio.core.data.demo import make_demo_images
from ddpm_studio.core.model import store as model_store
from ddpm_studio.core.model.unet import UNetConfig
from tests.helpers.cli_commands import assert_one_error_line
from tests.helpers.diffusers_folders import reference_unet, write_diffusers_folder


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cli-import")
    model = reference_unet(UNetConfig(16, 3, 8, (1, 2), 1, (8,), 0.0, 4))
    write_diffusers_folder(root / "ddpm-shapes-16", model, {"variance_type": "fixed_small", "clip_sample": False})
    write_diffusers_folder(root / "learned", model, {"variance_type": "learned_range"})
    (root / "images").mkdir()
    for index, image in enumerate(make_demo_images(8, size=16)):
        Image.fromarray(image).save(root / "images" / f"{index}.png")
    return root


def test_import_then_info_sample_and_fine_tune(workspace, user_models_dir, capsys):
    """Through the command's main() in this process: the subprocess tests of test_cli cover the process itself."""
    assert cli.main(["import", str(workspace / "ddpm-shapes-16")]) == 0
    out = user_models_dir / "ddpm-shapes-16"
    printed = capsys.readouterr().out
    assert f"as {out}" in printed and "fixed small" in printed
    assert cli.main(["info", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"Imported     from the diffusers folder {workspace / 'ddpm-shapes-16'}" in printed
    assert "sha256" in printed and "fixed small variance by default, x0_hat not clipped" in printed
    assert "Trained" not in printed
    assert cli.main(["sample", str(out), "--num", "1", "--steps", "2", "--out", str(workspace / "samples"),
                     "--device", "cpu"]) == 0
    pictures = [p for p in (workspace / "samples").glob("*.png") if "grid" not in p.name]
    assert len(pictures) == 1
    with Image.open(pictures[0]) as image:
        assert image.size == (16, 16) and image.text["clip"] == "False"  # the model's own default
    assert cli.main(["train", str(workspace / "images"), "--init-from", str(out), "--steps", "1", "--batch-size", "4",
                     "--preview-count", "0", "--out", str(workspace / "tuned"), "--device", "cpu"]) == 0
    tuned = model_store.read_model_info(workspace / "tuned")
    assert tuned.step == 1 and tuned.training["init_from"] == str(out)
    assert tuned.unet == model_store.read_model_info(out).unet
    assert cli.main(["info", str(workspace / "tuned")]) == 0
    assert f"Fine-tuned   from {out}" in capsys.readouterr().out


BAD = {
    "import a learned variance": (lambda w, m: ["import", w / "learned", "--out", w / "x1"], "variance_type"),
    "import a non-folder": (lambda w, m: ["import", w / "images" / "0.png", "--out", w / "x2"], "is not a folder"),
    "import a folder of images": (lambda w, m: ["import", w / "images", "--out", w / "x3"], "config.json"),
    "import over a model": (lambda w, m: ["import", w / "ddpm-shapes-16", "--out", m], "already holds a model"),
    "init-from with another preset": (lambda w, m: ["train", w / "images", "--init-from", m, "--preset", "small",
                                                   "--out", w / "x4"], "another architecture"),
    "init-from at another size": (lambda w, m: ["train", w / "images", "--init-from", m, "--image-size", "32",
                                               "--out", w / "x5"], "--image-size 32"),
    "init-from with resume": (lambda w, m: ["train", "--resume", "--init-from", m, "--out", m], "cannot be combined"),
    "init-from a non-model": (lambda w, m: ["train", w / "images", "--init-from", w / "images", "--out", w / "x6"],
                              "model.json is missing"),
}


@pytest.mark.parametrize("case", BAD)
def test_bad_input_is_one_line_and_status_2(workspace, tiny_model, case, capsys):
    argv, fragment = BAD[case]
    before = sorted(p.name for p in workspace.iterdir())
    status = cli.main([str(a) for a in argv(workspace, tiny_model)])
    captured = capsys.readouterr()
    assert status == 2, captured
    assert_one_error_line(captured.err, fragment)
    assert sorted(p.name for p in workspace.iterdir()) == before
