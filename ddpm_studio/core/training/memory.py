"""How much memory a training run needs, estimated before it starts, how much the device has, and whether it fits.

The estimate adds the per-parameter state that training keeps (weights, gradients, Adam's two
moments and the EMA copy, all float32) to the activations of one forward pass times the batch
size, and the dataset where it is kept. The activations are measured, not guessed: the U-Net runs
once on fake tensors, which compute shapes and dtypes without allocating anything, and the tensors
autograd keeps for the backward pass are counted, once per storage (views allocate nothing).
``measure_training_peak`` measures the real peak; the tests and ``ddpm-studio doctor`` compare the
two.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
from dataclasses import dataclass

import torch
from torch._subclasses.fake_tensor import FakeTensorMode

from ddpm_studio.core.diffusion.process import GaussianDiffusion
from ddpm_studio.core.diffusion.schedule import NoiseSchedule, ScheduleConfig
from ddpm_studio.core.model.unet import UNet, UNetConfig
from ddpm_studio.core.system.devices import available_memory_bytes
from ddpm_studio.core.training.plain_step import plain_training_step

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


# The peak of a step is reached in the backward pass: what autograd saved, plus the gradients of
# the activations in flight. Measured on the CPU (``small`` at 32x32, batch 16 and 64, float32 and
# bf16; tests/core/test_memory.py), the peak is 1.06 to 1.27 times the saved tensors.
BACKWARD_ALLOWANCE = 1.15


def saved_tensor_bytes(model: torch.nn.Module, inputs: tuple, bf16: bool = False) -> int:
    """The bytes of the tensors autograd keeps from ``model(*inputs)`` for the backward pass.

    Counted once per storage: a view of a kept tensor, or one kept by two operations, allocates
    nothing more; the parameters themselves are not counted (they are the model's, not the pass's).
    """
    parameters = {parameter.untyped_storage()._cdata for parameter in model.parameters()}
    kept: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage._cdata not in parameters:
            kept[storage._cdata] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            model(*inputs)
    return sum(kept.values())


@functools.lru_cache(maxsize=32)
def _measure(config: UNetConfig, bf16: bool) -> tuple[int, int, int]:
    """(parameter count, saved bytes per image, saved bytes per pass) of the U-Net ``config`` describes.

    The pass runs on fake CPU tensors, which have shapes and dtypes and allocate nothing; autocast
    applies to them, so under bf16 what stays float32 (the GroupNorms, the softmax) counts at four
    bytes, and autocast's bf16 copies of the weights count once per pass, not per image.
    """
    with FakeTensorMode():
        model = UNet(config)
        parameters = sum(parameter.numel() for parameter in model.parameters())

        def saved(batch: int) -> int:
            images = torch.empty(batch, config.image_channels, config.image_size, config.image_size)
            timesteps = torch.zeros(batch, dtype=torch.long)
            # A class-conditional step's labels are inputs too (and their embedding's output is saved).
            inputs = (images, timesteps, torch.zeros(batch, dtype=torch.long)) if config.num_classes else (images,
                                                                                                           timesteps)
            return saved_tensor_bytes(model, inputs, bf16)

        one, two = saved(1), saved(2)
    return parameters, two - one, max(0, 2 * one - two)


def estimate_training_memory(
    config: UNetConfig, batch_size: int, bf16: bool = False, dataset_images: int = 0
) -> MemoryEstimate:
    """The memory a training step of ``config`` at ``batch_size`` needs, in bytes.

    The activations are what autograd keeps (see ``saved_tensor_bytes``) with an allowance for the
    backward pass; with ``bf16`` they are those of a pass under bf16 autocast, less than half of
    float32's saving since normalisations stay float32. ``dataset_images`` counts the decoded uint8
    images kept beside the model (in RAM on the CPU; on a GPU when they fit, see training). The
    first call takes a few seconds (torch prepares its fake kernels); results are cached per
    architecture.
    """
    parameters, per_image, per_pass = _measure(config, bool(bf16))
    activation_bytes = int(BACKWARD_ALLOWANCE * (per_image * batch_size + per_pass))
    label_bytes = 8 if config.num_classes else 0  # int64 labels kept beside the images
    dataset_bytes = dataset_images * (config.image_channels * config.image_size**2 + label_bytes)
    return MemoryEstimate(parameters, parameters * BYTES_PER_PARAMETER, activation_bytes, dataset_bytes)


def measure_training_peak(config: UNetConfig, batch_size: int, bf16: bool = False,
                          device: torch.device | str = "cpu", steps: int = 2) -> int | None:
    """The memory that training steps of ``config`` really take at their peak, in bytes: model,
    EMA copy, Adam's state, activations and gradients (None where it cannot be measured).

    On a GPU torch's allocator counts it. On the CPU a fresh Python process measures its peak
    resident memory (Linux), with the C library told to hand every large block back at once, so
    that the peak is the tensors' and not the allocator's hoard.
    """
    device = torch.device(device)
    if device.type == "cuda":
        return _training_peak_here(config, batch_size, bf16, device, steps)
    if not sys.platform.startswith("linux"):
        return None
    request = json.dumps({"config": config.to_dict(), "batch_size": batch_size, "bf16": bool(bf16), "steps": steps})
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "OMP_NUM_THREADS": str(torch.get_num_threads())}
    result = subprocess.run([sys.executable, "-m", "ddpm_studio.core.training.memory", request], env=env,
                            capture_output=True, text=True, timeout=600)
    if result.returncode != 0:
        return None
    return int(result.stdout.split()[-1])


def _training_peak_here(config: UNetConfig, batch_size: int, bf16: bool, device: torch.device,
                        steps: int) -> int | None:
    diffusion = GaussianDiffusion(NoiseSchedule.from_config(ScheduleConfig("linear", 1000)).to(device))
    x0 = torch.rand(batch_size, config.image_channels, config.image_size, config.image_size, device=device) * 2 - 1

    def train(model, optimizer, images) -> None:
        plain_training_step(model, optimizer, diffusion, images, bf16)

    # Kernels and libraries first load on a throwaway model, outside the measurement.
    warm = UNet(config).to(device)
    train(warm, torch.optim.Adam(warm.parameters()), x0[:1])
    del warm
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
    else:
        before = _resident_bytes()[0]
        with open("/proc/self/clear_refs", "w") as stream:  # resets the peak (VmHWM) to the current size
            stream.write("5")
    model = UNet(config).to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    ema = UNet(config).to(device)  # noqa: F841 (held, as training holds it)
    optimizer = torch.optim.Adam(model.parameters(), fused=device.type == "cuda")
    for _ in range(steps):
        train(model, optimizer, x0)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - before
    return _resident_bytes()[1] - before


def _resident_bytes() -> tuple[int, int]:
    """(resident, peak resident) bytes of this process, from /proc/self/status."""
    values = {}
    with open("/proc/self/status") as stream:
        for line in stream:
            name, _, rest = line.partition(":")
            if name in ("VmRSS", "VmHWM"):
                values[name] = int(rest.split()[0]) * 1024
    return values["VmRSS"], values["VmHWM"]


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
        def fits(batch: int) -> bool:
            return estimate_training_memory(config, batch, bf16, dataset_images).total_bytes <= FIT_SHARE * available

        per_image = max(1, estimate.activation_bytes // max(1, batch_size))
        room = FIT_SHARE * available - estimate.parameter_bytes - estimate.dataset_bytes
        largest = max(0, int(room // per_image))  # close; the activations also hold a part per pass
        while largest > 0 and not fits(largest):
            largest -= 1
        while fits(largest + 1):
            largest += 1
    return MemoryCheck(estimate, batch_size, available, largest, "the GPU" if device.type == "cuda" else "the CPU")


def format_bytes(count: int) -> str:
    """A size for people: GiB above one, else MiB."""
    if count >= 2**30:
        return f"{count / 2**30:.1f} GiB"
    return f"{count / 2**20:.0f} MiB"


if __name__ == "__main__":  # the CPU peak probe that measure_training_peak starts in a fresh process
    request = json.loads(sys.argv[1])
    probe_config = UNetConfig.from_dict(request["config"])
    print(_training_peak_here(probe_config, request["batch_size"], request["bf16"], torch.device("cpu"),
                              request["steps"]))
