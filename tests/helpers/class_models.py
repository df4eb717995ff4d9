"""A class-conditional tiny model folder written through the model store, with untrained but non-zero weights."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from ddpm_studio.core.diffusion.schedule import ScheduleConfig
from ddpm_studio.core.model import store
from ddpm_studio.core.model.unet import PRESETS, UNet

CLASS_NAMES = ["circles", "squares", "stripes"]


def write_class_model(folder: Path, seed: int = 0, num_timesteps: int = 20, image_size: int = 16,
                      learned_variance: bool = False) -> Path:
    """The tiny preset with three classes (the null row and output layer made non-zero, as training would)."""
    config = dataclasses.replace(PRESETS["tiny"].config, num_classes=len(CLASS_NAMES), image_size=image_size,
                                 learned_variance=learned_variance)
    unet = UNet(config)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in unet.parameters():
            parameter.add_(torch.randn(parameter.shape, generator=generator) * 0.05)
    folder.mkdir(parents=True, exist_ok=True)
    info = store.ModelInfo(path=folder, unet=config, schedule=ScheduleConfig(num_timesteps=num_timesteps), step=1,
                           training={"label_dropout": 0.1},
                           extra={"classes": {"names": CLASS_NAMES, "counts": [30, 20, 10]}})
    store.write_json_atomic(folder / store.CONFIG_FILE, info.to_json())
    store.save_safetensors_atomic(folder / store.EMA_FILE, unet.state_dict(), {"step": "1"})
    return folder
