"""Fine-tuning (--init-from): a new run that starts from a model's EMA weights, same architecture, new optimizer,
its own folder; and resuming a folder saved before the downsampling padding was a setting."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from ddpm_studio.core.model import store as model_store
from ddpm_studio.core.model.store import ModelError
from ddpm_studio.core.training.config import TrainingConfig
from ddpm_studio.core.training.events import FinishedEvent
from ddpm_studio.core.training.loop import train


def images(count: int = 16) -> torch.Tensor:
    from ddpm_studio.core.data.demo import make_demo_images

    return torch.from_numpy(make_demo_images(count, size=16, seed=3)).permute(0, 3, 1, 2).contiguous()


def folder_bytes(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def test_the_first_step_starts_from_the_source_weights(tiny_model, tmp_path):
    source = model_store.read_model_info(tiny_model)
    before = folder_bytes(tiny_model)
    # A learning rate of 1e-12 moves no weight visibly: after one step the run still holds the source's weights.
    config = TrainingConfig.for_fine_tune(source, steps=1, learning_rate=1e-12, warmup_steps=0, preview_count=0, seed=7)
    events = list(train(config, images(), tmp_path / "fine-tuned", {"count": 16}))
    assert isinstance(events[-1], FinishedEvent)
    tuned = model_store.read_safetensors(tmp_path / "fine-tuned" / model_store.EMA_FILE)
    state = model_store.read_safetensors(tmp_path / "fine-tuned" / model_store.STATE_FILE)
    source_weights = model_store.read_safetensors(tiny_model / model_store.EMA_FILE)
    fresh = TrainingConfig.for_preset("tiny", steps=1, learning_rate=1e-12, warmup_steps=0, preview_count=0, seed=7,
                                      num_timesteps=50)
    list(train(fresh, images(), tmp_path / "fresh", {"count": 16}))
    fresh_weights = model_store.read_safetensors(tmp_path / "fresh" / model_store.EMA_FILE)
    differs_from_fresh = False
    for name, weight in source_weights.items():
        assert torch.allclose(tuned[name], weight, atol=1e-7), name
        assert torch.allclose(state[f"model.{name}"], weight, atol=1e-7), name
        differs_from_fresh |= not torch.allclose(fresh_weights[name], weight, atol=1e-3)
    assert differs_from_fresh  # the test can tell a fine-tune from a new model
    # A new optimizer (its first step), its own folder, and the source untouched.
    assert int(model_store.read_safetensors_metadata(tmp_path / "fine-tuned" / model_store.STATE_FILE)["step"]) == 1
    assert state["optimizer.0.step"].item() == 1
    info = model_store.read_model_info(tmp_path / "fine-tuned")
    assert info.training["init_from"] == str(tiny_model) and info.unet == source.unet and info.step == 1
    assert folder_bytes(tiny_model) == before


def test_a_different_architecture_is_refused(tiny_model, tmp_path):
    source = model_store.read_model_info(tiny_model)
    other = replace(source.unet, base_channels=16).to_dict()
    config = TrainingConfig.for_fine_tune(source, steps=1, preview_count=0, unet=other)
    with pytest.raises(ModelError, match="another architecture"):
        list(train(config, images(), tmp_path / "other", {"count": 16}))
    padding = "symmetric" if source.unet.downsample_padding == "same" else "same"
    config = TrainingConfig.for_fine_tune(source, steps=1, preview_count=0,
                                          unet=replace(source.unet, downsample_padding=padding).to_dict())
    with pytest.raises(ModelError, match="another architecture"):
        list(train(config, images(), tmp_path / "other-padding", {"count": 16}))
    assert not (tmp_path / "other" / model_store.CONFIG_FILE).exists()


def test_resuming_a_folder_saved_before_the_padding_setting_keeps_its_padding(tiny_model, tmp_path):
    folder = Path(shutil.copytree(tiny_model, tmp_path / "old"))
    description = json.loads((folder / model_store.CONFIG_FILE).read_text())
    del description["unet"]["downsample_padding"]
    description["training"].pop("unet", None)
    (folder / model_store.CONFIG_FILE).write_text(json.dumps(description))
    assert model_store.read_model_info(folder).unet.downsample_padding == "symmetric"
    config = TrainingConfig.from_dict({**description["training"], "steps": 13, "preview_count": 0})
    assert config.unet_config().downsample_padding == "same"  # what the preset alone would build now
    list(train(config, images(), folder, resume=True))
    info = model_store.read_model_info(folder)
    assert info.step == 13 and info.unet.downsample_padding == "symmetric"
    assert TrainingConfig.from_dict(info.training).unet_config().downsample_padding == "symmetric"
