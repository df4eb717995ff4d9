"""The forward process, the training loss and the reverse process (ancestral and DDIM sampling).

Names follow Ho et al. (2020). Timestep tensors ``t`` hold array indices 0..T-1 for the
paper's t = 1..T (see ``schedule.py``). The model predicts eps.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

from .errors import SettingError
from .schedule import NoiseSchedule

VARIANCES = ("fixed_large", "fixed_small")
SAMPLERS = ("ddpm", "ddim")

# The model takes (x_t, t) and returns eps_hat with the shape of x_t.
EpsModel = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def extract(values: torch.Tensor, t: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """Gather ``values[t]`` for a batch of indices and shape it to broadcast over images of ``shape``."""
    out = values.to(t.device)[t]
    return out.reshape(t.shape[0], *([1] * (len(shape) - 1)))


@dataclass
class SampleStep:
    """One step of a sampler: the timestep index it started from, x_t there, and the model's x0_hat.

    ``step`` counts from 0; ``num_steps`` is the total for this run. ``t`` is the array
    index (paper timestep t + 1). ``x_prev`` is the sample after this step; at the
    last step it is the final image x_0.
    """

    step: int
    num_steps: int
    t: int
    x_t: torch.Tensor
    x0_hat: torch.Tensor
    x_prev: torch.Tensor


class GaussianDiffusion:
    """The diffusion process of a schedule: q, the reverse step and L_simple."""

    def __init__(self, schedule: NoiseSchedule):
        self.schedule = schedule
        self.num_timesteps = schedule.num_timesteps

    # --- forward process -------------------------------------------------------------
    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps, the closed form of q(x_t | x_0)."""
        s = self.schedule
        return extract(s.sqrt_alphas_cumprod, t, x0.shape) * x0 + extract(
            s.sqrt_one_minus_alphas_cumprod, t, x0.shape
        ) * noise

    def q_step(self, x_prev: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """One forward step, a sample of q(x_t | x_{t-1}) = N(sqrt(alpha_t) x_{t-1}, beta_t I)."""
        s = self.schedule
        return extract(s.sqrt_alphas, t, x_prev.shape) * x_prev + extract(s.betas, t, x_prev.shape).sqrt() * noise

    def q_posterior_mean_variance(
        self, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Mean mu~, variance beta~_t and clipped log variance of q(x_{t-1} | x_t, x_0)."""
        s = self.schedule
        mean = extract(s.posterior_mean_coef1, t, x_t.shape) * x0 + extract(s.posterior_mean_coef2, t, x_t.shape) * x_t
        return mean, extract(s.posterior_variance, t, x_t.shape), extract(s.posterior_log_variance_clipped, t, x_t.shape)

    # --- the model's view --------------------------------------------------------------
    def predict_x0_from_eps(self, x_t: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """x0_hat = (x_t - sqrt(1 - alpha_bar_t) eps) / sqrt(alpha_bar_t)."""
        s = self.schedule
        return extract(s.sqrt_recip_alphas_cumprod, t, x_t.shape) * x_t - extract(
            s.sqrt_recipm1_alphas_cumprod, t, x_t.shape
        ) * eps

    def predict_eps_from_x0(self, x_t: torch.Tensor, t: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
        """The eps that maps x0 to x_t at t (the inverse of ``predict_x0_from_eps``)."""
        s = self.schedule
        return (extract(s.sqrt_recip_alphas_cumprod, t, x_t.shape) * x_t - x0) / extract(
            s.sqrt_recipm1_alphas_cumprod, t, x_t.shape
        )

    def p_mean_from_eps(self, x_t: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """mu_theta = (x_t - beta_t / sqrt(1 - alpha_bar_t) eps_hat) / sqrt(alpha_t), the paper's eq. 11."""
        s = self.schedule
        return (x_t - extract(s.eps_coef, t, x_t.shape) * eps) / extract(s.sqrt_alphas, t, x_t.shape)

    def model_variance(self, t: torch.Tensor, shape: torch.Size, variance: str) -> torch.Tensor:
        """sigma_t^2: beta_t ("fixed_large") or beta~_t ("fixed_small")."""
        if variance not in VARIANCES:
            raise SettingError(f"Unknown variance '{variance}'; choose one of {', '.join(VARIANCES)}.")
        s = self.schedule
        if variance == "fixed_small":
            return extract(s.posterior_variance, t, shape)
        # The official code uses beta~_2 at t = 1 for the large variance's log; the
        # variance itself is never used at t = 1 because no noise is added there.
        return extract(s.betas, t, shape)

    def p_mean_variance(
        self, model: EpsModel, x_t: torch.Tensor, t: torch.Tensor, variance: str = "fixed_large", clip: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Mean and variance of p_theta(x_{t-1} | x_t), and x0_hat.

        With ``clip`` the mean is the posterior mean of the clipped x0_hat, as in the
        official code; without it, it is the paper's eq. 11 directly.
        """
        eps = model(x_t, t).float()
        x0_hat = self.predict_x0_from_eps(x_t, t, eps)
        if clip:
            x0_hat = x0_hat.clamp(-1.0, 1.0)
            mean, _, _ = self.q_posterior_mean_variance(x0_hat, x_t, t)
        else:
            mean = self.p_mean_from_eps(x_t, t, eps)
        return mean, self.model_variance(t, x_t.shape, variance), x0_hat

    # --- training ----------------------------------------------------------------------
    def training_loss(
        self, model: EpsModel, x0: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """L_simple = E ||eps - eps_theta(x_t, t)||^2 with t uniform over 1..T (mean over pixels)."""
        t = torch.randint(0, self.num_timesteps, (x0.shape[0],), device=x0.device, generator=generator)
        noise = torch.randn(x0.shape, device=x0.device, dtype=x0.dtype, generator=generator)
        x_t = self.q_sample(x0, t, noise)
        eps_hat = model(x_t, t)
        return torch.nn.functional.mse_loss(eps_hat.float(), noise.float())

    # --- sampling ----------------------------------------------------------------------
    def ddpm_sample_progressive(
        self,
        model: EpsModel,
        shape: tuple[int, ...],
        generator: torch.Generator | None = None,
        variance: str = "fixed_large",
        clip: bool = True,
        x_start: torch.Tensor | None = None,
        start_t: int | None = None,
        device: torch.device | str = "cpu",
    ) -> Iterator[SampleStep]:
        """The paper's Algorithm 2, one ``SampleStep`` per timestep from ``start_t`` down to 0.

        Starts from pure noise x_T, or from ``x_start`` at index ``start_t`` ("denoise from t").
        No noise is added at the last step. Settings are checked here, before the first step.
        """
        if variance not in VARIANCES:
            raise SettingError(f"Unknown variance '{variance}'; choose one of {', '.join(VARIANCES)}.")
        start_t = self._check_start(start_t)
        return self._ddpm_steps(model, shape, generator, variance, clip, x_start, start_t, device)

    @torch.inference_mode()  # as a decorator it is on only while the generator runs, off at each yield
    def _ddpm_steps(self, model, shape, generator, variance, clip, x_start, start_t, device) -> Iterator[SampleStep]:
        x = self._initial_noise(shape, generator, device) if x_start is None else x_start.to(device).float()
        num_steps = start_t + 1
        for step, index in enumerate(range(start_t, -1, -1)):
            t = torch.full((x.shape[0],), index, device=x.device, dtype=torch.long)
            mean, var, x0_hat = self.p_mean_variance(model, x, t, variance, clip)
            if index > 0:
                noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
                x_prev = mean + var.sqrt() * noise
            else:
                x_prev = mean
            yield SampleStep(step, num_steps, index, x, x0_hat, x_prev)
            x = x_prev

    def ddim_sample_progressive(
        self,
        model: EpsModel,
        shape: tuple[int, ...],
        num_steps: int = 50,
        eta: float = 0.0,
        generator: torch.Generator | None = None,
        clip: bool = True,
        x_start: torch.Tensor | None = None,
        start_t: int | None = None,
        device: torch.device | str = "cpu",
    ) -> Iterator[SampleStep]:
        """DDIM (Song et al. 2021) over ``num_steps`` evenly spaced timesteps, with stochasticity ``eta``.

        With eta = 1 and every timestep it is ancestral sampling with sigma_t^2 = beta~_t and
        draws its noise in the same order. Settings are checked here, before the first step.
        """
        start_t = self._check_start(start_t)
        if not 1 <= num_steps <= start_t + 1:
            raise SettingError(f"DDIM needs between 1 and {start_t + 1} steps, not {num_steps}.")
        if not 0.0 <= eta <= 1.0:
            raise SettingError(f"DDIM's eta must lie in [0, 1], not {eta}.")
        return self._ddim_steps(model, shape, num_steps, eta, generator, clip, x_start, start_t, device)

    @torch.inference_mode()
    def _ddim_steps(self, model, shape, num_steps, eta, generator, clip, x_start, start_t, device) -> Iterator[SampleStep]:
        timesteps = self.ddim_timesteps(num_steps, start_t)
        # Python floats from the float64 arrays: no device-to-host read per step.
        alphas_cumprod = self.schedule.float64["alphas_cumprod"]
        x = self._initial_noise(shape, generator, device) if x_start is None else x_start.to(device).float()
        for step, index in enumerate(timesteps):
            prev_index = timesteps[step + 1] if step + 1 < len(timesteps) else -1
            t = torch.full((x.shape[0],), index, device=x.device, dtype=torch.long)
            eps = model(x, t).float()
            x0_hat = self.predict_x0_from_eps(x, t, eps)
            if clip:
                x0_hat = x0_hat.clamp(-1.0, 1.0)
                eps = self.predict_eps_from_x0(x, t, x0_hat)
            alpha_bar = float(alphas_cumprod[index])
            alpha_bar_prev = float(alphas_cumprod[prev_index]) if prev_index >= 0 else 1.0
            sigma = eta * ((1 - alpha_bar_prev) / (1 - alpha_bar) * (1 - alpha_bar / alpha_bar_prev)) ** 0.5
            x_prev = alpha_bar_prev**0.5 * x0_hat + max(1 - alpha_bar_prev - sigma**2, 0.0) ** 0.5 * eps
            if prev_index >= 0 and sigma > 0:
                noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
                x_prev = x_prev + sigma * noise
            yield SampleStep(step, len(timesteps), index, x, x0_hat, x_prev)
            x = x_prev

    def _check_start(self, start_t: int | None) -> int:
        start_t = self.num_timesteps - 1 if start_t is None else int(start_t)
        if not 0 <= start_t < self.num_timesteps:
            raise SettingError(f"The starting timestep index must lie in 0..{self.num_timesteps - 1}, not {start_t}.")
        return start_t

    def ddim_timesteps(self, num_steps: int, start_t: int | None = None) -> list[int]:
        """Evenly spaced indices from ``start_t`` (default T-1) down to 0, ``num_steps`` of them."""
        start_t = self.num_timesteps - 1 if start_t is None else start_t
        if num_steps == 1:
            return [start_t]
        spaced = torch.linspace(start_t, 0, num_steps, dtype=torch.float64).round().long().tolist()
        return list(dict.fromkeys(spaced))  # drop repeats, keep order

    def sample_progressive(self, model: EpsModel, shape: tuple[int, ...], sampler: str = "ddpm", **options) -> Iterator[SampleStep]:
        """Dispatch to the DDPM or DDIM sampler by name; options go to that sampler."""
        if sampler == "ddpm":
            options.pop("num_steps", None)
            options.pop("eta", None)
            return self.ddpm_sample_progressive(model, shape, **options)
        if sampler == "ddim":
            options.pop("variance", None)
            return self.ddim_sample_progressive(model, shape, **options)
        raise SettingError(f"Unknown sampler '{sampler}'; choose one of {', '.join(SAMPLERS)}.")

    def sample(self, model: EpsModel, shape: tuple[int, ...], sampler: str = "ddpm", **options) -> torch.Tensor:
        """Run a sampler to the end and return only the final images x_0, in [-1, 1]."""
        final = None
        for step in self.sample_progressive(model, shape, sampler, **options):
            final = step.x_prev
        return final.clamp(-1.0, 1.0)

    @staticmethod
    def _initial_noise(shape, generator, device) -> torch.Tensor:
        return torch.randn(shape, generator=generator, device=device)
