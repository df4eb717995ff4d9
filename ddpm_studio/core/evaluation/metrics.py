"""Sample-quality metrics from image features: FID, KID (mean and spread over subsets) and Inception Score.

Features come from a registered feature extractor: a module that takes uint8 images
(N, 3, H, W) and returns (pool features (N, D), class logits (N, K)). The real one is
torch-fidelity's FID Inception (``inception.py``); a small stand-in with fixed random
weights runs the same path in the tests. The formulas follow torch-fidelity's conventions
(unbiased MMD² with the cubic kernel over 100 subsets of 1000, 10 splits for IS), so the
numbers are comparable with its own.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ddpm_studio.core.errors import SettingError
from ddpm_studio.core.evaluation.inception import create_inception

INCEPTION = "inception-v3-compat"
STANDIN = "standin-random-features"
KID_SUBSETS = 100
KID_SUBSET_SIZE = 1000
IS_SPLITS = 10
SHUFFLE_SEED = 2020  # torch-fidelity's default rng seed, for subsets and splits
METRICS = ("fid", "kid", "is")
METRIC_NAMES = {"fid": "FID", "kid": "KID", "is": "IS", "nll": "NLL"}
METRIC_EXPLANATIONS = {
    "fid": "Fréchet Inception Distance: lower is better; compares the mean and covariance of your samples' "
           "Inception features with your dataset's. Needs thousands of samples (2,048 or more) to mean much.",
    "kid": "Kernel Inception Distance: lower is better, 0 is a perfect match; compares your samples' Inception "
           "features with your dataset's without bias at small N, so it suits a thousand samples (± is its spread).",
    "is": "Inception Score: higher is better; how confidently and how variously ImageNet's classifier labels your "
          "samples (says nothing about your dataset; meaningful for natural photographs only).",
}


# --- the formulas -------------------------------------------------------------------------------


@dataclass
class FeatureStatistics:
    """Mean and covariance of a set of features (float64), and how many there were."""

    mu: np.ndarray
    sigma: np.ndarray
    count: int

    @classmethod
    def from_features(cls, features: torch.Tensor | np.ndarray) -> FeatureStatistics:
        features = np.asarray(features.numpy() if isinstance(features, torch.Tensor) else features, dtype=np.float64)
        if features.ndim != 2 or len(features) < 2:
            raise ValueError(f"Feature statistics need at least 2 feature vectors, not {len(features)}.")
        return cls(features.mean(axis=0), np.cov(features, rowvar=False), len(features))


def frechet_distance(a: FeatureStatistics, b: FeatureStatistics) -> float:
    """||mu_a - mu_b||² + tr(S_a + S_b - 2 (S_a S_b)^½): the FID when the features are Inception's.

    tr (S_a S_b)^½ is the sum of the square roots of the eigenvalues of S_a S_b, which are real
    and non-negative in exact arithmetic (S_a S_b is similar to S_a^½ S_b S_a^½). This stays
    finite for singular covariances (fewer samples than dimensions), where a matrix square
    root would need an offset; rounding's tiny negative eigenvalues contribute nothing.
    """
    diff = a.mu - b.mu
    eigenvalues = np.linalg.eigvals(a.sigma @ b.sigma)
    trace_sqrt = np.sqrt(eigenvalues.astype(np.complex128)).real.sum()
    distance = float(diff @ diff + np.trace(a.sigma) + np.trace(b.sigma) - 2.0 * trace_sqrt)
    return max(distance, 0.0)  # a squared distance; rounding can take an exact 0 a hair below


def polynomial_kernel(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """KID's cubic kernel k(x, y) = (x·y / d + 1)³."""
    return (x @ y.T / x.shape[1] + 1.0) ** 3


def mmd2_unbiased(x: torch.Tensor, y: torch.Tensor) -> float:
    """Unbiased MMD² between two equal-sized sets under the cubic kernel (KID's estimator).

    The within-set terms leave out k(x_i, x_i); the cross term keeps every pair.
    Kernels are computed in the features' precision and summed in float64.
    """
    m = x.shape[0]
    k_xx = polynomial_kernel(x, x).double()
    k_yy = polynomial_kernel(y, y).double()
    k_xy = polynomial_kernel(x, y).double()
    within = (k_xx.sum() - k_xx.diagonal().sum() + k_yy.sum() - k_yy.diagonal().sum()) / (m * (m - 1))
    return float(within - 2.0 * k_xy.sum() / (m * m))


@dataclass
class KernelDistance:
    mean: float
    std: float
    subsets: int
    subset_size: int


def kernel_inception_distance(
    real: torch.Tensor, fake: torch.Tensor, subsets: int = KID_SUBSETS, subset_size: int = KID_SUBSET_SIZE,
    seed: int = SHUFFLE_SEED,
) -> KernelDistance:
    """KID: unbiased MMD² averaged over ``subsets`` random subsets of each set (its spread is the std).

    The subset size shrinks to the smaller set when that has fewer than ``subset_size``.
    """
    size = min(subset_size, len(real), len(fake))
    if size < 2:
        raise ValueError("KID needs at least 2 images on each side.")
    rng = np.random.RandomState(seed)
    values = np.empty(subsets)
    for index in range(subsets):
        x = real[torch.from_numpy(rng.choice(len(real), size, replace=False))]
        y = fake[torch.from_numpy(rng.choice(len(fake), size, replace=False))]
        values[index] = mmd2_unbiased(x, y)
    return KernelDistance(float(values.mean()), float(values.std()), subsets, size)


def inception_score(
    logits: torch.Tensor, splits: int = IS_SPLITS, seed: int | None = SHUFFLE_SEED
) -> tuple[float, float]:
    """IS = exp(E_x KL(p(y|x) || p(y))), per split of the (shuffled) samples; returns the mean and std over splits."""
    logits = logits.double()
    if seed is not None:
        logits = logits[torch.from_numpy(np.random.RandomState(seed).permutation(len(logits)))]
    splits = max(1, min(splits, len(logits)))
    log_p = logits.log_softmax(dim=1)
    scores = []
    for index in range(splits):
        chunk = log_p[index * len(log_p) // splits: (index + 1) * len(log_p) // splits]
        log_marginal = chunk.exp().mean(dim=0).log()
        kl = (chunk.exp() * (chunk - log_marginal)).sum(dim=1).mean()
        scores.append(float(kl.exp()))
    return float(np.mean(scores)), float(np.std(scores))


# --- feature extractors -------------------------------------------------------------------------


ExtractorFactory = Callable[[torch.device, "Path | None"], torch.nn.Module]
FEATURE_EXTRACTORS: dict[str, ExtractorFactory] = {}


def register_feature_extractor(name: str, factory: ExtractorFactory) -> None:
    """Make ``factory(device, weights_path)`` available under ``name``; it returns a module mapping
    uint8 (N, 3, H, W) to (pool features (N, D), logits (N, K))."""
    FEATURE_EXTRACTORS[name] = factory


def create_feature_extractor(name: str, device: torch.device, weights: Path | None = None) -> torch.nn.Module:
    if name not in FEATURE_EXTRACTORS:
        raise SettingError(f"Unknown feature extractor '{name}'; choose one of {', '.join(FEATURE_EXTRACTORS)}.")
    return FEATURE_EXTRACTORS[name](device, weights).eval().requires_grad_(False)


def _inception(device: torch.device, weights: Path | None) -> torch.nn.Module:
    return create_inception(device, weights)


class RandomFeatures(torch.nn.Module):
    """A stand-in for Inception in tests: fixed random projections of 4x4-pooled pixels.

    Identical image sets give identical features and noise gives very different ones, so the
    whole pipeline can be checked in seconds without the Inception weights.
    """

    def __init__(self, pool_dim: int = 32, classes: int = 10):
        super().__init__()
        generator = torch.Generator().manual_seed(0)
        self.register_buffer("projection", torch.randn(3 * 16, pool_dim, generator=generator) / 48 ** 0.5)
        self.register_buffer("classifier", torch.randn(pool_dim, classes, generator=generator))

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pixels = torch.nn.functional.adaptive_avg_pool2d(images.float() / 127.5 - 1.0, 4).flatten(1)
        pool = torch.tanh(pixels @ self.projection)
        return pool, pool @ self.classifier


register_feature_extractor(INCEPTION, _inception)
register_feature_extractor(STANDIN, lambda device, weights: RandomFeatures().to(device))


def extract_features(
    extractor: torch.nn.Module, batches: Iterable[torch.Tensor], device: torch.device
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Run uint8 batches (N, C, H, W; one channel is repeated to three) through ``extractor``;
    yields (pool, logits) per batch as float32 on the CPU."""
    for batch in batches:
        if batch.dtype != torch.uint8:
            raise TypeError(f"Features are computed from uint8 images, not {batch.dtype}.")
        if batch.shape[1] == 1:
            batch = batch.expand(-1, 3, -1, -1)
        with torch.inference_mode():
            pool, logits = extractor(batch.to(device))
        yield pool.float().cpu(), logits.float().cpu()
