"""Rate and distortion along the chain: the rate is the NLL pass's own terms; x0_hat errors have a closed form."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ddpm_studio.core.diffusion.process import GaussianDiffusion
from ddpm_studio.core.diffusion.schedule import NoiseSchedule
from ddpm_studio.core.diffusion.variational_bound import vb_term_and_x0_error
from ddpm_studio.core.evaluation.likelihood import LikelihoodRequest, evaluate_likelihood
from ddpm_studio.core.evaluation.rate_distortion import rate_distortion_curve, rate_distortion_of, table_steps
from ddpm_studio.core.model import store as model_store
from tests.helpers.images import tiny_images
from tests.helpers.toy_models import exact_gaussian_eps_model


def test_rate_ends_are_the_bound_without_l0_and_the_prior(tiny_model):
    model = model_store.load_model(tiny_model)
    *_, result = evaluate_likelihood(model, tiny_images(4, seed=1), LikelihoodRequest(num_images=None))
    curve = rate_distortion_of(result)
    assert curve.rate_bpd[0] == pytest.approx(result.bits_per_dim - result.decoder_bpd)
    assert curve.rate_bpd[-1] == result.prior_bpd
    # the rate is the NLL pass's per-t terms themselves, summed from t = T down
    expected = result.prior_bpd + np.concatenate([np.cumsum(result.per_timestep_bpd[::-1])[::-1][1:], [0.0]])
    assert torch.equal(torch.from_numpy(curve.rate_bpd), torch.from_numpy(expected))
    assert (np.diff(curve.rate_bpd) <= 0).all() and np.isfinite(curve.distortion_rmse).all()


def test_undrawn_timesteps_are_filled_from_the_drawn_l_t_minus_1_never_from_l0():
    # With K random t per image some t go undrawn; their terms are interpolated between drawn L_(t-1).
    # L_0 (index 0) is far larger and is in no rate, so it must not leak into the t between 1 and the first drawn.
    nan = float("nan")
    terms = np.array([5.0, nan, nan, 0.3, nan, 0.1])
    rmse = np.array([1.0, nan, nan, 4.0, nan, 6.0])
    curve = rate_distortion_curve(terms, 0.01, rmse, rmse / 10, num_images=3)
    filled = np.array([5.0, 0.3, 0.3, 0.3, 0.2, 0.1])  # constant before the first drawn t >= 2
    expected = 0.01 + np.concatenate([np.cumsum(filled[::-1])[::-1][1:], [0.0]])
    np.testing.assert_allclose(curve.rate_bpd, expected)
    assert curve.rate_bpd[0] == pytest.approx(0.01 + 0.3 * 3 + 0.2 + 0.1)
    assert list(curve.measured) == [True, False, False, True, False, True]


def test_table_steps_scale_table_4_to_t():
    assert table_steps(1000) == [1000, 900, 800, 700, 600, 500, 400, 300, 200, 100]
    assert table_steps(20) == [20, 18, 16, 14, 12, 10, 8, 6, 4, 2]


def test_x0_hat_error_of_the_exact_gaussian_model_has_its_closed_form():
    schedule = NoiseSchedule.linear(1000)
    data_variance = 0.25
    diffusion = GaussianDiffusion(schedule)
    eps_model = exact_gaussian_eps_model(schedule, data_variance)
    generator = torch.Generator().manual_seed(0)
    alphas_cumprod = schedule.float64["alphas_cumprod"]
    for index in (0, 99, 499, 899, 999):
        x0 = torch.randn(4000, 1, 4, 4, generator=generator) * data_variance**0.5
        noise = torch.randn(x0.shape, generator=generator)
        t = torch.full((len(x0),), index, dtype=torch.long)
        _, squared_error = vb_term_and_x0_error(diffusion, eps_model, x0, t, noise, "fixed_large")
        a = alphas_cumprod[index]
        exact = data_variance * (1 - a) / (a * data_variance + 1 - a)
        measured = squared_error.double()
        sampling_error = measured.std().item() / len(measured) ** 0.5
        assert abs(measured.mean().item() - exact) < 4 * sampling_error, (index, measured.mean().item(), exact)


def test_progress_events_give_a_partial_curve_once_a_batch_is_done(tiny_model):
    model = model_store.load_model(tiny_model)
    events = list(evaluate_likelihood(model, tiny_images(4, seed=1), LikelihoodRequest(num_images=None, batch_size=2,
                                                                                      timesteps=5)))
    first, later = rate_distortion_of(events[0]), rate_distortion_of(events[-2])
    assert first is None  # L_T comes at the end of the first batch
    assert later is not None and np.isfinite(later.rate_bpd).all() and later.measured.sum() <= 4 * 5 + 1
    assert later.measured[0] and np.isfinite(later.distortion_rmse).all()
