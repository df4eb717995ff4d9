"""Classifier-free guidance against a class-conditional Gaussian mixture whose exact eps is known."""

import pytest
import torch

from ddpm_studio.core.diffusion.process import GaussianDiffusion
from ddpm_studio.core.diffusion.samplers import sample
from ddpm_studio.core.diffusion.schedule import NoiseSchedule, linear_betas
from ddpm_studio.core.errors import SettingError
from ddpm_studio.core.model.unet import UNet, UNetConfig
from ddpm_studio.core.sampling.guidance import guided_eps_model
from tests.helpers.toy_models import ExactClassGaussianEps, gen

MEANS = [0.3, -0.3, 0.0]
NULL_MEAN = 0.1
SHAPE = (256, 1, 4, 4)


@pytest.fixture(scope="module")
def diffusion():
    return GaussianDiffusion(NoiseSchedule(linear_betas(200, 1e-4, 0.1)))


def mixture(diffusion):
    return ExactClassGaussianEps(diffusion.schedule, MEANS, NULL_MEAN, data_variance=0.01)


@pytest.mark.parametrize("sampler, options", [("ddpm", {"variance": "fixed_small"}),
                                              ("ddpm", {"variance": "fixed_small", "num_steps": 40}),
                                              ("ddim", {"num_steps": 40, "eta": 0.0}),
                                              ("dpm-solver++", {"num_steps": 20})])
@pytest.mark.parametrize("weight", [0.0, 1.5])
def test_guided_sampling_moves_the_mean_to_the_guided_gaussian(diffusion, sampler, options, weight):
    model = mixture(diffusion)
    eps_model = guided_eps_model(model, torch.tensor([0]), weight)
    x0 = sample(diffusion, eps_model, SHAPE, sampler, generator=gen(1), clip=False, **options)
    expected = (1 + weight) * MEANS[0] - weight * NULL_MEAN
    # The sample mean of 4096 values of std 0.1 has a standard error of 0.0016.
    assert abs(float(x0.mean()) - expected) < 0.02
    if weight:  # and the shift is not a mere accident of a small w
        assert abs(float(x0.mean()) - MEANS[0]) > 0.1


def test_null_label_is_the_unconditional_model_bit_for_bit(diffusion):
    model = mixture(diffusion)
    null = torch.tensor([model.null_class])
    plain = sample(diffusion, model, SHAPE, "ddpm", generator=gen(3), variance="fixed_large")
    for weight in (0.0, 4.0):
        guided = sample(diffusion, guided_eps_model(model, null, weight), SHAPE, "ddpm", generator=gen(3),
                        variance="fixed_large")
        assert torch.equal(plain, guided)


def test_one_pass_at_w0_and_one_doubled_pass_when_guided(diffusion):
    model = mixture(diffusion)
    x, t = torch.randn(5, 1, 4, 4, generator=gen(0)), torch.full((5,), 30)
    guided_eps_model(model, torch.tensor([1]), 0.0)(x, t)
    guided_eps_model(model, torch.tensor([1]), 2.0)(x, t)
    assert model.batch_sizes == [5, 10]


def test_doubled_batch_equals_two_separate_passes_on_a_unet():
    unet = UNet(UNetConfig(image_size=8, base_channels=32, channel_multipliers=(1, 2), num_res_blocks=1,
                           attention_resolutions=(), dropout=0.0, num_classes=3, learned_variance=True)).eval()
    with torch.no_grad():
        for parameter in unet.parameters():  # zero-initialised layers (output, null row) are not zero once trained
            parameter.add_(torch.randn(parameter.shape, generator=gen(2)) * 0.05)
        x, t = torch.randn(4, 3, 8, 8, generator=gen(0)), torch.tensor([3, 10, 40, 90])
        labels = torch.tensor([0, 1, 2, 3])  # the last is the null label: unguided
        guided = guided_eps_model(unet, labels, 2.5)(x, t)
        conditional = unet(x, t, labels)
        unconditional = unet(x, t, torch.full((4,), 3))
    expected_eps = 3.5 * conditional[:, :3] - 2.5 * unconditional[:, :3]
    assert torch.allclose(guided[:3, :3], expected_eps[:3], atol=1e-5)
    assert torch.allclose(guided[3, :3], unconditional[3, :3], atol=1e-5)
    assert torch.allclose(guided[:, 3:], conditional[:, 3:], atol=1e-5)  # v from the conditional pass
    assert not torch.allclose(guided[:3, :3], conditional[:3, :3], atol=1e-3)


def test_negative_or_huge_weights_are_refused(diffusion):
    for weight in (-0.5, 11.0):
        with pytest.raises(SettingError, match="guidance weight"):
            guided_eps_model(mixture(diffusion), torch.tensor([0]), weight)
