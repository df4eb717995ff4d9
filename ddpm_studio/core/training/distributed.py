"""A run under ``torchrun``: this process's rank, joining the process group, and gathering every rank's streams.

One process is a world of one: every function here is then a no-op or trivial.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from ddpm_studio.core.system.devices import choose_device, process_group_backend


@dataclass
class DistributedContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def distributed_context(requested_device: str | None = None) -> DistributedContext:
    """Join the process group that ``torchrun`` describes in the environment (a no-op for one process),
    with the backend that suits the device the run will use."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistributedContext()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        dist.init_process_group(backend=process_group_backend(choose_device(requested_device, local_rank)))
    return DistributedContext(dist.get_rank(), dist.get_world_size(), local_rank)


def gather_random_streams(mine: dict[str, torch.Tensor], context: DistributedContext,
                          device: torch.device) -> dict[int, dict[str, torch.Tensor]]:
    """The random streams ``mine`` of every rank, for rank 0 to save those of ranks 1.. (a collective call:
    all ranks make it)."""
    names = sorted(mine)
    sizes = [mine[name].numel() for name in names]
    flat = torch.cat([mine[name].flatten() for name in names]).to(device)  # all uint8, same sizes on every rank
    gathered = [torch.empty_like(flat) for _ in range(context.world_size)]
    dist.all_gather(gathered, flat)
    return {rank: dict(zip(names, (part.clone() for part in buffer.cpu().split(sizes))))
            for rank, buffer in enumerate(gathered) if rank != 0}

