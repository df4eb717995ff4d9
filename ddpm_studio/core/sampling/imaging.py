"""Turning model tensors into pictures: grids, PNGs with metadata, trajectory strips and animations."""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, PngImagePlugin

from ddpm_studio.core.atomic import write_bytes_atomic
from ddpm_studio.core.data.folders import from_model_range
from ddpm_studio.core.errors import SettingError


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """Model-range images in [-1, 1] (N, C, H, W) to uint8 on the CPU, same layout."""
    return from_model_range(images).cpu()


def to_hwc(image: torch.Tensor | np.ndarray) -> np.ndarray:
    """One uint8 image (C, H, W) to a C-contiguous (H, W, C) array, or (H, W) for one channel."""
    array = image.numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
    array = np.ascontiguousarray(array.transpose(1, 2, 0))
    return array[:, :, 0] if array.shape[2] == 1 else array


def make_grid(
    images: torch.Tensor | np.ndarray, columns: int | None = None, padding: int = 2, pad_value: int = 255
) -> np.ndarray:
    """Tile uint8 images (N, C, H, W) into one (H', W', C) array, or (H', W') for one channel."""
    images = images.numpy() if isinstance(images, torch.Tensor) else np.asarray(images)
    count, channels, height, width = images.shape
    columns = columns or max(1, math.ceil(math.sqrt(count)))
    rows = math.ceil(count / columns)
    grid = np.full(
        (rows * height + (rows + 1) * padding, columns * width + (columns + 1) * padding, channels), pad_value, np.uint8
    )
    for index in range(count):
        row, column = divmod(index, columns)
        top = padding + row * (height + padding)
        left = padding + column * (width + padding)
        grid[top : top + height, left : left + width] = images[index].transpose(1, 2, 0)
    return grid[:, :, 0] if channels == 1 else grid


def to_pil(array: np.ndarray | torch.Tensor) -> Image.Image:
    """An (H, W, C) or (H, W) uint8 array, or a (C, H, W) uint8 tensor, as a Pillow image."""
    if isinstance(array, torch.Tensor):
        array = to_hwc(array)
    return Image.fromarray(np.ascontiguousarray(array))


def png_bytes(image: Image.Image, metadata: dict[str, str] | None = None) -> bytes:
    """Encode a PNG in memory, with ``metadata`` as tEXt chunks."""
    info = PngImagePlugin.PngInfo()
    for key, value in (metadata or {}).items():
        info.add_text(str(key), str(value))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=info)
    return buffer.getvalue()


def save_png(
    path: Path | str, image: Image.Image | np.ndarray | torch.Tensor, metadata: dict[str, str] | None = None
) -> Path:
    """Save a PNG atomically, with text metadata."""
    if not isinstance(image, Image.Image):
        image = to_pil(image)
    write_bytes_atomic(Path(path), png_bytes(image, metadata))
    return Path(path)


def upscale_nearest(image: Image.Image, scale: int) -> Image.Image:
    return image.resize((image.width * scale, image.height * scale), Image.NEAREST) if scale > 1 else image


def save_animation(path: Path | str, frames: Sequence[np.ndarray], duration_ms: int = 40, scale: int = 1,
                   final_hold_ms: int = 1000, metadata: dict[str, str] | None = None) -> Path:
    """Save frames ((H, W, C) uint8) as an animated GIF or WebP (by suffix), holding the last frame."""
    path = Path(path)
    images = [upscale_nearest(to_pil(frame), scale) for frame in frames]
    durations = [duration_ms] * len(images)
    durations[-1] = max(duration_ms, final_hold_ms)
    suffix = path.suffix.lower()
    if suffix not in (".gif", ".webp"):
        raise SettingError(f"Animations are saved as .gif or .webp, not '{suffix or path.name}'.")
    buffer = io.BytesIO()
    options = {"save_all": True, "append_images": images[1:], "duration": durations, "loop": 0}
    if suffix == ".gif":
        if metadata:
            options["comment"] = "; ".join(f"{k}={v}" for k, v in metadata.items()).encode("utf-8")
        images[0].save(buffer, format="GIF", **options)
    else:
        images[0].save(buffer, format="WEBP", lossless=True, **options)
    write_bytes_atomic(path, buffer.getvalue())
    return path


def make_strip(frames: Sequence[np.ndarray], padding: int = 2, pad_value: int = 255) -> np.ndarray:
    """Frames ((H, W, C) or (H, W) uint8) side by side, left to right."""
    stack = [frame if frame.ndim == 3 else frame[:, :, None] for frame in frames]
    chw = np.stack([frame.transpose(2, 0, 1) for frame in stack])
    return make_grid(chw, columns=len(stack), padding=padding, pad_value=pad_value)
