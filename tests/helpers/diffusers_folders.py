"""Diffusers-format model folders for tests, written by diffusers' own ``save_pretrained``.

diffusers is the reference implementation here (the ``test`` extra installs it); the project never imports it.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from ddpm_studio.core.model.unet import UNetConfig


def diffusers_classes():
    """UNet2DModel and DDPMScheduler. Neither needs torchvision, which diffusers imports when it is installed:
    a torchvision built for another torch (a CUDA build beside the CPU torch) must not break the reference."""
    try:
        import torchvision  # noqa: F401
    except Exception:
        import diffusers.utils.import_utils as import_utils

        import_utils._torchvision_available = False
    from diffusers import DDPMScheduler, UNet2DModel

    return UNet2DModel, DDPMScheduler


def diffusers_unet_config(config: UNetConfig) -> dict:
    """The UNet2DModel settings of the google/ddpm-* releases, at the shape of ``config``."""
    levels = len(config.channel_multipliers)
    attention = [config.image_size // 2**i in config.attention_resolutions for i in range(levels)]
    return {
        "sample_size": config.image_size,
        "in_channels": config.image_channels,
        "out_channels": config.image_channels,
        "block_out_channels": [config.base_channels * m for m in config.channel_multipliers],
        "down_block_types": ["AttnDownBlock2D" if a else "DownBlock2D" for a in attention],
        "up_block_types": ["AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attention)],
        "layers_per_block": config.num_res_blocks,
        "attention_head_dim": None,
        "downsample_padding": 0 if config.downsample_padding == "same" else 1,
        "flip_sin_to_cos": False,
        "freq_shift": 1,
        "norm_eps": 1e-6,
        "norm_num_groups": config.norm_groups,
        "act_fn": "silu",
        "center_input_sample": False,
        "time_embedding_type": "positional",
        "mid_block_scale_factor": 1,
        "dropout": config.dropout,
    }


def reference_unet(config: UNetConfig, seed: int = 0, **changes):
    """A seeded random UNet2DModel in which every parameter is random: no zero layer can hide a mistake.

    It is built on the meta device and filled directly (the usual initialisation of 35 M parameters is slow):
    weights with scale 1/sqrt(fan-in), GroupNorm scales near 1, biases small.
    """
    UNet2DModel, _ = diffusers_classes()
    with torch.device("meta"):
        model = UNet2DModel(**{**diffusers_unet_config(config), **changes})
    model = model.to_empty(device="cpu").eval()
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            noise = torch.randn(parameter.shape, generator=generator)
            if parameter.ndim > 1:
                parameter.copy_(noise / parameter[0].numel() ** 0.5)
            elif "norm" in name and name.endswith("weight"):
                parameter.copy_(1 + 0.1 * noise)
            else:
                parameter.copy_(0.1 * noise)
    assert not list(model.buffers())
    return model


def write_diffusers_folder(folder: Path, model, scheduler: dict | None = None, bin_file: bool = False,
                           under_unet: bool = False, legacy_names: bool = False) -> Path:
    """Save ``model`` as a diffusers folder: weights as safetensors or .bin, config at the top or under unet/,
    attention tensors under their current or legacy names, and a DDPMScheduler config if given."""
    _, DDPMScheduler = diffusers_classes()
    unet_dir = folder / "unet" if under_unet else folder
    model.save_pretrained(unet_dir, safe_serialization=not bin_file)
    if legacy_names:
        path = unet_dir / "diffusion_pytorch_model.safetensors"
        legacy = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}
        tensors = load_file(path)
        renamed = {}
        for name, tensor in tensors.items():
            for new, old in legacy.items():
                if ".attentions." in name and f".{new}." in name:
                    name = name.replace(f".{new}.", f".{old}.")
            renamed[name] = tensor
        assert renamed.keys() != tensors.keys()
        save_file(renamed, path)
    if scheduler is not None:
        DDPMScheduler(**scheduler).save_pretrained(folder / "scheduler" if under_unet else folder)
    return folder


def edit_json(path: Path, **changes) -> None:
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


def relative_difference(ours: torch.Tensor, reference: torch.Tensor) -> float:
    return ((ours - reference).abs().max() / reference.abs().max()).item()
