"""Simple statistics of image batches, to tell generated samples, the demo data and pure noise apart (test helpers).

Every function takes uint8 images laid out as (N, H, W, 3), values 0..255. Batches in the
(N, 3, H, W) layout of PyTorch convert with ``to_channels_last``; model samples in [-1, 1]
first go through ``imaging.to_uint8``. Differences and thresholds are in 0..255 units.
"""

from __future__ import annotations

import numpy as np
import torch


def to_channels_last(images: np.ndarray | torch.Tensor) -> np.ndarray:
    """A uint8 (N, 3, H, W) array or tensor as a uint8 (N, H, W, 3) numpy array."""
    if isinstance(images, torch.Tensor):
        images = images.detach().cpu().numpy()
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"expected uint8 images of shape (N, 3, H, W), got {images.dtype} {tuple(images.shape)}")
    return np.ascontiguousarray(images.transpose(0, 2, 3, 1))


def _check_channels_last(images: np.ndarray) -> None:
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[3] != 3:
        raise ValueError(f"expected uint8 images of shape (N, H, W, 3), got {images.dtype} {tuple(images.shape)}")


def _neighbour_differences(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Absolute differences to the right neighbour (N, H, W-1, 3) and the neighbour below (N, H-1, W, 3)."""
    _check_channels_last(images)
    pixels = images.astype(np.int16)
    to_right = np.abs(pixels[:, :, 1:] - pixels[:, :, :-1])
    to_below = np.abs(pixels[:, 1:] - pixels[:, :-1])
    return to_right, to_below


def colour_histogram(images: np.ndarray, bins: int = 8) -> np.ndarray:
    """The joint RGB histogram of all pixels, (bins, bins, bins) indexed [r, g, b], summing to 1."""
    _check_channels_last(images)
    if not 1 <= bins <= 256:
        raise ValueError(f"bins must be in 1..256, not {bins}")
    bin_of_value = (images.reshape(-1, 3).astype(np.int64) * bins) // 256
    flat_index = (bin_of_value[:, 0] * bins + bin_of_value[:, 1]) * bins + bin_of_value[:, 2]
    counts = np.bincount(flat_index, minlength=bins**3).astype(np.float64)
    return (counts / max(counts.sum(), 1.0)).reshape(bins, bins, bins)


def histogram_distance(first: np.ndarray, second: np.ndarray) -> float:
    """Total variation distance between two normalised histograms: 0 when equal, 1 when disjoint."""
    if first.shape != second.shape:
        raise ValueError(f"histograms differ in shape: {first.shape} and {second.shape}")
    return float(0.5 * np.abs(first - second).sum())


def flat_fraction(images: np.ndarray, threshold: float = 8.0) -> float:
    """The fraction of pixels that differ from their right and lower neighbours by less than ``threshold``.

    A pixel is flat when all six differences (two neighbours, three channels) are below the
    threshold. Pixels on the last row and column, which lack one of those neighbours, are left out.
    Plain and softly graded backgrounds count as flat; noise almost never does.
    """
    to_right, to_below = _neighbour_differences(images)
    steepest = np.maximum(to_right[:, :-1, :, :], to_below[:, :, :-1, :]).max(axis=-1)
    return float((steepest < threshold).mean())


def total_variation(images: np.ndarray) -> float:
    """The mean absolute difference between horizontally or vertically neighbouring pixels, per channel."""
    to_right, to_below = _neighbour_differences(images)
    total = to_right.sum(dtype=np.int64) + to_below.sum(dtype=np.int64)
    return float(total / (to_right.size + to_below.size))



def _median3(image: np.ndarray) -> np.ndarray:
    """Each pixel's 3x3 median, per channel: the speckle of a noisy sample goes, a shape's edges stay."""
    padded = np.pad(image, ((1, 1), (1, 1), (0, 0)), mode="edge")
    height, width = image.shape[:2]
    window = np.stack([padded[dy:dy + height, dx:dx + width] for dy in range(3) for dx in range(3)])
    return np.median(window, axis=0)


def shape_of(image: np.ndarray, threshold: float = 40.0) -> str:
    """Which demo shape one (S, S, 3) uint8 image shows: "circle", "square", "triangle", or "none".

    After a 3x3 median, the shape is the pixels far (Euclidean, 0..255) from every colour on the image's border,
    which the background alone reaches, plain or gradient. A square fills its bounding box; a triangle (apex up)
    is much narrower in the box's top third than in its bottom third; a circle is neither.
    """
    pixels = _median3(image.astype(np.float32))
    border = np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]])
    distance = np.sqrt(((pixels[:, :, None, :] - border[None, None]) ** 2).sum(-1)).min(-1)
    mask = distance > threshold
    if mask.sum() < 4:
        return "none"
    rows, columns = np.nonzero(mask)
    box = mask[rows.min():rows.max() + 1, columns.min():columns.max() + 1]
    third = max(1, box.shape[0] // 3)
    taper = box[:third].mean() / max(box[-third:].mean(), 1e-6)
    return "square" if box.mean() > 0.9 else "triangle" if taper < 0.75 else "circle"
