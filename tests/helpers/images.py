"""Tiny training images for tests: demo-dataset shapes as uint8 tensors."""

from __future__ import annotations

import torch

from ddpm_studio.core.data.demo import make_demo_images


def tiny_images(count: int = 32, size: int = 16, seed: int = 0) -> torch.Tensor:
    """Demo-dataset images as uint8 (N, 3, size, size)."""
    return torch.from_numpy(make_demo_images(count, size=size, seed=seed)).permute(0, 3, 1, 2).contiguous()
