"""Export to diffusers' format: the import of an export is the same model, and diffusers computes the same epsilon."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from ddpm_studio.core.diffusion.schedule import ScheduleConfig
from ddpm_studio.core.model import store
from ddpm_studio.core.model.exporter import export_diffusers
from ddpm_studio.core.model.importer import import_folder
from ddpm_studio.core.model.store import ModelError, load_model
from ddpm_studio.core.model.unet import PRESETS, UNet
from tests.helpers.class_models import CLASS_NAMES, write_class_model
from tests.helpers.diffusers_folders import diffusers_classes

diffusers = pytest.importorskip("diffusers")
UNet2DModel, _ = diffusers_classes()


def write_model(folder: Path, seed: int = 0, schedule: ScheduleConfig | None = None, **changes) -> Path:
    """The tiny preset with random (non-zero) weights everywhere, written through the model store."""
    config = dataclasses.replace(PRESETS["tiny"].config, **changes)
    unet = UNet(config)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in unet.parameters():
            parameter.add_(torch.randn(parameter.shape, generator=generator) * 0.05)
    folder.mkdir(parents=True)
    info = store.ModelInfo(path=folder, unet=config, schedule=schedule or ScheduleConfig(num_timesteps=20), step=1)
    store.write_json_atomic(folder / store.CONFIG_FILE, info.to_json())
    store.save_safetensors_atomic(folder / store.EMA_FILE, unet.state_dict(), {"step": "1"})
    return folder


MODELS = {
    "unconditional": lambda folder: write_model(folder),
    "learned variance": lambda folder: write_model(folder, learned_variance=True),
    "symmetric padding": lambda folder: write_model(folder, downsample_padding="symmetric"),
    "class-conditional": lambda folder: write_class_model(folder),
}


@pytest.mark.parametrize("kind", MODELS)
def test_import_of_an_export_is_the_same_model(tmp_path, kind):
    original = MODELS[kind](tmp_path / "model")
    export_diffusers(original, tmp_path / "exported")
    back = import_folder(tmp_path / "exported", tmp_path / "back").path
    ours, theirs = load_file(original / store.EMA_FILE), load_file(back / store.EMA_FILE)
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[name], theirs[name]) for name in ours)
    a, b = store.read_model_info(original), store.read_model_info(back)
    assert a.unet == b.unet
    assert a.schedule.kind == b.schedule.kind and a.schedule.num_timesteps == b.schedule.num_timesteps
    # At T = 20 the rescaled beta_end is capped at 0.999, so the settings may differ; the betas may not.
    assert b.schedule.betas() == pytest.approx(a.schedule.betas(), rel=1e-12, abs=0)
    assert a.sampling_defaults == b.sampling_defaults
    if a.unet.num_classes:
        assert b.extra["classes"] == {"names": CLASS_NAMES, "counts": None}


@pytest.mark.parametrize("kind", MODELS)
def test_diffusers_computes_the_studio_epsilon(tmp_path, kind):
    original = MODELS[kind](tmp_path / "model")
    export_diffusers(original, tmp_path / "exported")
    model = load_model(original)
    reference = UNet2DModel.from_pretrained(tmp_path / "exported" / "unet").eval()
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(4, 3, 16, 16, generator=generator)
    t = torch.tensor([0, 5, 12, 19])
    classes = None
    if model.info.unet.num_classes:
        classes = torch.tensor([0, 1, 2, model.unet.null_class])  # the null row too
        assert model.unet.class_embedding.weight.abs().min() > 0
    with torch.no_grad():
        ours = model.unet(x, t, classes) if classes is not None else model.unet(x, t)
        theirs = reference(x, t, class_labels=classes).sample
    assert ours.abs().max() > 1e-3
    assert ((ours - theirs).abs().max() / ours.abs().max()).item() <= 1e-5


@pytest.mark.parametrize("schedule", [ScheduleConfig(num_timesteps=20), ScheduleConfig(num_timesteps=1000),
                                      ScheduleConfig("cosine", 50)], ids=["linear T=20", "linear T=1000", "cosine"])
def test_the_pipeline_samples_an_export_with_the_studio_betas(tmp_path, schedule):
    original = write_model(tmp_path / "model", schedule=schedule)
    export_diffusers(original, tmp_path / "exported")
    pipeline = diffusers.DDPMPipeline.from_pretrained(tmp_path / "exported")
    betas = torch.from_numpy(store.read_model_info(original).schedule.betas())
    assert torch.allclose(pipeline.scheduler.betas.double(), betas, rtol=1e-6, atol=0)
    images = pipeline(batch_size=1, num_inference_steps=2, output_type="np",
                      generator=torch.Generator().manual_seed(0)).images
    assert images.shape == (1, 16, 16, 3)


def test_a_non_empty_destination_is_refused_unless_overwritten(tmp_path):
    original = write_model(tmp_path / "model")
    out = tmp_path / "exported"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(ModelError, match="is not empty; choose an empty folder, or pass --overwrite"):
        export_diffusers(original, out)
    assert (out / "keep.txt").read_text() == "mine"
    export_diffusers(original, out, overwrite=True)
    assert not (out / "keep.txt").exists() and (out / "unet" / "config.json").is_file()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_a_folder_that_is_not_a_model_is_refused(tmp_path):
    (tmp_path / "nothing").mkdir()
    with pytest.raises(ModelError):
        export_diffusers(tmp_path / "nothing", tmp_path / "exported")
    assert not (tmp_path / "exported").exists()


def test_a_class_model_without_the_marker_imports_with_numbered_names(tmp_path):
    export_diffusers(write_class_model(tmp_path / "model"), tmp_path / "exported")
    (tmp_path / "exported" / "studio.json").unlink()  # a foreign class-conditional UNet2DModel
    info = import_folder(tmp_path / "exported", tmp_path / "back").info
    assert info.unet.num_classes == 3
    assert info.extra["classes"] == {"names": ["class 0", "class 1", "class 2"], "counts": None}
