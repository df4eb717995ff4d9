"""Export a model folder in diffusers' format, so that ``DDPMPipeline.from_pretrained(folder)`` loads and samples it.

The folder holds ``model_index.json``, ``unet/config.json`` with ``unet/diffusion_pytorch_model.safetensors``
(the EMA weights) and ``scheduler/scheduler_config.json``. The importer's tables are used backwards: the tensor
names come from ``importer.tensor_plan`` and every setting is the one ``importer.unet_config_from_diffusers`` and
``importer.scheduler_from_diffusers`` read back into the same model. A class-conditional model also gets
``studio.json`` (its class names and null row), which diffusers ignores and an import reads.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file

from ddpm_studio.core.diffusion.schedule import ScheduleConfig
from ddpm_studio.core.model import importer
from ddpm_studio.core.model import store as model_store
from ddpm_studio.core.model.store import ModelError, ModelInfo
from ddpm_studio.core.model.unet import UNetConfig

# The variance names of importer.VARIANCES, one diffusers name for each of this project's.
DIFFUSERS_VARIANCES = {"fixed_large": "fixed_large", "fixed_small": "fixed_small", "learned": "learned_range"}
DIFFUSERS_VERSION = "0.21.0"  # the oldest diffusers whose loader reads every field written here


@dataclass
class ExportResult:
    path: Path
    files: list[Path]
    weights_bytes: int


def unet_config_to_diffusers(config: UNetConfig) -> dict:
    """The UNet2DModel config that ``importer.unet_config_from_diffusers`` turns back into ``config``."""
    size, levels = config.image_size, len(config.channel_multipliers)
    attended = [size // 2**i in config.attention_resolutions for i in range(levels)]
    return {
        "_class_name": "UNet2DModel", "_diffusers_version": DIFFUSERS_VERSION,
        "sample_size": size, "in_channels": config.image_channels,
        "out_channels": config.image_channels * (2 if config.learned_variance else 1),
        "center_input_sample": False, "time_embedding_type": "positional", "flip_sin_to_cos": False,
        "freq_shift": 1,
        "down_block_types": ["AttnDownBlock2D" if a else "DownBlock2D" for a in attended],
        "mid_block_type": "UNetMidBlock2D",
        "up_block_types": ["AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attended)],
        "block_out_channels": [config.base_channels * m for m in config.channel_multipliers],
        "layers_per_block": config.num_res_blocks, "mid_block_scale_factor": 1,
        # diffusers pads 0 before and 1 after when downsample_padding is 0 (TensorFlow 'SAME'), else 1 on every side.
        "downsample_padding": 0 if config.downsample_padding == "same" else 1,
        "downsample_type": "conv", "upsample_type": "conv", "dropout": config.dropout, "act_fn": "silu",
        "attention_head_dim": None, "norm_num_groups": config.norm_groups, "norm_eps": 1e-6,
        "resnet_time_scale_shift": "default", "add_attention": True, "class_embed_type": None,
        "num_class_embeds": config.num_classes + 1 if config.num_classes else None,
    }


def scheduler_config_to_diffusers(schedule: ScheduleConfig, variance: str, clip: bool) -> dict:
    """The DDPMScheduler config that ``importer.scheduler_from_diffusers`` reads back as this schedule."""
    config = {"_class_name": "DDPMScheduler", "_diffusers_version": DIFFUSERS_VERSION,
              "num_train_timesteps": schedule.num_timesteps, "trained_betas": None,
              "variance_type": DIFFUSERS_VARIANCES[variance], "clip_sample": clip, "clip_sample_range": 1.0,
              "prediction_type": "epsilon", "thresholding": False}
    if schedule.kind == "linear":
        # This project states linear betas at T = 1000 and rescales them by 1000 / T, capping the last at 0.999
        # (schedule.linear_betas); diffusers takes them as they are.
        scale = 1000.0 / schedule.num_timesteps
        config.update(beta_schedule="linear", beta_start=schedule.beta_start * scale,
                      beta_end=min(schedule.beta_end * scale, 0.999))
    elif schedule.cosine_s == 0.008 and schedule.max_beta == 0.999:
        config.update(beta_schedule="squaredcos_cap_v2")
    else:
        raise ModelError(f"This model's cosine schedule has s = {schedule.cosine_s} and a cap of {schedule.max_beta}, "
                         f"but diffusers' squaredcos_cap_v2 has only s = 0.008 and 0.999, so it cannot be exported.")
    return config


def diffusers_tensors(config: UNetConfig, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """This U-Net's state dict under diffusers' names and shapes: ``importer.assemble`` backwards."""
    out = {}
    for name, plan in importer.tensor_plan(config).items():
        pieces = tensors[name].to(torch.float32).chunk(len(plan.sources), dim=0)
        for source, piece in zip(plan.sources, pieces):
            out[source] = piece.reshape(plan.source_shape).contiguous().clone()
    return out


def export_destination(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise ModelError(f"{out} is a file, not a folder; choose another destination.")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise ModelError(f"{out} is not empty; choose an empty folder, or pass --overwrite to replace it.")


def export_diffusers(model: Path | str, out: Path | str, overwrite: bool = False) -> ExportResult:
    """Write ``model`` (a model folder) to ``out`` in diffusers' format; the folder appears whole or not at all."""
    model, out = Path(model), Path(out)
    loaded = model_store.load_model(model)  # checks model.json against the weights; ModelError otherwise
    info: ModelInfo = loaded.info
    export_destination(out, overwrite)
    sampling = info.sampling_defaults
    unet_json = unet_config_to_diffusers(info.unet)
    scheduler_json = scheduler_config_to_diffusers(info.schedule, sampling["variance"], sampling["clip"])
    tensors = diffusers_tensors(info.unet, loaded.unet.state_dict())
    index = {"_class_name": "DDPMPipeline", "_diffusers_version": DIFFUSERS_VERSION,
             "scheduler": ["diffusers", "DDPMScheduler"], "unet": ["diffusers", "UNet2DModel"]}
    marker = None
    if info.unet.num_classes:
        recorded = info.extra.get("classes") if isinstance(info.extra.get("classes"), dict) else {}
        names = recorded.get("names") if isinstance(recorded.get("names"), list) else None
        if names is None or len(names) != info.unet.num_classes:
            names = [f"class {i}" for i in range(info.unet.num_classes)]
        marker = {"format": "ddpm-studio-export", "model": info.name, "classes": names,
                  "null_class": info.unet.num_classes,
                  "guidance": "eps~ = (1 + w) eps(x, c) - w eps(x, null); pass class_labels to the UNet, "
                              "the null label is the last row of class_embedding (index null_class)."}

    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".exporting", dir=out.parent))
    try:
        (staging / "unet").mkdir()
        (staging / "scheduler").mkdir()
        weights = staging / "unet" / importer.SAFETENSORS_NAME
        save_file(tensors, str(weights), metadata={"format": "pt"})
        texts = {staging / "model_index.json": index, staging / "unet" / importer.CONFIG_NAME: unet_json,
                 staging / "scheduler" / importer.SCHEDULER_NAME: scheduler_json}
        if marker is not None:
            texts[staging / importer.MARKER_NAME] = marker
        for path, data in texts.items():
            path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
        size = weights.stat().st_size
        files = sorted(p.relative_to(staging) for p in staging.rglob("*") if p.is_file())
        replaced = None
        if out.is_dir():
            # Moved aside, not deleted, until the new folder is in place: an error leaves the old one.
            replaced = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".replaced", dir=out.parent))
            os.replace(out, replaced / "old")
        try:
            os.replace(staging, out)
        except BaseException:
            if replaced is not None:
                os.replace(replaced / "old", out)
            raise
        if replaced is not None:
            shutil.rmtree(replaced, ignore_errors=True)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return ExportResult(out, [out / f for f in files], size)


def export_job(model: Path | str, out: Path | str, overwrite: bool = False) -> Iterator[ExportResult]:
    """The export as a job of one event, for a worker thread (the window's File > Export)."""
    yield export_diffusers(model, out, overwrite)
