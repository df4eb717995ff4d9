"""The shipped demo model: it loads, samples on the CPU, and its samples look like the demo data, not noise."""

import numpy as np
import pytest
import torch

from ddpm_studio.core import model_store
from ddpm_studio.core.demo_data import make_demo_images
from ddpm_studio.core.image_stats import colour_histogram, flat_fraction, histogram_distance, to_channels_last, total_variation
from ddpm_studio.core.sampling import SamplingRequest, sample_images
from ddpm_studio.paths import BUNDLED_MODELS_DIR

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
    assert "ddpm-studio demo-data" in info.extra["recipe"]
    assert len(model_store.load_loss_history(DEMO_MODEL)) == info.step
    size = sum(path.stat().st_size for path in DEMO_MODEL.iterdir() if path.is_file())
    assert size < 8 * 2**20  # small enough for the repository


def test_demo_samples_look_like_the_demo_data_and_not_like_noise(demo_samples):
    rng = np.random.default_rng(0)
    demo = make_demo_images(200, size=32, seed=5)
    noise = rng.integers(0, 256, size=(8, 32, 32, 3), dtype=np.uint8)
    # Measured for the shipped model (8 DDIM-50 samples, seed 0) when it was trained; see the
    # constants below. Demo data: flat 0.89, TV 3.3. Uniform noise: flat 0.00, TV 85, histogram
    # distance to the demo data 0.93.
    assert flat_fraction(demo_samples) > SAMPLES_FLAT_MIN
    assert flat_fraction(noise) < 0.05
    assert total_variation(demo_samples) < SAMPLES_TV_MAX < total_variation(noise)
    assert histogram_distance(colour_histogram(demo_samples), colour_histogram(demo)) < SAMPLES_HIST_MAX < histogram_distance(colour_histogram(noise), colour_histogram(demo))


# Thresholds set from measurement, with margin (filled in when the demo model was trained).
SAMPLES_FLAT_MIN = 0.5
SAMPLES_TV_MAX = 12.0
SAMPLES_HIST_MAX = 0.6
