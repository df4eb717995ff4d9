"""DPM-Solver++ (Lu et al. 2022), multistep, second order (2M): the probability-flow ODE of an eps-model.

The ODE is solved in lambda_t = log(sqrt(alpha_bar_t) / sqrt(1 - alpha_bar_t)), half the log-SNR, on
the model's own discrete timesteps (of a respaced process too: its indices map to the model's through
``timestep_map``). With alpha_t = sqrt(alpha_bar_t), sigma_t = sqrt(1 - alpha_bar_t), the data
prediction x0_hat = (x_t - sigma_t eps_hat) / alpha_t and h = lambda_t - lambda_s, one step from s to t is

    first order (DDIM):  x_t = (sigma_t / sigma_s) x_s - alpha_t (e^-h - 1) x0_hat_s
    second order:        x_t = (sigma_t / sigma_s) x_s - alpha_t (e^-h - 1) (x0_hat_s + D / 2),
                         D = (x0_hat_s - x0_hat_prev) h / h_prev  (h_prev: the step before)

The first step has no predecessor and is first order. The last step goes to sigma = 0, where the
first-order step is x0_hat itself: diffusers' ``DPMSolverMultistepScheduler``, the numerical reference,
does the same (its ``lower_order_final`` below 15 steps, and its final sigma of zero at any count).

With ``clip`` (the default of a pixel-space model, as for DDPM and DDIM here) every x0_hat is clipped to
[-1, 1] before it enters a step, the last one included. That is the reference's ``thresholding=True`` with
``sample_max_value=1.0``. Without it the demo model's samples come out grainy and over-contrasted: at 10
and 20 steps their pixel std is 25 levels (of 255) off the demo data's, against 8 with it, and their
total variation twice as high (21 against 12). The reference's default spacing is "linspace":
``num_steps`` timesteps from round(linspace(0, start, num_steps + 1)) without the 0, T - 1 first.
"logsnr" spaces them uniformly in lambda instead, from the start's down to t = 1's.

Coefficients are Python floats from the float64 schedule (no device read per step), and the only
history kept is the previous step's x0_hat.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import torch

from ddpm_studio.core.diffusion.process import EpsModel, GaussianDiffusion, SampleStep, split_model_output
from ddpm_studio.core.errors import SettingError

SPACINGS = ("linspace", "logsnr")
# The studio's default: uniform in log-SNR. Measured against the reference's "linspace": on Gaussian data with the
# exact eps-model (variance 0.25 wanted) 0.266 against 0.163 at 10 calls and 0.257 against 0.228 at 20; on the demo
# model it reaches the converged ODE's grain by 15-20 calls (9.3), where linspace is still at 11.0 at 20.
DEFAULT_SPACING = "logsnr"
DEFAULT_STEPS = 20


def half_log_snr(diffusion: GaussianDiffusion) -> np.ndarray:
    """lambda of every index of ``diffusion``'s schedule, in float64 (decreasing with t)."""
    alphas_cumprod = diffusion.schedule.float64["alphas_cumprod"]
    return 0.5 * (np.log(alphas_cumprod) - np.log1p(-alphas_cumprod))


def solver_timesteps(diffusion: GaussianDiffusion, num_steps: int, start_t: int,
                     spacing: str = DEFAULT_SPACING) -> list[int]:
    """The indices the solver calls the model at, ``start_t`` first, at most ``num_steps`` (repeats dropped)."""
    if num_steps >= start_t + 1:  # every index (rounding the spacing would repeat one and leave another out)
        return list(range(start_t, -1, -1))
    if spacing == "linspace":
        spaced = np.linspace(0, start_t, num_steps + 1).round()[::-1][:-1]
    elif spacing == "logsnr":
        lambdas = half_log_snr(diffusion)[: start_t + 1]
        targets = np.linspace(lambdas[start_t], lambdas[0], num_steps)
        # lambda decreases with the index: interpolate the index over the reversed, increasing lambdas.
        rounded = np.interp(targets, lambdas[::-1], np.arange(start_t, -1, -1, dtype=np.float64)).round()
        # Rounding can land two steps on one index where lambda changes fast (near t = 0 of a short chain): keep
        # each below the last and above what the remaining steps need, so the run takes every step asked for.
        spaced = [start_t]
        for step, index in enumerate(rounded[1:], start=1):
            spaced.append(int(min(max(index, num_steps - 1 - step), spaced[-1] - 1)))
    else:
        raise SettingError(f"Unknown DPM-Solver++ spacing '{spacing}'; choose one of {', '.join(SPACINGS)}.")
    return list(dict.fromkeys(int(index) for index in spaced))


def dpm_solver_sample_progressive(
    diffusion: GaussianDiffusion,
    model: EpsModel,
    shape: tuple[int, ...],
    num_steps: int = DEFAULT_STEPS,
    generator: torch.Generator | None = None,
    clip: bool = True,
    x_start: torch.Tensor | None = None,
    start_t: int | None = None,
    device: torch.device | str = "cpu",
    spacing: str = DEFAULT_SPACING,
) -> Iterator[SampleStep]:
    """DPM-Solver++ (2M) in ``num_steps`` model calls, one ``SampleStep`` per call, from pure noise x_T or
    from ``x_start`` at index ``start_t`` ("denoise from t"). Settings are checked here, before the first step."""
    start_t = diffusion._check_start(start_t)
    if not 1 <= num_steps <= start_t + 1:
        raise SettingError(f"DPM-Solver++ needs between 1 and {start_t + 1} steps, not {num_steps}.")
    if spacing not in SPACINGS:
        raise SettingError(f"Unknown DPM-Solver++ spacing '{spacing}'; choose one of {', '.join(SPACINGS)}.")
    timesteps = solver_timesteps(diffusion, num_steps, start_t, spacing)
    return _solver_steps(diffusion, model, shape, timesteps, generator, clip, x_start, device)


@torch.inference_mode()  # on only while the generator runs, off at each yield
def _solver_steps(diffusion, model, shape, timesteps, generator, clip, x_start, device) -> Iterator[SampleStep]:
    alphas_cumprod = diffusion.schedule.float64["alphas_cumprod"]
    lambdas = half_log_snr(diffusion)
    if x_start is None:
        x = diffusion._initial_noise(shape, generator, device)
    else:  # float32, or float64 for checks in full precision
        x = x_start.to(device, x_start.dtype if x_start.dtype == torch.float64 else torch.float32)
    previous_x0_hat, previous_h = None, None
    for step, index in enumerate(timesteps):
        t = torch.full((x.shape[0],), index, device=x.device, dtype=torch.long)
        eps, _ = split_model_output(diffusion.model_output(model, x, t), x.shape[1])  # a learned variance is unused
        alpha_s, sigma_s = math.sqrt(alphas_cumprod[index]), math.sqrt(1.0 - alphas_cumprod[index])
        x0_hat = (x - sigma_s * eps) / alpha_s
        if clip:  # the reference's thresholding=True with sample_max_value=1
            x0_hat = x0_hat.clamp(-1.0, 1.0)
        if step + 1 == len(timesteps):  # to sigma = 0: the first-order step is x0_hat itself
            yield SampleStep(step, len(timesteps), diffusion.original_index(index), x, x0_hat, x0_hat)
            return
        next_index = timesteps[step + 1]
        alpha_t, sigma_t = math.sqrt(alphas_cumprod[next_index]), math.sqrt(1.0 - alphas_cumprod[next_index])
        h = float(lambdas[next_index] - lambdas[index])
        data_term = x0_hat
        if previous_x0_hat is not None:  # second order from the previous step's x0_hat
            data_term = x0_hat + (0.5 * h / previous_h) * (x0_hat - previous_x0_hat)
        x_next = (sigma_t / sigma_s) * x - (alpha_t * math.expm1(-h)) * data_term
        yield SampleStep(step, len(timesteps), diffusion.original_index(index), x, x0_hat, x_next)
        x, previous_x0_hat, previous_h = x_next, x0_hat, h
