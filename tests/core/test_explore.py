"""The paper's experiments: branching from a shared x_t (Fig. 7) and interpolating in x_t (Figs. 8-9).

Branching is checked against Gaussian data, whose exact eps-model gives the exact spread of x_0 given x_t;
interpolation against its two limits (t = 0: the pixel blend; t = T: nothing of the sources) and by construction
(one noise for every lambda). Both are checked for reproducibility, on the tiny trained model.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from ddpm_studio.core.diffusion.process import GaussianDiffusion
from ddpm_studio.core.diffusion.schedule import NoiseSchedule, ScheduleConfig
from ddpm_studio.core.errors import SettingError
from ddpm_studio.core.explore.branching import (
    BranchProgress,
    BranchRequest,
    BranchResult,
    BranchRow,
    continuation_options,
    continue_from,
    fig7_steps,
    run_branching,
    seed_for,
    spread_of,
    visited_timesteps,
)
from ddpm_studio.core.explore.forecast import branching_cost, interpolation_cost
from ddpm_studio.core.explore.interpolation import (
    InterpolationProgress,
    InterpolationRequest,
    InterpolationResult,
    as_model_sees_it,
    encode_pair,
    pixel_blend,
    reverse_seed,
    run_interpolation,
)
from ddpm_studio.core.model.store import ModelInfo, load_model
from ddpm_studio.core.model.unet import preset_config
from ddpm_studio.core.sampling.job import SamplingRequest, sample_images
from tests.helpers.toy_models import exact_gaussian_eps_model

# --- Gaussian data: the spread of the continuations is the spread of x_0 given x_t --------------------------

DATA_VARIANCE = 0.04  # N(0, 0.2^2 I): 5 standard deviations inside [-1, 1], so clipping never matters
PIXELS = (1, 1, 40, 50)  # 2000 independent pixels
CONTINUATIONS = 64


def posterior_variance(schedule: NoiseSchedule, index: int) -> float:
    """Var[x_0 | x_t] of Gaussian data: s^2 (1 - alpha_bar) / (s^2 alpha_bar + 1 - alpha_bar)."""
    alpha_bar = schedule.float64["alphas_cumprod"][index]
    return DATA_VARIANCE * (1 - alpha_bar) / (DATA_VARIANCE * alpha_bar + 1 - alpha_bar)


def chain_variance(schedule: NoiseSchedule, index: int, variance: str) -> float:
    """Var[x_0 | x_t] of the discrete reverse chain itself. With the exact eps-model every step is linear,
    x_{t-1} = a_t x_t + sigma_t z, so the variance follows v <- a_t^2 v + sigma_t^2 from 0 at the shared x_t
    (sigma_1 = 0: the last step adds no noise)."""
    f = schedule.float64
    alphas_cumprod, betas = f["alphas_cumprod"], f["betas"]
    v = 0.0
    for i in range(index, -1, -1):
        gain = np.sqrt(1 - alphas_cumprod[i]) / (DATA_VARIANCE * alphas_cumprod[i] + 1 - alphas_cumprod[i])
        a = (1 - betas[i] * gain / np.sqrt(1 - alphas_cumprod[i])) / np.sqrt(1 - betas[i])
        if i == 0:
            noise = 0.0
        elif variance == "fixed_small":
            noise = betas[i] * (1 - alphas_cumprod[i - 1]) / (1 - alphas_cumprod[i])
        else:
            noise = betas[i]
        v = a * a * v + noise
    return v


def continuation_variance(diffusion: GaussianDiffusion, t: int, variance: str) -> float:
    """Mean over pixels of the per-pixel variance across CONTINUATIONS continuations from one shared x_t."""
    generator = torch.Generator().manual_seed(t)
    x0 = torch.randn(PIXELS, generator=generator) * DATA_VARIANCE**0.5
    x_t = diffusion.q_sample(x0, torch.tensor([t - 1]), torch.randn(PIXELS, generator=generator))
    request = BranchRequest(Path("unused"), at=[t], sampler="ddpm", variance=variance, clip=False)
    options = continuation_options(request, diffusion, t - 1, variance)
    model = exact_gaussian_eps_model(diffusion.schedule, DATA_VARIANCE)
    finals = []
    for k in range(CONTINUATIONS):
        final = None
        for step in continue_from(diffusion, model, x_t, t - 1, seed_for(0, t, k), "ddpm", **options):
            final = step.x_prev
        finals.append(final)
    return float(torch.cat(finals).double().var(dim=0, unbiased=True).mean())


@pytest.mark.parametrize("variance", ["fixed_small", "fixed_large"])
def test_continuations_spread_as_the_reverse_chain_says(variance):
    """At T = 100, continuations from t = 100, 60, 20, 5 vary as the chain's own law says, to 3 %.

    The sample variance of 64 draws has a relative standard deviation of sqrt(2 / 63) = 0.18; averaged over 2000
    independent pixels, 0.4 %: 3 % is over 7 standard deviations. At T = 100 the chain is far from the true
    posterior (beta~: about 25 % below it; beta: 10 % above, measured by ``chain_variance``), so this checks that
    branching runs exactly the chain; the next test compares with the posterior where the two agree.
    """
    diffusion = GaussianDiffusion(NoiseSchedule.linear(100))
    for t in (100, 60, 20, 5):
        expected = chain_variance(diffusion.schedule, t - 1, variance)
        assert continuation_variance(diffusion, t, variance) == pytest.approx(expected, rel=0.03), t


def test_at_t_1000_continuations_sample_the_posterior_of_x0_given_x_t():
    """At T = 1000 the chain's Var[x_0 | x_t] is near the analytic s^2 (1 - a) / (s^2 a + 1 - a), a = alpha_bar_t.

    ``chain_variance`` gives the computable difference: with beta~_t the chain is 3.9 % (t = 200) and 7.6 %
    (t = 50) below the posterior, so its tolerance is [-10 %, +2 %]; with beta_t, 1.0 % and 0.6 % above, so
    [-2 %, +3.5 %] (2 % of each being sampling error, 5 standard deviations, as above).
    """
    schedule = NoiseSchedule.linear(1000)
    diffusion = GaussianDiffusion(schedule)
    for t in (200, 50):
        posterior = posterior_variance(schedule, t - 1)
        small = continuation_variance(diffusion, t, "fixed_small") / posterior
        large = continuation_variance(diffusion, t, "fixed_large") / posterior
        assert 0.90 < small < 1.02, (t, small)
        assert 0.98 < large < 1.035, (t, large)
        assert small < large  # beta_t > beta~_t: the larger variance spreads more


def test_spread_is_the_mean_per_pixel_standard_deviation_in_pixel_levels():
    finals = torch.zeros(4, 1, 2, 2, dtype=torch.uint8)
    finals[:, 0, 0, 0] = torch.tensor([0, 0, 255, 255], dtype=torch.uint8)  # one pixel of std 147.2, three of 0
    assert spread_of(finals) == pytest.approx(float(torch.tensor([0, 0, 255, 255.0]).std()) / 4)
    assert spread_of(finals[:1]) == 0.0


def test_fig7_steps_are_the_papers_scaled_to_t():
    assert fig7_steps(1000) == [1000, 750, 500, 250]
    assert fig7_steps(50) == [50, 38, 25, 12]
    assert fig7_steps(2) == [2, 1]


# --- branching on a trained model --------------------------------------------------------------------------


def branching(request: BranchRequest, model=None) -> tuple[list, BranchResult]:
    events = list(run_branching(request, model))
    assert isinstance(events[-1], BranchResult)
    return events, events[-1]


def test_branching_yields_progress_then_a_row_per_step_then_the_result(tiny_model):
    model = load_model(tiny_model)
    events, result = branching(BranchRequest(tiny_model, at=[50, 30, 5], num=3, seed=4), model)
    rows = [event for event in events if isinstance(event, BranchRow)]
    progress = [event for event in events if isinstance(event, BranchProgress)]
    assert [row.t for row in rows] == [50, 30, 5] and result.rows == rows
    assert [p.done for p in progress] == list(range(1, len(progress) + 1))
    assert progress[-1].done == progress[-1].total
    for row in rows:
        assert row.x_t.shape == row.x0_hat.shape == (16, 16, 3) and row.x_t.dtype == np.uint8
        assert len(row.finals) == 3
        assert row.spread == pytest.approx(spread_of(torch.from_numpy(np.stack(row.finals))))
        assert row.decided == pytest.approx(min(1.0, max(0.0, 1 - row.spread / result.reference_spread)))
    assert result.reference_spread > 0
    assert result.metadata["at"] == "50,30,5" and result.metadata["seed"] == "4"


def test_branching_is_reproducible_and_each_continuation_from_its_own_seed(tiny_model):
    """The same request gives the same rows; continuation k at t is the reverse process from the shared x_t with
    seed_for(seed, t, k) alone; the shared x_t is image 1 of the Generate batch of 2 from the same seed."""
    model = load_model(tiny_model)
    request = BranchRequest(tiny_model, at=[40, 20], num=2, seed=7, image=1, batch_size=2, variance="fixed_small",
                            precision="fp32")  # the continuation below runs alone, without autocast
    _, first = branching(request, model)
    _, again = branching(request, model)
    for row, same in zip(first.rows, again.rows):
        assert all(np.array_equal(a, b) for a, b in zip([row.x_t, *row.finals], [same.x_t, *same.finals]))
    generated = sample_images(SamplingRequest(num_images=2, seed=7, sampler="ddpm", variance="fixed_small",
                                              precision="fp32", keep_trajectory_of=[1]), model)
    row = first.rows[1]
    frame = generated.trajectory.timesteps.index(row.t)
    assert np.array_equal(row.x_t, generated.trajectory.frame(frame, 1)[0])
    # Continuation 1 at t = 20 alone, from the exact x_t (recomputed, not the uint8 frame).
    x_t = None
    generator = torch.Generator().manual_seed(7)
    for step in model.diffusion.ddpm_sample_progressive(model.unet, (2, 3, 16, 16), generator, "fixed_small"):
        if step.t == row.t - 1:
            x_t = step.x_t[1:2]
            break
    final = None
    for step in continue_from(model.diffusion, model.unet, x_t, row.t - 1, seed_for(7, row.t, 1), "ddpm",
                              variance="fixed_small", clip=True):
        final = step.x_prev
    alone = ((final[0].clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0).numpy()
    assert np.array_equal(alone, row.finals[1])
    assert not np.array_equal(row.finals[0], row.finals[1])


def test_a_respaced_chain_branches_at_the_steps_it_visits(tiny_model):
    model = load_model(tiny_model)
    _, result = branching(BranchRequest(tiny_model, at=[50, 30, 10], num=2, sampler="ddim", steps=7, eta=1.0), model)
    visited = [index + 1 for index in visited_timesteps(model.diffusion, "ddim", 7)]
    assert [row.t for row in result.rows] == [50, 34, 9]
    assert all(row.t in visited for row in result.rows)


@pytest.mark.parametrize("changes, fragment", [
    ({"sampler": "ddim", "eta": 0.0}, "every continuation would be the same image"),
    ({"sampler": "dpm-solver++"}, r"DPM-Solver\+\+ is deterministic"),
    ({"at": [51]}, "must lie in 1..50"),
    ({"at": [0]}, "must lie in 1..50"),
    ({"at": [10, 20]}, "strictly decreasing"),
    ({"num": 0}, "at least 1"),
    ({"image": 2, "batch_size": 2}, "not in a batch of 2"),
])
def test_impossible_branching_is_one_sentence(changes, fragment):
    request = BranchRequest(Path("model"), **{"at": [25], **changes})
    with pytest.raises(SettingError, match=fragment) as error:
        request.validate(50)
    assert str(error.value).count(". ") == 0 and str(error.value).endswith(".")


def test_the_forecast_of_fig7_at_256_px_on_a_cpu_says_minutes_and_why():
    info = ModelInfo(Path("ddpm-256"), preset_config("ddpm-256"), ScheduleConfig())
    cost = branching_cost(BranchRequest(info.path, at=fig7_steps(1000)), info)
    # 8 reference samples of 20 calls, the chain from t = 1000 to 250, 8 continuations from each step.
    assert cost.image_calls == 8 * 20 + 751 + 8 * (1000 + 750 + 500 + 250)
    assert cost.slow and cost.seconds > 60
    sentence = cost.describe()
    assert sentence.startswith("Fig. 7 at 256 px on this CPU: about ")
    assert "4 rows x 8 continuations x ~625 model calls" in sentence
    blend = interpolation_cost(InterpolationRequest(info.path, None, None, t=0), info)
    assert blend.image_calls == 0 and "no model call" in blend.describe()
    assert interpolation_cost(InterpolationRequest(info.path, None, None), info).image_calls == 9 * 500


# --- interpolation ------------------------------------------------------------------------------------------


def pictures(seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (16, 16, 3), dtype=np.uint8), rng.integers(0, 256, (24, 20, 3), dtype=np.uint8)


def interpolation(request: InterpolationRequest, model) -> InterpolationResult:
    events = list(run_interpolation(request, model))
    assert all(isinstance(event, InterpolationProgress) for event in events[:-1])
    return events[-1]


def test_at_t_0_the_interpolation_is_the_pixel_blend_exactly(tiny_model):
    model = load_model(tiny_model)
    a, b = pictures(0)
    result = interpolation(InterpolationRequest(tiny_model, a, b, t=0, steps=5), model)
    assert result.lambdas == [0.0, 0.25, 0.5, 0.75, 1.0] and result.sampling is None
    source_a, source_b = result.sources
    assert np.array_equal(source_a, a)  # already the model's size and channels: unchanged
    for lam, frame in zip(result.lambdas, result.frames):
        expected = np.round((1 - lam) * source_a.astype(float) + lam * source_b.astype(float)).astype(np.uint8)
        assert np.array_equal(frame, expected)
    assert np.array_equal(result.frames[0], source_a) and np.array_equal(result.frames[-1], source_b)


def test_at_t_T_the_frames_do_not_depend_on_the_sources(tiny_model):
    """At t = T, x_t = sqrt(alpha_bar_T) x_0 + sqrt(1 - alpha_bar_T) eps: two sources' x_T differ by at most
    2 sqrt(alpha_bar_T) = 0.013 (model range, T = 50), under 2 pixel levels, against the chain's noise of 127
    levels. With the same noise the frames of unrelated sources then agree to a few levels; a different seed,
    by contrast, changes them by tens of levels."""
    model = load_model(tiny_model)
    assert 2 * model.diffusion.schedule.float64["sqrt_alphas_cumprod"][-1] < 0.015
    first = interpolation(InterpolationRequest(tiny_model, *pictures(1), t=50, steps=3, seed=2), model)
    other = interpolation(InterpolationRequest(tiny_model, *pictures(2), t=50, steps=3, seed=2), model)
    reseeded = interpolation(InterpolationRequest(tiny_model, *pictures(1), t=50, steps=3, seed=3), model)
    sources_differ = np.abs(first.sources[0].astype(float) - other.sources[0]).mean()
    for frame, same, new in zip(first.frames, other.frames, reseeded.frames):
        assert np.abs(frame.astype(float) - same).mean() < 3.0
        assert np.abs(frame.astype(float) - new).mean() > 20.0
    assert sources_differ > 50.0


def test_one_noise_for_every_lambda_equal_mixes_give_equal_frames(tiny_model):
    """Equal lambda gives equal frames: with a == b every frame is the same; lambda = 0.5 of a 3-step and of a
    5-step strip are equal; and the ends are the reconstructions, the reverse process from q(a, t) alone."""
    model = load_model(tiny_model)
    a, b = pictures(3)
    same = interpolation(InterpolationRequest(tiny_model, a, a, t=20, steps=4, seed=5), model)
    assert all(np.array_equal(frame, same.frames[0]) for frame in same.frames)
    three = interpolation(InterpolationRequest(tiny_model, a, b, t=20, steps=3, seed=5), model)
    five = interpolation(InterpolationRequest(tiny_model, a, b, t=20, steps=5, seed=5), model)
    assert np.array_equal(three.frames[1], five.frames[2])
    assert not np.array_equal(five.frames[1], five.frames[2])
    x_a, x_b = encode_pair(model, three.sources[0].transpose(2, 0, 1), b_chw(three), 20, 5)
    for x_start, frame in ((x_a, three.frames[0]), (x_b, three.frames[-1])):
        alone = sample_images(SamplingRequest(num_images=1, seed=reverse_seed(5), sampler="ddpm",
                                              x_start=x_start, start_t=19), model)
        assert np.array_equal(alone.images[0].permute(1, 2, 0).numpy(), frame)


def b_chw(result: InterpolationResult) -> np.ndarray:
    return np.ascontiguousarray(result.sources[1].transpose(2, 0, 1))


def test_interpolation_is_reproducible_and_keeps_each_frames_trajectory(tiny_model):
    model = load_model(tiny_model)
    a, b = pictures(4)
    request = InterpolationRequest(tiny_model, a, b, t=10, steps=3, seed=1, sampler="ddim", sampler_steps=5)
    first, again = interpolation(request, model), interpolation(request, model)
    assert all(np.array_equal(x, y) for x, y in zip(first.frames, again.frames))
    trajectory = first.sampling.trajectory
    assert trajectory.image_indices == [0, 1, 2] and trajectory.timesteps[0] == 10 and trajectory.timesteps[-1] == 0
    assert np.array_equal(trajectory.frame(len(trajectory) - 1, 2)[0], first.frames[2])
    assert first.metadata["t"] == "10" and first.metadata["sampler"] == "ddim"


def test_pictures_are_seen_as_training_sees_them():
    grey = np.full((40, 30), 100, np.uint8)
    assert np.array_equal(as_model_sees_it(grey, 16, 3), np.full((3, 16, 16), 100, np.uint8))  # grey to RGB
    rgba = np.zeros((16, 16, 4), np.uint8)  # fully transparent: white, as training composites it
    assert (as_model_sees_it(rgba, 16, 3) == 255).all()
    assert as_model_sees_it(np.zeros((16, 16, 3), np.uint8), 16, 1).shape == (1, 16, 16)
    assert np.array_equal(pixel_blend(np.array([0], np.uint8), np.array([255], np.uint8), 0.5), [128])


@pytest.mark.parametrize("picture, changes, fragment", [
    (np.zeros((16, 16, 2), np.uint8), {}, "grey, RGB or RGBA picture"),
    (np.zeros((16, 16, 3), np.float32), {}, "8-bit pixels"),
    (np.zeros((4, 4, 3), np.uint8), {}, "too small"),
    (np.zeros((16, 16, 3), np.uint8), {"t": 51}, "must lie in 0..50"),
    (np.zeros((16, 16, 3), np.uint8), {"steps": 1}, "at least 2 values of lambda"),
])
def test_impossible_interpolation_is_one_sentence(tiny_model, picture, changes, fragment):
    model = load_model(tiny_model)
    request = InterpolationRequest(tiny_model, picture, np.zeros((16, 16, 3), np.uint8), **{"t": 25, **changes})
    with pytest.raises(SettingError, match=fragment):
        list(run_interpolation(request, model))
