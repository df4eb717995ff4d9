"""What the receiver of the progressive code sees after n reverse steps (Ho et al. 2020, Algorithms 3 and 4):
x_t ~ q(x_t | x_0) and its best guess x0_hat, for one held-out image; the window's rate-distortion cursor shows it.

x0_hat is the one the distortion curve measures (``variational_bound.x0_estimate``), clipped to [-1, 1].
The noise is drawn once from a fixed seed and used at every t, so moving the cursor changes only t. A
class-conditional model takes the null label, as the bound does.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from ddpm_studio.core.data.folders import to_model_range
from ddpm_studio.core.diffusion.losses import bits_per_dim
from ddpm_studio.core.diffusion.variational_bound import prior_kl, x0_estimate
from ddpm_studio.core.model.store import LoadedModel
from ddpm_studio.core.sampling.imaging import to_hwc, to_uint8

RECEIVER_SEED = 0


@dataclass
class ReceiverView:
    """x_t and x0_hat of the held-out image after ``steps`` reverse steps, uint8 (H, W[, 3])."""

    steps: int
    noisy: np.ndarray
    estimate: np.ndarray


def receiver_noise(shape: tuple[int, ...], seed: int = RECEIVER_SEED) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def receiver_tensors(
    model: LoadedModel, x0: torch.Tensor, steps: int, noise: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(x_t, clip(x0_hat)) in model units for model-range images ``x0`` after ``steps`` reverse steps
    (t = T - steps + 1); one model call."""
    diffusion = model.diffusion
    device = next(model.unet.parameters()).device
    x0 = x0.to(device)
    t = torch.full((x0.shape[0],), diffusion.num_timesteps - steps, dtype=torch.long, device=device)
    with torch.inference_mode():
        x_t = diffusion.q_sample(x0, t, noise.to(device))
        x0_hat = x0_estimate(diffusion, diffusion.model_output(model.unet, x_t, t), x_t, t, clip=True)
    return x_t, x0_hat


def receiver_view(model: LoadedModel, image: torch.Tensor, steps: int, seed: int = RECEIVER_SEED) -> ReceiverView:
    """The view of one uint8 (C, H, W) image after ``steps`` reverse steps."""
    x0 = to_model_range(image[None])
    x_t, x0_hat = receiver_tensors(model, x0, steps, receiver_noise(tuple(x0.shape), seed))
    return ReceiverView(steps, to_hwc(to_uint8(x_t)[0]), to_hwc(to_uint8(x0_hat)[0]))


def receiver_job(model: LoadedModel, image: torch.Tensor, steps: int) -> Iterator[ReceiverView]:
    """``receiver_view`` as a job's iterator, for the window's worker thread."""
    yield receiver_view(model, image, steps)


def prior_bpd(model: LoadedModel, images: torch.Tensor) -> float:
    """L_T in bits/dim, the mean over uint8 (N, C, H, W) ``images``, as ``likelihood.evaluate_likelihood`` reports
    it after a batch: the rate after one reverse step, before the pass's first batch has ended."""
    device = next(model.unet.parameters()).device
    with torch.inference_mode():
        prior = prior_kl(model.diffusion, to_model_range(images).to(device)).double().cpu()
    return float(bits_per_dim(prior, int(np.prod(model.image_shape))).mean())
