"""The rate-distortion cursor's view: x_t and x0_hat are those the distortion curve measures, at the right t."""

import numpy as np
import pytest
import torch

from ddpm_studio.core.data.folders import to_model_range
from ddpm_studio.core.diffusion.variational_bound import vb_term_and_x0_error
from ddpm_studio.core.evaluation.likelihood import LikelihoodRequest, LikelihoodResult, evaluate_likelihood
from ddpm_studio.core.evaluation.receiver import prior_bpd, receiver_noise, receiver_tensors, receiver_view
from ddpm_studio.core.model.store import load_model
from tests.helpers.class_models import write_class_model
from tests.helpers.images import tiny_images


@pytest.fixture(scope="module")
def model(tiny_model):
    return load_model(tiny_model, torch.device("cpu"))


@pytest.mark.parametrize("steps", [1, 17, 50])
def test_x0_hat_is_the_one_the_distortion_curve_measures(model, steps):
    x0 = to_model_range(tiny_images(3))
    noise = receiver_noise(tuple(x0.shape))
    T = model.diffusion.num_timesteps
    _, x0_hat = receiver_tensors(model, x0, steps, noise)
    t = torch.full((3,), T - steps, dtype=torch.long)
    with torch.inference_mode():
        _, squared_error = vb_term_and_x0_error(model.diffusion, model.unet, x0, t, noise, "fixed_large", clip=True)
    measured = (x0_hat - x0).square().flatten(1).mean(1)
    torch.testing.assert_close(measured, squared_error, rtol=1e-5, atol=1e-7)


def test_the_view_is_x0_after_every_step_and_noise_after_one(model):
    image = tiny_images(1)[0]
    T = model.diffusion.num_timesteps
    late = receiver_view(model, image, T)  # t = 1: x_t is x_0 with a trace of noise
    early = receiver_view(model, image, 1)  # t = T: x_t is almost pure noise
    original = image.permute(1, 2, 0).numpy().astype(float)
    late_error = np.abs(late.noisy.astype(float) - original).mean()
    early_error = np.abs(early.noisy.astype(float) - original).mean()
    assert late_error < 5 < 40 < early_error
    assert late.noisy.shape == late.estimate.shape == (16, 16, 3) and late.noisy.dtype == np.uint8
    again = receiver_view(model, image, T)
    assert np.array_equal(again.noisy, late.noisy) and np.array_equal(again.estimate, late.estimate)  # fixed seed


def test_the_first_batch_prior_is_the_pass_s(model):
    images = tiny_images(4)
    result = [e for e in evaluate_likelihood(model, images, LikelihoodRequest(timesteps=2))
              if isinstance(e, LikelihoodResult)][0]
    assert prior_bpd(model, images) == pytest.approx(result.prior_bpd, rel=1e-12)


def test_a_class_conditional_model_is_viewed_with_the_null_label(tmp_path):
    model = load_model(write_class_model(tmp_path / "classes"), torch.device("cpu"))
    image = tiny_images(1)[0]
    view = receiver_view(model, image, 5)
    x0 = to_model_range(image[None])
    noise = receiver_noise(tuple(x0.shape))
    t = torch.full((1,), model.diffusion.num_timesteps - 5, dtype=torch.long)
    x_t = model.diffusion.q_sample(x0, t, noise)
    with torch.inference_mode():
        null = model.unet(x_t, t, torch.full((1,), model.unet.null_class, dtype=torch.long))
    x0_hat = model.diffusion.predict_x0_from_eps(x_t, t, null[:, :3]).clamp(-1, 1)
    expected = ((x0_hat[0] + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0).numpy()
    assert np.abs(view.estimate.astype(int) - expected.astype(int)).max() <= 1
