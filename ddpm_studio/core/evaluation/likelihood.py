"""The negative log-likelihood bound of a model over held-out images, in bits/dim, as an iterator of events.

For each image the bound L_T + sum_{t>1} L_{t-1} + L_0 (``variational_bound.py``) is computed
with every timestep, or estimated without bias from K timesteps t > 1 drawn at random without
replacement (their sum scaled by (T - 1) / K) while L_0 and L_T are always exact. One x_t is
drawn per term. The reported standard error is that of the mean over images, so it covers
both the choice of images and, with K, the choice of timesteps.

The same model call at each (image, t) also gives x0_hat, whose RMSE against x_0 on the [0, 255] scale
is the distortion of the rate-distortion curve (``rate_distortion.py``): one pass yields both.
"""

from __future__ import annotations

import datetime
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ddpm_studio.core.data.folders import scan_images, to_model_range, usable_scan
from ddpm_studio.core.diffusion.losses import bits_per_dim
from ddpm_studio.core.diffusion.variational_bound import prior_kl, vb_term_and_x0_error
from ddpm_studio.core.errors import SettingError
from ddpm_studio.core.model.store import LoadedModel, load_model
from ddpm_studio.core.system.devices import choose_device

NLL_METRIC = "nll_bpd"
PIXEL_SCALE = 127.5  # model units [-1, 1] to the [0, 255] scale of the paper's distortion


@dataclass
class LikelihoodRequest:
    """How to evaluate. ``timesteps`` None: all T terms per image; K: K random t > 1 per image."""

    num_images: int | None = 64  # None: every image given
    timesteps: int | None = None
    batch_size: int = 32
    variance: str | None = None  # None: "learned" for a model that learned it, else "fixed_large"
    clip: bool = True  # x0_hat clipped to [-1, 1] in the reverse step's mean, as the official evaluation
    seed: int = 0
    device: str = "auto"

    def validate(self, num_timesteps: int) -> None:
        if self.num_images is not None and self.num_images < 1:
            raise SettingError(f"Evaluate at least 1 image, not {self.num_images}.")
        if self.batch_size < 1:
            raise SettingError(f"The batch size must be at least 1, not {self.batch_size}.")
        if self.timesteps is not None and not 1 <= self.timesteps <= max(num_timesteps - 1, 1):
            raise SettingError(f"Estimate from between 1 and {max(num_timesteps - 1, 1)} timesteps per image "
                             f"(this model has T = {num_timesteps}), not {self.timesteps}; or use all.")


@dataclass
class LikelihoodProgress:
    """After each batch of terms. ``per_timestep_bpd[i]`` is the mean term at paper t = i + 1 so far (NaN: none yet)."""

    done: int  # image-timesteps computed
    total: int
    images_done: int
    per_timestep_bpd: np.ndarray
    per_timestep_rmse: np.ndarray  # mean over images of the RMSE of x0_hat at t on [0, 255] (NaN: none yet)
    per_timestep_rmse_se: np.ndarray  # its standard error over images (NaN with fewer than 2)
    prior_bpd: float  # L_T of the images done so far (NaN: none yet)


@dataclass
class LikelihoodResult:
    """The bound in bits/dim: its mean over images, the standard error of that mean, and its split."""

    bits_per_dim: float
    standard_error: float
    decoder_bpd: float  # L_0
    kl_bpd: float  # sum over t > 1 of L_{t-1}
    prior_bpd: float  # L_T
    per_timestep_bpd: np.ndarray  # (T,): L_0 at index 0, L_{t-1} at index t - 1
    per_image_bpd: np.ndarray
    per_timestep_rmse: np.ndarray  # (T,): RMSE of x0_hat from x_t at index t - 1, [0, 255] scale, mean over images
    per_timestep_rmse_se: np.ndarray  # (T,): its standard error over images
    num_images: int
    timesteps: int | None
    variance: str
    clip: bool
    model_step: int

    def record(self, data: str) -> dict:
        """The entry for ``model_store.append_evaluation``."""
        return {
            "metric": NLL_METRIC,
            "value": round(self.bits_per_dim, 6),
            "n": self.num_images,
            "data": data,
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "standard_error": None if math.isnan(self.standard_error) else round(self.standard_error, 6),
            "L_0": round(self.decoder_bpd, 6),
            "sum_L_t-1": round(self.kl_bpd, 6),
            "L_T": round(self.prior_bpd, 6),
            "timesteps": "all" if self.timesteps is None else self.timesteps,
            "variance": self.variance,
            "clip": self.clip,
            "model_step": self.model_step,
        }


def default_variance(model: LoadedModel) -> str:
    return "learned" if model.info.unet.learned_variance else "fixed_large"


def choose_images(images: torch.Tensor, num_images: int | None, seed: int) -> torch.Tensor:
    """``num_images`` of ``images`` picked at random with ``seed`` (kept in their order), or all of them."""
    if num_images is None or num_images >= len(images):
        return images
    picked = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))[:num_images]
    return images[picked.sort().values]


def timestep_columns(batch: int, num_timesteps: int, sampled: int | None, generator: torch.Generator) -> torch.Tensor:
    """(batch, columns) indices of the terms to compute per image: index 0 (L_0) first, then t > 1."""
    if sampled is None or num_timesteps == 1:
        return torch.arange(num_timesteps).expand(batch, num_timesteps)
    drawn = torch.rand(batch, num_timesteps - 1, generator=generator).argsort(dim=1)[:, :sampled] + 1
    return torch.cat([torch.zeros(batch, 1, dtype=torch.long), drawn], dim=1)


def evaluate_likelihood(
    model: LoadedModel, images: torch.Tensor, request: LikelihoodRequest
) -> Iterator[LikelihoodProgress | LikelihoodResult]:
    """Yield ``LikelihoodProgress`` after each batch of terms and end with a ``LikelihoodResult``.

    ``images`` are uint8 (N, C, H, W) at the model's shape. Stop by closing the iterator.
    """
    diffusion = model.diffusion
    T = diffusion.num_timesteps
    request.validate(T)
    if images.dtype != torch.uint8 or tuple(images.shape[1:]) != model.image_shape:
        raise ValueError(f"Images must be uint8 of shape (N, {', '.join(map(str, model.image_shape))}) for this model.")
    images = choose_images(images, request.num_images, request.seed)
    if len(images) == 0:
        raise SettingError("There are no images to evaluate.")
    variance = request.variance or default_variance(model)
    if variance == "learned" and not model.info.unet.learned_variance:
        raise SettingError(f"{model.info.name} did not learn its variance; "
                           "evaluate it with fixed_large or fixed_small.")
    device = next(model.unet.parameters()).device
    dims = int(np.prod(model.image_shape))
    columns_per_image = T if request.timesteps is None or T == 1 else request.timesteps + 1
    kl_weight = 1.0 if columns_per_image == T else (T - 1) / request.timesteps
    total = len(images) * columns_per_image
    choice_generator = torch.Generator().manual_seed(request.seed)
    noise_generator = torch.Generator(device=device).manual_seed(request.seed + 1)

    term_sums = np.zeros(T)
    term_counts = np.zeros(T)
    rmse_sums = np.zeros(T)
    rmse_square_sums = np.zeros(T)
    decoder, kl, prior = [], [], []
    done = 0

    def per_timestep() -> np.ndarray:
        with np.errstate(invalid="ignore", divide="ignore"):
            return bits_per_dim(term_sums / term_counts, dims)

    def distortion() -> tuple[np.ndarray, np.ndarray]:
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = rmse_sums / term_counts
            variance = (rmse_square_sums - term_counts * mean**2) / (term_counts - 1)
            return mean, np.sqrt(np.maximum(variance, 0.0) / term_counts)

    def prior_so_far() -> float:
        return float(bits_per_dim(torch.cat(prior), dims).mean()) if prior else math.nan

    for start in range(0, len(images), request.batch_size):
        x0 = to_model_range(images[start:start + request.batch_size]).to(device)
        batch = x0.shape[0]
        columns = timestep_columns(batch, T, request.timesteps, choice_generator)
        batch_kl = torch.zeros(batch, dtype=torch.float64)
        batch_decoder = torch.zeros(batch, dtype=torch.float64)
        for column in columns.T:
            t = column.to(device)
            noise = torch.randn(x0.shape, generator=noise_generator, device=device)
            with torch.inference_mode():
                terms, squared_error = vb_term_and_x0_error(diffusion, model.unet, x0, t, noise, variance,
                                                            request.clip)
            terms = terms.double().cpu()
            rmse = PIXEL_SCALE * squared_error.double().cpu().sqrt().numpy()
            is_decoder = column == 0
            batch_decoder += torch.where(is_decoder, terms, 0.0)
            batch_kl += torch.where(is_decoder, 0.0, terms)
            np.add.at(term_sums, column.numpy(), terms.numpy())
            np.add.at(term_counts, column.numpy(), 1)
            np.add.at(rmse_sums, column.numpy(), rmse)
            np.add.at(rmse_square_sums, column.numpy(), rmse**2)
            done += batch
            yield LikelihoodProgress(done, total, start, per_timestep(), *distortion(), prior_so_far())
        with torch.inference_mode():
            prior.append(prior_kl(diffusion, x0).double().cpu())
        decoder.append(batch_decoder)
        kl.append(batch_kl * kl_weight)

    decoder_bpd = bits_per_dim(torch.cat(decoder), dims)
    kl_bpd = bits_per_dim(torch.cat(kl), dims)
    prior_bpd = bits_per_dim(torch.cat(prior), dims)
    per_image = (decoder_bpd + kl_bpd + prior_bpd).numpy()
    n = len(per_image)
    standard_error = float(per_image.std(ddof=1) / math.sqrt(n)) if n > 1 else math.nan
    yield LikelihoodResult(
        float(per_image.mean()), standard_error, float(decoder_bpd.mean()), float(kl_bpd.mean()),
        float(prior_bpd.mean()), per_timestep(), per_image, *distortion(), n, request.timesteps, variance, request.clip,
        model.info.step,
    )


def evaluate_likelihood_of_folder(
    model_path: Path | str, data_paths: list[Path], request: LikelihoodRequest, model: LoadedModel | None = None
) -> Iterator:
    """Load the model, scan the image folders at its resolution, then evaluate: yields ``ScanProgress``
    events, the ``ScanResult``, then the events of ``evaluate_likelihood``."""
    model = model or load_model(model_path, choose_device(request.device))
    request.validate(model.diffusion.num_timesteps)
    channels, size, _ = model.image_shape
    result = yield from usable_scan(scan_images(data_paths, size, channels))
    yield result
    yield from evaluate_likelihood(model, result.images, request)
