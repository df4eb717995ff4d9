"""The Gaussian quantities the losses and the bound are made of: KLs, the discretized decoder, bits per dimension.

Plain functions of tensors, with no schedule and no model: the process's L_hybrid and the
variational bound (``variational_bound.py``) both build on them.

Data are 8-bit images scaled to [-1, 1]; the decoder gives each pixel value the mass of its bin of
width 2/255, the two edge bins reaching to -inf and +inf, so its log-likelihood is a true discrete one.
"""

from __future__ import annotations

import math

import torch

# Half the width of one of the 256 bins of 8-bit data in [-1, 1].
BIN_HALF_WIDTH = 1.0 / 255.0


def bits_per_dim(nats: torch.Tensor | float, dims: int) -> torch.Tensor | float:
    """Nats per image to bits per dimension."""
    return nats / (dims * math.log(2.0))


def normal_kl(mean1: torch.Tensor, log_var1: torch.Tensor, mean2: torch.Tensor, log_var2: torch.Tensor) -> torch.Tensor:
    """KL(N(mean1, exp(log_var1)) || N(mean2, exp(log_var2))) per element, in nats.

    Written with expm1 so that nearly equal variances (a learned sigma close to the true one)
    do not lose the KL to cancellation in -1 + exp(d) - d.
    """
    difference = log_var1 - log_var2
    return 0.5 * (torch.expm1(difference) - difference + (mean1 - mean2) ** 2 * torch.exp(-log_var2))


def log_normal_interval(lower: torch.Tensor, upper: torch.Tensor) -> torch.Tensor:
    """log(Phi(upper) - Phi(lower)) for lower < upper (either may be infinite), accurate in both tails."""
    # Above the mean, Phi(upper) - Phi(lower) = Phi(-lower) - Phi(-upper): both stay far from 1.
    flip = lower > 0
    low = torch.where(flip, -upper, lower)
    high = torch.where(flip, -lower, upper)
    log_high = torch.special.log_ndtr(high)
    log_low = torch.special.log_ndtr(low)
    tiny = torch.finfo(log_high.dtype).tiny
    return log_high + torch.log((-torch.expm1(log_low - log_high)).clamp_min(tiny))


def discretized_gaussian_log_likelihood(x0: torch.Tensor, mean: torch.Tensor, log_scale: torch.Tensor) -> torch.Tensor:
    """log p(x0) per element under N(mean, exp(log_scale)^2) discretized to the 256 bins of 8-bit data.

    ``x0`` holds 8-bit values in [-1, 1]; the bins at -1 and 1 are open to -inf and +inf.
    """
    inverse_scale = torch.exp(-log_scale)
    lower = torch.where(x0 < -1 + BIN_HALF_WIDTH, -math.inf, (x0 - BIN_HALF_WIDTH - mean) * inverse_scale)
    upper = torch.where(x0 > 1 - BIN_HALF_WIDTH, math.inf, (x0 + BIN_HALF_WIDTH - mean) * inverse_scale)
    return log_normal_interval(lower, upper)
