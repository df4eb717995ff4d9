"""Small, fixed, deterministic models for diffusion tests: no training, the same output for the same input."""

from __future__ import annotations

import torch
from torch import nn

from ddpm_studio.core.diffusion.schedule import NoiseSchedule


class ToyEps(nn.Module):
    """A small, fixed, deterministic eps-model: a random conv, a nonlinearity and a t-dependent shift.

    Its x0_hat leaves [-1, 1] at large t, so clipping matters.
    """

    def __init__(self, channels: int = 3, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)
        with torch.no_grad():
            self.conv.weight.copy_(torch.randn(self.conv.weight.shape, generator=g) * 0.3)
            self.conv.bias.copy_(torch.randn(self.conv.bias.shape, generator=g) * 0.1)

    def forward(self, x, t):
        return 1.5 * torch.tanh(self.conv(x)) + 0.1 * torch.sin(t.float())[:, None, None, None]


class ToyLearned(nn.Module):
    """ToyEps plus a fixed, x- and t-dependent v in about [-1.2, 1.2]: a model with a learned variance."""

    def __init__(self):
        super().__init__()
        self.eps = ToyEps()

    def forward(self, x, t):
        v = torch.tanh(x.mean(1, keepdim=True) + t.float().reshape(-1, 1, 1, 1) / 7).expand_as(x) * 1.2
        return torch.cat([self.eps(x, t), v], 1)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def exact_gaussian_eps_model(schedule: NoiseSchedule, data_variance: float):
    """E[eps | x_t] for data N(0, s^2 I), s^2 = ``data_variance``: sqrt(1 - alpha_bar) x_t / (s^2 alpha_bar + 1 -
    alpha_bar). The exact eps-model of that data: the probability-flow ODE and the reverse chain have known answers."""
    alphas_cumprod = torch.tensor(schedule.float64["alphas_cumprod"], dtype=torch.float32)

    def eps_model(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        alpha_bar = alphas_cumprod[t].reshape(-1, 1, 1, 1)
        return (1 - alpha_bar).sqrt() * x / (data_variance * alpha_bar + 1 - alpha_bar)

    return eps_model


class ExactClassGaussianEps:
    """The exact eps-model of a class-conditional Gaussian mixture: class c is N(mu_c, s^2 I), the null label its own
    N(mu_null, s^2 I). E[eps | x_t] = (x_t - sqrt(alpha_bar) mu) sqrt(1 - alpha_bar) / (alpha_bar s^2 + 1 - alpha_bar),
    so guidance with weight w gives the exact eps of a Gaussian with mean (1 + w) mu_c - w mu_null.
    ``calls`` counts the model calls, ``batch_sizes`` their sizes (to see the doubled batch)."""

    def __init__(self, schedule: NoiseSchedule, means: list[float], null_mean: float, data_variance: float):
        self.alphas_cumprod = torch.tensor(schedule.float64["alphas_cumprod"], dtype=torch.float32)
        self.means = torch.tensor([*means, null_mean], dtype=torch.float32)
        self.data_variance = data_variance
        self.null_class = len(means)
        self.batch_sizes: list[int] = []

    def __call__(self, x: torch.Tensor, t: torch.Tensor, classes: torch.Tensor | None = None) -> torch.Tensor:
        self.batch_sizes.append(x.shape[0])
        if classes is None:
            classes = torch.full((x.shape[0],), self.null_class, dtype=torch.long)
        alpha_bar = self.alphas_cumprod[t].reshape(-1, 1, 1, 1)
        mean = self.means[classes].reshape(-1, 1, 1, 1)
        return (x - alpha_bar.sqrt() * mean) * (1 - alpha_bar).sqrt() / (alpha_bar * self.data_variance + 1 - alpha_bar)
