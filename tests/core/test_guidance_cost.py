"""The CPU forecasts count guidance's doubled batch: measured against the images a guided run really sends
through the U-Net, and as a ratio of exactly 2 against the same run unguided."""

import dataclasses
from pathlib import Path

import pytest

from ddpm_studio.core.diffusion.schedule import ScheduleConfig
from ddpm_studio.core.explore.branching import BranchRequest, BranchResult, fig7_steps, run_branching
from ddpm_studio.core.explore.forecast import branching_cost
from ddpm_studio.core.model.store import ModelInfo, load_model, read_model_info
from ddpm_studio.core.model.unet import preset_config
from ddpm_studio.core.sampling.cost import cpu_sampling_cost
from ddpm_studio.core.sampling.guidance import model_passes
from ddpm_studio.core.sampling.job import SamplingRequest, sample_images
from tests.helpers.class_models import write_class_model


@pytest.fixture(scope="module")
def class_model(tmp_path_factory):
    return write_class_model(tmp_path_factory.mktemp("models") / "classes")


def counting(model):
    """``model`` with a count of the images its U-Net is called on."""
    seen = []
    model.unet.register_forward_hook(lambda _module, inputs, _output: seen.append(inputs[0].shape[0]))
    return model, seen


def test_passes_are_two_only_for_a_guided_class():
    assert model_passes(None, 3.0) == 1
    assert model_passes([1], 0.0) == 1
    assert model_passes([1], 0.5) == 2
    assert model_passes([0, 1, 2], 2.0, null_class=3) == 2
    assert model_passes([3, 3], 2.0, null_class=3) == 1  # the null label everywhere: one unguided pass


@pytest.mark.parametrize("classes, guidance, passes", [(None, 0.0, 1), ([2], 0.0, 1), ([2], 3.0, 2)])
def test_the_branching_forecast_counts_what_the_unet_computes(class_model, classes, guidance, passes):
    info = read_model_info(class_model)
    request = BranchRequest(class_model, at=[8], num=2, seed=4, device="cpu", precision="fp32", classes=classes,
                            guidance=guidance)
    model, seen = counting(load_model(class_model, "cpu"))
    results = [event for event in run_branching(request, model) if isinstance(event, BranchResult)]
    assert len(results) == 1
    cost = branching_cost(request, info)
    assert cost.image_calls == sum(seen)
    unguided = branching_cost(BranchRequest(class_model, at=[8], num=2, seed=4, classes=classes), info)
    assert cost.image_calls == passes * unguided.image_calls
    assert cost.seconds == pytest.approx(passes * unguided.seconds)
    assert ("x 2 for guidance" in cost.describe()) == (passes == 2)


def test_the_fig7_forecast_at_256_px_doubles_with_guidance():
    info = ModelInfo(Path("ddpm-256"), dataclasses.replace(preset_config("ddpm-256"), num_classes=10),
                     ScheduleConfig())
    plain = branching_cost(BranchRequest(info.path, at=fig7_steps(1000), classes=[3]), info)
    guided = branching_cost(BranchRequest(info.path, at=fig7_steps(1000), classes=[3], guidance=2.0), info)
    assert guided.image_calls == 2 * plain.image_calls
    assert guided.seconds / plain.seconds == pytest.approx(2.0)


def test_the_sampling_forecast_doubles_with_guidance_as_the_unet_does(class_model):
    info = read_model_info(class_model)
    model, seen = counting(load_model(class_model, "cpu"))
    sample_images(SamplingRequest(num_images=3, sampler="ddim", steps=4, device="cpu", precision="fp32",
                                  classes=[1], guidance=1.5), model)
    passes = model_passes([1], 1.5, info.unet.num_classes)
    cost = cpu_sampling_cost(info.unet, images=3, calls=4, passes=passes)
    assert cost.calls * cost.images * cost.passes == sum(seen) == 2 * 3 * 4
    plain = cpu_sampling_cost(info.unet, images=3, calls=4)
    assert cost.seconds / plain.seconds == pytest.approx(2.0)
    assert "twice the batch for guidance" in cost.describe() and "twice" not in plain.describe()
