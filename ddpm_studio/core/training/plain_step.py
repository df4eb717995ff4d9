"""One plain training step, the one that benchmarks, the self-check and the memory probe time or measure.

L_simple on a batch under optional bf16 autocast, then Adam (or any optimizer), with the trainer's gradient
clipping when asked. The trainer's own loop (``loop.py``) adds accumulation, EMA, DDP and its checks.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from ddpm_studio.core.diffusion.process import GaussianDiffusion


def plain_training_step(network: torch.nn.Module, optimizer: torch.optim.Optimizer, diffusion: GaussianDiffusion,
                        x0: torch.Tensor, bf16: bool, clip: Iterable[torch.nn.Parameter] | None = None) -> None:
    """One step on ``x0``; ``clip``: the parameters whose gradient norm is clipped to 1, as training does."""
    with torch.autocast(x0.device.type, dtype=torch.bfloat16, enabled=bf16):
        loss = diffusion.training_loss(network, x0)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if clip is not None:
        torch.nn.utils.clip_grad_norm_(clip, 1.0)
    optimizer.step()
