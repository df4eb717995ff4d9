"""Rate against distortion along the reverse chain (Ho et al. 2020, section 4.3, Fig. 5, Table 4).

A receiver of the progressive code (Algorithms 3 and 4) has x_T, ..., x_t after the sender spent
L_T + sum_{s>t} L_{s-1} nats: the *expected* rate, since minimal random coding is not practical.
Its best guess of the image is then x0_hat(x_t); the distortion is its RMSE against x_0 on the
[0, 255] scale. Both come from the likelihood pass (``likelihood.py``): the rate from its very terms,
the distortion from the same model calls, so no number is computed twice.

Index convention: arrays are indexed i = 0..T-1 for paper t = i + 1; "reverse steps" n = T - t + 1
is how many reverse steps the receiver has taken (Table 4's "reverse process time"). With K sampled
timesteps per image the per-t means exist only at the drawn t; the missing ones are interpolated
linearly in t before the sums, and ``measured`` says which t were drawn.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass

import numpy as np
from PIL import Image

from ddpm_studio.core.data.folders import ScanResult
from ddpm_studio.core.errors import UserError

RATE_DISTORTION_METRIC = "rate_distortion"
TABLE_ROWS = 10  # Table 4: 1000, 900, ..., 100 reverse steps at T = 1000
NULL_LABEL_NOTE = ("this class-conditional model is evaluated unconditionally, with the null label "
                   "(the bound of p(x), not of p(x | class))")


@dataclass
class RateDistortion:
    """The curve at every t, paper t = index + 1. ``rate_bpd[i]`` = L_T + sum of the terms at indices > i."""

    rate_bpd: np.ndarray
    distortion_rmse: np.ndarray
    distortion_se: np.ndarray
    measured: np.ndarray  # bool: the term and x0_hat at this t were computed, not interpolated
    num_images: int

    @property
    def num_timesteps(self) -> int:
        return len(self.rate_bpd)

    @property
    def reverse_steps(self) -> np.ndarray:
        """n = T - t + 1 for t = 1..T: T reverse steps reach t = 1."""
        return np.arange(self.num_timesteps, 0, -1)

    def at_reverse_steps(self, steps: int) -> tuple[float, float, float]:
        """(rate bits/dim, distortion RMSE, its standard error) after ``steps`` reverse steps."""
        index = self.num_timesteps - steps
        return float(self.rate_bpd[index]), float(self.distortion_rmse[index]), float(self.distortion_se[index])

    def table(self) -> list[dict]:
        """Table 4's rows: 1000, 900, ..., 100 reverse steps, scaled to this T."""
        return [
            {"reverse_steps": steps, "t": self.num_timesteps - steps + 1,
             "rate_bpd": round(rate, 6), "distortion_rmse": round(rmse, 4), "distortion_se": round(se, 4)}
            for steps in table_steps(self.num_timesteps)
            for rate, rmse, se in [self.at_reverse_steps(steps)]
        ]

    def record(self, data: str, timesteps: int | None, model_step: int, null_label: bool) -> dict:
        """The entry for ``model_store.append_evaluation``; ``value`` is the rate after every step."""
        rate, rmse, _ = self.at_reverse_steps(self.num_timesteps)
        return {
            "metric": RATE_DISTORTION_METRIC, "value": round(rate, 6), "distortion_rmse": round(rmse, 4),
            "n": self.num_images, "data": data,
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "timesteps": "all" if timesteps is None else timesteps, "table": self.table(),
            "null_label": null_label, "model_step": model_step,
        }


GRAY_MODES = {"1", "L", "LA", "I", "F", "I;16"}


def check_held_out_images(scan: ScanResult, image_shape: tuple[int, int, int]) -> None:
    """Refuse held-out images of another resolution or channel count: resized or converted images would
    measure the resampling, not the model."""
    channels, height, width = image_shape
    for file, (source_width, source_height) in zip(scan.files, scan.source_sizes):
        if (source_width, source_height) != (width, height):
            raise UserError(f"{file.name} is {source_width}x{source_height} but this model works at {width}x{height}; "
                            f"give held-out images of the model's resolution.")
        with Image.open(file) as image:
            source_channels = 1 if image.mode in GRAY_MODES else 3
        if source_channels != channels:
            raise UserError(f"{file.name} has {source_channels} colour channel{'s' * (source_channels > 1)} but this "
                            f"model has {channels}; give held-out images like its training images.")


def table_steps(num_timesteps: int) -> list[int]:
    """Reverse steps T, 0.9 T, ..., 0.1 T (1000, 900, ..., 100 at T = 1000), distinct and at least 1."""
    steps = [max(1, round(num_timesteps * k / TABLE_ROWS)) for k in range(TABLE_ROWS, 0, -1)]
    return list(dict.fromkeys(steps))


def fill_missing(values: np.ndarray) -> np.ndarray:
    """NaN entries (timesteps not drawn yet) linearly interpolated in t; constant beyond the ends."""
    known = np.isfinite(values)
    if known.all() or not known.any():
        return values.copy()
    t = np.arange(len(values))
    return np.interp(t, t[known], values[known])


def rate_distortion_curve(
    per_timestep_bpd: np.ndarray, prior_bpd: float, per_timestep_rmse: np.ndarray, per_timestep_rmse_se: np.ndarray,
    num_images: int,
) -> RateDistortion:
    """The curve from the likelihood pass's per-t mean terms (bits/dim), L_T and per-t x0_hat RMSE."""
    # Index 0 is L_0, the decoder's term, which no rate includes; interpolating across it would lend its
    # bits to the undrawn t between 1 and the first drawn t > 1. So only the L_(t-1), t >= 2, are filled.
    terms = np.concatenate([per_timestep_bpd[:1], fill_missing(per_timestep_bpd[1:])])
    # rate at index i: L_T + terms[i + 1:].sum(), accumulated from t = T down
    after = np.concatenate([np.cumsum(terms[::-1])[::-1][1:], [0.0]])
    return RateDistortion(prior_bpd + after, fill_missing(per_timestep_rmse), fill_missing(per_timestep_rmse_se),
                          np.isfinite(per_timestep_bpd), num_images)


def rate_distortion_of(event) -> RateDistortion | None:
    """The curve of a ``LikelihoodProgress`` (partial: the images so far) or ``LikelihoodResult``; None
    before any image is done, as L_T comes with the first batch."""
    prior = event.prior_bpd
    if prior != prior or not np.isfinite(event.per_timestep_bpd).any():
        return None
    images = getattr(event, "num_images", None) or getattr(event, "images_done", 0)
    return rate_distortion_curve(event.per_timestep_bpd, prior, event.per_timestep_rmse, event.per_timestep_rmse_se,
                                 images)


def format_table(curve: RateDistortion) -> list[str]:
    """Table 4 as lines of text."""
    lines = [f"{'Reverse steps':>13}  {'t':>5}  {'Rate (bits/dim)':>15}  {'Distortion (RMSE, 0-255)':>24}"]
    for row in curve.table():
        lines.append(f"{row['reverse_steps']:>13}  {row['t']:>5}  {row['rate_bpd']:>15.4f}  "
                     f"{row['distortion_rmse']:>16.3f} ± {row['distortion_se']:.3f}")
    return lines
