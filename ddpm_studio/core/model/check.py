"""Checks on a model folder from anyone, made before anything real is allocated from it.

``model.json`` sizes the network, the noise schedule and the images; a weights file's header sizes
its tensors. Neither is trusted. Every loader goes through these checks first:

1. the numbers in ``model.json`` lie within bounds that every real model fits (the paper's 256 px
   model, 1024 px models) with room to spare;
2. the weights file's header (names, shapes, dtypes; no tensor data) agrees with the file's length;
3. the network that ``model.json`` describes, built on the ``meta`` device (shapes without memory),
   has exactly the tensors the header lists.

Only then is the file read and the network given real memory, so a crafted folder costs at most
what its real weights cost. Each refusal is one sentence.
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ddpm_studio.core.diffusion.schedule import SCHEDULE_KINDS, ScheduleConfig
from ddpm_studio.core.errors import SettingError, UserError, check_choice
from ddpm_studio.core.model.unet import UNet, UNetConfig


class ModelError(UserError, ValueError):
    """A model folder that is missing, damaged or not ours; the message is one sentence naming the file."""


# --- bounds -------------------------------------------------------------------------------------------
# Each is far above any real model; each still caps what a forged number can make us allocate.

MAX_DESCRIPTION_BYTES = 4 * 2**20  # model.json; a real one is a few kB
MAX_HEADER_BYTES = 16 * 2**20  # a safetensors header: ~100 bytes per tensor, and a real U-Net has a few thousand
MAX_TIMESTEPS = 100_000  # T: the paper uses 1000, improved DDPM 4000
MAX_IMAGE_SIZE = 2048  # the paper's largest model is 256 px; 1024 px models exist
MAX_BASE_CHANNELS = 1024  # the paper uses 128, ADM 256
MAX_LEVEL_CHANNELS = 4096  # base x multiplier at the widest level: the paper's is 512, large text-to-image U-Nets' 2048
MAX_LEVELS = 12  # 2048 px halved 11 times is 1 px
MAX_RES_BLOCKS = 16  # the paper uses 2, ADM 3
MAX_OTHER_SETTING = 64  # any other whole-number U-Net setting (a padding, a head count)
MAX_PREVIEW_PIXELS = 32 * 2**20  # a 4x4 grid of 1024 px previews is 16.8 million pixels

# Bytes per element of every dtype a safetensors file may hold, and the ones that can be weights.
SAFETENSORS_DTYPES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "I16": 2, "U16": 2, "F16": 2,
                      "BF16": 2, "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8}
WEIGHT_DTYPES = ("F16", "BF16", "F32", "F64")


def _whole(name: str, value: object, low: int, high: int, unit: str = "") -> None:
    """Raise SettingError unless ``value`` is an integer in [low, high]."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise SettingError(f"{name} must be a whole number, not {value!r}.")
    if value < low:
        raise SettingError(f"{name} must be at least {low}, not {value}.")
    if value > high:
        raise SettingError(f"{name} is {value:,}{unit}, above the limit of {high:,}{unit}.")


_BOUNDED_UNET_SETTINGS = {"image_size", "image_channels", "base_channels", "channel_multipliers", "num_res_blocks",
                          "attention_resolutions", "dropout", "norm_groups"}


def check_unet_config(config: UNetConfig) -> None:
    """Raise SettingError, in one sentence, for a U-Net too large (or too odd) for any real model."""
    _whole("unet.image_size", config.image_size, 1, MAX_IMAGE_SIZE, " px")
    _whole("unet.image_channels", config.image_channels, 1, 3)
    _whole("unet.base_channels", config.base_channels, 1, MAX_BASE_CHANNELS)
    _whole("unet.num_res_blocks", config.num_res_blocks, 1, MAX_RES_BLOCKS)
    _whole("unet.norm_groups", config.norm_groups, 1, MAX_LEVEL_CHANNELS)
    _whole("The number of levels (unet.channel_multipliers)", len(config.channel_multipliers), 1, MAX_LEVELS)
    for level, multiplier in enumerate(config.channel_multipliers):
        _whole(f"unet.channel_multipliers[{level}]", multiplier, 1, MAX_LEVEL_CHANNELS)
        if config.base_channels * multiplier > MAX_LEVEL_CHANNELS:
            raise SettingError(
                f"unet.channel_multipliers[{level}] = {multiplier} makes {config.base_channels * multiplier:,} "
                f"channels, above the limit of {MAX_LEVEL_CHANNELS:,}."
            )
    if len(config.attention_resolutions) > MAX_LEVELS:
        raise SettingError(f"unet.attention_resolutions lists {len(config.attention_resolutions)} resolutions, "
                         f"more than the {MAX_LEVELS} levels a U-Net can have.")
    for resolution in config.attention_resolutions:
        _whole("unet.attention_resolutions", resolution, 1, MAX_IMAGE_SIZE)
    if not isinstance(config.dropout, (int, float)) or isinstance(config.dropout, bool):
        raise SettingError(f"unet.dropout must be a number, not {config.dropout!r}.")
    # Every other setting, including ones added after these checks were written, is checked against its
    # default's kind: switches must be true or false (a string such as "no" would read as true), whole
    # numbers lie in a small range. A setting that needs more gets a bound of its own above.
    for setting in fields(config):
        if setting.name in _BOUNDED_UNET_SETTINGS:
            continue
        value, default = getattr(config, setting.name), setting.default
        if isinstance(default, bool) and not isinstance(value, bool):
            raise SettingError(f"unet.{setting.name} must be true or false, not {value!r}.")
        if isinstance(default, int) and not isinstance(default, bool):
            _whole(f"unet.{setting.name}", value, 0, MAX_OTHER_SETTING)
    config.validate()  # what the network needs to be built at all: clean halvings, group sizes, dropout


def check_schedule_config(config: ScheduleConfig) -> None:
    """Raise SettingError, in one sentence, for a schedule that cannot be made or is too long for any real model."""
    check_choice("schedule", config.kind, SCHEDULE_KINDS)
    _whole("schedule.num_timesteps (T)", config.num_timesteps, 1, MAX_TIMESTEPS, " steps")
    numbers = {"beta_start": config.beta_start, "beta_end": config.beta_end, "cosine_s": config.cosine_s,
               "max_beta": config.max_beta}
    for name, value in numbers.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise SettingError(f"schedule.{name} must be a finite number, not {value!r}.")
    if config.kind == "cosine" and not (0 <= config.cosine_s < 1 and 0 < config.max_beta < 1):
        raise SettingError("A cosine schedule needs 0 <= cosine_s < 1 and 0 < max_beta < 1.")
    config.betas()  # validated, and the betas themselves made (T numbers, T bounded above) and checked


# --- the weights file's header ------------------------------------------------------------------------


@dataclass(frozen=True)
class TensorEntry:
    """One tensor as a safetensors header lists it."""

    dtype: str
    shape: tuple[int, ...]

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


@dataclass(frozen=True)
class WeightsHeader:
    """What a safetensors file holds, read from its header alone."""

    path: Path
    tensors: dict[str, TensorEntry]
    metadata: dict[str, str]

    @property
    def parameter_count(self) -> int:
        return sum(entry.numel for entry in self.tensors.values())

    @property
    def dtypes(self) -> list[str]:
        return sorted({entry.dtype for entry in self.tensors.values()})

    def shapes(self) -> dict[str, tuple[int, ...]]:
        return {name: entry.shape for name, entry in self.tensors.items()}


def _damaged(path: Path, reason: str) -> ModelError:
    return ModelError(f"{path} is damaged or not a safetensors file ({reason}).")


def _is_whole(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def read_safetensors_header(path: Path) -> WeightsHeader:
    """Read a safetensors file's header, and check it against the file's length; no tensor data is read.

    The tensors' byte ranges must follow the dtypes and shapes, and tile the data that follows the
    header exactly: a header that claims more (or other) data than the file holds is refused.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"{path} is missing.")
    try:
        size = path.stat().st_size
        with open(path, "rb") as stream:
            prefix = stream.read(8)
            if len(prefix) < 8:
                raise _damaged(path, f"{size} bytes, too short for a header")
            header_bytes = int.from_bytes(prefix, "little")
            if header_bytes > size - 8:
                raise _damaged(path, f"its header claims {header_bytes:,} bytes, more than the file's {size:,}")
            if header_bytes > MAX_HEADER_BYTES:
                raise _damaged(path, f"a header of {header_bytes:,} bytes, more than the {MAX_HEADER_BYTES:,} "
                                     "this DDPM Studio reads")
            raw = stream.read(header_bytes)
    except OSError as error:
        raise ModelError(f"{path} cannot be read ({error.strerror or type(error).__name__}).") from None
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise _damaged(path, "its header is not JSON") from None
    if not isinstance(header, dict):
        raise _damaged(path, "its header is not a table of tensors")
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise _damaged(path, "its metadata is not a table of strings")

    tensors: dict[str, TensorEntry] = {}
    ranges: list[tuple[int, int, str]] = []
    for name, entry in header.items():
        if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "data_offsets"}:
            raise _damaged(path, f"its entry for {name} is not a tensor's")
        dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
        if dtype not in SAFETENSORS_DTYPES:
            raise _damaged(path, f"{name} has the unknown dtype {str(dtype)[:20]!r}")
        if not isinstance(shape, list) or len(shape) > 8 or not all(_is_whole(n) for n in shape):
            raise _damaged(path, f"{name} has the impossible shape {str(shape)[:40]}")
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(_is_whole(n) for n in offsets)
                and offsets[0] <= offsets[1]):
            raise _damaged(path, f"{name} has impossible data offsets {str(offsets)[:40]}")
        tensor = TensorEntry(dtype, tuple(shape))
        claimed = tensor.numel * SAFETENSORS_DTYPES[dtype]
        if offsets[1] - offsets[0] != claimed:
            raise _damaged(path, f"its header says {name} is {dtype} of shape {tensor.shape}, {claimed:,} bytes, "
                                 f"but gives it {offsets[1] - offsets[0]:,}")
        tensors[name] = tensor
        ranges.append((offsets[0], offsets[1], name))

    data_bytes = size - 8 - header_bytes
    position = 0
    for begin, end, name in sorted(ranges):
        if begin != position:
            raise _damaged(path, f"the bytes of {name} overlap another tensor's or leave a gap")
        position = end
    if position != data_bytes:
        raise _damaged(path, f"its header describes {position:,} bytes of tensors, but the file holds {data_bytes:,}")
    return WeightsHeader(path, tensors, dict(metadata))


def check_weight_dtypes(header: WeightsHeader) -> None:
    """Weights are floating point; an integer or boolean tensor means the file is something else."""
    for name, entry in header.tensors.items():
        if entry.dtype not in WEIGHT_DTYPES:
            raise ModelError(f"{header.path} holds {name} as {entry.dtype}, but weights are floating point.")


# --- the network against the weights ------------------------------------------------------------------


def build_on_meta(config: UNetConfig) -> UNet:
    """The U-Net ``config`` describes, on the ``meta`` device: every tensor's shape, and no memory."""
    check_unet_config(config)  # bounds the number of modules, which do take memory
    with torch.device("meta"):
        return UNet(config)


def tensor_shapes(module: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    return {name: tuple(tensor.shape) for name, tensor in module.state_dict().items()}


def check_tensors_match(expected: Mapping[str, tuple[int, ...]], found: Mapping[str, tuple[int, ...]],
                        source: Path, described_by: str) -> None:
    """Raise ModelError naming the first tensor, in the network's order, whose name or shape differs.

    ``expected`` are the network's tensors, ``found`` the file's; ``described_by`` says where the
    network comes from (``model.json``). When the parameter counts differ, the sentence gives both.
    """
    detail = None
    for name, shape in expected.items():
        if name not in found:
            detail = f"{name} is missing"
        elif tuple(found[name]) != tuple(shape):
            detail = f"{name} has shape {tuple(found[name])}, the network needs {tuple(shape)}"
        if detail:
            break
    else:
        foreign = next((name for name in sorted(found) if name not in expected), None)
        if foreign is None:
            return
        detail = f"it holds {foreign}, which the network has no place for"
    network_count = sum(math.prod(shape) for shape in expected.values())
    file_count = sum(math.prod(shape) for shape in found.values())
    if network_count != file_count:
        detail += f"; the network has {network_count:,} parameters, the file {file_count:,}"
    raise ModelError(f"{source} does not match the network {described_by} describes ({detail}).")


def check_weights_fit(config: UNetConfig, header: WeightsHeader, described_by: str, prefix: str = "") -> UNet:
    """Check that the weights under ``prefix`` in ``header`` are exactly those of the network ``config``
    describes; return that network, on the ``meta`` device, ready to be given the real tensors."""
    network = build_on_meta(config)
    found = {name[len(prefix):]: shape for name, shape in header.shapes().items() if name.startswith(prefix)}
    check_tensors_match(tensor_shapes(network), found, header.path, described_by)
    return network


# --- preview images -----------------------------------------------------------------------------------


@contextmanager
def _opened_preview(path: Path) -> Iterator:
    """Open a preview PNG, refusing it when its header promises more pixels than any preview has."""
    refused = f"{path} is refused: it has more pixels than the {MAX_PREVIEW_PIXELS:,} a preview may have"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own limit is lower
            opened = Image.open(path, formats=["PNG"])  # reads the header; pixels are decoded on demand
        with opened as image:
            width, height = image.size
            if width * height > MAX_PREVIEW_PIXELS:
                raise ModelError(f"{refused} ({width:,}x{height:,}).")
            yield image
    except ModelError:
        raise
    except Image.DecompressionBombError:  # Pillow's own limit, checked as it opens a huge image
        raise ModelError(f"{refused}.") from None
    except (OSError, ValueError, SyntaxError) as error:
        reason = str(error).splitlines()[0][:80] if str(error) else type(error).__name__
        raise ModelError(f"{path} is damaged or not a PNG image ({reason.rstrip('.')}).") from None


def read_preview(path: Path) -> np.ndarray:
    """A model folder's preview grid as uint8 (H, W, 3); ModelError in one sentence for a damaged file or
    one larger than any preview (a decompression bomb), found before a pixel is decoded."""
    with _opened_preview(path) as image:
        return np.asarray(image.convert("RGB"))


def preview_problem(path: Path) -> str | None:
    """Why a preview cannot be shown (the sentence ``read_preview`` would raise), or None; reads the header only."""
    try:
        with _opened_preview(path):
            return None
    except ModelError as error:
        return str(error)
