"""The training memory estimate: parameters exact, activations growing with batch and resolution, and the
whole against the memory a real training step takes on the CPU."""

import subprocess
import sys
import textwrap

import pytest
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


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc and sysconf")
def test_the_device_memory_is_known_on_linux():
    total = device_memory_bytes(torch.device("cpu"))
    assert total is not None and 2**28 < total < 2**50


# A fresh process runs one training step (forward, backward, Adam) after a warm-up step at batch 1, and
# reports how far its peak resident memory (Linux's VmHWM, reset just before) rose, beside the estimate of what the step adds to the
# weights and the EMA copy that already exist.
MEASURE_ONE_STEP = textwrap.dedent("""
    import copy, sys, torch
    from ddpm_studio.core.diffusion import GaussianDiffusion
    from ddpm_studio.core.memory import estimate_training_memory
    from ddpm_studio.core.schedule import NoiseSchedule
    from ddpm_studio.core.unet import UNet, preset_config

    torch.set_num_threads(1)
    size, batch = int(sys.argv[1]), int(sys.argv[2])
    config = preset_config("tiny", size)
    model = UNet(config)
    ema = copy.deepcopy(model)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    diffusion = GaussianDiffusion(NoiseSchedule.linear(1000))
    x0 = torch.rand(batch, config.image_channels, size, size) * 2 - 1
    diffusion.training_loss(model, x0[:1]).backward()  # kernels and their workspaces, not what we measure
    model.zero_grad(set_to_none=True)

    def peak_resident_bytes():
        with open("/proc/self/status") as status:
            return next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmHWM:"))

    with open("/proc/self/clear_refs", "w") as clear_refs:
        clear_refs.write("5")  # the peak starts again from what is resident now
    before = peak_resident_bytes()
    loss = diffusion.training_loss(model, x0)
    loss.backward()
    optimizer.step()
    measured = peak_resident_bytes() - before
    estimate = estimate_training_memory(config, batch)
    print(measured, estimate.total_bytes - 8 * estimate.parameters)  # weights and EMA (float32) exist already
""")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads the peak from /proc")
def test_the_estimate_bounds_the_measured_peak_of_a_training_step_within_a_factor_of_2_5():
    out = subprocess.run([sys.executable, "-c", MEASURE_ONE_STEP, "16", "64"], capture_output=True, text=True,
                         timeout=120, check=True).stdout
    measured, estimated = map(int, out.split())
    assert measured > 16 * 2**20  # the step really allocated (its activations are tens of MiB)
    # An upper bound (every operation's output is counted; autograd frees some before the peak) and close to it.
    assert measured <= estimated <= 2.5 * measured, (measured, estimated)
