"""The forward process, the training loss with the bound's term it needs, and the reverse process (the samplers).

Names follow Ho et al. (2020). Timestep tensors ``t`` hold array indices 0..T-1 for the
paper's t = 1..T (see ``schedule.py``). The model predicts eps; a model that learned its
variance (Nichol and Dhariwal 2021, "learned range") also outputs v, C more channels, and
its sigma_t^2 interpolates between beta_t and beta~_t in the log domain.

A diffusion can be respaced onto a sub-sequence of its timesteps (``respaced``): the
process over those steps alone, with beta'_i = 1 - alpha_bar_{t_i} / alpha_bar_{t_(i-1)}.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch

from ddpm_studio.core.diffusion.losses import bits_per_dim, discretized_gaussian_log_likelihood, normal_kl
from ddpm_studio.core.diffusion.schedule import NoiseSchedule
from ddpm_studio.core.errors import SettingError, check_choice

VARIANCES = ("fixed_large", "fixed_small", "learned")
FIXED_VARIANCES = ("fixed_large", "fixed_small")
SAMPLERS = ("ddpm", "ddim", "dpm-solver++")
# The weight of L_vlb in L_hybrid = L_simple + lambda * L_vlb (Nichol and Dhariwal 2021, section 3.1).
HYBRID_VLB_WEIGHT = 0.001

# The model takes (x_t, t) and returns eps_hat with the shape of x_t, or [eps_hat, v] with 2C channels.
EpsModel = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def split_model_output(output: torch.Tensor, channels: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """eps_hat and v of a model's output; v is None for a model with a fixed variance (C channels)."""
    if output.shape[1] == channels:
        return output, None
    if output.shape[1] == 2 * channels:
        eps, v = output.split(channels, dim=1)
        return eps, v
    raise ValueError(f"The model outputs {output.shape[1]} channels for {channels}-channel images; expected "
                     f"{channels} (eps) or {2 * channels} (eps and a learned variance).")


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
    """The diffusion process of a schedule: q, the reverse step, L_simple and L_hybrid.

    ``timestep_map`` is set on a respaced diffusion: its index i is the original process's
    index ``timestep_map[i]``, which is what the model is conditioned on and what sampling reports.
    """

    def __init__(self, schedule: NoiseSchedule, timestep_map: list[int] | None = None):
        self.schedule = schedule
        self.num_timesteps = schedule.num_timesteps
        self.timestep_map = None if timestep_map is None else torch.tensor(timestep_map, dtype=torch.long)

    def model_output(self, model: EpsModel, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The model at (x_t, t), with t translated to the original process's index when respaced; float32
        (float64 stays float64, for checks against a reference in full precision)."""
        if self.timestep_map is not None:
            t = self.timestep_map.to(t.device)[t]
        output = model(x_t, t)
        return output if output.dtype == torch.float64 else output.float()

    def original_index(self, index: int) -> int:
        return index if self.timestep_map is None else int(self.timestep_map[index])

    def respaced(self, timesteps: list[int]) -> GaussianDiffusion:
        """The process on a sub-sequence of this one's indices (improved-diffusion's ``respace.py``).

        beta'_i = 1 - alpha_bar_{t_i} / alpha_bar_{t_(i-1)}, so that alpha_bar' on the kept steps
        equals alpha_bar there. A kept step whose predecessor is kept too keeps its own beta
        exactly (the ratio equals it only up to rounding): respacing onto every step is then the
        original process bit for bit.
        """
        kept = sorted(set(int(index) for index in timesteps))
        if not kept or kept[0] < 0 or kept[-1] >= self.num_timesteps:
            raise ValueError(f"Respaced timesteps must lie in 0..{self.num_timesteps - 1}.")
        betas = self.schedule.float64["betas"]
        alphas_cumprod = self.schedule.float64["alphas_cumprod"]
        new_betas, previous = [], -1
        for index in kept:
            if index == previous + 1:
                new_betas.append(betas[index])
            else:
                new_betas.append(1.0 - alphas_cumprod[index] / alphas_cumprod[previous])
            previous = index
        device = self.schedule.betas.device
        base = self.original_index
        return GaussianDiffusion(NoiseSchedule(np.array(new_betas)).to(device), [base(index) for index in kept])

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
        return (mean, extract(s.posterior_variance, t, x_t.shape),
                extract(s.posterior_log_variance_clipped, t, x_t.shape))

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
        """A fixed sigma_t^2: beta_t ("fixed_large") or beta~_t ("fixed_small")."""
        if variance not in FIXED_VARIANCES:
            raise SettingError(f"'{variance}' is not a fixed variance; choose one of {', '.join(FIXED_VARIANCES)} "
                             "(a learned variance comes from the model's output).")
        s = self.schedule
        if variance == "fixed_small":
            return extract(s.posterior_variance, t, shape)
        # The variance itself is never used at t = 1 because no noise is added there.
        return extract(s.betas, t, shape)

    def model_log_variance(
        self, t: torch.Tensor, shape: torch.Size, variance: str, v: torch.Tensor | None = None
    ) -> torch.Tensor:
        """log sigma_t^2 of a fixed variance, or the learned range's v' log beta_t + (1 - v') log beta~_t.

        At t = 1 beta~_1 = 0, so both the small variance and the range's lower end use beta~_2
        there, and the large variance too (the official code's choice, for a better decoder L_0).
        """
        s = self.schedule
        min_log = extract(s.posterior_log_variance_clipped, t, shape)
        if variance == "fixed_small":
            return min_log
        max_log = extract(s.log_betas, t, shape)
        if variance == "fixed_large":
            return torch.where(t.reshape(min_log.shape) == 0, min_log, max_log)
        check_choice("variance", variance, VARIANCES)
        if v is None:
            raise SettingError("This model did not learn its variance; choose fixed_large or fixed_small.")
        fraction = (v + 1) / 2  # v in [-1, 1] spans [beta~_t, beta_t]; the network is not forced into it
        return fraction * max_log + (1 - fraction) * min_log

    def p_mean_log_variance(
        self, output: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor, variance: str = "fixed_large", clip: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Mean and log variance of p_theta(x_{t-1} | x_t) from the model's output, and x0_hat.

        With ``clip`` the mean is the posterior mean of the clipped x0_hat, as in the
        official code; without it, it is the paper's eq. 11 directly.
        """
        eps, v = split_model_output(output, x_t.shape[1])
        x0_hat = self.predict_x0_from_eps(x_t, t, eps)
        if clip:
            x0_hat = x0_hat.clamp(-1.0, 1.0)
            mean, _, _ = self.q_posterior_mean_variance(x0_hat, x_t, t)
        else:
            mean = self.p_mean_from_eps(x_t, t, eps)
        return mean, self.model_log_variance(t, x_t.shape, variance, v), x0_hat

    def p_mean_variance(
        self, model: EpsModel, x_t: torch.Tensor, t: torch.Tensor, variance: str = "fixed_large", clip: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Mean and variance of p_theta(x_{t-1} | x_t), and x0_hat (see ``p_mean_log_variance``)."""
        mean, log_variance, x0_hat = self.p_mean_log_variance(self.model_output(model, x_t, t), x_t, t, variance, clip)
        if variance in FIXED_VARIANCES:  # the stored variance itself, not exp(log): sampling stays as it was
            return mean, self.model_variance(t, x_t.shape, variance), x0_hat
        return mean, log_variance.exp(), x0_hat

    # --- training ----------------------------------------------------------------------
    def draw_training_noise(
        self, x0: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The timestep indices t (uniform over 1..T) and the noise eps ~ N(0, I) of a training batch ``x0``."""
        t = torch.randint(0, self.num_timesteps, (x0.shape[0],), device=x0.device, generator=generator)
        noise = torch.randn(x0.shape, device=x0.device, dtype=x0.dtype, generator=generator)
        return t, noise

    def training_loss(
        self,
        model: EpsModel,
        x0: torch.Tensor,
        generator: torch.Generator | None = None,
        t: torch.Tensor | None = None,
        noise: torch.Tensor | None = None,
        classes: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """L_simple = E ||eps - eps_theta(x_t, t)||^2 with t uniform over 1..T (mean over pixels).

        For a model that outputs a learned variance it is L_hybrid = L_simple + lambda L_vlb,
        lambda = 0.001. L_vlb is estimated from the same t as T L_{t-1} in bits per dimension
        (improved-diffusion's scale), with the mean's gradient stopped so that L_vlb trains only
        the variance. ``t`` and ``noise`` are drawn here unless given (gradient accumulation draws
        them for the whole batch, then trains on it piece by piece).
        """
        if t is None or noise is None:
            t, noise = self.draw_training_noise(x0, generator)
        x_t = self.q_sample(x0, t, noise)
        output = model(x_t, t) if classes is None else model(x_t, t, classes)  # classes: the labels (B,)
        eps_hat, v = split_model_output(output.float(), x0.shape[1])
        loss_simple = torch.nn.functional.mse_loss(eps_hat, noise.float())
        if v is None:
            return loss_simple
        frozen = torch.cat([eps_hat.detach(), v], dim=1)
        terms = self.vb_term(frozen, x0.float(), x_t.float(), t, "learned", clip=False)
        return loss_simple + HYBRID_VLB_WEIGHT * self.num_timesteps * bits_per_dim(terms, x0[0].numel()).mean()

    def vb_term(
        self,
        output: torch.Tensor,
        x0: torch.Tensor,
        x_t: torch.Tensor,
        t: torch.Tensor,
        variance: str,
        clip: bool = False,
    ) -> torch.Tensor:
        """The variational bound's term at index t per image, in nats, from the model's ``output`` at (x_t, t).

        L_{t-1} = KL(q(x_{t-1} | x_t, x_0) || p_theta(x_{t-1} | x_t)) where t > 1 (index > 0), and the
        discretized decoder's L_0 = -log p_theta(x_0 | x_1) where t = 1 (index 0). ``variance`` names
        sigma_t^2: "fixed_large", "fixed_small" or "learned". The whole bound is ``variational_bound.py``'s.
        """
        true_mean, _, true_log_var = self.q_posterior_mean_variance(x0, x_t, t)
        mean, log_var, _ = self.p_mean_log_variance(output, x_t, t, variance, clip)
        log_var = log_var.expand_as(x0)
        kl = normal_kl(true_mean, true_log_var.expand_as(x0), mean, log_var).flatten(1).sum(1)
        decoder_nll = -discretized_gaussian_log_likelihood(x0, mean, 0.5 * log_var).flatten(1).sum(1)
        return torch.where(t == 0, decoder_nll, kl)

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
        num_steps: int | None = None,
    ) -> Iterator[SampleStep]:
        """The paper's Algorithm 2, one ``SampleStep`` per timestep from ``start_t`` down to 0.

        Starts from pure noise x_T, or from ``x_start`` at index ``start_t`` ("denoise from t").
        No noise is added at the last step. With ``num_steps`` it runs on the process respaced to
        that many evenly spaced timesteps (``respaced``); every step reproduces the default.
        Settings are checked here, before the first step.
        """
        check_choice("variance", variance, VARIANCES)
        start_t = self._check_start(start_t)
        if num_steps is None:
            return self._ddpm_steps(model, shape, generator, variance, clip, x_start, start_t, device)
        if not 1 <= num_steps <= start_t + 1:
            raise SettingError(f"DDPM needs between 1 and {start_t + 1} steps, not {num_steps}.")
        spaced = self.respaced(self.ddim_timesteps(num_steps, start_t))
        return spaced._ddpm_steps(model, shape, generator, variance, clip, x_start, spaced.num_timesteps - 1, device)

    @torch.inference_mode()  # as a decorator it is on only while the generator runs, off at each yield
    def _ddpm_steps(self, model, shape, generator, variance, clip, x_start, start_t, device) -> Iterator[SampleStep]:
        x = self._initial_noise(shape, generator, device) if x_start is None else x_start.to(device).float()
        num_steps = start_t + 1
        for step, index in enumerate(range(start_t, -1, -1)):
            t = torch.full((x.shape[0],), index, device=x.device, dtype=torch.long)
            output = self.model_output(model, x, t)
            mean, log_variance, x0_hat = self.p_mean_log_variance(output, x, t, variance, clip)
            if index > 0:
                noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
                if variance in FIXED_VARIANCES:  # sqrt of the stored variance, exactly as before learned ones
                    x_prev = mean + self.model_variance(t, x.shape, variance).sqrt() * noise
                else:
                    x_prev = mean + (0.5 * log_variance).exp() * noise
            else:
                x_prev = mean
            yield SampleStep(step, num_steps, self.original_index(index), x, x0_hat, x_prev)
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
    def _ddim_steps(
        self, model, shape, num_steps, eta, generator, clip, x_start, start_t, device
    ) -> Iterator[SampleStep]:
        timesteps = self.ddim_timesteps(num_steps, start_t)
        # Python floats from the float64 arrays: no device-to-host read per step.
        alphas_cumprod = self.schedule.float64["alphas_cumprod"]
        x = self._initial_noise(shape, generator, device) if x_start is None else x_start.to(device).float()
        for step, index in enumerate(timesteps):
            prev_index = timesteps[step + 1] if step + 1 < len(timesteps) else -1
            t = torch.full((x.shape[0],), index, device=x.device, dtype=torch.long)
            eps, _ = split_model_output(self.model_output(model, x, t), x.shape[1])  # DDIM ignores a learned variance
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

    @staticmethod
    def _initial_noise(shape, generator, device) -> torch.Tensor:
        return torch.randn(shape, generator=generator, device=device)
