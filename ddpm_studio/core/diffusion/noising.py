"""The forward process applied to one picture, for scrubbing t: x_t from the closed form with one fixed noise draw.

Timesteps here are the paper's t in 0..T, where t = 0 is the picture itself. Because the
noise eps is drawn once (from a seed), x_t changes smoothly as t moves, and any x_t costs
one multiply-add: x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ddpm_studio.core.data.folders import to_model_range
from ddpm_studio.core.diffusion.process import GaussianDiffusion
from ddpm_studio.core.diffusion.schedule import NoiseSchedule
from ddpm_studio.core.sampling.imaging import to_hwc


@dataclass(frozen=True)
class ScheduleCurves:
    """alpha_bar_t over t = 0..T (alpha_bar_0 = 1) and log SNR over t = 1..T (infinite at t = 0), for plots."""

    timesteps: np.ndarray
    alpha_bar: np.ndarray
    snr_timesteps: np.ndarray
    log_snr: np.ndarray

    @classmethod
    def of(cls, schedule: NoiseSchedule) -> ScheduleCurves:
        timesteps = np.arange(schedule.num_timesteps + 1)
        alpha_bar = np.append(1.0, schedule.float64["alphas_cumprod"])
        return cls(timesteps, alpha_bar, timesteps[1:], schedule.float64["log_snr"].copy())


def model_range_to_uint8(image: np.ndarray) -> np.ndarray:
    """``data.from_model_range`` for a numpy image: clamp to [-1, 1], scale, round half to even; NaN is grey."""
    scaled = (np.clip(np.nan_to_num(image, nan=0.0), -1.0, 1.0) + np.float32(1)) * np.float32(127.5)
    return np.rint(scaled).astype(np.uint8)


class ForwardProcessView:
    """One image (uint8, (C, H, W)) under a schedule's forward process, with noise fixed by ``seed``."""

    def __init__(self, image: np.ndarray | torch.Tensor, schedule: NoiseSchedule, seed: int = 0):
        if isinstance(image, np.ndarray) and not image.flags.writeable:
            image = image.copy()  # a decoded grey picture is read-only, and torch warns about sharing it
        image = torch.as_tensor(np.asarray(image))
        if image.dtype != torch.uint8 or image.ndim != 3:
            raise TypeError(f"expected one uint8 image (C, H, W), got {image.dtype} {tuple(image.shape)}")
        self.schedule = schedule
        self.diffusion = GaussianDiffusion(schedule)
        self.num_timesteps = schedule.num_timesteps
        self.seed = seed
        self.x0 = to_model_range(image).unsqueeze(0)  # (1, C, H, W) in [-1, 1]
        generator = torch.Generator().manual_seed(seed)
        self.noise = torch.randn(self.x0.shape, generator=generator)

        curves = ScheduleCurves.of(schedule)
        self.timesteps, self.alpha_bar = curves.timesteps, curves.alpha_bar
        self.snr_timesteps, self.log_snr = curves.snr_timesteps, curves.log_snr
        # The pictures come from the same closed form in numpy, in (H, W, C) order: a slider asks for one at
        # every move, from the window's thread, where torch's thread pool competes with a training run's
        # (30 ms a call on a busy 2-core machine, against a tenth of a millisecond here).
        self._x0_hwc = to_hwc(self.x0[0].numpy()).astype(np.float32, copy=False)
        self._noise_hwc = to_hwc(self.noise[0].numpy()).astype(np.float32, copy=False)
        self._sqrt_alpha_bar = np.append(np.float32(1), schedule.sqrt_alphas_cumprod.numpy())
        self._sqrt_one_minus_alpha_bar = np.append(np.float32(0), schedule.sqrt_one_minus_alphas_cumprod.numpy())

    def _check(self, t: int) -> int:
        t = int(t)
        if not 0 <= t <= self.num_timesteps:
            raise ValueError(f"t must lie in 0..{self.num_timesteps}, not {t}.")
        return t

    def x_t_tensor(self, t: int) -> torch.Tensor:
        """x_t at the paper's timestep ``t`` in model range, a batch of one (1, C, H, W); t = 0 is x_0."""
        t = self._check(t)
        if t == 0:
            return self.x0.clone()
        index = torch.tensor([t - 1])  # array index of the paper's t (see schedule.py)
        return self.diffusion.q_sample(self.x0, index, self.noise)

    def x_t(self, t: int) -> np.ndarray:
        """x_t as a picture: uint8 (H, W, C), or (H, W) for one channel; the pixels of ``x_t_tensor(t)``."""
        t = self._check(t)
        if t == 0:
            x_t = self._x0_hwc
        else:
            x_t = self._sqrt_alpha_bar[t] * self._x0_hwc + self._sqrt_one_minus_alpha_bar[t] * self._noise_hwc
        return model_range_to_uint8(x_t)

    def signal_fraction(self, t: int) -> float:
        """sqrt(alpha_bar_t): how much of x_0 is left in x_t."""
        return float(np.sqrt(self.alpha_bar[self._check(t)]))
