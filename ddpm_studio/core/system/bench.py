"""``ddpm-studio bench``: training and sampling throughput of a preset on this device, the cost of L_hybrid
against L_simple, and the throughput of the NLL bound's terms."""

from __future__ import annotations

import copy
import math
import platform
import time
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ddpm_studio.core.data.demo import make_demo_images
from ddpm_studio.core.data.folders import to_model_range
from ddpm_studio.core.diffusion.process import GaussianDiffusion
from ddpm_studio.core.diffusion.samplers import sample
from ddpm_studio.core.diffusion.schedule import NoiseSchedule
from ddpm_studio.core.diffusion.variational_bound import vb_term_of_model
from ddpm_studio.core.evaluation.inception import MetricsUnavailable, find_weights
from ddpm_studio.core.evaluation.metrics import (
    INCEPTION,
    KID_SUBSETS,
    create_feature_extractor,
    extract_features,
    kernel_inception_distance,
)
from ddpm_studio.core.evaluation.quality import KID_REFERENCE_MAX
from ddpm_studio.core.model.store import load_model
from ddpm_studio.core.model.unet import UNet, UNetConfig, count_parameters
from ddpm_studio.core.sampling.job import SamplingRequest, sample_images
from ddpm_studio.core.system.devices import choose_device, describe_device, has_native_bf16, use_bf16, use_channels_last
from ddpm_studio.core.training.config import TrainingConfig
from ddpm_studio.core.training.plain_step import plain_training_step
from ddpm_studio.paths import BUNDLED_MODELS_DIR


@dataclass
class BenchSettings:
    preset: str = "small"
    image_size: int | None = None
    batch_size: int = 16
    train_steps: int = 10
    sample_steps: int = 10
    precision: str = "auto"
    compile: bool = False
    device: str = "auto"
    eval_num: int = 1000  # samples of one KID measurement during training (train --eval-num); 0: skip
    inception_weights: Path | None = None


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class BenchRun:
    """What the measurements of one ``run_benchmark`` share: the preset's network, its optimiser and one batch."""

    config: TrainingConfig
    device: torch.device
    bf16: bool
    unet_config: UNetConfig
    model: UNet
    channels_last: bool
    network: torch.nn.Module
    diffusion: GaussianDiffusion
    optimizer: torch.optim.Optimizer
    shape: tuple[int, int, int, int]
    x0: torch.Tensor


def run_benchmark(settings: BenchSettings) -> Iterator[str]:
    """Yield report lines as measurements complete."""
    run = prepare_benchmark(settings)
    unet_config, bf16, channels_last = run.unet_config, run.bf16, run.channels_last
    yield f"device        {describe_device(run.device)}"
    yield (f"torch         {torch.__version__} (Python {platform.python_version()}, "
           f"{torch.get_num_threads()} CPU threads)")
    yield f"dtype         {'bfloat16 autocast' if bf16 else 'float32'}{', channels_last' if channels_last else ''}"
    yield (f"model         {settings.preset}: {count_parameters(run.model):,} parameters at "
           f"{unet_config.image_size}x{unet_config.image_size}x{unet_config.image_channels}, "
           f"batch {settings.batch_size}")

    learned, learned_network, seconds = time_training(settings, run)
    elapsed = seconds["simple"]
    steps_per_second = settings.train_steps / elapsed
    yield (f"training      {steps_per_second * settings.batch_size:,.1f} images/s "
           f"({steps_per_second:.2f} steps/s, {settings.train_steps} steps in {elapsed:.2f} s)")

    solver_images_per_second = yield from time_sampling(settings, run)

    yield (f"L_hybrid      {seconds['hybrid'] / seconds['simple']:.2f} x the step time of L_simple "
           f"({settings.train_steps / seconds['hybrid']:.2f} steps/s with the learned variance, steps interleaved)")

    yield from time_nll_terms(settings, run, learned, learned_network)
    if settings.eval_num:
        yield from kid_cost(settings, run.device, solver_images_per_second, steps_per_second, unet_config.image_size)


def prepare_benchmark(settings: BenchSettings) -> BenchRun:
    """The preset's network on the chosen device, its optimiser and one random batch."""
    config = TrainingConfig.for_preset(settings.preset, image_size=settings.image_size, batch_size=settings.batch_size,
                                       precision=settings.precision)
    config.validate()
    device = choose_device(settings.device)
    bf16 = use_bf16(config.precision, device)
    unet_config = config.unet_config()
    model = UNet(unet_config).to(device)
    channels_last = use_channels_last(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    network = torch.compile(model) if settings.compile else model
    diffusion = GaussianDiffusion(NoiseSchedule.from_config(config.schedule_config()).to(device))
    optimizer = torch.optim.Adam(model.parameters(), lr=config.learning_rate)
    shape = (settings.batch_size, unet_config.image_channels, unet_config.image_size, unet_config.image_size)
    x0 = torch.rand(shape, device=device) * 2 - 1
    if channels_last:
        x0 = x0.contiguous(memory_format=torch.channels_last)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    return BenchRun(config, device, bf16, unet_config, model, channels_last, network, diffusion, optimizer, shape, x0)


def time_training(settings: BenchSettings, run: BenchRun) -> tuple[UNet, torch.nn.Module, dict[str, float]]:
    """Time L_simple's training steps and L_hybrid's, interleaved; returns the learned-variance network (and its
    compiled form) and each loss's total seconds."""
    device, diffusion, x0, bf16 = run.device, run.diffusion, run.x0, run.bf16

    def make_train_step(network, model, optimizer):
        return lambda: plain_training_step(network, optimizer, diffusion, x0, bf16, clip=model.parameters())

    # The same preset with a learned variance (2C outputs) trains with L_hybrid. Its steps alternate with
    # L_simple's, so that a busy machine slows both alike and their ratio stays meaningful.
    unet_config = run.unet_config
    learned = UNet(type(unet_config)(**{**unet_config.to_dict(), "learned_variance": True})).to(device)
    if device.type == "cuda":
        learned = learned.to(memory_format=torch.channels_last)
    learned_network = torch.compile(learned) if settings.compile else learned
    steps = {"simple": make_train_step(run.network, run.model, run.optimizer),
             "hybrid": make_train_step(learned_network, learned, torch.optim.Adam(learned.parameters(), lr=1e-4))}
    seconds = {name: 0.0 for name in steps}
    for _ in range(3):
        for step in steps.values():
            step()
    for _ in range(settings.train_steps):
        for name, step in steps.items():
            synchronize(device)
            start = time.perf_counter()
            step()
            synchronize(device)
            seconds[name] += time.perf_counter() - start
    return learned, learned_network, seconds


def time_sampling(settings: BenchSettings, run: BenchRun) -> Generator[str, None, float]:
    """Time the model's forward pass and a whole DPM-Solver++ grid; yields the sampling line (and the peak memory)
    and returns DPM-Solver++'s images per second."""
    device, diffusion, network, x0, bf16 = run.device, run.diffusion, run.network, run.x0, run.bf16
    run.model.eval()
    t = torch.full((settings.batch_size,), diffusion.num_timesteps // 2, device=device, dtype=torch.long)
    with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
        for _ in range(2):
            network(x0, t)
        synchronize(device)
        start = time.perf_counter()
        for _ in range(settings.sample_steps):
            network(x0, t)
        synchronize(device)
    elapsed = time.perf_counter() - start
    calls_per_second = settings.sample_steps / elapsed
    images_per_call = calls_per_second * settings.batch_size
    # A whole 20-call DPM-Solver++ grid, timed with its own arithmetic (it adds no model call to the 20).
    solver_steps = min(20, diffusion.num_timesteps)
    generator = torch.Generator(device=device).manual_seed(0)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
        synchronize(device)
        start = time.perf_counter()
        sample(diffusion, network, run.shape, "dpm-solver++", num_steps=solver_steps, generator=generator,
               device=device)
        synchronize(device)
    solver_images_per_second = settings.batch_size / (time.perf_counter() - start)
    yield (f"sampling      {images_per_call:,.1f} image-steps/s: {solver_images_per_second:,.2f} images/s with "
           f"DPM-Solver++ {solver_steps} (a timed grid), {images_per_call / 50:,.2f} with DDIM 50, "
           f"{images_per_call / diffusion.num_timesteps:,.3f} with DDPM {diffusion.num_timesteps}")
    if device.type == "cuda":
        yield f"peak memory   {torch.cuda.max_memory_allocated(device) / 2**30:.2f} GiB"
    return solver_images_per_second


def time_nll_terms(settings: BenchSettings, run: BenchRun, learned: UNet,
                   learned_network: torch.nn.Module) -> Iterator[str]:
    """NLL evaluation: one term of the bound (a model call, the KL or the decoder) per image and timestep."""
    device, diffusion, x0 = run.device, run.diffusion, run.x0
    learned.eval()
    generator = torch.Generator(device=device).manual_seed(0)
    with torch.inference_mode():
        def terms() -> None:
            t = torch.randint(0, diffusion.num_timesteps, (settings.batch_size,), device=device, generator=generator)
            noise = torch.randn(x0.shape, device=device, generator=generator)
            vb_term_of_model(diffusion, learned_network, x0, t, noise, "learned", clip=True)

        for _ in range(2):
            terms()
        synchronize(device)
        start = time.perf_counter()
        for _ in range(settings.sample_steps):
            terms()
        synchronize(device)
    nll_elapsed = time.perf_counter() - start
    per_second = settings.sample_steps * settings.batch_size / nll_elapsed
    yield (f"NLL terms     {per_second:,.1f} image-timesteps/s: {per_second / diffusion.num_timesteps:,.3f} images/s "
           f"with all {diffusion.num_timesteps} terms (float32)")


def kid_cost(settings: BenchSettings, device: torch.device, solver_images_per_second: float, steps_per_second: float,
             image_size: int) -> Iterator[str]:
    """What one ``train --eval-every`` measurement costs: sampling (from the measured speed), Inception features
    (timed on one batch, when the weights are here) and KID's 100 subsets (a few timed, the rest extrapolated)."""
    n = settings.eval_num
    sampling = n / solver_images_per_second
    try:
        extractor = create_feature_extractor(INCEPTION, device,
                                             find_weights(settings.inception_weights, download=False))
        batch = torch.randint(0, 256, (min(n, 50), 3, image_size, image_size), dtype=torch.uint8)
        list(extract_features(extractor, [batch[:2]], device))  # warm-up
        synchronize(device)
        start = time.perf_counter()
        list(extract_features(extractor, [batch], device))
        synchronize(device)
        features = (time.perf_counter() - start) * n / len(batch)
        features_text = f"Inception features {features:.1f} s"
    except MetricsUnavailable:
        features, features_text = 0.0, "Inception features not measured (weights absent)"
    fake = torch.randn(n, 2048, device=device)
    real = torch.randn(min(KID_REFERENCE_MAX, 10 * n), 2048, device=device)
    timed_subsets = 3
    synchronize(device)
    start = time.perf_counter()
    kernel_inception_distance(real, fake, subsets=timed_subsets)
    synchronize(device)
    kid = (time.perf_counter() - start) * KID_SUBSETS / timed_subsets
    total = sampling + features + kid
    in_steps = total * steps_per_second
    yield (f"KID in train  one --eval-num {n} measurement: sampling {sampling:.1f} s (DPM-Solver++ 20) + "
           f"{features_text} + "
           f"KID {kid:.1f} s = {total:.1f} s, the time of {in_steps:,.0f} training steps; --eval-every "
           f"{math.ceil(10 * in_steps):,} or more keeps it under 10% of training time")


# --- bf16 against fp32 ---------------------------------------------------------------------------


def compare_bf16(settings: BenchSettings, model_path=None) -> Iterator[str]:
    """bf16 autocast against float32 on this device: the speed-up of training and of the model's
    forward pass, training loss curves from the same start on the same batches and noise, and
    samples of a trained model from the same seed (a statistic of the images, not only a timing)."""
    config = TrainingConfig.for_preset(settings.preset, image_size=settings.image_size, batch_size=settings.batch_size)
    device = choose_device(settings.device)
    unet_config = config.unet_config()
    yield f"device        {describe_device(device)}, bf16 {'native' if has_native_bf16(device) else 'emulated'}"
    yield (f"model         {settings.preset} at {unet_config.image_size}x{unet_config.image_size}, batch "
           f"{settings.batch_size}, {settings.train_steps} training steps each, {torch.get_num_threads()} threads")

    torch.manual_seed(config.seed)
    models = {"fp32": UNet(unet_config).to(device)}
    models["bf16"] = copy.deepcopy(models["fp32"])
    optimizers = {name: torch.optim.Adam(model.parameters(), lr=config.learning_rate) for name, model in models.items()}
    diffusion = GaussianDiffusion(NoiseSchedule.from_config(config.schedule_config()).to(device))
    images = torch.from_numpy(make_demo_images(256, size=unet_config.image_size, seed=1)).permute(0, 3, 1, 2)
    data = to_model_range(images.contiguous()).to(device)
    batches = torch.Generator().manual_seed(0)
    losses = {name: [] for name in models}
    seconds = {name: [] for name in models}
    for step in range(settings.train_steps + 2):
        x0 = data[torch.randint(len(data), (settings.batch_size,), generator=batches).to(device)]
        for name, model in models.items():  # interleaved, so that a busy machine slows both alike
            noise = torch.Generator(device=device).manual_seed(1000 + step)
            synchronize(device)
            start = time.perf_counter()
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=name == "bf16"):
                loss = diffusion.training_loss(model, x0, generator=noise)
            optimizers[name].zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
            optimizers[name].step()
            synchronize(device)
            if step >= 2:  # the first steps load kernels
                seconds[name].append(time.perf_counter() - start)
                losses[name].append(float(loss.detach()))
    fp32_step, bf16_step = (float(np.median(seconds[name])) for name in ("fp32", "bf16"))
    yield f"train step    fp32 {fp32_step:.3f} s, bf16 {bf16_step:.3f} s (median): {fp32_step / bf16_step:.2f}x"

    forward: dict[str, list[float]] = {"fp32": [], "bf16": []}
    t = torch.full((settings.batch_size,), diffusion.num_timesteps // 2, device=device, dtype=torch.long)
    model = models["fp32"].eval()
    with torch.inference_mode():
        for call in range(settings.sample_steps + 1):
            for name in forward:  # interleaved, like the training steps
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=name == "bf16"):
                    synchronize(device)
                    start = time.perf_counter()
                    model(x0, t)
                    synchronize(device)
                if call:  # the first call of each loads kernels
                    forward[name].append(time.perf_counter() - start)
    fp32_forward, bf16_forward = (float(np.median(forward[name])) for name in ("fp32", "bf16"))
    yield (f"eval forward  fp32 {fp32_forward:.3f} s, bf16 {bf16_forward:.3f} s per call (median): "
           f"{fp32_forward / bf16_forward:.2f}x")

    fp32_losses, bf16_losses = np.asarray(losses["fp32"]), np.asarray(losses["bf16"])
    differences = bf16_losses - fp32_losses
    half = len(differences) // 2
    spread = float(fp32_losses[half:].std(ddof=1) / np.sqrt(len(fp32_losses) - half)) if half > 1 else float("nan")
    yield (f"loss curves   mean of the last {len(differences) - half} steps: fp32 {fp32_losses[half:].mean():.4f}, "
           f"bf16 {bf16_losses[half:].mean():.4f}; the per-step loss's own standard error {spread:.4f}; "
           f"largest per-step difference {np.abs(differences).max():.4f}")

    model_path = model_path or BUNDLED_MODELS_DIR / "demo"
    loaded = load_model(model_path, device)
    samples = {}
    for precision in ("fp32", "bf16"):
        request = SamplingRequest(num_images=16, seed=0, sampler="ddim", steps=50, device=str(device),
                                  precision=precision, keep_trajectory_of=[])
        start = time.perf_counter()
        samples[precision] = sample_images(request, loaded).images.float()
        samples[f"{precision} seconds"] = time.perf_counter() - start
    difference = (samples["bf16"] - samples["fp32"]).abs()
    channel_means = [samples[p].mean(dim=(0, 2, 3)) for p in ("fp32", "bf16")]
    yield (f"samples       {loaded.info.name}, DDIM 50, 16 images, seed 0: fp32 {samples['fp32 seconds']:.1f} s, "
           f"bf16 {samples['bf16 seconds']:.1f} s; mean |bf16 - fp32| {difference.mean():.2f} of 255, "
           f"{float((difference > 16).float().mean()):.1%} of values differ by more than 16, channel means "
           f"{', '.join(f'{a:.1f}/{b:.1f}' for a, b in zip(*channel_means))} (fp32/bf16)")
