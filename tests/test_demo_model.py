"""The shipped demo model: it loads, samples on the CPU, and its samples look like the demo data, not noise."""

import numpy as np
import pytest
import torch

from ddpm_studio.core.data.demo import make_demo_images
from ddpm_studio.core.model import store as model_store
from ddpm_studio.core.sampling.job import SamplingRequest, sample_images
from ddpm_studio.paths import BUNDLED_MODELS_DIR
from tests.helpers.image_stats import (
    colour_histogram,
    flat_fraction,
    histogram_distance,
    to_channels_last,
    total_variation,
)

DEMO_MODEL = BUNDLED_MODELS_DIR / "demo"


@pytest.fixture(scope="module")
def demo_samples() -> np.ndarray:
    model = model_store.load_model(DEMO_MODEL)
    request = SamplingRequest(num_images=8, seed=0, sampler="ddim", steps=50, device="cpu")
    result = sample_images(request, model)
    assert result.images.shape == (8, 3, 32, 32) and result.images.dtype == torch.uint8
    return to_channels_last(result.images)


def test_demo_model_ships_sampling_weights_and_its_recipe():
    info = model_store.read_model_info(DEMO_MODEL)
    assert (DEMO_MODEL / model_store.EMA_FILE).is_file()
    assert info.unet.image_size == 32 and info.step > 0
    assert "ddpm-studio train" in info.command
    assert any(line.startswith("ddpm-studio demo-data") for line in info.extra["recipe"])
    assert len(model_store.load_loss_history(DEMO_MODEL)) == info.step
    size = sum(path.stat().st_size for path in DEMO_MODEL.iterdir() if path.is_file())
    assert size < 8 * 2**20  # small enough for the repository


def test_demo_samples_look_like_the_demo_data_and_not_like_noise(demo_samples):
    demo = make_demo_images(200, size=32, seed=5)
    noise = np.random.default_rng(0).integers(0, 256, size=(8, 32, 32, 3), dtype=np.uint8)
    # Measured when the shipped model was trained (8 DDIM-50 samples, seed 0, 4-bin histograms):
    #                      samples   demo data   uniform noise
    #   flat fraction        0.44      0.90         0.00
    #   total variation       9.9      3.1          85.9
    #   histogram distance   0.64      0.26 (8 images)  0.79   (each to 200 demo images)
    # A broken model gives noise-like numbers; the thresholds sit well between the two.
    assert flat_fraction(demo_samples) > 0.25
    assert flat_fraction(noise) < 0.05
    assert total_variation(demo_samples) < 20.0 < total_variation(noise)
    reference = colour_histogram(demo, bins=4)
    samples_distance = histogram_distance(colour_histogram(demo_samples, bins=4), reference)
    noise_distance = histogram_distance(colour_histogram(noise, bins=4), reference)
    assert samples_distance < noise_distance - 0.05


def test_bf16_samples_stay_close_to_float32_from_the_same_seed():
    """What "auto" precision does on CPUs with native bf16: the images barely change."""
    model = model_store.load_model(DEMO_MODEL)
    images = {}
    for precision in ("fp32", "bf16"):
        request = SamplingRequest(num_images=4, seed=3, sampler="ddim", steps=10, device="cpu", precision=precision)
        images[precision] = sample_images(request, model).images.float()
    difference = (images["bf16"] - images["fp32"]).abs()
    assert difference.max() > 0  # bf16 really ran
    # Measured: a mean difference of about 1 level of 255 (DDIM 50, 16 images, `bench --bf16-vs-fp32`).
    assert difference.mean() < 4
    assert (difference > 32).float().mean() < 0.02
    channel_means = [images[p].mean(dim=(0, 2, 3)) for p in ("fp32", "bf16")]
    assert torch.allclose(channel_means[0], channel_means[1], atol=3)
