"""The noise schedule: its values, its derived arrays, its storage and its validation."""

import math

import numpy as np
import pytest
import torch

from ddpm_studio.core.diffusion.schedule import NoiseSchedule, ScheduleConfig, cosine_betas, linear_betas


def reference_arrays(betas: np.ndarray) -> dict[str, np.ndarray]:
    """The paper's quantities, computed here independently in float64 from the betas alone."""
    betas = np.asarray(betas, dtype=np.float64)
    T = len(betas)
    alphas = 1.0 - betas
    alpha_bar = np.array([np.prod(alphas[: i + 1]) for i in range(T)])  # no cumprod: independent
    alpha_bar_prev = np.concatenate([[1.0], alpha_bar[:-1]])
    return {
        "alphas": alphas,
        "alphas_cumprod": alpha_bar,
        "alphas_cumprod_prev": alpha_bar_prev,
        "posterior_variance": (1.0 - alpha_bar_prev) / (1.0 - alpha_bar) * betas,
        "posterior_mean_coef1": np.sqrt(alpha_bar_prev) * betas / (1.0 - alpha_bar),
        "posterior_mean_coef2": np.sqrt(alphas) * (1.0 - alpha_bar_prev) / (1.0 - alpha_bar),
        "eps_coef": betas / np.sqrt(1.0 - alpha_bar),
    }


# --- the paper's linear schedule ---------------------------------------------------------------


def test_linear_t1000_is_the_papers_schedule():
    s = NoiseSchedule.linear(1000)
    betas = s.float64["betas"]
    assert betas.shape == (1000,)
    assert betas[0] == pytest.approx(1e-4, rel=1e-12)
    assert betas[-1] == pytest.approx(0.02, rel=1e-12)
    assert np.allclose(np.diff(betas), (0.02 - 1e-4) / 999, rtol=1e-9)


def test_alphas_cumprod_strictly_decreasing_from_near_one_to_near_zero():
    s = NoiseSchedule.linear(1000)
    ab = s.float64["alphas_cumprod"]
    assert (np.diff(ab) < 0).all()
    assert (np.diff(s.alphas_cumprod.numpy()) < 0).all()  # still strict after float32 storage
    assert ab[0] == pytest.approx(1 - 1e-4, rel=1e-12)  # alpha_bar_1 = 1 - beta_1
    # alpha_bar_T of the paper's schedule is about 4.04e-5 (log alpha_bar_T ~ -10.12).
    assert ab[-1] == pytest.approx(4.0358e-5, rel=1e-3)
    assert s.alphas_cumprod[-1].item() == pytest.approx(4.0358e-5, rel=1e-3)
    assert s.alphas_cumprod_prev[0].item() == 1.0


@pytest.mark.parametrize("T", [1000, 100, 10])
def test_linear_any_T_spans_the_same_total_noise(T):
    # The rescaled schedule keeps alpha_bar_T small for short chains too.
    ab = NoiseSchedule.linear(T).float64["alphas_cumprod"]
    assert (np.diff(ab) < 0).all()
    assert 0 < ab[-1] < 1e-3


@pytest.mark.parametrize("kind", ["linear", "cosine"])
@pytest.mark.parametrize("T", [1000, 50, 2])
def test_derived_arrays_match_independent_float64_formulas(kind, T):
    s = NoiseSchedule.linear(T) if kind == "linear" else NoiseSchedule.cosine(T)
    ref = reference_arrays(s.float64["betas"])
    for name, expected in ref.items():
        np.testing.assert_allclose(s.float64[name], expected, rtol=1e-10, atol=0, err_msg=name)
        np.testing.assert_allclose(getattr(s, name).numpy(), expected, rtol=2e-6, atol=0, err_msg=name)
    # beta~_1 = 0: the first reverse step is deterministic.
    assert s.float64["posterior_variance"][0] == 0.0
    total = s.float64["sqrt_alphas_cumprod"] ** 2 + s.float64["sqrt_one_minus_alphas_cumprod"] ** 2
    np.testing.assert_allclose(total, 1.0)
    np.testing.assert_allclose(s.float64["snr"], ref["alphas_cumprod"] / (1 - ref["alphas_cumprod"]), rtol=1e-10)


def test_posterior_variance_equals_formula_linear_1000():
    s = NoiseSchedule.linear(1000)
    betas = np.linspace(1e-4, 0.02, 1000, dtype=np.float64)
    ab = np.cumprod(1.0 - betas)
    ab_prev = np.concatenate([[1.0], ab[:-1]])
    expected = (1.0 - ab_prev) / (1.0 - ab) * betas
    np.testing.assert_allclose(s.posterior_variance.numpy(), expected, rtol=1e-6, atol=1e-12)
    # beta~_t < beta_t for t > 1, and both are nearly equal late in the chain.
    assert (expected[1:] < betas[1:]).all()
    assert expected[-1] == pytest.approx(betas[-1], rel=1e-3)


def test_posterior_log_variance_clipped():
    s = NoiseSchedule.linear(1000)
    plv = s.posterior_log_variance_clipped
    assert plv[0].item() == pytest.approx(math.log(s.posterior_variance[1].item()), rel=1e-6)
    assert torch.isfinite(plv).all()
    torch.testing.assert_close(plv[1:], torch.log(s.posterior_variance[1:]), rtol=1e-6, atol=1e-6)


def test_tensors_are_float32_and_float64_is_kept():
    s = NoiseSchedule.cosine(100)
    for name, values in s.float64.items():
        tensor = getattr(s, name)
        assert isinstance(tensor, torch.Tensor), name
        assert tensor.dtype == torch.float32, name
        assert tensor.shape == (100,), name
        assert values.dtype == np.float64, name


def test_to_moves_every_tensor():
    s = NoiseSchedule.linear(10).to("cpu")
    assert all(getattr(s, name).device.type == "cpu" for name in s.float64)


# --- cosine -------------------------------------------------------------------------------


@pytest.mark.parametrize("T", [1, 2, 10, 100, 1000, 4000])
def test_cosine_schedule(T):
    s = NoiseSchedule.cosine(T)
    betas = s.float64["betas"]
    assert betas.shape == (T,)
    assert (betas > 0).all() and (betas <= 0.999).all()
    assert betas[-1] == 0.999  # alpha_bar(T) = cos^2(pi/2) = 0, so the last beta is capped
    ab = s.float64["alphas_cumprod"]
    assert (np.diff(ab) < 0).all()
    assert ab[-1] <= 1.0001e-3  # at most 1 - 0.999, since the last beta is 0.999
    if T >= 10:
        # Before the cap, alpha_bar follows cos^2(((t/T + s)/(1 + s)) pi/2) / f(0).
        t = np.arange(1, T + 1) / T
        f = np.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2 / math.cos(0.008 / 1.008 * math.pi / 2) ** 2
        capped = np.cumsum(betas == 0.999) > 0
        np.testing.assert_allclose(ab[~capped], f[~capped], rtol=1e-9)
    if T >= 100:
        assert ab[0] > 0.99


def test_cosine_cap_is_configurable():
    betas = cosine_betas(100, max_beta=0.5)
    assert betas.max() == 0.5
    assert (betas > 0).all()


def test_linear_betas_function():
    np.testing.assert_allclose(linear_betas(1000), np.linspace(1e-4, 0.02, 1000))
    assert linear_betas(1000).dtype == np.float64


def test_from_config_keeps_config():
    config = ScheduleConfig("cosine", 64)
    s = NoiseSchedule.from_config(config)
    assert s.config == config and s.num_timesteps == 64


# --- invalid settings -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "config",
    [
        ScheduleConfig(kind="quadratic"),
        ScheduleConfig(num_timesteps=0),
        ScheduleConfig(num_timesteps=-5),
        ScheduleConfig(beta_start=0.0),
        ScheduleConfig(beta_start=0.03, beta_end=0.02),
        ScheduleConfig(beta_end=1.0),
        ScheduleConfig(beta_start=-1e-4),
    ],
)
def test_invalid_configs_raise_value_error(config):
    with pytest.raises(ValueError):
        config.validate()
    with pytest.raises(ValueError):
        NoiseSchedule.from_config(config)


@pytest.mark.parametrize(
    "betas",
    [np.array([0.1, 0.0]), np.array([0.1, 1.0]), np.array([-0.1]), np.zeros((2, 2)) + 0.1, np.array([0.1, np.nan])],
)
def test_invalid_betas_raise_value_error(betas):
    with pytest.raises(ValueError):
        NoiseSchedule(betas)


def test_every_array_is_a_named_float32_attribute_equal_to_its_float64_value():
    schedule = NoiseSchedule.cosine(50)
    for name, values in schedule.float64.items():
        tensor = getattr(schedule, name)
        assert tensor.dtype == torch.float32 and tensor.shape == (50,), name
        np.testing.assert_array_equal(tensor.numpy(), values.astype(np.float32), err_msg=name)
    moved = schedule.to("cpu")
    assert moved is schedule and all(getattr(schedule, name).device.type == "cpu" for name in schedule.float64)
