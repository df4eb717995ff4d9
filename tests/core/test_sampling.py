"""Sampling a saved model: progress events, the trajectory within its budget, PNG metadata, exports."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ddpm_studio.core.data.demo import make_demo_images
from ddpm_studio.core.diffusion.process import SampleStep
from ddpm_studio.core.model import store as model_store
from ddpm_studio.core.sampling.imaging import to_uint8
from ddpm_studio.core.sampling.job import (
    DETAIL_STEPS,
    SamplingRequest,
    SamplingResult,
    export_trajectory,
    frames_to_keep,
    run_sampling,
    sample_images,
    save_samples,
)
from ddpm_studio.core.training.config import TrainingConfig
from ddpm_studio.core.training.events import FinishedEvent
from ddpm_studio.core.training.loop import train

T = 50  # the shared tiny model's number of timesteps


@pytest.fixture(scope="module")
def loaded(tiny_model):
    return model_store.load_model(tiny_model)


@pytest.fixture(scope="module")
def long_schedule_model(tmp_path_factory) -> Path:
    """A tiny model with T = 200, so that a DDPM run has more steps than a small budget keeps."""
    folder = tmp_path_factory.mktemp("models") / "long-schedule"
    images = torch.from_numpy(make_demo_images(16, size=16)).permute(0, 3, 1, 2).contiguous()
    config = TrainingConfig.for_preset("tiny", steps=1, num_timesteps=200, preview_count=0)
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert isinstance(list(train(config, images, folder))[-1], FinishedEvent)
    finally:
        torch.set_num_threads(previous)
    return folder


def run(request: SamplingRequest, model=None) -> tuple[list[SampleStep], SamplingResult]:
    events = list(run_sampling(request, model))
    *progress, result = events
    assert all(isinstance(event, SampleStep) for event in progress)
    assert isinstance(result, SamplingResult)
    return progress, result


# --- events and images -------------------------------------------------------------------------------


def test_ddpm_yields_one_event_per_timestep_then_uint8_images(loaded):
    progress, result = run(SamplingRequest(num_images=3, seed=5, sampler="ddpm", device="cpu"), loaded)
    assert [event.step for event in progress] == list(range(T))
    assert [event.t for event in progress] == list(range(T - 1, -1, -1))
    assert {event.num_steps for event in progress} == {T}
    assert progress[0].x_t.shape == (3, 3, 16, 16)
    assert result.images.dtype == torch.uint8 and result.images.shape == (3, 3, 16, 16)
    assert result.images.device.type == "cpu"


@pytest.mark.parametrize("steps", [1, 7, 50])
def test_ddim_yields_as_many_events_as_steps(loaded, steps):
    progress, result = run(SamplingRequest(num_images=2, sampler="ddim", steps=steps, device="cpu"), loaded)
    assert len(progress) == steps and progress[0].t == T - 1
    assert progress[-1].t == (0 if steps > 1 else T - 1)  # one DDIM step goes from x_T straight to x_0
    assert result.images.shape == (2, 3, 16, 16) and result.images.dtype == torch.uint8


def test_ddim_with_more_steps_than_timesteps_uses_every_timestep(loaded):
    progress, _ = run(SamplingRequest(num_images=1, sampler="ddim", steps=500, device="cpu"), loaded)
    assert len(progress) == T


def test_the_same_seed_gives_the_same_images_and_another_seed_others(loaded):
    def images(seed):
        request = SamplingRequest(num_images=2, seed=seed, sampler="ddim", steps=5, device="cpu")
        return sample_images(request, loaded).images

    assert torch.equal(images(1), images(1))
    assert not torch.equal(images(1), images(2))


def test_sampling_by_model_path_loads_the_model(tiny_model):
    result = sample_images(SamplingRequest(model_path=tiny_model, num_images=1, sampler="ddim", steps=3, device="cpu"))
    assert result.images.shape == (1, 3, 16, 16)
    assert result.metadata["model"] == tiny_model.name and result.metadata["model_step"] == "12"
    assert len(result.trajectory) == 0  # sample_images records no trajectory unless asked


def test_denoising_from_t_starts_there(loaded):
    x_start = torch.zeros(2, 3, 16, 16)
    progress, result = run(SamplingRequest(num_images=2, sampler="ddpm", x_start=x_start, start_t=9, device="cpu"),
                           loaded)
    assert len(progress) == 10 and progress[0].t == 9
    assert torch.equal(progress[0].x_t, x_start)
    assert result.metadata["start_t"] == "10"
    assert result.trajectory.timesteps[0] == 10


@pytest.mark.parametrize("change", [dict(num_images=0), dict(sampler="euler"), dict(variance="learned"),
                                    dict(sampler="ddim", steps=0), dict(eta=1.5)])
def test_impossible_requests_are_refused_in_one_sentence(loaded, change):
    with pytest.raises(ValueError) as error:
        next(run_sampling(SamplingRequest(device="cpu", **change), loaded))
    assert "\n" not in str(error.value) and str(error.value).endswith(".")


# --- the trajectory -----------------------------------------------------------------------------------


@pytest.mark.parametrize("sampler", ["ddpm", "ddim"])
def test_the_trajectory_runs_from_noise_at_t_equals_T_to_the_final_image(loaded, sampler):
    request = SamplingRequest(num_images=3, seed=11, sampler=sampler, steps=10, device="cpu", keep_trajectory_of=[0, 2])
    progress, result = run(request, loaded)
    trajectory = result.trajectory
    assert trajectory.image_indices == [0, 2]
    assert len(trajectory) == len(progress) + 1  # every step fits the default budget, plus the final image
    assert trajectory.timesteps[0] == T and trajectory.timesteps[-1] == 0
    assert trajectory.timesteps == sorted(trajectory.timesteps, reverse=True)
    # The first frame is the starting noise x_T, drawn first from the request's seed.
    noise = torch.randn((3, 3, 16, 16), generator=torch.Generator().manual_seed(11))
    assert torch.equal(trajectory.x_t[0], to_uint8(noise[[0, 2]]))
    # The last frame is the final image, for x_t and x0_hat alike.
    assert torch.equal(trajectory.x_t[-1], result.images[[0, 2]])
    assert torch.equal(trajectory.x0_hat[-1], result.images[[0, 2]])
    assert all(frame.dtype == torch.uint8 and frame.shape == (2, 3, 16, 16)
               for frame in trajectory.x_t + trajectory.x0_hat)
    x_t, x0_hat = trajectory.frame(len(trajectory) - 1, 2)
    assert x_t.shape == (16, 16, 3) and x_t.flags.c_contiguous
    np.testing.assert_array_equal(x_t, result.images[2].permute(1, 2, 0).numpy())
    with pytest.raises(ValueError):
        trajectory.frame(0, 1)  # image 1 was not recorded


def test_a_small_budget_thins_early_frames_but_keeps_the_first_and_the_last_fifty(long_schedule_model):
    model = model_store.load_model(long_schedule_model)
    bytes_per_frame = 2 * 1 * 3 * 16 * 16  # x_t and x0_hat of one image
    request = SamplingRequest(num_images=2, sampler="ddpm", device="cpu", keep_trajectory_of=[1],
                              trajectory_budget_bytes=80 * bytes_per_frame)
    progress, result = run(request, model)
    assert len(progress) == 200
    timesteps = result.trajectory.timesteps
    assert len(timesteps) <= 80 + 1  # within the budget, plus the final image
    assert timesteps[0] == 200  # the pure noise
    assert timesteps[-(DETAIL_STEPS + 1):] == list(range(DETAIL_STEPS, -1, -1))  # t = 50 .. 1, then the image
    assert len(timesteps) > DETAIL_STEPS + 10  # early frames are thinned, not dropped
    assert len(result.trajectory.x_t) == len(result.trajectory.x0_hat) == len(timesteps)


@pytest.mark.parametrize(
    "num_steps, bytes_per_frame, budget",
    [(50, 100, 0), (10, 1, 10**9), (1000, 1, 10**6), (1000, 10, 1000), (1000, 10**9, 1), (1000, 0, 0),
     (53, 1, 0), (52, 1, 0), (4000, 1000, 512 * 2**20), (101, 7, 7 * 60)],
)
def test_frames_to_keep(num_steps, bytes_per_frame, budget):
    keep = frames_to_keep(num_steps, bytes_per_frame, budget)
    affordable = max(budget // max(bytes_per_frame, 1), DETAIL_STEPS + 2)
    assert keep <= set(range(num_steps))
    assert len(keep) <= affordable
    assert 0 in keep  # pure noise
    assert set(range(max(num_steps - DETAIL_STEPS, 0), num_steps)) <= keep  # the last 50 steps, always
    if num_steps <= affordable:
        assert keep == set(range(num_steps))
    else:
        early = sorted(k for k in keep if k < num_steps - DETAIL_STEPS)
        strides = set(np.diff(early).tolist())
        assert len(strides) <= 1  # evenly spaced
        assert len(keep) >= affordable // 2  # and the budget is used, not wasted


# --- saving -------------------------------------------------------------------------------------------


def test_save_samples_writes_pngs_with_their_metadata(loaded, tmp_path):
    result = sample_images(SamplingRequest(num_images=4, seed=42, sampler="ddim", steps=5, device="cpu"), loaded)
    paths = save_samples(result, tmp_path / "out")
    assert len(paths) == 5 and all(path.suffix == ".png" for path in paths)
    for index, path in enumerate(paths[:-1]):
        with Image.open(path) as image:
            assert image.size == (16, 16) and image.mode == "RGB"
            assert image.text["model"] == loaded.info.name
            assert image.text["seed"] == "42" and image.text["sampler"] == "ddim" and image.text["steps"] == "5"
            assert image.text["index"] == str(index) and image.text["Software"] == "DDPM Studio"
            np.testing.assert_array_equal(np.asarray(image), result.images[index].permute(1, 2, 0).numpy())
    with Image.open(paths[-1]) as grid:
        assert grid.width > 32 and grid.text["images"] == "4" and grid.text["seed"] == "42"
    assert not list((tmp_path / "out").glob(".*"))  # no temporary files left


def test_ddpm_metadata_names_the_variance_and_every_step(loaded, tmp_path):
    result = sample_images(SamplingRequest(num_images=1, seed=3, sampler="ddpm", variance="fixed_small", device="cpu"),
                           loaded)
    [image_path, _grid] = save_samples(result, tmp_path)
    with Image.open(image_path) as image:
        assert image.text["sampler"] == "ddpm" and image.text["steps"] == str(T)
        assert image.text["variance"] == "fixed_small"


@pytest.mark.parametrize("kind", ["gif", "webp", "strip"])
def test_export_trajectory(loaded, tmp_path, kind):
    request = SamplingRequest(num_images=2, seed=1, sampler="ddim", steps=12, device="cpu", keep_trajectory_of=[1])
    _, result = run(request, loaded)
    path = export_trajectory(result, 1, tmp_path / "trajectory", kind, scale=2)
    assert path.exists() and path.suffix == {"gif": ".gif", "webp": ".webp", "strip": ".png"}[kind]
    with Image.open(path) as image:
        if kind == "strip":
            assert image.text["rows"] == "x_t, x0_hat" and image.text["timesteps"].split(",")[0] == str(T)
            assert image.text["timesteps"].split(",")[-1] == "0"
            assert image.height > 2 * 16 * 2 and image.width > 10 * 16 * 2 - 1
        else:
            assert getattr(image, "n_frames", 1) == len(result.trajectory)  # every frame, x_t beside x0_hat
            assert image.size == (2 * (2 * 16 + 3), 2 * (16 + 2))  # x_t | x0_hat with 1 px padding, upscaled 2x
            # The last frame shows the final image (upscaled 2x) on its left.
            image.seek(image.n_frames - 1)
            last = np.asarray(image.convert("RGB"))
            expected = result.images[1].permute(1, 2, 0).numpy().repeat(2, 0).repeat(2, 1)
            if kind == "webp":  # lossless
                np.testing.assert_array_equal(last[2:34, 2:34], expected)
    with pytest.raises(ValueError):
        export_trajectory(result, 0, tmp_path / "other", kind)  # image 0 was not recorded


def test_256px_frames_of_a_full_ddpm_run_stay_within_the_timeline_budget():
    """16 images at 256 px over 1000 steps would take 6 GB of frames; the budget keeps a stride of them."""
    from ddpm_studio.core.sampling.job import DEFAULT_TRAJECTORY_BUDGET, DETAIL_STEPS, frames_to_keep

    bytes_per_frame = 2 * 16 * 3 * 256 * 256  # x_t and x0_hat, uint8
    kept = frames_to_keep(1000, bytes_per_frame, DEFAULT_TRAJECTORY_BUDGET)
    assert len(kept) * bytes_per_frame <= DEFAULT_TRAJECTORY_BUDGET
    assert set(range(1000 - DETAIL_STEPS, 1000)) <= kept and 0 in kept  # where the image forms, and the start
