"""The variational bound of Ho et al. (2020), eq. 5, term by term, in nats per image.

    L_vlb = L_T + sum_{t>1} L_{t-1} + L_0
    L_T     = KL(q(x_T | x_0) || N(0, I))                      the prior term
    L_{t-1} = KL(q(x_{t-1} | x_t, x_0) || p_theta(x_{t-1} | x_t))  Gaussian against Gaussian
    L_0     = -log p_theta(x_0 | x_1)                          the discretized decoder (section 3.3)

Data are 8-bit images scaled to [-1, 1]; the decoder gives each pixel value the mass of
its bin of width 2/255 under N(mu_theta(x_1, 1), sigma_1^2), the two edge bins reaching
to -inf and +inf, so L_0 is a true discrete negative log-likelihood and the sum is an upper
bound on -log p(x_0) in nats. ``bits_per_dim`` converts it to the paper's unit.
"""

from __future__ import annotations

import math

import torch

from ddpm_studio.core.diffusion.process import EpsModel, GaussianDiffusion, extract

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


def prior_kl(diffusion: GaussianDiffusion, x0: torch.Tensor) -> torch.Tensor:
    """L_T = KL(q(x_T | x_0) || N(0, I)) per image, in nats. No parameter of the model enters it."""
    s = diffusion.schedule
    t = torch.full((x0.shape[0],), diffusion.num_timesteps - 1, device=x0.device, dtype=torch.long)
    mean = extract(s.sqrt_alphas_cumprod, t, x0.shape) * x0
    log_var = extract(s.log_one_minus_alphas_cumprod, t, x0.shape).expand_as(x0)
    return normal_kl(mean, log_var, torch.zeros_like(x0), torch.zeros_like(x0)).flatten(1).sum(1)


def vb_term(
    diffusion: GaussianDiffusion,
    output: torch.Tensor,
    x0: torch.Tensor,
    x_t: torch.Tensor,
    t: torch.Tensor,
    variance: str,
    clip: bool = False,
) -> torch.Tensor:
    """The bound's term at index t per image, in nats, from the model's ``output`` at (x_t, t).

    L_{t-1} (the Gaussian KL) where t > 1 (index > 0), L_0 (the decoder) where t = 1 (index 0).
    ``variance`` names sigma_t^2: "fixed_large", "fixed_small" or "learned".
    """
    true_mean, _, true_log_var = diffusion.q_posterior_mean_variance(x0, x_t, t)
    mean, log_var, _ = diffusion.p_mean_log_variance(output, x_t, t, variance, clip)
    log_var = log_var.expand_as(x0)
    kl = normal_kl(true_mean, true_log_var.expand_as(x0), mean, log_var).flatten(1).sum(1)
    decoder_nll = -discretized_gaussian_log_likelihood(x0, mean, 0.5 * log_var).flatten(1).sum(1)
    return torch.where(t == 0, decoder_nll, kl)


def vb_term_of_model(
    diffusion: GaussianDiffusion,
    model: EpsModel,
    x0: torch.Tensor,
    t: torch.Tensor,
    noise: torch.Tensor,
    variance: str,
    clip: bool = False,
) -> torch.Tensor:
    """``vb_term`` at x_t = q_sample(x0, t, noise): one model call, one term per image (nats)."""
    x_t = diffusion.q_sample(x0, t, noise)
    return vb_term(diffusion, diffusion.model_output(model, x_t, t), x0, x_t, t, variance, clip)
