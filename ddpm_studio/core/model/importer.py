"""Import a diffusers-format DDPM (the ``google/ddpm-*`` folders of Ho et al.'s released models) as a model folder.

``import_diffusers(source)`` yields ``ImportProgress`` events and ends with an ``ImportFinished``.
It reads the U-Net's ``config.json`` and refuses, in one sentence that names the field, any
setting this project's U-Net cannot compute; it reads the scheduler's config the same way;
it checks the weights' names and shapes from the file's header before reading a tensor,
renames them into this project's layout, and writes an ordinary model folder (``model.json``
+ ``ema.safetensors``) that ``model_store.load_model`` opens like any trained model.

No code from the source ever runs: safetensors is plain data, and a ``.bin`` (a pickle) is
read with ``torch.load(weights_only=True)`` only. Nothing is downloaded: the source is a
local folder.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import math
import os
import pickle
import shutil
import tempfile
import time
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from ddpm_studio.core.atomic import atomic_write
from ddpm_studio.core.diffusion.schedule import ScheduleConfig
from ddpm_studio.core.model import store as model_store
from ddpm_studio.core.model.store import ModelError, ModelInfo
from ddpm_studio.core.model.unet import UNet, UNetConfig
from ddpm_studio.core.timestamps import now_iso

CONFIG_NAME = "config.json"
SCHEDULER_NAME = "scheduler_config.json"
SAFETENSORS_NAME = "diffusion_pytorch_model.safetensors"
BIN_NAME = "diffusion_pytorch_model.bin"

# diffusers fills a field missing from config.json with its default, so a missing field means that default.
UNET_DEFAULTS = {
    "sample_size": None, "in_channels": 3, "out_channels": 3, "center_input_sample": False,
    "time_embedding_type": "positional", "time_embedding_dim": None, "freq_shift": 0, "flip_sin_to_cos": True,
    "down_block_types": ("DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"),
    "mid_block_type": "UNetMidBlock2D",
    "up_block_types": ("AttnUpBlock2D", "AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
    "block_out_channels": (224, 448, 672, 896), "layers_per_block": 2, "mid_block_scale_factor": 1,
    "downsample_padding": 1, "downsample_type": "conv", "upsample_type": "conv", "dropout": 0.0, "act_fn": "silu",
    "attention_head_dim": 8, "norm_num_groups": 32, "attn_norm_num_groups": None, "norm_eps": 1e-5,
    "resnet_time_scale_shift": "default", "add_attention": True, "class_embed_type": None, "num_class_embeds": None,
    "num_train_timesteps": None,  # only used by a learned time embedding, which is refused
}
SCHEDULER_DEFAULTS = {
    "num_train_timesteps": 1000, "beta_start": 0.0001, "beta_end": 0.02, "beta_schedule": "linear",
    "trained_betas": None, "variance_type": "fixed_small", "clip_sample": True, "prediction_type": "epsilon",
    "thresholding": False, "dynamic_thresholding_ratio": 0.995, "clip_sample_range": 1.0, "sample_max_value": 1.0,
    "timestep_spacing": "leading", "steps_offset": 0, "rescale_betas_zero_snr": False,
}
# Scheduler fields that only shape inference-time step spacing or thresholding (off), or that older
# diffusers versions wrote and no longer read: none changes the trained model or its schedule.
SCHEDULER_IGNORED = {"timestep_spacing", "steps_offset", "dynamic_thresholding_ratio", "sample_max_value",
                     "tensor_format", "timestep_values"}
VARIANCES = {"fixed_large": "fixed_large", "fixed_large_log": "fixed_large",
             "fixed_small": "fixed_small", "fixed_small_log": "fixed_small",
             # Improved DDPM's range: the network's second C channels v give log sigma^2 =
             # (v+1)/2 log beta_t + (1-(v+1)/2) log beta~_t, as this project's learned variance does.
             "learned_range": "learned"}
# The attention names of older diffusers files (the hub's google/ddpm-* files use them).
LEGACY_ATTENTION_NAMES = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}
FLOAT_DTYPES = {"F16": torch.float16, "BF16": torch.bfloat16, "F32": torch.float32, "F64": torch.float64}


@dataclass
class ImportProgress:
    """``stage`` is "checking", "reading" or "writing"; ``done`` of ``total`` units of it."""

    stage: str
    done: int
    total: int


@dataclass
class ImportFinished:
    path: Path
    info: ModelInfo
    weights_bytes: int
    seconds: float


ImportEvent = ImportProgress | ImportFinished


@dataclass
class DiffusersFolder:
    """Where the parts of a diffusers-format model lie."""

    root: Path
    config_path: Path
    weights_path: Path
    scheduler_path: Path | None


# --- finding the parts ------------------------------------------------------------------------------


def is_diffusers_folder(path: Path | str) -> bool:
    """Whether ``path`` looks like a diffusers model (a U-Net config at the top or under unet/)."""
    path = Path(path)
    return path.is_dir() and ((path / CONFIG_NAME).is_file() or (path / "unet" / CONFIG_NAME).is_file()) \
        and not (path / model_store.CONFIG_FILE).is_file()


def locate(source: Path | str) -> DiffusersFolder:
    """Find the U-Net config, its weights (safetensors preferred) and the scheduler config, if any."""
    root = Path(source)
    if not root.is_dir():
        raise ModelError(f"{root} is not a folder; give the folder of a diffusers-format model.")
    unet_dir = root if (root / CONFIG_NAME).is_file() else root / "unet"
    if not (unet_dir / CONFIG_NAME).is_file():
        raise ModelError(f"{root} holds no {CONFIG_NAME} (at the top or under unet/), so it is not a diffusers model.")
    for name in (SAFETENSORS_NAME, BIN_NAME):
        if (unet_dir / name).is_file():
            weights = unet_dir / name
            break
    else:
        raise ModelError(f"{unet_dir} holds no weights ({SAFETENSORS_NAME} or {BIN_NAME}).")
    scheduler = next((p for p in (root / SCHEDULER_NAME, root / "scheduler" / SCHEDULER_NAME) if p.is_file()), None)
    return DiffusersFolder(root, unet_dir / CONFIG_NAME, weights, scheduler)


def read_json_object(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as error:
        raise ModelError(f"{path} is damaged and cannot be read ({type(error).__name__}).") from None
    if not isinstance(data, dict):
        raise ModelError(f"{path} is not a diffusers configuration (no JSON object).")
    return data


# --- the U-Net's configuration ------------------------------------------------------------------------


def settings_with_defaults(source: Path | str, config: dict, defaults: dict, known: set, question: str) -> dict:
    """A diffusers config's settings over its class's defaults; ModelError for a setting this importer does not know,
    since it cannot tell ``question`` then."""
    unknown = sorted(k for k in config if not k.startswith("_") and k not in known)
    if unknown:
        raise ModelError(f"{source} has the setting {unknown[0]} = {config[unknown[0]]!r}, which DDPM Studio does not "
                         f"know, so it cannot tell {question}.")
    return {**defaults, **{k: v for k, v in config.items() if not k.startswith("_")}}


def unet_config_from_diffusers(config: dict, source: Path | str = CONFIG_NAME) -> UNetConfig:
    """The UNetConfig that computes what diffusers' UNet2DModel with ``config`` computes; ModelError otherwise."""
    if config.get("_class_name") != "UNet2DModel":
        raise ModelError(f"{source} has _class_name = {config.get('_class_name')!r}; only the DDPM U-Net "
                         f"(UNet2DModel) can be imported.")
    c = settings_with_defaults(source, config, UNET_DEFAULTS, set(UNET_DEFAULTS),
                               "whether it would compute the same network")
    check_fixed_unet_settings(c, source)
    channels, attention_levels = check_unet_blocks(c, source)
    size = check_unet_sizes(c, source, channels, attention_levels)
    base, groups = channels[0], c["norm_num_groups"]
    unet = UNetConfig(
        image_size=size, image_channels=c["in_channels"], base_channels=base,
        channel_multipliers=tuple(n // base for n in channels), num_res_blocks=c["layers_per_block"],
        attention_resolutions=tuple(size // 2**i for i in attention_levels), dropout=float(c["dropout"]),
        norm_groups=groups, downsample_padding="same" if c["downsample_padding"] == 0 else "symmetric",
        learned_variance=c["out_channels"] == 2 * c["in_channels"],
        # The last of diffusers' num_class_embeds rows is taken as the null label, as an export writes it.
        num_classes=(c["num_class_embeds"] or 1) - 1,
    )
    try:
        unet.validate()
    except ValueError as error:
        raise ModelError(f"{source} describes a network DDPM Studio cannot build ({str(error).rstrip('.')}).") from None
    return unet


def refusal(source: Path | str, c: dict, name: str, why: str) -> ModelError:
    """The ModelError that refuses the setting ``name`` of the U-Net settings ``c``, saying ``why``."""
    return ModelError(f"{source} has {name} = {c[name]!r}; {why}.")


def check_fixed_unet_settings(c: dict, source: Path | str) -> None:
    """The settings that must have the one value (or the few values) this U-Net computes."""

    def refuse(name: str, why: str) -> ModelError:
        return refusal(source, c, name, why)

    required = {
        "center_input_sample": (False, "this U-Net does not rescale its input"),
        "time_embedding_type": ("positional", "this U-Net has the paper's sinusoidal time embedding"),
        "flip_sin_to_cos": (False, "this U-Net's time embedding puts the sines first, as the paper's does"),
        "freq_shift": (1, "this U-Net's time embedding divides by half the width minus one, as the paper's does"),
        "mid_block_type": ("UNetMidBlock2D", "this U-Net has the paper's middle block"),
        "mid_block_scale_factor": (1, "this U-Net does not rescale its middle block"),
        "downsample_type": ("conv", "this U-Net downsamples with a strided convolution"),
        "upsample_type": ("conv", "this U-Net upsamples with nearest neighbours and a convolution"),
        "resnet_time_scale_shift": ("default", "this U-Net adds the time embedding in its residual blocks"),
        "add_attention": (True, "this U-Net has attention in its middle block"),
        "class_embed_type": (None, "this U-Net's classes are a plain embedding table (num_class_embeds)"),
    }
    for name, (value, why) in required.items():
        if c[name] != value or isinstance(c[name], bool) != isinstance(value, bool):  # 1 is not True here
            raise refuse(name, why)
    if c["act_fn"] not in ("silu", "swish"):
        raise refuse("act_fn", "this U-Net uses Swish (silu)")
    if not isinstance(c["norm_eps"], (int, float)) or not math.isclose(c["norm_eps"], 1e-6, rel_tol=1e-9):
        raise refuse("norm_eps", "this U-Net's GroupNorm has the paper's eps of 1e-6")
    classes = c["num_class_embeds"]
    if classes is not None and (not isinstance(classes, int) or isinstance(classes, bool) or classes < 3):
        raise refuse("num_class_embeds", "a class-conditional U-Net here has at least 2 classes and a null row (3)")
    if c["downsample_padding"] not in (0, 1):
        raise refuse("downsample_padding", "only 0 (TensorFlow 'SAME', the paper's) or 1 can be imported")


def check_unet_blocks(c: dict, source: Path | str) -> tuple[list[int], list[int]]:
    """The levels' widths and block types; returns the widths and the levels (from 0) that have attention."""

    def refuse(name: str, why: str) -> ModelError:
        return refusal(source, c, name, why)

    channels = c["block_out_channels"]
    if (not isinstance(channels, (list, tuple)) or not channels
            or not all(isinstance(n, int) and n > 0 for n in channels)):
        raise refuse("block_out_channels", "it must list positive channel counts")
    base = channels[0]
    if any(n % base for n in channels):
        raise refuse("block_out_channels", f"every level's width must be a multiple of the first ({base})")
    levels = len(channels)
    down, up = c["down_block_types"], c["up_block_types"]
    for name, types, allowed in (("down_block_types", down, ("DownBlock2D", "AttnDownBlock2D")),
                                 ("up_block_types", up, ("UpBlock2D", "AttnUpBlock2D"))):
        if not isinstance(types, (list, tuple)) or len(types) != levels:
            raise refuse(name, f"it must name one block for each of the {levels} levels of block_out_channels")
        odd = [t for t in types if t not in allowed]
        if odd:
            raise refuse(name, f"{odd[0]} is not one of this U-Net's blocks ({', '.join(allowed)})")
    attention_levels = [i for i, t in enumerate(down) if t.startswith("Attn")]
    if [levels - 1 - i for i, t in enumerate(up) if t.startswith("Attn")][::-1] != attention_levels:
        raise refuse("up_block_types", "the up path must have attention at the levels where the down path has it")
    return channels, attention_levels


def check_unet_sizes(c: dict, source: Path | str, channels: list[int], attention_levels: list[int]) -> int:
    """The image size, channels, groups, widths, depth and dropout; returns the (square) image size."""

    def refuse(name: str, why: str) -> ModelError:
        return refusal(source, c, name, why)

    base, levels = channels[0], len(channels)
    size = c["sample_size"]
    if isinstance(size, (list, tuple)) and len(size) == 2 and size[0] == size[1]:
        size = size[0]
    if not isinstance(size, int) or size < 1:
        raise refuse("sample_size", "this U-Net needs one square image size")
    if size % 2 ** (levels - 1):
        raise refuse("sample_size", f"it cannot be halved {levels - 1} times")
    if c["in_channels"] not in (1, 3):
        raise refuse("in_channels", "images must have 1 or 3 channels")
    if c["out_channels"] not in (c["in_channels"], 2 * c["in_channels"]):
        raise refuse("out_channels", "this U-Net predicts the noise, with as many channels as the image, and "
                                     "possibly its variance's range as well (twice as many)")
    groups = c["norm_num_groups"]
    if not isinstance(groups, int) or groups < 1 or any(n % groups for n in channels):
        raise refuse("norm_num_groups", "every level's width must split into that many groups")
    if c["attn_norm_num_groups"] not in (None, groups):
        raise refuse("attn_norm_num_groups", f"this U-Net's attention normalises with norm_num_groups ({groups})")
    if c["time_embedding_dim"] not in (None, 4 * base):
        raise refuse("time_embedding_dim", f"this U-Net's time embedding is 4 x {base} = {4 * base} wide")
    head_dim = c["attention_head_dim"]
    attended = {channels[i] for i in attention_levels} | {channels[-1]}
    if head_dim is not None and attended != {head_dim}:
        raise refuse("attention_head_dim", "this U-Net's attention has a single head as wide as its channels "
                                           "(null, or that width)")
    if not isinstance(c["layers_per_block"], int) or c["layers_per_block"] < 1:
        raise refuse("layers_per_block", "it must be at least 1")
    dropout = c["dropout"]
    if not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
        raise refuse("dropout", "it must lie in [0, 1)")
    return size


# --- the scheduler's configuration ----------------------------------------------------------------------


@dataclass
class SchedulerSettings:
    schedule: ScheduleConfig
    variance: str  # the model's default sampling variance: "fixed_large", "fixed_small" or "learned"
    clip: bool  # whether x0_hat is clipped to [-1, 1] when sampling


def scheduler_from_diffusers(config: dict | None, source: Path | str = SCHEDULER_NAME) -> SchedulerSettings:
    """The schedule and sampling defaults a DDPMScheduler config describes; without one, the paper's."""
    if config is None:
        return SchedulerSettings(ScheduleConfig(), "fixed_large", True)
    if config.get("_class_name") != "DDPMScheduler":
        raise ModelError(f"{source} has _class_name = {config.get('_class_name')!r}; DDPM Studio imports the "
                         f"schedule of a DDPMScheduler only.")
    c = settings_with_defaults(source, config, SCHEDULER_DEFAULTS, set(SCHEDULER_DEFAULTS) | SCHEDULER_IGNORED,
                               "what schedule the model was trained with")

    def refuse(name: str, why: str) -> ModelError:
        return ModelError(f"{source} has {name} = {c[name]!r}; {why}.")

    if c["prediction_type"] != "epsilon":
        raise refuse("prediction_type", "DDPM Studio's models predict the noise eps (epsilon)")
    if c["trained_betas"] is not None:
        raise refuse("trained_betas", "DDPM Studio imports the linear and cosine schedules only")
    if c["thresholding"] is not False:
        raise refuse("thresholding", "DDPM Studio clips x0_hat to [-1, 1] and has no dynamic thresholding")
    if c["rescale_betas_zero_snr"] is not False:
        raise refuse("rescale_betas_zero_snr", "DDPM Studio's schedules are not rescaled to zero terminal SNR")
    if not isinstance(c["clip_sample"], bool):
        raise refuse("clip_sample", "it must be true or false")
    if c["clip_sample"] and c["clip_sample_range"] != 1.0:
        raise refuse("clip_sample_range", "DDPM Studio clips x0_hat to [-1, 1]")
    if c["variance_type"] not in VARIANCES:
        raise refuse("variance_type", "DDPM Studio imports fixed_large, fixed_small and learned_range")
    steps = c["num_train_timesteps"]
    if not isinstance(steps, int) or steps < 1:
        raise refuse("num_train_timesteps", "it must be a positive whole number")
    if c["beta_schedule"] == "linear":
        start, end = c["beta_start"], c["beta_end"]
        if not all(isinstance(v, (int, float)) for v in (start, end)) or not 0 < start <= end < 1:
            raise ModelError(f"{source} has beta_start = {start!r} and beta_end = {end!r}; linear betas need "
                             f"0 < beta_start <= beta_end < 1.")
        # This project states linear betas at T = 1000 and rescales them by 1000 / T; diffusers takes them as they are.
        scale = steps / 1000.0
        if end * scale >= 1:
            raise refuse("beta_end", "it is too large to store")
        schedule = ScheduleConfig("linear", steps, beta_start=start * scale, beta_end=end * scale)
    elif c["beta_schedule"] == "squaredcos_cap_v2":  # Nichol and Dhariwal's cosine schedule, betas capped at 0.999
        schedule = ScheduleConfig("cosine", steps)
    else:
        raise refuse("beta_schedule", "DDPM Studio imports the linear (the paper's) and squaredcos_cap_v2 schedules")
    return SchedulerSettings(schedule, VARIANCES[c["variance_type"]], c["clip_sample"])


# --- the names of the tensors -----------------------------------------------------------------------------


def diffusers_names(studio_name: str, layers_per_block: int) -> list[str]:
    """The diffusers tensor(s) that make up one of this U-Net's tensors (q, k, v for an attention's qkv).

    The U-Net keeps its blocks in flat lists (see ``UNet.__init__``): level i of the down path holds
    entries i(L+1) .. i(L+1)+L-1 for its L residual blocks (each [resnet, attention?]) and entry
    i(L+1)+L for its downsampler; level i of the up path holds i(L+2) .. i(L+2)+L for its L+1
    residual blocks and i(L+2)+L+1 for its upsampler.
    """
    L = layers_per_block
    parts = studio_name.split(".")
    top = {"input_conv": "conv_in", "output_norm": "conv_norm_out", "output_conv": "conv_out",
           "time_mlp": "time_embedding", "class_embedding": "class_embedding"}
    if parts[0] == "time_mlp":
        return [f"time_embedding.{ {'0': 'linear_1', '2': 'linear_2'}[parts[1]] }.{parts[2]}"]
    if parts[0] in top:
        return [".".join([top[parts[0]], *parts[1:]])]
    if parts[0] == "middle":
        block = {"0": "resnets.0", "1": "attentions.0", "2": "resnets.1"}[parts[1]]
        return inner_names(f"mid_block.{block}", parts[2:])
    index, member, rest = int(parts[1]), parts[2], parts[3:]
    level, slot = divmod(index, L + 1 if parts[0] == "down" else L + 2)
    path = "down_blocks" if parts[0] == "down" else "up_blocks"
    if slot == (L if parts[0] == "down" else L + 1):
        sampler = "downsamplers" if parts[0] == "down" else "upsamplers"
        return [".".join([f"{path}.{level}.{sampler}.0", *rest])]
    kind = "resnets" if member == "0" else "attentions"
    return inner_names(f"{path}.{level}.{kind}.{slot}", rest)


def inner_names(prefix: str, rest: list[str]) -> list[str]:
    """Names inside a residual block or an attention block."""
    if ".attentions." in prefix:
        layer, what = rest
        if layer == "qkv":
            return [f"{prefix}.{p}.{what}" for p in ("to_q", "to_k", "to_v")]
        return [f"{prefix}.{ {'norm': 'group_norm', 'projection': 'to_out.0'}[layer] }.{what}"]
    renames = {"time_projection": "time_emb_proj", "shortcut": "conv_shortcut"}
    return [".".join([prefix, renames.get(rest[0], rest[0]), *rest[1:]])]


def modern_name(name: str) -> str:
    """The current diffusers spelling of a tensor name (older files say query/key/value/proj_attn)."""
    parts = name.split(".")
    if len(parts) >= 2 and parts[-2] in LEGACY_ATTENTION_NAMES and ".attentions." in name:
        return ".".join([*parts[:-2], LEGACY_ATTENTION_NAMES[parts[-2]], parts[-1]])
    return name


@dataclass
class TensorPlan:
    """How to build one of this U-Net's tensors from diffusers tensors."""

    sources: list[str]  # modern diffusers names
    source_shape: tuple[int, ...]  # each source's expected shape
    shape: tuple[int, ...]  # this U-Net's shape


def tensor_plan(config: UNetConfig) -> dict[str, TensorPlan]:
    """For each tensor of the U-Net (built on the meta device: no memory), its diffusers sources and shapes."""
    with torch.device("meta"):
        expected = UNet(config).state_dict()
    plans = {}
    for name, tensor in expected.items():
        sources = diffusers_names(name, config.num_res_blocks)
        shape = tuple(tensor.shape)
        if ".attentions." in sources[0] and name.rsplit(".", 2)[-2] in ("qkv", "projection"):
            # Linear layers there, 1x1 convolutions here; qkv stacks q, k and v along the output channels.
            out_channels = shape[0] // len(sources)
            source_shape = (out_channels, shape[1]) if len(shape) == 4 else (out_channels,)
        else:
            source_shape = shape
        plans[name] = TensorPlan(sources, source_shape, shape)
    return plans


# --- reading the weights ------------------------------------------------------------------------------------


def read_header(path: Path) -> dict[str, tuple[tuple[int, ...], str]]:
    """Names, shapes and dtypes of a safetensors file, from its header alone."""
    try:
        with safe_open(str(path), framework="pt") as handle:
            return {name: (tuple(handle.get_slice(name).get_shape()), handle.get_slice(name).get_dtype())
                    for name in handle.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as error:
        raise ModelError(f"{path} is damaged or not a safetensors file ({str(error).splitlines()[0][:80]}).") from None


def load_pickle_weights(path: Path) -> dict[str, torch.Tensor]:
    """A ``.bin`` state dict, unpickled with torch's weights-only loader: it builds tensors and nothing else."""
    try:
        try:
            data = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as error:
            if "mmap" not in str(error):
                raise
            data = torch.load(path, map_location="cpu", weights_only=True)  # the legacy format cannot be mapped
    except pickle.UnpicklingError as error:
        detail = str(error).splitlines()[0][:100]
        raise ModelError(f"{path} holds Python objects other than tensors, which DDPM Studio refuses to unpickle "
                         f"because they could run code ({detail}).") from None
    except (RuntimeError, OSError, EOFError, ValueError, KeyError) as error:
        raise ModelError(f"{path} is damaged or not a PyTorch weights file "
                         f"({str(error).splitlines()[0][:80] if str(error) else type(error).__name__}).") from None
    if not isinstance(data, dict) or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in data.items()):
        raise ModelError(f"{path} is not a flat dictionary of named tensors.")
    return data


def check_against_plan(available: dict[str, tuple[tuple[int, ...], str]], plans: dict[str, TensorPlan],
                       path: Path, config_path: Path) -> None:
    """Every tensor the network needs is there with its shape and a float dtype, and nothing else is."""
    wanted = {source: plan.source_shape for plan in plans.values() for source in plan.sources}
    missing = sorted(set(wanted) - set(available))
    extra = sorted(set(available) - set(wanted))
    if missing:
        raise ModelError(f"{path} lacks the tensor {missing[0]} that the network in {config_path.name} needs"
                         + (f" ({len(missing)} are missing)." if len(missing) > 1 else "."))
    if extra:
        raise ModelError(f"{path} holds the tensor {extra[0]}, which the network in {config_path.name} does not have"
                         + (f" ({len(extra)} such tensors)." if len(extra) > 1 else "."))
    for name, (shape, dtype) in available.items():
        if shape != wanted[name]:
            raise ModelError(f"{path}: {name} has shape {list(shape)}, but the network in {config_path.name} "
                             f"needs {list(wanted[name])}.")
        if dtype not in FLOAT_DTYPES:
            raise ModelError(f"{path}: {name} holds {dtype} numbers, not floating-point weights.")


def sha256_of(path: Path, chunk: int = 16 * 2**20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        while block := stream.read(chunk):
            digest.update(block)
    return digest.hexdigest()


# --- the import -------------------------------------------------------------------------------------------------


def import_diffusers(
    source: Path | str, out_dir: Path | str | None = None, name: str | None = None, command: str | None = None,
) -> Iterator[ImportEvent]:
    """Import the diffusers-format model in ``source`` into a new model folder (default: the user models folder / name).

    Everything is checked before anything is written; the folder appears whole or not at all.
    """
    started = time.monotonic()
    parts = locate(source)
    root = parts.root.resolve()
    out = import_destination(root, out_dir, name)

    yield ImportProgress("checking", 0, 1)
    unet, scheduler = read_configs(parts)
    plans = tensor_plan(unet)
    weights = parts.weights_path
    renamed = check_weights_header(parts, plans) if weights.suffix == ".safetensors" else None
    yield ImportProgress("checking", 1, 1)

    size = weights.stat().st_size
    # The file's fingerprint for the record, computed in a second thread while the tensors are read
    # (hashlib releases the GIL), so that it costs no time of its own on two cores or more.
    hashing = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="ddpm-import-hash")
    digest_future = hashing.submit(sha256_of, weights)
    hashing.shutdown(wait=False)

    tensors = yield from read_tensors(parts, plans, renamed, unet)

    yield ImportProgress("writing", 0, 1)
    digest = digest_future.result()
    info = imported_model_info(parts, root, out, unet, scheduler, digest, size, command)
    if unet.num_classes:
        info.extra["classes"] = imported_classes(root, unet.num_classes)
    write_model_folder(out, info, tensors)
    yield ImportProgress("writing", 1, 1)
    yield ImportFinished(out, model_store.read_model_info(out), size, time.monotonic() - started)


def import_destination(root: Path, out_dir: Path | str | None, name: str | None) -> Path:
    """The new model folder (default: the user models folder / name); ModelError if it holds anything already."""
    out = Path(out_dir) if out_dir is not None else model_store.default_user_models_dir() / (name or root.name)
    if (out / model_store.CONFIG_FILE).exists():
        raise ModelError(f"{out} already holds a model; choose another --name or --out.")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ModelError(f"{out} already exists and is not an empty folder; choose another --name or --out.")
    return out


def read_configs(parts: DiffusersFolder) -> tuple[UNetConfig, SchedulerSettings]:
    """The U-Net's and the scheduler's configurations, checked to agree on the variance."""
    unet = unet_config_from_diffusers(read_json_object(parts.config_path), parts.config_path)
    scheduler = scheduler_from_diffusers(
        read_json_object(parts.scheduler_path) if parts.scheduler_path else None, parts.scheduler_path or SCHEDULER_NAME
    )
    if parts.scheduler_path is None and unet.learned_variance:
        scheduler.variance = "learned"  # without a scheduler file, the variance the network outputs
    if unet.learned_variance and scheduler.variance != "learned":
        raise ModelError(f"{parts.root}'s U-Net also outputs a variance (out_channels is twice in_channels), but its "
                         f"scheduler's variance_type is not learned_range.")
    if scheduler.variance == "learned" and not unet.learned_variance:
        raise ModelError(f"{parts.root}'s scheduler has variance_type learned_range, but its U-Net outputs no "
                         f"variance (out_channels equals in_channels).")
    return unet, scheduler


def check_weights_header(parts: DiffusersFolder, plans: dict[str, TensorPlan]) -> dict[str, str]:
    """Check a safetensors file's names and shapes from its header; returns each modern name's name in the file."""
    weights = parts.weights_path
    header = read_header(weights)
    renamed = {modern_name(n): n for n in header}
    available = {modern_name(n): spec for n, spec in header.items()}
    check_against_plan(available, plans, weights, parts.config_path)  # before a single tensor is read
    return renamed


def read_tensors(parts: DiffusersFolder, plans: dict[str, TensorPlan], renamed: dict[str, str] | None,
                 unet: UNetConfig) -> Generator[ImportProgress, None, dict[str, torch.Tensor]]:
    """Read the weights as this U-Net's tensors (a safetensors file when ``renamed`` is given, else a pickle),
    yielding "reading" progress; the generator's value is the state dict."""
    weights = parts.weights_path
    tensors: dict[str, torch.Tensor] = {}
    if renamed is not None:
        try:
            with safe_open(str(weights), framework="pt") as handle:
                for index, (name_, plan) in enumerate(plans.items()):
                    pieces = [handle.get_tensor(renamed[s]) for s in plan.sources]
                    tensors[name_] = assemble(name_, pieces, plan, weights)
                    yield ImportProgress("reading", index + 1, len(plans))
        except (SafetensorError, OSError, RuntimeError) as error:
            raise ModelError(f"{weights} is damaged ({str(error).splitlines()[0][:80]}).") from None
    else:
        yield ImportProgress("reading", 0, 1)
        tensors = convert_state_dict(load_pickle_weights(weights), unet, weights, parts.config_path.name)
        yield ImportProgress("reading", 1, 1)
    return tensors


def imported_model_info(parts: DiffusersFolder, root: Path, out: Path, unet: UNetConfig, scheduler: SchedulerSettings,
                        digest: str, size: int, command: str | None) -> ModelInfo:
    """The record of the imported model, with its sampling defaults and where it came from."""
    return ModelInfo(
        path=out, unet=unet, schedule=scheduler.schedule, created=now_iso(), command=command,
        extra={
            "sampling": {"variance": scheduler.variance, "clip": scheduler.clip},
            "source": {
                "format": "diffusers",
                "path": str(root),
                "weights": str(parts.weights_path.relative_to(parts.root)),
                "sha256": digest,
                "bytes": size,
                "config": read_json_object(parts.config_path),
                "scheduler": read_json_object(parts.scheduler_path) if parts.scheduler_path else None,
                "imported": now_iso(),
            },
        },
    )


MARKER_NAME = "studio.json"  # written by an export beside model_index.json; diffusers ignores it


def imported_classes(root: Path, num_classes: int) -> dict:
    """The class names an export's marker file records, else "class 0".."class N-1"; the training counts of a
    foreign model are unknown, so "counts" is None."""
    names = [f"class {i}" for i in range(num_classes)]
    marker = root / MARKER_NAME
    if marker.is_file():
        recorded = read_json_object(marker).get("classes")
        if (isinstance(recorded, list) and len(recorded) == num_classes
                and all(isinstance(n, str) for n in recorded)):
            names = recorded
    return {"names": names, "counts": None}


def convert_state_dict(tensors: dict[str, torch.Tensor], config: UNetConfig, source: Path | str = "the weights",
                       config_name: str = CONFIG_NAME) -> dict[str, torch.Tensor]:
    """A diffusers UNet2DModel state dict (either spelling of attention names) as this U-Net's state dict."""
    plans = tensor_plan(config)
    modern = {modern_name(n): t for n, t in tensors.items()}
    check_against_plan({n: (tuple(t.shape), dtype_code(t.dtype)) for n, t in modern.items()}, plans, Path(source),
                       Path(config_name))
    return {name: assemble(name, [modern.pop(s) for s in plan.sources], plan, source) for name, plan in plans.items()}


def dtype_code(dtype: torch.dtype) -> str:
    return next((code for code, known in FLOAT_DTYPES.items() if known == dtype), str(dtype))


def assemble(name: str, pieces: list[torch.Tensor], plan: TensorPlan, source: Path) -> torch.Tensor:
    """One tensor of this U-Net from its diffusers pieces, as float32, checked for NaN and infinity."""
    tensor = pieces[0] if len(pieces) == 1 else torch.cat(pieces, dim=0)
    tensor = tensor.to(torch.float32).reshape(plan.shape).contiguous()
    if not model_store.all_finite(tensor):
        raise ModelError(f"{source} holds non-finite weights ({plan.sources[0]}).")
    return tensor


def write_model_folder(out: Path, info: ModelInfo, tensors: dict[str, torch.Tensor]) -> None:
    """Write the folder under a temporary name beside ``out``, then move it into place: whole or not at all."""
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".importing", dir=out.parent))
    try:
        # Not flushed to disk before the move (unlike a checkpoint): the source stays, so a crash loses nothing
        # that a second import cannot make again, and the flush would double the import's time.
        atomic_write(staging / model_store.EMA_FILE,
                                 lambda temporary: save_file(tensors, str(temporary), metadata={"step": "0"}),
                                 durable=False)
        tensors.clear()  # the safetensors bytes and these tensors need not both stay in memory
        info.path = staging
        model_store.write_json_atomic(staging / model_store.CONFIG_FILE, model_store.json_safe(info.to_json()))
        if out.is_dir():
            out.rmdir()  # empty (checked above); os.replace cannot move a folder onto one on every system
        os.replace(staging, out)
        info.path = out
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def destination_for(source: Path | str, models_dir: Path | None = None) -> tuple[Path, bool]:
    """Where an import of ``source`` goes in ``models_dir`` (default: the user models folder), and whether
    that folder already holds an import of this very source (then it need not be imported again)."""
    source = Path(source).resolve()
    folder = Path(models_dir) if models_dir is not None else model_store.default_user_models_dir()
    candidate, number = folder / source.name, 2
    while candidate.exists():
        try:
            recorded = model_store.read_model_info(candidate).extra.get("source") or {}
        except ModelError:
            recorded = {}
        if recorded.get("path") == str(source):
            return candidate, True
        candidate, number = folder / f"{source.name}-{number}", number + 1
    return candidate, False


def import_folder(source: Path | str, out_dir: Path | str | None = None, name: str | None = None,
                  command: str | None = None) -> ImportFinished:
    """Run an import to its end without progress reports."""
    result = None
    for event in import_diffusers(source, out_dir, name, command):
        result = event
    assert isinstance(result, ImportFinished)
    return result
