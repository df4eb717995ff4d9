"""How much memory a training run needs, estimated before it starts, and how much the device has.

The estimate adds the per-parameter state that training keeps (weights, gradients, Adam's two
moments and the EMA copy, all float32) to the activations of one forward pass times the batch
size. The activations are measured, not guessed: the U-Net runs once on the ``meta`` device,
which computes shapes without allocating anything, and every tensor an operation produces is
counted. That is an upper bound on what autograd keeps for the backward pass, and close to it.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from .unet import UNet, UNetConfig

# float32 weights, their gradients, Adam's first and second moments, and the EMA weights.
BYTES_PER_PARAMETER = 4 * 5


@dataclass(frozen=True)
class MemoryEstimate:
    """The parts of a training run's memory, in bytes."""

    parameters: int
    parameter_bytes: int  # weights, gradients, optimizer state and EMA
    activation_bytes: int  # of the whole batch
    dataset_bytes: int  # the decoded images, when they live on the device

    @property
    def total_bytes(self) -> int:
        return self.parameter_bytes + self.activation_bytes + self.dataset_bytes


class _OutputBytes(TorchDispatchMode):
    """Adds up the size of every tensor that an operation returns while the mode is active."""

    def __init__(self):
        super().__init__()
        self.total = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        result = func(*args, **(kwargs or {}))
        for value in tree_flatten(result)[0]:
            if isinstance(value, torch.Tensor):
                self.total += value.numel() * value.element_size()
        return result


@functools.lru_cache(maxsize=32)
def _measure(config: UNetConfig) -> tuple[int, int]:
    """(parameter count, float32 activation bytes of one image) of the U-Net ``config`` describes."""
    with torch.device("meta"):
        model = UNet(config)
    parameters = sum(parameter.numel() for parameter in model.parameters())
    images = torch.empty(1, config.image_channels, config.image_size, config.image_size, device="meta")
    timesteps = torch.zeros(1, dtype=torch.long, device="meta")
    counter = _OutputBytes()
    with counter:
        model(images, timesteps)
    return parameters, counter.total


def estimate_training_memory(
    config: UNetConfig, batch_size: int, bf16: bool = False, dataset_images: int = 0
) -> MemoryEstimate:
    """The memory a training step of ``config`` at ``batch_size`` needs, in bytes.

    With ``bf16`` the activations take half the space. ``dataset_images`` counts decoded
    uint8 images kept beside the model (on a GPU the dataset lives there when it fits).
    The first call takes a moment (torch prepares its meta kernels); results are cached
    per architecture.
    """
    parameters, activation_bytes_per_image = _measure(config)
    activation_bytes = activation_bytes_per_image * batch_size
    if bf16:
        activation_bytes //= 2
    dataset_bytes = dataset_images * config.image_channels * config.image_size**2
    return MemoryEstimate(parameters, parameters * BYTES_PER_PARAMETER, activation_bytes, dataset_bytes)
