"""``ddpm-studio export``: what it writes and says, and its refusals in one sentence with a non-zero exit."""

from __future__ import annotations

import json

from ddpm_studio.cli.entry import main
from ddpm_studio.cli.reporting import EXIT_USER_ERROR
from ddpm_studio.core.model.importer import import_folder
from tests.helpers.class_models import CLASS_NAMES, write_class_model


def test_export_writes_a_pipeline_folder_and_says_how_to_load_it(tmp_path, capsys):
    model = write_class_model(tmp_path / "model")
    assert main(["export", str(model), str(tmp_path / "out")]) == 0
    printed = capsys.readouterr().out
    assert "unet/diffusion_pytorch_model.safetensors" in printed and "DDPMPipeline.from_pretrained(" in printed
    marker = json.loads((tmp_path / "out" / "studio.json").read_text())
    assert marker["classes"] == CLASS_NAMES and marker["null_class"] == 3
    assert json.loads((tmp_path / "out" / "unet" / "config.json").read_text())["num_class_embeds"] == 4
    assert import_folder(tmp_path / "out", tmp_path / "back").info.unet.num_classes == 3


def test_a_non_empty_destination_needs_overwrite(tmp_path, capsys):
    model = write_class_model(tmp_path / "model")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "notes.txt").write_text("mine")
    assert main(["export", str(model), str(tmp_path / "out")]) == EXIT_USER_ERROR
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "--overwrite" in error and "Traceback" not in error
    assert (tmp_path / "out" / "notes.txt").read_text() == "mine"
    assert main(["export", str(model), str(tmp_path / "out"), "--overwrite"]) == 0
    assert not (tmp_path / "out" / "notes.txt").exists()


def test_a_folder_that_is_not_a_model_is_refused(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["export", str(tmp_path / "empty"), str(tmp_path / "out")]) == EXIT_USER_ERROR
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "Traceback" not in error
    assert not (tmp_path / "out").exists()
