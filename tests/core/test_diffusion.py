"""The forward process, the reverse step, the loss and the samplers of GaussianDiffusion."""

import math

import numpy as np
import pytest
import torch

from ddpm_studio.core.diffusion.process import GaussianDiffusion, SampleStep
from ddpm_studio.core.diffusion.samplers import sample, sample_progressive
from ddpm_studio.core.diffusion.schedule import NoiseSchedule
from ddpm_studio.core.model.unet import UNet, preset_config
from tests.helpers.toy_models import ToyEps, gen

# --- helpers ----------------------------------------------------------------------------------


def tiny_unet(seed: int = 0, channels: int = 3) -> UNet:
    """The 'tiny' preset with its zero-initialised weights perturbed, so that it outputs something."""
    torch.manual_seed(seed)
    model = UNet(preset_config("tiny", image_channels=channels))
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in model.parameters():
            if (p == 0).all():
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    return model.eval()


def diffusion(T: int = 20, kind: str = "linear") -> GaussianDiffusion:
    return GaussianDiffusion(NoiseSchedule.linear(T) if kind == "linear" else NoiseSchedule.cosine(T))


def full_t(index: int, n: int) -> torch.Tensor:
    return torch.full((n,), index, dtype=torch.long)


# --- forward process ------------------------------------------------------------------------


@pytest.mark.parametrize("index", [0, 9, 99, 499, 999])
def test_q_sample_has_closed_form_mean_and_variance(index):
    d = diffusion(1000)
    n = 200_000
    x0 = torch.full((n,), 0.8)
    x_t = d.q_sample(x0, full_t(index, n), torch.randn(n, generator=gen(index)))
    ab = d.schedule.float64["alphas_cumprod"][index]
    # Standard errors: mean sqrt(var / n) <= 0.0023, variance sqrt(2 / n) var <= 0.0032.
    assert x_t.mean().item() == pytest.approx(math.sqrt(ab) * 0.8, abs=0.012)
    assert x_t.var().item() == pytest.approx(1 - ab, abs=0.016 * (1 - ab) + 1e-7)


def test_q_sample_is_the_closed_form_exactly():
    d = diffusion(1000)
    s = d.schedule.float64
    x0 = torch.rand(6, 3, 4, 4, generator=gen(0)) * 2 - 1
    noise = torch.randn(6, 3, 4, 4, generator=gen(1))
    t = torch.tensor([0, 1, 10, 500, 998, 999])
    x_t = d.q_sample(x0, t, noise)
    for b, i in enumerate(t.tolist()):
        ab = s["alphas_cumprod"][i]
        expected = math.sqrt(ab) * x0[b].double() + math.sqrt(1 - ab) * noise[b].double()
        torch.testing.assert_close(x_t[b].double(), expected, rtol=1e-5, atol=1e-6)
    # and x0_hat from the true noise gives x0 back
    torch.testing.assert_close(d.predict_x0_from_eps(x_t, t, noise), x0, rtol=1e-3, atol=2e-3)


def ks_statistic(a: torch.Tensor, b: torch.Tensor) -> float:
    """Two-sample Kolmogorov-Smirnov statistic."""
    a, b = a.double().sort().values, b.double().sort().values
    grid = torch.cat([a, b])
    cdf_a = torch.searchsorted(a, grid, right=True).double() / len(a)
    cdf_b = torch.searchsorted(b, grid, right=True).double() / len(b)
    return (cdf_a - cdf_b).abs().max().item()


@pytest.mark.parametrize("kind", ["linear", "cosine"])
def test_closed_form_equals_step_by_step_noising_in_distribution(kind):
    T, n = 100, 200_000
    d = diffusion(T, kind)
    ab = d.schedule.float64["alphas_cumprod"]
    g = gen(7)
    # A skewed, non-Gaussian x0: 1.0 with probability 0.3, else -0.5.
    values, probs = torch.tensor([1.0, -0.5], dtype=torch.float64), torch.tensor([0.3, 0.7], dtype=torch.float64)
    m0 = (values * probs).sum().item()
    c2, c3, c4 = (((values - m0) ** k * probs).sum().item() for k in (2, 3, 4))
    x0 = torch.where(torch.rand(n, generator=g) < 0.3, 1.0, -0.5)
    x = x0.clone()
    checks = {0, 4, 19, 49, 99}
    for i in range(T):
        x = d.q_step(x, full_t(i, n), torch.randn(n, generator=g))
        if i not in checks:
            continue
        closed = d.q_sample(x0, full_t(i, n), torch.randn(n, generator=g))
        # x_t = a x0 + b eps: central moments of a sum of independent terms.
        a2, b2 = ab[i], 1 - ab[i]
        mean = math.sqrt(a2) * m0
        var = a2 * c2 + b2
        third = a2**1.5 * c3
        fourth = a2**2 * c4 + 6 * a2 * c2 * b2 + 3 * b2**2
        for samples in (x, closed):
            centred = samples.double() - samples.double().mean()
            assert samples.double().mean().item() == pytest.approx(mean, abs=0.01)
            assert (centred**2).mean().item() == pytest.approx(var, rel=0.02)
            assert (centred**3).mean().item() == pytest.approx(third, abs=0.02)
            assert (centred**4).mean().item() == pytest.approx(fourth, rel=0.05)
        # and the two samples come from the same distribution
        assert ks_statistic(x, closed) < 0.01


def test_q_step_matches_its_definition():
    d = diffusion(1000)
    x = torch.randn(4, 3, 2, 2, generator=gen(0))
    noise = torch.randn(4, 3, 2, 2, generator=gen(1))
    t = torch.tensor([0, 1, 500, 999])
    out = d.q_step(x, t, noise)
    betas = d.schedule.float64["betas"]
    for b, i in enumerate(t.tolist()):
        expected = math.sqrt(1 - betas[i]) * x[b].double() + math.sqrt(betas[i]) * noise[b].double()
        torch.testing.assert_close(out[b].double(), expected, rtol=1e-5, atol=1e-6)


# --- posterior and reverse step -------------------------------------------------------------


@pytest.mark.parametrize("index", [1, 9, 49, 99])
def test_posterior_is_the_conditional_of_the_joint(index):
    # Sample (x_{t-1}, x_t) given a fixed x0 with the forward process; regressing x_{t-1} on x_t
    # must give slope coef2, intercept coef1 * x0 and residual variance beta~_t.
    T, n = 100, 200_000
    d = diffusion(T)
    x0_value = 0.6
    x0 = torch.full((n,), x0_value)
    x_prev = d.q_sample(x0, full_t(index - 1, n), torch.randn(n, generator=gen(index))).double()
    x_t = d.q_step(x_prev.float(), full_t(index, n), torch.randn(n, generator=gen(1000 + index))).double()
    cov = ((x_prev - x_prev.mean()) * (x_t - x_t.mean())).mean()
    slope = (cov / x_t.var(unbiased=False)).item()
    intercept = (x_prev.mean() - slope * x_t.mean()).item()
    residual_var = (x_prev - intercept - slope * x_t).var().item()

    mean, var, log_var = d.q_posterior_mean_variance(x0[:1], x_t[:1].float(), full_t(index, 1))
    s = d.schedule.float64
    assert slope == pytest.approx(s["posterior_mean_coef2"][index], abs=0.01)
    assert intercept == pytest.approx(s["posterior_mean_coef1"][index] * x0_value, abs=0.01)
    assert residual_var == pytest.approx(s["posterior_variance"][index], rel=0.02)
    assert var.item() == pytest.approx(s["posterior_variance"][index], rel=1e-6)
    assert log_var.item() == pytest.approx(math.log(s["posterior_variance"][index]), rel=1e-6)
    expected_mean = s["posterior_mean_coef1"][index] * x0_value + s["posterior_mean_coef2"][index] * x_t[0].item()
    assert mean.item() == pytest.approx(expected_mean, rel=1e-5, abs=1e-6)


@pytest.mark.parametrize("kind", ["linear", "cosine"])
def test_p_mean_from_eps_equals_posterior_mean_of_x0_hat(kind):
    T = 1000
    d = diffusion(T, kind)
    g = gen(3)
    t = torch.tensor([0, 1, 2, 10, 100, 500, 900, 998, 999])
    x_t = torch.randn(len(t), 3, 8, 8, generator=g)
    eps = torch.randn(len(t), 3, 8, 8, generator=g)
    mean_eps = d.p_mean_from_eps(x_t, t, eps)
    x0_hat = d.predict_x0_from_eps(x_t, t, eps)
    mean_post, _, _ = d.q_posterior_mean_variance(x0_hat, x_t, t)
    # float32: x0_hat reaches ~1e2 (linear) or ~1e3 (cosine) at t = T, so the posterior route loses a
    # few digits there; the means themselves are O(1).
    torch.testing.assert_close(mean_eps, mean_post, rtol=1e-4, atol=2e-4)

    # Both equal the paper's eq. 11 computed in float64.
    s = d.schedule.float64
    for b, i in enumerate(t.tolist()):
        eps_coef = s["betas"][i] / math.sqrt(1 - s["alphas_cumprod"][i])
        expected = (x_t[b].double() - eps_coef * eps[b].double()) / math.sqrt(s["alphas"][i])
        torch.testing.assert_close(mean_eps[b].double(), expected, rtol=1e-5, atol=1e-5)


def test_predict_eps_from_x0_inverts_predict_x0_from_eps():
    d = diffusion(1000)
    g = gen(4)
    t = torch.tensor([0, 5, 300, 999])
    x_t = torch.randn(4, 3, 4, 4, generator=g)
    eps = torch.randn(4, 3, 4, 4, generator=g)
    x0 = d.predict_x0_from_eps(x_t, t, eps)
    torch.testing.assert_close(d.predict_eps_from_x0(x_t, t, x0), eps, rtol=1e-3, atol=1e-3)


def test_model_variance():
    d = diffusion(50)
    t = torch.tensor([0, 1, 49])
    shape = torch.Size([3, 1, 2, 2])
    torch.testing.assert_close(d.model_variance(t, shape, "fixed_large").flatten(), d.schedule.betas[t])
    torch.testing.assert_close(d.model_variance(t, shape, "fixed_small").flatten(), d.schedule.posterior_variance[t])
    assert d.model_variance(t, shape, "fixed_small").shape == (3, 1, 1, 1)
    with pytest.raises(ValueError):
        d.model_variance(t, shape, "learned")


@pytest.mark.parametrize("clip", [True, False])
def test_p_mean_variance(clip):
    d = diffusion(50)
    model = ToyEps()
    t = torch.tensor([0, 1, 25, 49])
    x_t = torch.randn(4, 3, 8, 8, generator=gen(0)) * 2
    mean, var, x0_hat = d.p_mean_variance(model, x_t, t, "fixed_small", clip)
    eps = model(x_t, t)
    raw_x0 = d.predict_x0_from_eps(x_t, t, eps)
    if clip:
        assert (raw_x0.abs() > 1).any()  # clipping is exercised
        torch.testing.assert_close(x0_hat, raw_x0.clamp(-1, 1))
        torch.testing.assert_close(mean, d.q_posterior_mean_variance(raw_x0.clamp(-1, 1), x_t, t)[0])
    else:
        torch.testing.assert_close(x0_hat, raw_x0)
        torch.testing.assert_close(mean, d.p_mean_from_eps(x_t, t, eps))
    torch.testing.assert_close(var.flatten(), d.schedule.posterior_variance[t])
    # At t = 1 (index 0) the mean is x0_hat itself.
    torch.testing.assert_close(mean[0], x0_hat[0], rtol=1e-5, atol=1e-5)


# --- training loss --------------------------------------------------------------------------


def test_training_loss_of_zero_model_is_one_and_of_oracle_is_zero():
    d = diffusion(1000)
    x0 = torch.rand(1, 3, 8, 8, generator=gen(0)) * 2 - 1
    batch = x0.expand(256, -1, -1, -1).contiguous()
    seen = []

    def zero(x_t, t):
        seen.append(t.clone())
        return torch.zeros_like(x_t)

    loss = d.training_loss(zero, batch, generator=gen(1))
    assert loss.item() == pytest.approx(1.0, abs=0.03)  # E[eps^2] = 1

    def oracle(x_t, t):
        # Knows x0, so recovers eps exactly; the loss is zero only if the loss noises with index t.
        return d.predict_eps_from_x0(x_t, t, batch)

    assert d.training_loss(oracle, batch, generator=gen(1)).item() < 1e-4

    # With a short chain, an oracle that is off by one timestep is clearly wrong.
    d20 = diffusion(20)
    assert d20.training_loss(lambda x_t, t: d20.predict_eps_from_x0(x_t, t, batch), batch, gen(1)).item() < 1e-4

    def off_by_one(x_t, t):
        return d20.predict_eps_from_x0(x_t, (t + 1).clamp(max=19), batch)

    assert d20.training_loss(off_by_one, batch, gen(1)).item() > 1e-2

    # t is uniform over the indices 0..T-1.
    for seed in range(20):
        d.training_loss(zero, batch, generator=gen(100 + seed))
    ts = torch.cat(seen)
    assert ts.dtype == torch.long and ts.min().item() >= 0 and ts.max().item() <= 999
    counts = torch.bincount(ts // 100, minlength=10).double()  # ~538 per decile
    assert ((counts - counts.mean()).abs() < 5 * counts.mean().sqrt()).all()


def test_training_loss_is_reproducible_with_a_generator():
    d = diffusion(1000)
    model = ToyEps()
    x0 = torch.rand(8, 3, 8, 8, generator=gen(0)) * 2 - 1
    a = d.training_loss(model, x0, generator=gen(5))
    b = d.training_loss(model, x0, generator=gen(5))
    c = d.training_loss(model, x0, generator=gen(6))
    assert a.item() == b.item()
    assert a.item() != c.item()
    assert a.ndim == 0 and a.dtype == torch.float32


def test_training_loss_is_l_simple_with_its_gradient():
    d = diffusion(1000)
    model = ToyEps()
    x0 = torch.rand(8, 3, 8, 8, generator=gen(0)) * 2 - 1
    loss = d.training_loss(model, x0, generator=gen(5))
    loss.backward()
    gradient = model.conv.weight.grad.clone()
    model.zero_grad()
    g = gen(5)  # the same draws: t first, then the noise
    t = torch.randint(0, 1000, (8,), generator=g)
    noise = torch.randn(x0.shape, generator=g)
    alpha_bar = torch.as_tensor(d.schedule.float64["alphas_cumprod"])[t].float().reshape(-1, 1, 1, 1)
    x_t = alpha_bar.sqrt() * x0 + (1 - alpha_bar).sqrt() * noise  # eq. 4
    expected = ((model(x_t, t) - noise) ** 2).mean()  # E ||eps - eps_theta(x_t, t)||^2, per pixel
    expected.backward()
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(gradient, model.conv.weight.grad)
    assert gradient.abs().sum() > 0


# --- samplers -------------------------------------------------------------------------------

MODELS = {"toy": ToyEps, "tiny_unet": tiny_unet}


@pytest.mark.parametrize("model_name", list(MODELS))
@pytest.mark.parametrize("clip", [True, False])
def test_ddim_eta1_all_steps_equals_ddpm_fixed_small(model_name, clip):
    T = 20
    d = diffusion(T)
    model = MODELS[model_name]()
    shape = (1, 3, 8, 8)
    ddpm = list(d.ddpm_sample_progressive(model, shape, generator=gen(11), variance="fixed_small", clip=clip))
    ddim = list(d.ddim_sample_progressive(model, shape, num_steps=T, eta=1.0, generator=gen(11), clip=clip))
    assert len(ddpm) == len(ddim) == T
    for a, b in zip(ddpm, ddim):
        assert a.t == b.t and a.step == b.step and a.num_steps == b.num_steps == T
        # float32 (the DDIM code mixes Python floats in); without clipping x0_hat reaches ~1e2 at
        # t = T, hence a relative tolerance.
        torch.testing.assert_close(a.x_t, b.x_t, rtol=1e-3, atol=1e-4)
        torch.testing.assert_close(a.x0_hat, b.x0_hat, rtol=1e-3, atol=1e-4)
        torch.testing.assert_close(a.x_prev, b.x_prev, rtol=1e-3, atol=1e-4)
    # and DDIM with eta = 0 is a different (deterministic) sampler
    ddim0 = list(d.ddim_sample_progressive(model, shape, num_steps=T, eta=0.0, generator=gen(11), clip=clip))
    assert not torch.allclose(ddim0[-1].x_prev, ddim[-1].x_prev, atol=1e-2)


def test_clipping_changes_the_samples():
    d = diffusion(20)
    model = ToyEps()
    a = sample(d, model, (2, 3, 8, 8), generator=gen(0), clip=True)
    b = sample(d, model, (2, 3, 8, 8), generator=gen(0), clip=False)
    assert not torch.allclose(a, b, atol=1e-3)


@pytest.mark.parametrize(
    "sampler,options",
    [
        ("ddpm", {"variance": "fixed_large"}),
        ("ddpm", {"variance": "fixed_small"}),
        ("ddim", {"num_steps": 5, "eta": 0.0}),
        ("ddim", {"num_steps": 5, "eta": 0.5}),
    ],
)
def test_same_seed_same_output_different_seed_different(sampler, options):
    d = diffusion(20)
    model = ToyEps()
    shape = (2, 3, 8, 8)
    a = sample(d, model, shape, sampler, generator=gen(1), **options)
    b = sample(d, model, shape, sampler, generator=gen(1), **options)
    c = sample(d, model, shape, sampler, generator=gen(2), **options)
    assert torch.equal(a, b)
    assert not torch.allclose(a, c, atol=1e-3)
    assert a.shape == shape and a.min() >= -1 and a.max() <= 1


def test_ddim_eta0_is_deterministic_given_x_start():
    d = diffusion(20)
    model = ToyEps()
    x_T = torch.randn(2, 3, 8, 8, generator=gen(0))
    a = sample(d, model, x_T.shape, "ddim", num_steps=7, eta=0.0, x_start=x_T, generator=gen(1))
    b = sample(d, model, x_T.shape, "ddim", num_steps=7, eta=0.0, x_start=x_T, generator=gen(2))
    assert torch.equal(a, b)


@pytest.mark.parametrize("variance", ["fixed_large", "fixed_small"])
def test_ancestral_adds_noise_of_sigma_t_except_at_the_last_step(variance):
    T = 20
    d = diffusion(T)
    model = ToyEps()
    steps = list(d.ddpm_sample_progressive(model, (8, 3, 16, 16), generator=gen(3), variance=variance))
    assert [s.t for s in steps] == list(range(T - 1, -1, -1))
    for s in steps:
        t = full_t(s.t, s.x_t.shape[0])
        with torch.inference_mode():  # the yielded tensors are inference tensors
            mean, var, x0_hat = d.p_mean_variance(model, s.x_t, t, variance, clip=True)
        torch.testing.assert_close(s.x0_hat, x0_hat)
        if s.t == 0:
            # no noise at the last step: x_0 is the mean itself
            assert torch.equal(s.x_prev, mean)
        else:
            z = (s.x_prev - mean) / var.sqrt()
            assert z.std().item() == pytest.approx(1.0, abs=0.06), s.t  # 6144 draws
            assert z.mean().item() == pytest.approx(0.0, abs=0.06), s.t
    # The noise scale is the requested one: beta~_2 is about half of beta_2.
    s1 = steps[-2]
    assert s1.t == 1
    with torch.inference_mode():
        noise_std = (s1.x_prev - d.p_mean_variance(model, s1.x_t, full_t(1, 8), variance)[0]).std().item()
    expected = d.schedule.float64["betas" if variance == "fixed_large" else "posterior_variance"][1] ** 0.5
    assert noise_std == pytest.approx(expected, rel=0.06)


def test_last_step_of_ddim_is_x0_hat():
    d = diffusion(20)
    model = tiny_unet()
    steps = list(d.ddim_sample_progressive(model, (1, 3, 8, 8), num_steps=4, eta=1.0, generator=gen(0)))
    assert steps[-1].t == 0
    torch.testing.assert_close(steps[-1].x_prev, steps[-1].x0_hat, rtol=1e-5, atol=1e-5)


def test_sample_steps_chain_and_sample_returns_clamped_final():
    d = diffusion(20)
    model = ToyEps()
    steps = list(sample_progressive(d, model, (2, 3, 8, 8), "ddpm", generator=gen(0), clip=False))
    assert all(isinstance(s, SampleStep) for s in steps)
    for a, b in zip(steps, steps[1:]):
        assert torch.equal(a.x_prev, b.x_t)
    # the first x_t is the initial noise drawn from the generator
    torch.testing.assert_close(steps[0].x_t, torch.randn(2, 3, 8, 8, generator=gen(0)))
    final = sample(d, model, (2, 3, 8, 8), "ddpm", generator=gen(0), clip=False)
    torch.testing.assert_close(final, steps[-1].x_prev.clamp(-1, 1))


def test_ddpm_yields_T_steps():
    T = 30
    d = diffusion(T)
    steps = list(d.ddpm_sample_progressive(ToyEps(), (1, 3, 8, 8), generator=gen(0)))
    assert len(steps) == T
    assert [s.t for s in steps] == list(range(T - 1, -1, -1))
    assert [s.step for s in steps] == list(range(T))
    assert {s.num_steps for s in steps} == {T}


def test_ddim_step_counts_from_1_to_T():
    T = 20
    d = diffusion(T)
    model = ToyEps()
    for n in range(1, T + 1):
        steps = list(d.ddim_sample_progressive(model, (1, 3, 4, 4), num_steps=n, eta=0.5, generator=gen(n)))
        ts = [s.t for s in steps]
        assert len(steps) == n, n
        assert ts[0] == T - 1
        assert all(a > b for a, b in zip(ts, ts[1:])), ts
        if n >= 2:
            assert ts[-1] == 0
        assert [s.step for s in steps] == list(range(n))
        assert {s.num_steps for s in steps} == {n}
        assert torch.isfinite(steps[-1].x_prev).all()
    assert [s.t for s in d.ddim_sample_progressive(model, (1, 3, 4, 4), num_steps=T)] == list(range(T - 1, -1, -1))


def test_ddim_timesteps_for_T1000():
    d = diffusion(1000)
    for n in list(range(1, 60)) + [100, 250, 333, 500, 999, 1000]:
        ts = d.ddim_timesteps(n)
        assert len(ts) == n, n
        assert ts[0] == 999
        assert n == 1 or ts[-1] == 0
        assert all(a > b for a, b in zip(ts, ts[1:])), n
    # evenly spaced
    assert d.ddim_timesteps(4) == [999, 666, 333, 0]
    assert d.ddim_timesteps(5, start_t=400) == [400, 300, 200, 100, 0]


@pytest.mark.parametrize("start_t", [0, 1, 7, 19])
def test_denoise_from_t(start_t):
    T = 20
    d = diffusion(T)
    model = ToyEps()
    x0 = torch.rand(2, 3, 8, 8, generator=gen(0)) * 2 - 1
    x_start = d.q_sample(x0, full_t(start_t, 2), torch.randn(x0.shape, generator=gen(1)))
    steps = list(d.ddpm_sample_progressive(model, x0.shape, generator=gen(2), x_start=x_start, start_t=start_t))
    assert len(steps) == start_t + 1
    assert [s.t for s in steps] == list(range(start_t, -1, -1))
    assert {s.num_steps for s in steps} == {start_t + 1}
    assert torch.equal(steps[0].x_t, x_start)

    n = min(3, start_t + 1)
    ddim = list(
        d.ddim_sample_progressive(model, x0.shape, num_steps=n, generator=gen(2), x_start=x_start, start_t=start_t)
    )
    assert len(ddim) == n and ddim[0].t == start_t and torch.equal(ddim[0].x_t, x_start)
    assert n == 1 or ddim[-1].t == 0


def test_sampler_validation():
    T = 20
    d = diffusion(T)
    model = ToyEps()
    shape = (1, 3, 4, 4)

    def first(iterator_factory):
        # Validation may happen at the call or at the first step; both must be a ValueError.
        next(iter(iterator_factory()))

    with pytest.raises(ValueError, match="sampler"):
        first(lambda: sample_progressive(d, model, shape, "euler"))
    with pytest.raises(ValueError, match="variance"):
        first(lambda: d.ddpm_sample_progressive(model, shape, variance="learned"))
    with pytest.raises(ValueError, match="variance"):
        sample(d, model, shape, "ddpm", variance="large")
    for eta in (-0.1, 1.01, float("nan")):
        with pytest.raises(ValueError, match="eta"):
            first(lambda eta=eta: d.ddim_sample_progressive(model, shape, num_steps=5, eta=eta))
    for n in (0, -1, T + 1):
        with pytest.raises(ValueError, match="steps"):
            first(lambda n=n: d.ddim_sample_progressive(model, shape, num_steps=n))
    with pytest.raises(ValueError, match="steps"):
        first(lambda: d.ddim_sample_progressive(model, shape, num_steps=6, start_t=4))
    with pytest.raises(ValueError):
        sample(d, model, shape, "ddim", num_steps=0)


@pytest.mark.parametrize("sampler", ["ddpm", "ddim"])
@pytest.mark.parametrize("start_t", [-1, 20, 25])
def test_denoise_from_t_out_of_range_raises_value_error(sampler, start_t):
    # start_t is an index in 0..T-1. Outside it the samplers should refuse with a ValueError, not
    # fail with an IndexError deep in ``extract`` (start_t >= T) or yield nothing (start_t = -1, for
    # which ``sample`` then crashes on ``None.clamp``).
    d = diffusion(20)
    x = torch.zeros(1, 3, 4, 4)
    with pytest.raises(ValueError):
        sample(d, ToyEps(), x.shape, sampler, x_start=x, start_t=start_t, num_steps=1)


@pytest.mark.parametrize("sampler", ["ddpm", "ddim"])
def test_sampler_does_not_leave_inference_mode_on_in_the_consumer(sampler):
    # The samplers are iterators driven by a consumer (CLI, GUI worker, training previews). The
    # consumer's own code between steps must not run in inference mode: a `with
    # torch.inference_mode():` block around a `yield` stays entered while the consumer runs, and
    # stays on in that thread if the consumer stops early and keeps the iterator alive.
    d = diffusion(20)
    iterator = sample_progressive(d, ToyEps(), (1, 3, 4, 4), sampler, generator=gen(0), num_steps=5)
    try:
        step = next(iterator)
        inference_mode_in_consumer = torch.is_inference_mode_enabled()
        grad_in_consumer = torch.is_grad_enabled()
        # e.g. a training step taken between two sampling steps must still be able to backpropagate
        w = torch.ones(3, requires_grad=True)
        try:
            (w * 2).sum().backward()
            backward_error = None
        except RuntimeError as error:
            backward_error = error
    finally:
        iterator.close()  # never leave the rest of the session in inference mode
    assert step.x_prev.shape == (1, 3, 4, 4)
    assert not torch.is_inference_mode_enabled()
    assert not inference_mode_in_consumer, "the sampler left inference mode on while the consumer ran"
    assert grad_in_consumer
    assert backward_error is None, backward_error
    assert torch.equal(w.grad, torch.full((3,), 2.0))


def test_sampling_runs_no_autograd():
    d = diffusion(20)
    model = ToyEps()
    final = sample(d, model, (1, 3, 4, 4), "ddim", num_steps=3, generator=gen(0))
    assert not final.requires_grad


def test_sampler_accepts_model_returning_bf16():
    # Models under autocast return bf16; the samplers compute in float32.
    d = diffusion(20)
    model = ToyEps()
    out = sample(d, lambda x, t: model(x, t).bfloat16(), (1, 3, 4, 4), "ddpm", generator=gen(0))
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    # The same noise: only bf16's rounding of eps (8 bits of mantissa) tells the sample from float32's.
    torch.testing.assert_close(out, sample(d, model, (1, 3, 4, 4), "ddpm", generator=gen(0)), rtol=0, atol=0.02)


def test_noising_reference_values_numpy():
    # An end-to-end sanity check against numpy, for one scalar and the paper's schedule.
    d = diffusion(1000)
    betas = np.linspace(1e-4, 0.02, 1000)
    ab = np.cumprod(1 - betas)
    x_t = d.q_sample(torch.tensor([0.5]), torch.tensor([499]), torch.tensor([-1.0])).item()
    assert x_t == pytest.approx(np.sqrt(ab[499]) * 0.5 - np.sqrt(1 - ab[499]), rel=1e-5)
