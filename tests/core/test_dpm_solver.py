"""DPM-Solver++ (2M): parity with diffusers' solver, a case with a known answer, denoising from t, the sampling job."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ddpm_studio.core.diffusion.dpm_solver import dpm_solver_sample_progressive, solver_timesteps
from ddpm_studio.core.diffusion.process import GaussianDiffusion
from ddpm_studio.core.diffusion.samplers import sample, sample_progressive
from ddpm_studio.core.diffusion.schedule import NoiseSchedule
from ddpm_studio.core.errors import SettingError
from ddpm_studio.core.model import store as model_store
from ddpm_studio.core.model.unet import UNet, UNetConfig
from ddpm_studio.core.sampling.job import SamplingRequest, run_sampling
from tests.helpers.toy_models import exact_gaussian_eps_model

SCHEDULES = {"linear": NoiseSchedule.linear, "cosine": NoiseSchedule.cosine}
DIFFUSERS_SCHEDULES = {"linear": "linear", "cosine": "squaredcos_cap_v2"}


def smooth_eps_model(schedule: NoiseSchedule, dtype: torch.dtype = torch.float32):
    """A fixed, non-linear eps-model whose x0_hat stays bounded at every t (as a trained model's does):
    the exact eps of N(0, 0.25 I) data, pulled towards a tanh of x_t."""
    alphas_cumprod = torch.tensor(schedule.float64["alphas_cumprod"], dtype=dtype)

    def eps_model(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        alpha_bar = alphas_cumprod[t.long()].reshape(-1, 1, 1, 1)
        sigma = (1 - alpha_bar).sqrt()
        pull = 0.4 * torch.tanh(2 * x) + 0.05 * torch.sin(3 * x)
        return sigma * (x - alpha_bar.sqrt() * pull) / (0.25 * alpha_bar + 1 - alpha_bar)

    return eps_model


def reference_solver(diffusers, num_steps: int, float64: bool = False, **config):
    """diffusers' DPM-Solver++ (2M) with ``num_steps``; with ``float64`` its sigmas (float32 there) are recomputed
    in float64 from its own alphas_cumprod, so that it can be compared in full precision."""
    scheduler = diffusers.DPMSolverMultistepScheduler(num_train_timesteps=1000, algorithm_type="dpmsolver++",
                                                      solver_order=2, **config)
    scheduler.set_timesteps(num_steps)
    if float64:
        alphas_cumprod = scheduler.alphas_cumprod.double()
        sigmas = ((1 - alphas_cumprod) / alphas_cumprod).sqrt()[scheduler.timesteps]
        scheduler.sigmas = torch.cat([sigmas, torch.zeros(1, dtype=torch.float64)])
    return scheduler


def diffusers_trajectory(scheduler, eps_model, x_start: torch.Tensor) -> tuple[list[int], list[torch.Tensor]]:
    """The reference's timesteps and its sample after each step, from ``x_start``."""
    x, trajectory = x_start.clone(), []
    for timestep in scheduler.timesteps:
        output = eps_model(x, timestep.reshape(1).expand(x.shape[0]))
        x = scheduler.step(output, timestep, x).prev_sample
        trajectory.append(x)
    return scheduler.timesteps.tolist(), trajectory


def relative_difference(ours: list[torch.Tensor], reference: list[torch.Tensor]) -> float:
    """max |ours - reference| over the whole trajectory, relative to the reference's largest value."""
    scale = max(float(step.abs().max()) for step in reference)
    return max(float((a - b).abs().max()) for a, b in zip(ours, reference, strict=True)) / scale


# --- parity with diffusers ---------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["linear", "cosine"])
@pytest.mark.parametrize("num_steps", [10, 20, 25])
def test_the_trajectory_equals_diffusers_dpm_solver(kind, num_steps):
    """In float64, since the cosine schedule's alpha_bar_T = 2.4e-9 makes x0_hat at T ill-conditioned in float32:
    there one float32 rounding of eps becomes 1e-3 of x0_hat, in diffusers' solver as in ours."""
    diffusers = pytest.importorskip("diffusers")
    schedule = SCHEDULES[kind]()
    scheduler = reference_solver(diffusers, num_steps, float64=True, beta_schedule=DIFFUSERS_SCHEDULES[kind])
    eps_model = smooth_eps_model(schedule, torch.float64)
    x_start = torch.randn((4, 3, 8, 8), generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    timesteps, reference = diffusers_trajectory(scheduler, eps_model, x_start)

    steps = list(dpm_solver_sample_progressive(GaussianDiffusion(schedule), eps_model, x_start.shape, num_steps,
                                               clip=False, x_start=x_start, spacing="linspace"))
    assert [step.t for step in steps] == timesteps and len(steps) == num_steps
    # Measured: 2e-7 to 3e-7 (diffusers rounds each step's sample to float32; its alpha_bar is a float32 product).
    assert relative_difference([step.x_prev for step in steps], reference) <= 1e-5
    # Each step's x_t is the previous step's result, and the last step returns its x0_hat.
    assert all(torch.equal(a.x_prev, b.x_t) for a, b in zip(steps, steps[1:]))
    assert torch.equal(steps[-1].x_prev, steps[-1].x0_hat)


def test_in_float32_the_linear_schedule_matches_diffusers_as_it_comes():
    diffusers = pytest.importorskip("diffusers")
    schedule = NoiseSchedule.linear()
    scheduler = reference_solver(diffusers, 20)
    eps_model = smooth_eps_model(schedule)
    x_start = torch.randn((4, 3, 8, 8), generator=torch.Generator().manual_seed(1))
    timesteps, reference = diffusers_trajectory(scheduler, eps_model, x_start)
    steps = list(dpm_solver_sample_progressive(GaussianDiffusion(schedule), eps_model, x_start.shape, 20, clip=False,
                                               x_start=x_start, spacing="linspace"))
    assert [step.t for step in steps] == timesteps
    assert relative_difference([step.x_prev for step in steps], reference) <= 1e-5  # measured: 6e-7


def test_clipping_is_diffusers_thresholding_at_one_and_a_learned_variance_is_ignored():
    """A tiny random U-Net that learned its variance, clipped x0_hat, the trained_betas route of configuring."""
    diffusers = pytest.importorskip("diffusers")
    schedule = NoiseSchedule.linear(1000)
    torch.manual_seed(0)
    unet = UNet(UNetConfig(16, 3, 8, (1, 2), 1, (), 0.0, 4, learned_variance=True)).eval()
    scheduler = reference_solver(diffusers, 12, trained_betas=schedule.float64["betas"], thresholding=True,
                                 sample_max_value=1.0, variance_type="learned_range")
    x_start = torch.randn((2, 3, 16, 16), generator=torch.Generator().manual_seed(2))
    with torch.inference_mode():
        timesteps, reference = diffusers_trajectory(scheduler, unet, x_start)
        steps = list(dpm_solver_sample_progressive(GaussianDiffusion(schedule), unet, x_start.shape, 12, clip=True,
                                                   x_start=x_start, spacing="linspace"))
    assert [step.t for step in steps] == timesteps
    assert relative_difference([step.x_prev for step in steps], reference) <= 1e-5
    assert all(float(step.x0_hat.abs().max()) <= 1.0 for step in steps)
    assert float(steps[0].x0_hat.abs().max()) == 1.0  # a random network's x0_hat at T was really clipped


# --- a known answer ----------------------------------------------------------------------------------

DATA_VARIANCE = 0.25


def final_variance(diffusion: GaussianDiffusion, sampler: str, num_steps: int, **options) -> float:
    model = exact_gaussian_eps_model(diffusion.schedule, DATA_VARIANCE)
    x_start = torch.randn((50_000, 1, 1, 1), generator=torch.Generator().manual_seed(0))
    images = sample(diffusion, model, x_start.shape, sampler, num_steps=num_steps, clip=False, x_start=x_start,
                              **options)
    return float(images.double().var())


def test_on_gaussian_data_the_solver_errs_less_than_ddim():
    """The probability-flow ODE maps N(0, I) to N(0, 0.25 I) exactly: the sample variance shows the solver's error.

    Measured (linear schedule, T = 1000), variance (target 0.25):
        steps   DDIM    DPM-Solver++ (linspace)   DPM-Solver++ (log-SNR)   diffusers 3M (linspace)
         10     0.129   0.163                     0.266                    0.166
         20     0.178   0.228                     0.257                    0.229
    """
    diffusion = GaussianDiffusion(NoiseSchedule.linear())
    for num_steps in (10, 20):
        ddim_error = abs(final_variance(diffusion, "ddim", num_steps) - DATA_VARIANCE)
        solver_error = abs(final_variance(diffusion, "dpm-solver++", num_steps, spacing="linspace") - DATA_VARIANCE)
        log_snr_error = abs(final_variance(diffusion, "dpm-solver++", num_steps) - DATA_VARIANCE)  # the default
        assert solver_error < 0.8 * ddim_error
        assert log_snr_error < 0.5 * solver_error


# --- timesteps, denoising from t, respacing ---------------------------------------------------------------


def test_spacings_start_at_the_start_and_keep_the_step_count():
    diffusion = GaussianDiffusion(NoiseSchedule.linear())
    assert solver_timesteps(diffusion, 10, 999, "linspace") == [999, 899, 799, 699, 599, 500, 400, 300, 200, 100]
    log_snr = solver_timesteps(diffusion, 10, 999, "logsnr")
    assert log_snr[0] == 999 and log_snr[-1] == 0 and len(log_snr) == 10
    lambdas = 0.5 * diffusion.schedule.float64["log_snr"][log_snr]
    assert np.allclose(np.diff(lambdas), np.diff(lambdas).mean(), rtol=0.05)  # uniform in lambda, up to rounding
    # From a small t there are fewer distinct timesteps than asked for: every one, once.
    assert solver_timesteps(diffusion, 20, 5) == [5, 4, 3, 2, 1, 0]
    # Where rounding in log-SNR would put two steps on one index, each step still gets its own.
    for start_t in (9, 20, 49):
        for num_steps in range(2, start_t + 1):
            steps = solver_timesteps(GaussianDiffusion(NoiseSchedule.linear(50)), num_steps, start_t, "logsnr")
            assert len(steps) == num_steps and steps[0] == start_t and steps[-1] == 0
            assert all(a > b for a, b in zip(steps, steps[1:]))


def test_denoising_from_t_equals_T_is_the_normal_run_from_that_noise():
    schedule = NoiseSchedule.linear(50)
    diffusion = GaussianDiffusion(schedule)
    model = smooth_eps_model(schedule)
    shape = (3, 3, 8, 8)
    normal = list(sample_progressive(diffusion, model, shape, "dpm-solver++", num_steps=10,
                                               generator=torch.Generator().manual_seed(7)))
    x_T = torch.randn(shape, generator=torch.Generator().manual_seed(7))
    from_t = list(sample_progressive(diffusion, model, shape, "dpm-solver++", num_steps=10, x_start=x_T, start_t=49))
    assert len(normal) == len(from_t) == 10
    for a, b in zip(normal, from_t, strict=True):
        assert a.t == b.t and torch.equal(a.x_t, b.x_t) and torch.equal(a.x_prev, b.x_prev)
    # From an intermediate t it starts there, with that x_t.
    partial = list(sample_progressive(diffusion, model, shape, "dpm-solver++", num_steps=10, x_start=x_T, start_t=20))
    assert partial[0].t == 20 and torch.equal(partial[0].x_t, x_T) and len(partial) == 10


def test_a_respaced_process_reports_and_conditions_on_the_original_timesteps():
    schedule = NoiseSchedule.linear(100)
    diffusion = GaussianDiffusion(schedule)
    spaced = diffusion.respaced(list(range(0, 100, 4)))  # 25 of the 100 timesteps
    seen = []

    def model(x, t):
        seen.append(int(t[0]))
        return smooth_eps_model(schedule)(x, t)

    steps = list(sample_progressive(spaced, model, (2, 1, 4, 4), "dpm-solver++", num_steps=6,
                                           generator=torch.Generator().manual_seed(0)))
    assert seen == [step.t for step in steps] and all(t % 4 == 0 for t in seen) and seen[0] == 96
    # Respaced onto every step, the solver is the one of the original process.
    every = diffusion.respaced(list(range(100)))
    runs = [sample(process, smooth_eps_model(schedule), (2, 1, 4, 4), "dpm-solver++", num_steps=6,
                           generator=torch.Generator().manual_seed(0)) for process in (every, diffusion)]
    assert torch.equal(*runs)


def test_impossible_settings_are_refused_before_the_first_step():
    diffusion = GaussianDiffusion(NoiseSchedule.linear(50))
    model = smooth_eps_model(diffusion.schedule)
    with pytest.raises(SettingError, match="between 1 and 50 steps"):
        sample_progressive(diffusion, model, (1, 1, 2, 2), "dpm-solver++", num_steps=0)
    with pytest.raises(SettingError, match="spacing"):
        sample_progressive(diffusion, model, (1, 1, 2, 2), "dpm-solver++", num_steps=5, spacing="karras")
    with pytest.raises(SettingError, match="spacing"):
        SamplingRequest(sampler="dpm-solver++", spacing="karras").validate()


# --- the sampling job ---------------------------------------------------------------------------------


def test_the_sampling_job_records_the_solvers_trajectory_and_metadata(tiny_model):
    model = model_store.load_model(tiny_model)
    request = SamplingRequest(num_images=2, seed=3, sampler="dpm-solver++", steps=8, device="cpu")
    *steps, result = list(run_sampling(request, model))
    assert len(steps) == 8 and steps[0].t == 49
    assert result.trajectory.timesteps[0] == 50 and result.trajectory.timesteps[-1] == 0
    assert len(result.trajectory) == 9
    assert result.metadata["sampler"] == "dpm-solver++" and result.metadata["steps"] == "8"
    assert request.describe() == "DPM-Solver++ 8 steps"
    # Denoising from t: the request's steps are capped at the timesteps there are.
    x_start = torch.zeros((1, *model.image_shape))
    partial = SamplingRequest(num_images=1, sampler="dpm-solver++", steps=20, device="cpu", x_start=x_start, start_t=4)
    *steps, result = list(run_sampling(partial, model))
    assert [step.t for step in steps] == [4, 3, 2, 1, 0] and result.trajectory.timesteps[0] == 5
