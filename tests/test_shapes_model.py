"""The shipped class-conditional model (models/shapes, the demo shapes in one class per shape): it loads with its
classes, and its guided samples show the shape of the class asked for, read by a shape reader that is first
checked on the real demo images."""

from collections import Counter

import numpy as np
import pytest

from ddpm_studio.core.data.demo import iter_demo_images
from ddpm_studio.core.model import store as model_store
from ddpm_studio.core.sampling.job import SamplingRequest, sample_images
from ddpm_studio.paths import BUNDLED_MODELS_DIR
from tests.helpers.image_stats import shape_of, to_channels_last

SHAPES_MODEL = BUNDLED_MODELS_DIR / "shapes"
CLASSES = ["circle", "square", "triangle"]
PER_CLASS = 8


def test_the_shapes_model_ships_its_classes_weights_and_recipe():
    info = model_store.read_model_info(SHAPES_MODEL)
    assert info.unet.num_classes == 3 and info.extra["classes"]["names"] == CLASSES
    assert sum(info.extra["classes"]["counts"]) == 900
    assert any("demo-data" in line and "--classes" in line for line in info.extra["recipe"])
    assert (SHAPES_MODEL / model_store.EMA_FILE).is_file()
    assert not (SHAPES_MODEL / model_store.STATE_FILE).exists()  # sampling weights only
    size = sum(path.stat().st_size for path in SHAPES_MODEL.iterdir() if path.is_file())
    assert size < 8 * 2**20


def test_the_shape_reader_reads_the_real_demo_images():
    read = Counter((spec.shape, shape_of(np.asarray(image))) for image, spec in iter_demo_images(300, 32, seed=21))
    right = sum(count for (shape, seen), count in read.items() if shape == seen)
    assert right >= 296, read  # 897 of 900 when the reader was written (seed 99)


@pytest.fixture(scope="module")
def guided_samples():
    model = model_store.load_model(SHAPES_MODEL)
    classes = [index for index in range(3) for _ in range(PER_CLASS)]
    request = SamplingRequest(num_images=len(classes), seed=0, sampler="ddim", steps=50, device="cpu",
                              precision="fp32", classes=classes, guidance=3.0)
    return classes, to_channels_last(sample_images(request, model).images)


def test_guided_samples_show_the_shape_of_their_class(guided_samples):
    classes, images = guided_samples
    seen = [shape_of(image) for image in images]
    # Measured when the model was shipped (DDIM 50, w = 3, seed 0, fp32): 20 of 24 (w = 0: 18); chance is 8.
    # The other 4 were 3 samples the reader found no shape in and one circle for a triangle; the reader
    # undercounts what the eye sees. Before the class was learned (3,000 steps), 12 a class (seed 1) gave 18 of 36.
    right = sum(CLASSES[label] == shape for label, shape in zip(classes, seen))
    assert right >= 16, list(zip(classes, seen))
    for index in range(3):  # every class is drawn, not one shape for all
        assert sum(CLASSES[index] == shape for label, shape in zip(classes, seen) if label == index) >= 4
