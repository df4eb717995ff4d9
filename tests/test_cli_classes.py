"""``ddpm-studio train --classes`` end to end in this process: a class-conditional model from real PNG class
subfolders, the classes line at the start, and the one-line refusals (status 2, nothing half-made left)."""

from __future__ import annotations

import json

import pytest
from safetensors.torch import load_file

from ddpm_studio import cli
from ddpm_studio.core.model import store as model_store
from tests.core.test_class_training import write_class_folders
from tests.helpers.cli_commands import assert_one_error_line

TRAIN = ["train", "--preset", "tiny", "--image-size", "16", "--steps", "4", "--timesteps", "50", "--preview-count",
         "0", "--batch-size", "4", "--lr", "1e-3", "--warmup", "1", "--no-cache", "--device", "cpu"]


def main(*arguments) -> int:
    return cli.main([str(argument) for argument in arguments])


@pytest.fixture(scope="module")
def labelled(tmp_path_factory):
    return write_class_folders(tmp_path_factory.mktemp("classes") / "animals", loose=1)


@pytest.fixture(scope="module")
def conditional(labelled, tmp_path_factory):
    out = tmp_path_factory.mktemp("models") / "cond"
    assert main(*TRAIN, labelled, "--classes", "--label-dropout", "0.2", "--out", out) == 0
    return out


def test_train_with_classes_writes_a_class_conditional_model(conditional):
    data = json.loads((conditional / model_store.CONFIG_FILE).read_text())
    assert data["unet"]["num_classes"] == 3
    assert data["classes"] == {"names": ["cat", "dog", "owl"], "counts": [4, 4, 4]}
    assert data["training"]["label_dropout"] == pytest.approx(0.2) and data["training"]["classes"] is True
    embedding = load_file(str(conditional / model_store.EMA_FILE))["class_embedding.weight"]
    assert embedding.shape[0] == 4 and embedding[:3].abs().sum(dim=1).min() > 0


def test_training_starts_by_describing_the_classes(labelled, tmp_path, capsys):
    assert main(*TRAIN, labelled, "--steps", "1", "--out", tmp_path / "plain") == 0
    out = capsys.readouterr().out
    assert "3 classes from the subfolders: cat 4, dog 4, owl 4." in out
    assert "Add --classes to condition on them." in out
    assert "num_classes" in (tmp_path / "plain" / model_store.CONFIG_FILE).read_text()
    assert model_store.read_model_info(tmp_path / "plain").unet.num_classes == 0
    assert main(*TRAIN, labelled, "--steps", "1", "--classes", "--out", tmp_path / "cond") == 0
    assert "Add --classes" not in capsys.readouterr().out


def refused(capsys, tmp_path, fragment, *arguments) -> None:
    before = sorted(path.name for path in tmp_path.iterdir())
    status = main(*arguments)
    captured = capsys.readouterr()
    assert status == 2, captured
    assert_one_error_line(captured.err, fragment)
    assert "Traceback" not in captured.err + captured.out
    assert sorted(path.name for path in tmp_path.iterdir()) == before


def test_classes_on_a_folder_without_class_subfolders_are_refused(tmp_path, capsys):
    flat = write_class_folders(tmp_path / "source", names=("only",))  # one class folder: not labelled
    refused(capsys, tmp_path, "two or more class subfolders", *TRAIN, flat / "only", "--classes",
            "--out", tmp_path / "m")


@pytest.mark.parametrize("dropout", ["1", "-0.5"])
def test_a_label_dropout_outside_zero_to_one_is_refused(labelled, tmp_path, capsys, dropout):
    refused(capsys, tmp_path, "label dropout must lie in [0, 1)", *TRAIN, labelled, "--classes",
            "--label-dropout", dropout, "--out", tmp_path / "m")


def test_resuming_on_other_class_names_is_refused(conditional, tmp_path, capsys):
    other = write_class_folders(tmp_path / "other", names=("ant", "bee"))
    before = (conditional / model_store.STATE_FILE).read_bytes()
    refused(capsys, tmp_path, "a resumed run keeps the model's classes", "train", other, "--resume", "--out",
            conditional, "--steps", "8", "--no-cache", "--device", "cpu")
    assert (conditional / model_store.STATE_FILE).read_bytes() == before


def test_a_fine_tune_of_a_conditional_model_onto_other_classes_is_refused(conditional, tmp_path, capsys):
    other = write_class_folders(tmp_path / "other", names=("ant", "bee"))
    refused(capsys, tmp_path, "a fine-tuned run keeps the model's classes", "train", other, "--init-from",
            conditional, "--classes", "--steps", "2", "--no-cache", "--device", "cpu", "--out", tmp_path / "tuned")
