"""The noise schedule of a DDPM and every quantity derived from it.

Index convention, stated once for the whole project: arrays have length T and
array index ``i`` (0..T-1) holds the value for the paper's timestep ``t = i + 1``
(1..T). The model is conditioned on the index ``i``, as in the official code.
``alphas_cumprod_prev[0]`` is alpha_bar_0 = 1.

Everything is computed in float64 and stored as float32 tensors.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from ddpm_studio.core.errors import SettingError, check_choice

SCHEDULE_KINDS = ("linear", "cosine")


@dataclass(frozen=True)
class ScheduleConfig:
    """What defines a schedule; stored in a model folder's JSON."""

    kind: str = "linear"
    num_timesteps: int = 1000
    beta_start: float = 1e-4  # linear only; the value at T = 1000 (other T are rescaled by 1000 / T)
    beta_end: float = 0.02  # linear only; likewise
    cosine_s: float = 0.008  # cosine only
    max_beta: float = 0.999  # cosine only

    def validate(self) -> None:
        check_choice("schedule", self.kind, SCHEDULE_KINDS)
        if self.num_timesteps < 1:
            raise SettingError(f"The number of timesteps must be at least 1, not {self.num_timesteps}.")
        if self.kind == "linear" and not (0 < self.beta_start <= self.beta_end < 1):
            raise SettingError("Linear betas need 0 < beta_start <= beta_end < 1.")

    def betas(self) -> np.ndarray:
        """beta_1..beta_T in float64, the one place a config becomes betas; SettingError if they cannot be made."""
        self.validate()
        if self.kind == "linear":
            betas = linear_betas(self.num_timesteps, self.beta_start, self.beta_end)
        else:
            betas = cosine_betas(self.num_timesteps, self.cosine_s, self.max_beta)
        # A linear schedule is rescaled by 1000 / T, which can push its betas past 1 at a small T.
        if not ((betas > 0).all() and (betas < 1).all()):
            raise SettingError(f"This {self.kind} schedule's betas do not all lie in (0, 1) "
                               f"at T = {self.num_timesteps}.")
        return betas


def linear_betas(num_timesteps: int, beta_start: float = 1e-4, beta_end: float = 0.02) -> np.ndarray:
    """The paper's schedule, rescaled so that any T spans the same total noise as T = 1000."""
    scale = 1000.0 / num_timesteps
    return np.linspace(beta_start * scale, min(beta_end * scale, 0.999), num_timesteps, dtype=np.float64)


def cosine_betas(num_timesteps: int, s: float = 0.008, max_beta: float = 0.999) -> np.ndarray:
    """Nichol and Dhariwal (2021): alpha_bar(t) = cos^2(((t/T + s)/(1 + s)) * pi/2), betas capped."""
    steps = np.arange(num_timesteps + 1, dtype=np.float64) / num_timesteps
    alpha_bar = np.cos((steps + s) / (1 + s) * math.pi / 2) ** 2
    betas = 1.0 - alpha_bar[1:] / alpha_bar[:-1]
    return np.clip(betas, 0.0, max_beta)


def _tensor(values: np.ndarray) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32)


class NoiseSchedule:
    """Holds betas and every array derived from them (see the module docstring for indexing)."""

    def __init__(self, betas: np.ndarray, config: ScheduleConfig | None = None):
        betas = np.asarray(betas, dtype=np.float64)
        if betas.ndim != 1 or not ((betas > 0).all() and (betas < 1).all()):
            raise ValueError("Betas must be a 1-D array of values in (0, 1).")
        self.config = config or ScheduleConfig(num_timesteps=len(betas))
        self.num_timesteps = len(betas)

        alphas = 1.0 - betas
        alphas_cumprod = np.cumprod(alphas)
        alphas_cumprod_prev = np.append(1.0, alphas_cumprod[:-1])
        # beta~_t = (1 - alpha_bar_{t-1}) / (1 - alpha_bar_t) * beta_t; zero at t = 1.
        posterior_variance = betas * (1.0 - alphas_cumprod_prev) / (1.0 - alphas_cumprod)
        # log beta~_1 = log 0, so the official code substitutes beta~_2 there.
        posterior_log_variance_clipped = np.log(
            np.append(posterior_variance[1], posterior_variance[1:]) if len(betas) > 1 else betas
        )

        # mu~(x_t, x_0) = coef1 * x_0 + coef2 * x_t
        posterior_mean_coef1 = betas * np.sqrt(alphas_cumprod_prev) / (1.0 - alphas_cumprod)
        posterior_mean_coef2 = (1.0 - alphas_cumprod_prev) * np.sqrt(alphas) / (1.0 - alphas_cumprod)
        # mu_theta = (x_t - eps_coef * eps_hat) / sqrt(alpha_t), eps_coef = beta_t / sqrt(1 - alpha_bar_t)
        eps_coef = betas / np.sqrt(1.0 - alphas_cumprod)
        snr = alphas_cumprod / (1.0 - alphas_cumprod)
        # Full precision, for tests and plots.
        self.float64: dict[str, np.ndarray] = {
            "betas": betas,
            "alphas": alphas,
            "alphas_cumprod": alphas_cumprod,
            "alphas_cumprod_prev": alphas_cumprod_prev,
            "sqrt_alphas": np.sqrt(alphas),
            "sqrt_alphas_cumprod": np.sqrt(alphas_cumprod),
            "sqrt_one_minus_alphas_cumprod": np.sqrt(1.0 - alphas_cumprod),
            "log_one_minus_alphas_cumprod": np.log(1.0 - alphas_cumprod),
            "log_betas": np.log(betas),
            "sqrt_recip_alphas_cumprod": np.sqrt(1.0 / alphas_cumprod),
            "sqrt_recipm1_alphas_cumprod": np.sqrt(1.0 / alphas_cumprod - 1.0),
            "posterior_variance": posterior_variance,
            "posterior_log_variance_clipped": posterior_log_variance_clipped,
            "posterior_mean_coef1": posterior_mean_coef1,
            "posterior_mean_coef2": posterior_mean_coef2,
            "eps_coef": eps_coef,
            "snr": snr,
            "log_snr": np.log(snr),
        }
        # The float32 tensors the samplers and the loss index by the array index t - 1; ``to()`` moves them.
        arrays = self.float64
        self.betas = _tensor(arrays["betas"])
        self.alphas = _tensor(arrays["alphas"])
        self.alphas_cumprod = _tensor(arrays["alphas_cumprod"])
        self.alphas_cumprod_prev = _tensor(arrays["alphas_cumprod_prev"])
        self.sqrt_alphas = _tensor(arrays["sqrt_alphas"])
        self.sqrt_alphas_cumprod = _tensor(arrays["sqrt_alphas_cumprod"])
        self.sqrt_one_minus_alphas_cumprod = _tensor(arrays["sqrt_one_minus_alphas_cumprod"])
        self.log_one_minus_alphas_cumprod = _tensor(arrays["log_one_minus_alphas_cumprod"])
        self.log_betas = _tensor(arrays["log_betas"])
        self.sqrt_recip_alphas_cumprod = _tensor(arrays["sqrt_recip_alphas_cumprod"])
        self.sqrt_recipm1_alphas_cumprod = _tensor(arrays["sqrt_recipm1_alphas_cumprod"])
        self.posterior_variance = _tensor(arrays["posterior_variance"])
        self.posterior_log_variance_clipped = _tensor(arrays["posterior_log_variance_clipped"])
        self.posterior_mean_coef1 = _tensor(arrays["posterior_mean_coef1"])
        self.posterior_mean_coef2 = _tensor(arrays["posterior_mean_coef2"])
        self.eps_coef = _tensor(arrays["eps_coef"])
        self.snr = _tensor(arrays["snr"])
        self.log_snr = _tensor(arrays["log_snr"])

    @classmethod
    def from_config(cls, config: ScheduleConfig) -> NoiseSchedule:
        return cls(config.betas(), config)

    @classmethod
    def linear(cls, num_timesteps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> NoiseSchedule:
        return cls.from_config(ScheduleConfig("linear", num_timesteps, beta_start, beta_end))

    @classmethod
    def cosine(cls, num_timesteps: int = 1000, s: float = 0.008, max_beta: float = 0.999) -> NoiseSchedule:
        return cls.from_config(ScheduleConfig("cosine", num_timesteps, cosine_s=s, max_beta=max_beta))

    def to(self, device: torch.device | str) -> NoiseSchedule:
        """Move every tensor to ``device`` (in place) and return self."""
        for name in self.float64:  # the tensors have the same names
            setattr(self, name, getattr(self, name).to(device))
        return self
