"""A rough forecast of how long sampling will take on the CPU, so the window can warn before a 256 px run.

The U-Net's floating-point operations per call are counted once per architecture on the meta device
(no memory, no arithmetic); the CPU's speed is measured once with a small matrix product, and
convolutions are assumed to reach a fraction of it. It is an estimate to within a factor of a few,
which is enough to tell seconds from hours.
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass

import torch
from torch.utils.flop_counter import FlopCounterMode

from ddpm_studio.core.model.unet import UNet, UNetConfig

CONVOLUTION_EFFICIENCY = 0.3  # U-Net calls at batch 1 reach about this share of a large matmul's rate on CPUs
SLOW_SECONDS = 30.0  # above this, the window says so


@dataclass(frozen=True)
class SamplingCost:
    seconds_per_call: float  # one U-Net call for one image
    calls: int
    images: int
    passes: int = 1  # 2 with classifier-free guidance: each call runs the batch twice (with its class, with null)

    @property
    def seconds(self) -> float:
        return self.seconds_per_call * self.calls * self.images * self.passes

    @property
    def slow(self) -> bool:
        return self.seconds > SLOW_SECONDS

    def describe(self) -> str:
        return (f"On the CPU this takes about {format_duration(self.seconds)} ({self.seconds_per_call:.1f} s per "
                f"model call per image, {self.calls:,} calls"
                + (", each of twice the batch for guidance" if self.passes > 1 else "")
                + "); a GPU, fewer DDIM steps or fewer images are faster.")


@functools.lru_cache(maxsize=16)
def flops_per_call(config: UNetConfig) -> float:
    """Floating-point operations of one U-Net call on one image, counted without computing anything."""
    with torch.device("meta"):
        model = UNet(config)
        x = torch.zeros(1, config.image_channels, config.image_size, config.image_size)
        t = torch.zeros(1, dtype=torch.long)
        with FlopCounterMode(display=False) as counter:
            model(x, t)
    return float(counter.get_total_flops())


@functools.lru_cache(maxsize=1)
def cpu_flops_per_second() -> float:
    """This CPU's float32 matrix-product rate with torch's current threads (about 0.1 s to measure)."""
    a = torch.randn(768, 768)
    a @ a  # warm-up
    repeats, start = 0, time.perf_counter()
    while repeats < 3 or time.perf_counter() - start < 0.05:
        a @ a
        repeats += 1
    return repeats * 2 * 768**3 / (time.perf_counter() - start)


def cpu_sampling_cost(config: UNetConfig, images: int, calls: int, passes: int = 1) -> SamplingCost:
    """How long ``calls`` U-Net calls on ``images`` images take on this CPU, roughly; ``passes`` 2 for guidance
    (``model_passes``)."""
    per_call = flops_per_call(config) / (cpu_flops_per_second() * CONVOLUTION_EFFICIENCY)
    return SamplingCost(per_call, calls, images, passes)


def format_duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


@dataclass(frozen=True)
class ExperimentCost:
    """The forecast of one of the paper's experiments (branching, interpolation): ``image_calls`` U-Net calls of
    one image each, and the sum that makes them (``detail``), for the sentence the user reads before a run."""

    what: str  # "Fig. 7", "Branching", "Interpolation"
    image_size: int
    seconds_per_call: float  # one U-Net call for one image, on this CPU
    image_calls: int
    detail: str  # e.g. "4 rows x 8 continuations x ~625 model calls"

    @property
    def seconds(self) -> float:
        return self.seconds_per_call * self.image_calls

    @property
    def slow(self) -> bool:
        return self.seconds > SLOW_SECONDS

    def describe(self) -> str:
        if self.image_calls == 0:
            return f"{self.what} at {self.image_size} px: no model call, a pixel blend."
        milliseconds = self.seconds_per_call * 1000
        per_call = (f"{self.seconds_per_call:.1f} s" if milliseconds >= 100
                    else f"{milliseconds:.0f} ms" if milliseconds >= 1 else "under 1 ms")
        return (f"{self.what} at {self.image_size} px on this CPU: about {format_duration(self.seconds)}: "
                f"{self.detail} at {per_call} each" + ("; a GPU or fewer steps is much faster." if self.slow else "."))


def cpu_experiment_cost(config: UNetConfig, what: str, image_calls: int, detail: str) -> ExperimentCost:
    """``cpu_sampling_cost``'s per-call estimate, for an experiment of ``image_calls`` one-image U-Net calls."""
    per_call = flops_per_call(config) / (cpu_flops_per_second() * CONVOLUTION_EFFICIENCY)
    return ExperimentCost(what, config.image_size, per_call, image_calls, detail)
