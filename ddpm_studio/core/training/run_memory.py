"""A run's memory: how each process splits its batch into micro-batches, whether the run fits, and running out."""

from __future__ import annotations

import math

import torch

from ddpm_studio.core.errors import SettingError
from ddpm_studio.core.system.devices import choose_device, use_bf16
from ddpm_studio.core.training.config import TrainingConfig
from ddpm_studio.core.training.distributed import DistributedContext
from ddpm_studio.core.training.memory import MemoryCheck, check_training_memory


def out_of_memory_reason(config: TrainingConfig, device: torch.device, when: str) -> str:
    where = "GPU" if device.type == "cuda" else "CPU"
    return (f"Out of {where} memory at batch size {config.batch_size} ({when}); lower the batch size, split it into "
            "micro-batches (--accumulate, --micro-batch auto), checkpoint activations, or choose a smaller preset")


def release_cached_memory(device: torch.device) -> None:
    """Hand the GPU memory that torch caches back, after an out-of-memory failure."""
    if device.type == "cuda":
        torch.cuda.empty_cache()


def micro_batch_count(config: TrainingConfig, per_rank: int, device: torch.device) -> int:
    """How many micro-batches each process splits its ``per_rank`` images into, from the accumulation settings.

    ``micro_batch="auto"`` takes the largest micro-batch that the memory estimate fits in what
    ``device`` has available (free GPU memory, or RAM); at least one image.
    """
    if config.micro_batch is None:
        if config.accumulate > per_rank:
            raise SettingError(f"Each process's {per_rank} images cannot be split into {config.accumulate} "
                               "micro-batches.")
        return config.accumulate
    size = config.micro_batch
    if size == "auto":
        check = check_training_memory(config.unet_config(), per_rank, use_bf16(config.precision, device), device)
        size = per_rank if check.largest_batch is None else max(1, check.largest_batch)
    return math.ceil(per_rank / min(size, per_rank))


def is_out_of_memory(error: BaseException) -> bool:
    """Whether ``error`` is an allocation that failed: CUDA's out of memory, the CPU allocator's, or Python's."""
    if isinstance(error, (torch.OutOfMemoryError, MemoryError)):
        return True
    text = str(error)
    return isinstance(error, RuntimeError) and ("DefaultCPUAllocator" in text or "can't allocate memory" in text
                                                or "not enough memory" in text)


def check_memory(config: TrainingConfig, device: str | None = None,
                 context: DistributedContext | None = None, dataset_images: int = 0) -> MemoryCheck:
    """Whether a run of ``config`` fits in the memory its device has available now, and which batch would.

    ``dataset_images`` counts where the dataset is kept on the GPU (the window's runs), not on the CPU.
    """
    context = context or DistributedContext()
    run_device = choose_device(device, context.local_rank)
    per_rank = config.batch_size // context.world_size
    # Activations are held for one micro-batch at a time.
    micro_batch = math.ceil(per_rank / micro_batch_count(config, per_rank, run_device))
    return check_training_memory(config.unet_config(), micro_batch, use_bf16(config.precision, run_device), run_device,
                                 dataset_images if run_device.type == "cuda" else 0)
