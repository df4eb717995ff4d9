"""The variational bound of Ho et al. (2020), eq. 5, term by term, in nats per image.

    L_vlb = L_T + sum_{t>1} L_{t-1} + L_0
    L_T     = KL(q(x_T | x_0) || N(0, I))                      the prior term
    L_{t-1} = KL(q(x_{t-1} | x_t, x_0) || p_theta(x_{t-1} | x_t))  Gaussian against Gaussian
    L_0     = -log p_theta(x_0 | x_1)                          the discretized decoder (section 3.3)

Data are 8-bit images scaled to [-1, 1]; the decoder gives each pixel value the mass of
its bin of width 2/255 under N(mu_theta(x_1, 1), sigma_1^2), the two edge bins reaching
to -inf and +inf, so L_0 is a true discrete negative log-likelihood and the sum is an upper
bound on -log p(x_0) in nats. ``losses.bits_per_dim`` converts it to the paper's unit.

The term at one t is the process's own (``GaussianDiffusion.vb_term``), since L_hybrid trains on it;
this module adds the prior term and a term from a model call, for the whole bound of an image.
"""

from __future__ import annotations

import torch

from ddpm_studio.core.diffusion.losses import normal_kl
from ddpm_studio.core.diffusion.process import EpsModel, GaussianDiffusion, extract, split_model_output


def prior_kl(diffusion: GaussianDiffusion, x0: torch.Tensor) -> torch.Tensor:
    """L_T = KL(q(x_T | x_0) || N(0, I)) per image, in nats. No parameter of the model enters it."""
    s = diffusion.schedule
    t = torch.full((x0.shape[0],), diffusion.num_timesteps - 1, device=x0.device, dtype=torch.long)
    mean = extract(s.sqrt_alphas_cumprod, t, x0.shape) * x0
    log_var = extract(s.log_one_minus_alphas_cumprod, t, x0.shape).expand_as(x0)
    return normal_kl(mean, log_var, torch.zeros_like(x0), torch.zeros_like(x0)).flatten(1).sum(1)


def vb_term_of_model(
    diffusion: GaussianDiffusion,
    model: EpsModel,
    x0: torch.Tensor,
    t: torch.Tensor,
    noise: torch.Tensor,
    variance: str,
    clip: bool = False,
) -> torch.Tensor:
    """``GaussianDiffusion.vb_term`` at x_t = q_sample(x0, t, noise): one model call, one term per image (nats)."""
    x_t = diffusion.q_sample(x0, t, noise)
    return diffusion.vb_term(diffusion.model_output(model, x_t, t), x0, x_t, t, variance, clip)


def vb_term_and_x0_error(
    diffusion: GaussianDiffusion,
    model: EpsModel,
    x0: torch.Tensor,
    t: torch.Tensor,
    noise: torch.Tensor,
    variance: str,
    clip: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The bound's term at t (nats per image) and the mean squared error per pixel of
    x0_hat = (x_t - sqrt(1 - alpha_bar_t) eps_theta) / sqrt(alpha_bar_t) against x0 (model units; clipped to [-1, 1]
    with ``clip``, as the receiver's image),
    from the same x_t and the same model call: the likelihood and the rate-distortion curve share this pass."""
    x_t = diffusion.q_sample(x0, t, noise)
    output = diffusion.model_output(model, x_t, t)
    terms = diffusion.vb_term(output, x0, x_t, t, variance, clip)
    x0_hat = x0_estimate(diffusion, output, x_t, t, clip)
    return terms, (x0_hat - x0).square().flatten(1).mean(1)


def x0_estimate(diffusion: GaussianDiffusion, output: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor,
                clip: bool) -> torch.Tensor:
    """x0_hat = (x_t - sqrt(1 - alpha_bar_t) eps_theta) / sqrt(alpha_bar_t) from a model output (its eps half),
    clipped to [-1, 1] with ``clip``: the receiver's guess after T - t + 1 reverse steps."""
    eps_hat, _ = split_model_output(output, x_t.shape[1])
    x0_hat = diffusion.predict_x0_from_eps(x_t, t, eps_hat)
    return x0_hat.clamp(-1.0, 1.0) if clip else x0_hat
