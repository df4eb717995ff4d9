"""The training memory estimate: parameters exact, activations growing with batch and resolution."""

import torch

from ddpm_studio.core.devices import device_memory_bytes
from ddpm_studio.core.memory import BYTES_PER_PARAMETER, estimate_training_memory
from ddpm_studio.core.unet import UNet, preset_config


def test_the_estimate_counts_the_parameters_exactly_and_scales_with_the_batch():
    config = preset_config("tiny")
    parameters = sum(p.numel() for p in UNet(config).parameters())
    one = estimate_training_memory(config, 1)
    eight = estimate_training_memory(config, 8)
    assert one.parameters == parameters
    assert one.parameter_bytes == parameters * BYTES_PER_PARAMETER
    assert eight.activation_bytes == 8 * one.activation_bytes > 0
    assert estimate_training_memory(config, 8, bf16=True).activation_bytes == eight.activation_bytes // 2
    assert estimate_training_memory(config, 8, dataset_images=10).dataset_bytes == 10 * 3 * 16 * 16
    # Every layer's output at least: more than the input image and its first feature map.
    assert one.activation_bytes > 4 * 16 * 16 * (3 + config.base_channels)


def test_a_larger_image_needs_more_activations():
    small = estimate_training_memory(preset_config("tiny", 16), 4)
    large = estimate_training_memory(preset_config("tiny", 32), 4)
    assert large.activation_bytes > 2 * small.activation_bytes


def test_the_device_memory_is_known_on_linux():
    total = device_memory_bytes(torch.device("cpu"))
    assert total is None or total > 2**28
