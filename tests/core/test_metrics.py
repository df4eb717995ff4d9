"""The metric formulas against independent computations: FID with scipy's symmetric eigensolver (a
near-singular covariance included), KID as a direct double sum of the unbiased MMD², IS from given class
probabilities; and, when torch-fidelity imports, against the library's own functions."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import linalg

from ddpm_studio.core.evaluation.metrics import (
    FeatureStatistics,
    frechet_distance,
    inception_score,
    kernel_inception_distance,
    mmd2_unbiased,
)


def gaussian_features(count: int, dim: int, seed: int, scale: float = 1.0, shift: float = 0.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    mixing = rng.normal(size=(dim, dim)) / np.sqrt(dim)
    return rng.normal(size=(count, dim)) @ mixing * scale + shift


def reference_fid(a: np.ndarray, b: np.ndarray) -> float:
    """tr (S_a S_b)^½ = tr (S_a^½ S_b S_a^½)^½, each root from scipy's eigh of a symmetric PSD matrix."""
    mu_a, mu_b = a.mean(0), b.mean(0)
    s_a, s_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)

    def psd_sqrt(matrix):
        values, vectors = linalg.eigh(matrix)
        return (vectors * np.sqrt(np.clip(values, 0, None))) @ vectors.T

    root_a = psd_sqrt(s_a)
    trace_sqrt = np.sqrt(np.clip(linalg.eigh(root_a @ s_b @ root_a, eigvals_only=True), 0, None)).sum()
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(s_a) + np.trace(s_b) - 2 * trace_sqrt)


def fid(a: np.ndarray, b: np.ndarray) -> float:
    return frechet_distance(FeatureStatistics.from_features(a), FeatureStatistics.from_features(b))


def test_frechet_distance_matches_an_independent_computation():
    a = gaussian_features(500, 16, seed=0)
    b = gaussian_features(400, 16, seed=1, scale=1.5, shift=0.3)
    assert fid(a, b) == pytest.approx(reference_fid(a, b), rel=1e-9)
    assert fid(a, b) > 1.0


def test_frechet_distance_of_gaussians_with_known_parameters():
    """Closed form for diagonal covariances: |mu_a - mu_b|² + sum (sigma_a - sigma_b)²."""
    rng = np.random.default_rng(3)
    a = FeatureStatistics(rng.normal(size=8), np.diag(rng.uniform(0.5, 2, 8)), 100)
    b = FeatureStatistics(rng.normal(size=8), np.diag(rng.uniform(0.5, 2, 8)), 100)
    expected = ((a.mu - b.mu) ** 2).sum() + ((np.sqrt(np.diag(a.sigma)) - np.sqrt(np.diag(b.sigma))) ** 2).sum()
    assert frechet_distance(a, b) == pytest.approx(expected, rel=1e-10)


def test_frechet_distance_with_near_singular_covariance():
    """Fewer samples than dimensions (rank 19 of 64), plus one direction of almost no variance."""
    a = gaussian_features(20, 64, seed=4)
    a[:, 0] = 1e-9 * np.arange(20)
    b = gaussian_features(20, 64, seed=5, shift=0.1)
    assert np.linalg.matrix_rank(np.cov(a, rowvar=False)) < 64
    value = fid(a, b)
    assert np.isfinite(value)
    assert value == pytest.approx(reference_fid(a, b), rel=1e-6)
    assert fid(a, a) == pytest.approx(0.0, abs=1e-6)


def direct_mmd2_unbiased(x: np.ndarray, y: np.ndarray) -> float:
    """Term by term: within-set pairs i != j, cross pairs all (i, j); k(x, y) = (x.y / d + 1)³."""
    m, d = x.shape

    def k(u, v):
        return (u @ v / d + 1.0) ** 3

    within_x = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    within_y = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    cross = sum(k(x[i], y[j]) for i in range(m) for j in range(m)) / (m * m)
    return within_x + within_y - 2 * cross


def test_kid_matches_a_direct_unbiased_mmd2_with_the_cubic_kernel():
    x = gaussian_features(30, 6, seed=6)
    y = gaussian_features(30, 6, seed=7, shift=0.5)
    expected = direct_mmd2_unbiased(x, y)
    assert mmd2_unbiased(torch.from_numpy(x), torch.from_numpy(y)) == pytest.approx(expected, rel=1e-10)
    # Subsets as large as the sets are permutations of them, and MMD² does not depend on the order.
    kid = kernel_inception_distance(torch.from_numpy(x), torch.from_numpy(y), subsets=5, subset_size=30)
    assert kid.mean == pytest.approx(expected, rel=1e-10)
    assert kid.std == pytest.approx(0.0, abs=1e-12)


def test_kid_subsets_shrink_to_the_smaller_set_and_spread_is_reported():
    x = torch.from_numpy(gaussian_features(200, 8, seed=8))
    y = torch.from_numpy(gaussian_features(50, 8, seed=9, shift=1.0))
    kid = kernel_inception_distance(x, y, subsets=20)
    assert kid.subset_size == 50
    assert kid.mean > 0.1 and kid.std > 0
    same = kernel_inception_distance(x, x.clone(), subsets=20, subset_size=100)
    assert abs(same.mean) < 0.05 * kid.mean  # unbiased: near zero for one distribution


def test_inception_score_matches_a_direct_computation_from_probabilities():
    rng = np.random.default_rng(10)
    probabilities = rng.dirichlet(np.full(7, 0.3), size=40)
    marginal = probabilities.mean(0)
    expected = np.exp(np.mean([(p * (np.log(p) - np.log(marginal))).sum() for p in probabilities]))
    mean, std = inception_score(torch.from_numpy(np.log(probabilities)), splits=1, seed=None)
    assert mean == pytest.approx(expected, rel=1e-10)
    assert std == 0.0
    # Extremes: one confident class per image, spread evenly, gives the number of classes; a constant gives 1.
    confident = torch.full((70, 7), -50.0)
    confident[torch.arange(70), torch.arange(70) % 7] = 0.0
    assert inception_score(confident, splits=10, seed=None)[0] == pytest.approx(7.0, rel=1e-6)  # 7 classes per split
    assert inception_score(torch.zeros(20, 7), splits=2)[0] == pytest.approx(1.0)


def test_split_scores_are_averaged():
    rng = np.random.default_rng(11)
    logits = torch.from_numpy(np.log(rng.dirichlet(np.full(5, 0.5), size=60)))
    per_split = [inception_score(logits[i * 20:(i + 1) * 20], splits=1, seed=None)[0] for i in range(3)]
    mean, std = inception_score(logits, splits=3, seed=None)
    assert mean == pytest.approx(np.mean(per_split), rel=1e-12)
    assert std == pytest.approx(np.std(per_split), rel=1e-9)


def test_formulas_agree_with_torch_fidelity():
    """Parity with the reference library's own metric functions, when it is installed (the eval extra)."""
    from ddpm_studio.core.evaluation.inception import MetricsUnavailable, import_torch_fidelity

    try:
        import_torch_fidelity()
    except MetricsUnavailable as error:
        pytest.skip(str(error))
    from torch_fidelity.metric_fid import fid_features_to_statistics, fid_statistics_to_metric
    from torch_fidelity.metric_isc import isc_features_to_metric
    from torch_fidelity.metric_kid import kid_features_to_metric

    a = torch.from_numpy(gaussian_features(300, 24, seed=12)).float()
    b = torch.from_numpy(gaussian_features(250, 24, seed=13, scale=1.2, shift=0.2)).float()
    library_fid = fid_statistics_to_metric(fid_features_to_statistics(a), fid_features_to_statistics(b), False)
    assert fid(a.numpy(), b.numpy()) == pytest.approx(library_fid["frechet_inception_distance"], rel=1e-5)
    library_kid = kid_features_to_metric(a, b, kid_subsets=10, kid_subset_size=100, verbose=False)
    ours = kernel_inception_distance(a, b, subsets=10, subset_size=100)
    assert ours.mean == pytest.approx(library_kid["kernel_inception_distance_mean"], rel=1e-5)
    assert ours.std == pytest.approx(library_kid["kernel_inception_distance_std"], rel=1e-4)
    library_is = isc_features_to_metric(a)
    assert inception_score(a) == pytest.approx((library_is["inception_score_mean"], library_is["inception_score_std"]),
                                               rel=1e-10)
