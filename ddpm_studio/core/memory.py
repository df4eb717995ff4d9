"""How much memory a training run needs, estimated before it starts, how much the device has, and whether it fits.

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

from .devices import available_memory_bytes
from .unet import UNet, UNetConfig

# float32 weights, their gradients, Adam's first and second moments, and the EMA weights.
BYTES_PER_PARAMETER = 4 * 5
# A run fits when its estimate takes at most this share of the available memory: the rest is for the
# allocator's slack, the framework's workspaces and whatever else the process holds meanwhile.
FIT_SHARE = 0.9


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


@dataclass(frozen=True)
class MemoryCheck:
    """A run's estimate against what its device has available, and the largest batch that would fit."""

    estimate: MemoryEstimate
    batch_size: int
    available: int | None  # bytes; None when unknown (then every run "fits")
    largest_batch: int | None  # the largest batch size that fits; 0 when not even one image does
    device_name: str  # "the CPU" or "the GPU", for sentences

    @property
    def fits(self) -> bool:
        return self.available is None or self.estimate.total_bytes <= FIT_SHARE * self.available

    def explain(self) -> str:
        """Why the run does not fit, and what would, in one sentence (for a run that does not fit)."""
        needs = (f"Training needs about {format_bytes(self.estimate.total_bytes)} at batch size {self.batch_size}, "
                 f"but {self.device_name} has {format_bytes(self.available or 0)} available")
        if self.largest_batch:
            return f"{needs}; the largest batch size that fits is {self.largest_batch}."
        return f"{needs}; not even batch size 1 fits: choose a smaller preset or resolution."


def check_training_memory(
    config: UNetConfig, batch_size: int, bf16: bool = False, device: torch.device | str | None = None,
    dataset_images: int = 0,
) -> MemoryCheck:
    """Estimate a run of ``batch_size`` images per process on ``device`` and compare with what is available."""
    device = torch.device(device) if device is not None else torch.device("cpu")
    estimate = estimate_training_memory(config, batch_size, bf16, dataset_images)
    available = available_memory_bytes(device)
    largest = None
    if available is not None:
        per_image = max(1, estimate.activation_bytes // max(1, batch_size))
        room = FIT_SHARE * available - estimate.parameter_bytes - estimate.dataset_bytes
        largest = max(0, int(room // per_image))
    return MemoryCheck(estimate, batch_size, available, largest, "the GPU" if device.type == "cuda" else "the CPU")


def format_bytes(count: int) -> str:
    """A size for people: GiB above one, else MiB."""
    if count >= 2**30:
        return f"{count / 2**30:.1f} GiB"
    return f"{count / 2**20:.0f} MiB"
