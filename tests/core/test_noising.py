"""The forward process view: the closed form at chosen t, its fixed noise, and the arrays for its plots."""

import numpy as np
import pytest
import torch

from ddpm_studio.core.diffusion.noising import ForwardProcessView
from ddpm_studio.core.diffusion.schedule import NoiseSchedule


def picture(size: int = 32, channels: int = 3, seed: int = 0) -> np.ndarray:
    """A smooth uint8 test picture (C, H, W): gradients, so it correlates with itself and not with noise."""
    ys, xs = np.mgrid[0:size, 0:size] / (size - 1)
    planes = [xs, ys, (xs + ys) / 2][:channels]
    return (np.stack(planes) * 255).round().astype(np.uint8)


def correlation(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a.astype(np.float64).ravel(), b.astype(np.float64).ravel())[0, 1])


def test_t_zero_is_the_image():
    image = picture()
    view = ForwardProcessView(image, NoiseSchedule.linear(100), seed=3)
    assert np.array_equal(view.x_t(0), image.transpose(1, 2, 0))
    assert torch.allclose(view.x_t_tensor(0), torch.from_numpy(image).float()[None] / 127.5 - 1)


def test_grey_images_come_back_two_dimensional():
    image = picture(channels=1)
    view = ForwardProcessView(image, NoiseSchedule.linear(10))
    assert view.x_t(0).shape == (32, 32)
    assert np.array_equal(view.x_t(0), image[0])


def test_x_t_is_the_closed_form_with_the_fixed_noise():
    schedule = NoiseSchedule.cosine(200)
    view = ForwardProcessView(picture(), schedule, seed=5)
    t = 120
    alpha_bar = schedule.float64["alphas_cumprod"][t - 1]
    expected = np.sqrt(alpha_bar) * view.x0 + np.sqrt(1 - alpha_bar) * view.noise
    assert torch.allclose(view.x_t_tensor(t), expected.float(), atol=1e-6)
    assert view.x_t_tensor(t).shape == (1, 3, 32, 32)


def test_the_same_seed_gives_the_same_x_t_and_another_seed_does_not():
    schedule = NoiseSchedule.linear(100)
    first, again, other = (ForwardProcessView(picture(), schedule, seed=s) for s in (7, 7, 8))
    assert np.array_equal(first.x_t(60), again.x_t(60))
    assert np.array_equal(first.x_t(60), first.x_t(60))  # scrubbing back shows the same frame
    assert not np.array_equal(first.x_t(60), other.x_t(60))


def test_noise_grows_with_t_until_the_image_is_gone():
    image = picture(64)
    view = ForwardProcessView(image, NoiseSchedule.linear(1000), seed=0)
    reference = image.transpose(1, 2, 0)
    correlations = [correlation(view.x_t(t), reference) for t in (0, 100, 300, 1000)]
    assert correlations[0] == pytest.approx(1.0)
    assert correlations[0] > correlations[1] > correlations[2] > abs(correlations[3])
    assert abs(correlations[3]) < 0.1


def test_the_plot_arrays_match_the_schedule():
    schedule = NoiseSchedule.linear(50)
    view = ForwardProcessView(picture(), schedule)
    assert view.alpha_bar.shape == (51,) and np.array_equal(view.timesteps, np.arange(51))
    assert view.alpha_bar[0] == 1.0
    assert np.allclose(view.alpha_bar[1:], np.cumprod(1 - schedule.float64["betas"]))
    assert np.allclose(view.log_snr, np.log(view.alpha_bar[1:] / (1 - view.alpha_bar[1:])))
    assert np.array_equal(view.snr_timesteps, np.arange(1, 51))
    assert np.all(np.diff(view.alpha_bar) < 0) and np.all(np.diff(view.log_snr) < 0)
    assert view.signal_fraction(0) == 1.0


def test_t_outside_the_schedule_is_refused():
    view = ForwardProcessView(picture(), NoiseSchedule.linear(10))
    with pytest.raises(ValueError, match="0..10"):
        view.x_t(11)
    with pytest.raises(TypeError):
        ForwardProcessView(picture().astype(np.float32), NoiseSchedule.linear(10))


@pytest.mark.parametrize("channels", [3, 1])
def test_the_pictures_are_exactly_the_pixels_of_the_tensors(channels):
    """x_t as a picture comes from numpy (for the window's thread), x_t as a tensor from torch (for denoising):
    they must show the same pixels at every t."""
    from ddpm_studio.core.data.folders import from_model_range
    from ddpm_studio.core.sampling.imaging import to_hwc

    view = ForwardProcessView(picture(48, channels), NoiseSchedule.linear(300), seed=11)
    for t in range(0, 301):
        expected = to_hwc(from_model_range(view.x_t_tensor(t))[0])
        assert view.x_t(t).dtype == np.uint8 and view.x_t(t).flags.c_contiguous
        assert np.array_equal(view.x_t(t), expected), f"t = {t}"
