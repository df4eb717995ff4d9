"""The variational bound's terms against independent computations, and the analytic Gaussian-data case."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch.distributions import Normal, kl_divergence

from ddpm_studio.core.diffusion.losses import bits_per_dim, discretized_gaussian_log_likelihood, normal_kl
from ddpm_studio.core.diffusion.process import GaussianDiffusion
from ddpm_studio.core.diffusion.schedule import NoiseSchedule
from ddpm_studio.core.diffusion.variational_bound import prior_kl


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_normal_kl_matches_torch_distributions_in_float64():
    g = gen(0)
    mean1 = torch.randn(500, generator=g, dtype=torch.float64)
    mean2 = torch.randn(500, generator=g, dtype=torch.float64)
    log_var1 = torch.randn(500, generator=g, dtype=torch.float64) * 3
    spread = torch.logspace(-6, 0, 500, dtype=torch.float64)
    log_var2 = log_var1 + torch.randn(500, generator=g, dtype=torch.float64) * spread
    expected = kl_divergence(Normal(mean1, (0.5 * log_var1).exp()), Normal(mean2, (0.5 * log_var2).exp()))
    torch.testing.assert_close(normal_kl(mean1, log_var1, mean2, log_var2), expected, rtol=1e-9, atol=1e-15)
    assert (normal_kl(mean1, log_var1, mean1, log_var1) == 0).all()


@pytest.mark.parametrize("variance", ["fixed_large", "fixed_small", "learned"])
def test_vb_kl_terms_match_torch_distributions_from_the_paper_formulas(variance):
    # q(x_{t-1} | x_t, x_0) and p_theta(x_{t-1} | x_t) built here from the float64 schedule with the
    # paper's eqs. 7 and 11, then compared through torch.distributions.
    T = 40
    d = GaussianDiffusion(NoiseSchedule.linear(T))
    f64 = {k: torch.tensor(v) for k, v in d.schedule.float64.items()}
    g = gen(1)
    x0 = torch.rand(6, 3, 4, 4, generator=g, dtype=torch.float64) * 2 - 1
    t = torch.tensor([1, 2, 5, 17, 30, 39])
    noise = torch.randn(x0.shape, generator=g, dtype=torch.float64)
    x_t = d.q_sample(x0, t, noise)
    eps_hat = noise + 0.3 * torch.randn(x0.shape, generator=g, dtype=torch.float64)
    v = torch.rand(x0.shape, generator=g, dtype=torch.float64) * 2 - 1
    output = torch.cat([eps_hat, v], 1) if variance == "learned" else eps_hat

    terms = d.vb_term(output, x0, x_t, t, variance, clip=False)

    c = lambda name: f64[name][t].reshape(-1, 1, 1, 1)  # noqa: E731
    beta, alpha, alpha_bar, alpha_bar_prev = c("betas"), c("alphas"), c("alphas_cumprod"), c("alphas_cumprod_prev")
    true_mean = (alpha_bar_prev.sqrt() * beta * x0 + alpha.sqrt() * (1 - alpha_bar_prev) * x_t) / (1 - alpha_bar)
    true_var = (1 - alpha_bar_prev) / (1 - alpha_bar) * beta
    model_mean = (x_t - beta / (1 - alpha_bar).sqrt() * eps_hat) / alpha.sqrt()
    if variance == "fixed_large":
        model_var = beta.expand_as(x0)
    elif variance == "fixed_small":
        model_var = true_var.expand_as(x0)
    else:
        fraction = (v + 1) / 2
        model_var = beta**fraction * true_var ** (1 - fraction)
    expected = kl_divergence(Normal(true_mean, true_var.sqrt().expand_as(x0)), Normal(model_mean, model_var.sqrt()))
    torch.testing.assert_close(terms, expected.flatten(1).sum(1), rtol=2e-5, atol=1e-6)


def normal_cdf(z: float) -> float:
    return 0.5 * (1 + math.erf(z / math.sqrt(2)))


@pytest.mark.parametrize("mean,scale", [(0.0, 0.01), (0.37, 0.004), (-0.98, 0.05), (0.99, 0.3), (0.2, 2.0)])
def test_decoder_matches_the_normal_cdf_and_its_bins_sum_to_one(mean, scale):
    values = torch.arange(256, dtype=torch.float64) / 127.5 - 1  # every 8-bit value in [-1, 1]
    log_p = discretized_gaussian_log_likelihood(values, torch.full_like(values, mean),
                                                torch.full_like(values, math.log(scale)))
    probabilities = log_p.exp()
    assert abs(probabilities.sum().item() - 1.0) < 1e-9
    for k, x in enumerate(values.tolist()):
        upper = 1.0 if k == 255 else normal_cdf((x + 1 / 255 - mean) / scale)
        lower = 0.0 if k == 0 else normal_cdf((x - 1 / 255 - mean) / scale)
        direct = upper - lower
        if direct > 1e-8:  # where the direct difference of CDFs is itself accurate
            assert math.isclose(probabilities[k].item(), direct, rel_tol=1e-8), (k, probabilities[k].item(), direct)
        else:  # far in a tail: tiny, yet its log stays finite (the log of a difference of CDFs would be -inf)
            assert probabilities[k].item() < 2e-8 and math.isfinite(log_p[k].item())


def test_decoder_far_tails_stay_finite_and_ordered():
    x = torch.tensor([0.0, 0.2, 0.4], dtype=torch.float64)
    log_p = discretized_gaussian_log_likelihood(x, torch.full_like(x, -0.9), torch.full_like(x, math.log(0.01)))
    assert torch.isfinite(log_p).all() and log_p[0] > log_p[1] > log_p[2]


def test_prior_term_matches_its_closed_form():
    d = GaussianDiffusion(NoiseSchedule.linear(30))
    x0 = torch.rand(3, 3, 4, 4, generator=gen(2), dtype=torch.float64) * 2 - 1
    alpha_bar = d.schedule.float64["alphas_cumprod"][-1]
    # KL(N(sqrt(a) x, 1 - a) || N(0, 1)) = (a x^2 + (1 - a) - 1 - log(1 - a)) / 2 per dimension
    expected = (0.5 * (alpha_bar * x0.numpy() ** 2 - alpha_bar - math.log(1 - alpha_bar))).reshape(3, -1).sum(1)
    np.testing.assert_allclose(prior_kl(d, x0).numpy(), expected, rtol=1e-6)


def test_bits_per_dim_converts_nats():
    assert bits_per_dim(3072 * math.log(2), 3072) == pytest.approx(1.0)


# --- the analytic case -----------------------------------------------------------------------------

def test_bound_is_exact_for_gaussian_data_with_the_true_reverse_process_and_looser_with_fixed_variances():
    """x_0 ~ N(0, s^2 I): q(x_t) = N(0, v_t I) with v_t = alpha_bar_t s^2 + 1 - alpha_bar_t, and the true reverse
    conditional is q(x_{t-1} | x_t) = N(sqrt(alpha_t) v_{t-1} / v_t x_t, beta_t v_{t-1} / v_t I). Its eps-model is
    E[eps | x_t] = sqrt(1 - alpha_bar_t) / v_t x_t, and its variance lies between beta~_t and beta_t, so the learned
    range expresses it exactly. With both, L_T + sum L_{t-1} + L_0 (Gaussian) is -log N(x_0; 0, s^2 I) in
    expectation over x_t, for each x_0; with a fixed variance it is larger."""
    T, s2 = 100, 0.25
    d = GaussianDiffusion(NoiseSchedule.linear(T))
    f64 = d.schedule.float64
    alpha_bar = torch.tensor(f64["alphas_cumprod"])
    v_t = alpha_bar * s2 + 1 - alpha_bar
    v_prev = torch.cat([torch.tensor([s2], dtype=torch.float64), v_t[:-1]])
    true_log_var = torch.log(torch.tensor(f64["betas"]) * v_prev / v_t)
    min_log = torch.tensor(f64["posterior_log_variance_clipped"])
    max_log = torch.tensor(f64["log_betas"])
    v_of_t = 2 * (true_log_var - min_log) / (max_log - min_log) - 1
    assert (v_of_t.abs() <= 1).all(), "the true variance lies in the learned range"

    def model(variance_channels: bool):
        def predict(x_t, t):
            eps = (1 - alpha_bar[t]).sqrt().reshape(-1, 1, 1, 1) / v_t[t].reshape(-1, 1, 1, 1) * x_t
            if not variance_channels:
                return eps
            return torch.cat([eps, v_of_t[t].reshape(-1, 1, 1, 1).expand_as(x_t)], 1)
        return predict

    x0 = torch.randn(8000, 1, 2, 2, generator=gen(3), dtype=torch.float64) * math.sqrt(s2)
    exact = -Normal(0.0, math.sqrt(s2)).log_prob(x0).flatten(1).sum(1)

    def bound(variance: str) -> torch.Tensor:
        g = gen(4)  # the same x_t for every variance: their differences are paired
        total = prior_kl(d, x0)
        predict = model(variance == "learned")
        for index in range(T):
            t = torch.full((len(x0),), index)
            x_t = d.q_sample(x0, t, torch.randn(x0.shape, generator=g, dtype=torch.float64))
            output = predict(x_t, t)
            if index > 0:
                total = total + d.vb_term(output, x0, x_t, t, variance)
            else:  # the continuous decoder: -log N(x_0; mu_theta(x_1, 1), sigma_1^2)
                mean, log_var, _ = d.p_mean_log_variance(output, x_t, t, variance, clip=False)
                total = total - Normal(mean, (0.5 * log_var).exp()).log_prob(x0).flatten(1).sum(1)
        return total

    learned = bound("learned")
    gap = learned - exact
    standard_error = gap.std().item() / math.sqrt(len(gap))
    assert abs(gap.mean().item()) < 4 * standard_error, (gap.mean().item(), standard_error)
    assert standard_error < 0.03  # the check has teeth: -log p is about 2.9 nats (4 dims)
    for fixed in ("fixed_large", "fixed_small"):
        excess = bound(fixed) - learned
        excess_error = excess.std().item() / math.sqrt(len(excess))
        assert excess.mean().item() > 4 * excess_error, (fixed, excess.mean().item(), excess_error)
