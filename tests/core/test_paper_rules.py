"""Rules of the paper that a one-line slip breaks while everything still runs: training draws t uniformly from all
of 1..T (the paper's t = 1 is array index 0), the "fixed large" decoder at t = 1 uses beta~_2 (a better L_0 than
beta_1, the official code's choice), and training clips the gradient's norm at ``grad_clip`` (1.0 in the paper).
L_hybrid's weight lambda T is checked against a hand computation in test_learned_variance.py."""

from __future__ import annotations

import math
from pathlib import Path

import torch

from ddpm_studio.core.diffusion.process import GaussianDiffusion
from ddpm_studio.core.diffusion.schedule import NoiseSchedule
from ddpm_studio.core.diffusion.variational_bound import vb_term_of_model
from ddpm_studio.core.model import store as model_store
from ddpm_studio.core.model.unet import UNet
from ddpm_studio.core.training.config import TrainingConfig
from ddpm_studio.core.training.events import FinishedEvent
from ddpm_studio.core.training.loop import train
from tests.helpers.images import tiny_images


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def assert_uniform(t: torch.Tensor, num_timesteps: int) -> None:
    """Each index 0..T-1 drawn about len(t) / T times: within 5 standard deviations of a uniform draw."""
    assert int(t.min()) >= 0 and int(t.max()) < num_timesteps, (int(t.min()), int(t.max()))
    counts = torch.bincount(t, minlength=num_timesteps).tolist()
    share = 1 / num_timesteps
    spread = math.sqrt(len(t) * share * (1 - share))
    assert all(abs(count - len(t) * share) < 5 * spread for count in counts), f"draws of index 0..T-1: {counts}"


# --- t is uniform over 1..T, t = 1 (index 0) included ------------------------------------------------------


def test_the_training_loss_draws_every_t_from_1_to_T_equally_often():
    T = 4
    diffusion = GaussianDiffusion(NoiseSchedule.linear(T))
    seen = []

    def recording_model(x_t, t):
        seen.append(t.clone())
        return torch.zeros_like(x_t)

    diffusion.training_loss(recording_model, torch.zeros(40_000, 1, 1, 1), gen(0))
    assert_uniform(torch.cat(seen), T)


def test_the_training_loop_shows_the_network_every_t_from_1_to_T(tmp_path):
    """A training run, watched through a global forward hook: the t that the U-Net is given, step after step."""
    T = 4
    seen: list[torch.Tensor] = []

    def record(module, args):
        if isinstance(module, UNet):
            seen.append(args[1].detach().clone())

    config = TrainingConfig.for_preset("tiny", steps=20, batch_size=16, num_timesteps=T, preview_count=0,
                                       checkpoint_every=1000, precision="fp32")
    hook = torch.nn.modules.module.register_module_forward_pre_hook(record)
    try:
        events = list(train(config, tiny_images(32), tmp_path / "run"))
    finally:
        hook.remove()
    assert isinstance(events[-1], FinishedEvent)
    t = torch.cat(seen)
    assert len(t) == 20 * 16
    assert_uniform(t, T)


# --- the "fixed large" decoder at t = 1 ---------------------------------------------------------------------


def test_the_fixed_large_decoder_at_t_1_uses_beta_tilde_2_not_beta_1():
    T = 50
    diffusion = GaussianDiffusion(NoiseSchedule.linear(T))
    betas = torch.as_tensor(diffusion.schedule.float64["betas"])
    alphas_cumprod = torch.cumprod(1 - betas, 0)
    beta_tilde_2 = (1 - alphas_cumprod[0]) / (1 - alphas_cumprod[1]) * betas[1]  # the paper's beta~_t at t = 2
    beta_1 = betas[0]

    g = gen(3)
    x0 = torch.randint(0, 256, (4, 3, 4, 4), generator=g).double() / 127.5 - 1
    noise = torch.randn(x0.shape, generator=g, dtype=torch.float64)
    eps_hat = noise + 0.3 * torch.randn(x0.shape, generator=g, dtype=torch.float64)
    t = torch.zeros(4, dtype=torch.long)
    terms = vb_term_of_model(diffusion, lambda x_t, t: eps_hat, x0, t, noise, "fixed_large")

    # L_0 = -log p(x0 | x1) by hand: the mean of eq. 11 at t = 1, each pixel's bin of width 2/255 under
    # N(mean, sigma^2), the two edge bins open to -inf and +inf (section 3.3).
    x_1 = alphas_cumprod[0].sqrt() * x0 + (1 - alphas_cumprod[0]).sqrt() * noise
    mean = (x_1 - beta_1 / (1 - alphas_cumprod[0]).sqrt() * eps_hat) / (1 - beta_1).sqrt()

    def decoder_nll(variance: torch.Tensor) -> torch.Tensor:
        scale = variance.sqrt()
        upper = torch.where(x0 > 1 - 1 / 255, 1.0, torch.special.ndtr((x0 + 1 / 255 - mean) / scale))
        lower = torch.where(x0 < -1 + 1 / 255, 0.0, torch.special.ndtr((x0 - 1 / 255 - mean) / scale))
        return -(upper - lower).log().flatten(1).sum(1)

    expected, with_beta_1 = decoder_nll(beta_tilde_2), decoder_nll(beta_1)
    assert ((expected - with_beta_1).abs() > 1.0).all()  # nats apart here: far beyond the tolerance below
    torch.testing.assert_close(terms, expected, rtol=1e-6, atol=1e-6)


# --- gradient clipping --------------------------------------------------------------------------------------


def weights_after_one_step(source: Path, out: Path, grad_clip: float, learning_rate: float) -> dict[str, torch.Tensor]:
    """The raw weights after one Adam step from the EMA weights of ``source`` (a fine-tune of it)."""
    config = TrainingConfig.for_preset("tiny", steps=1, num_timesteps=50, preview_count=0, warmup_steps=0,
                                       learning_rate=learning_rate, grad_clip=grad_clip, init_from=str(source),
                                       checkpoint_every=1000, precision="fp32")
    assert isinstance(list(train(config, tiny_images(32), out))[-1], FinishedEvent)
    state = model_store.read_safetensors(out / model_store.STATE_FILE)
    return {name.removeprefix("model."): tensor for name, tensor in state.items() if name.startswith("model.")}


def largest_change(before: dict[str, torch.Tensor], after: dict[str, torch.Tensor]) -> float:
    assert before.keys() == after.keys()
    return max((after[name] - before[name]).abs().max().item() for name in before)


def test_training_clips_the_gradients_norm_before_the_optimizer_step(tiny_model, tmp_path):
    """Adam's first step moves each weight by about lr * g / (|g| + 1e-8): by lr wherever the gradient is not tiny,
    whatever its scale. Clipped to a norm of 1e-12, every |g| is far below Adam's 1e-8, and the weights barely move."""
    start = model_store.load_model(tiny_model).unet.state_dict()
    learning_rate = 1e-3
    free = weights_after_one_step(tiny_model, tmp_path / "free", grad_clip=1e6, learning_rate=learning_rate)
    clipped = weights_after_one_step(tiny_model, tmp_path / "clipped", grad_clip=1e-12, learning_rate=learning_rate)
    assert largest_change(start, free) > 0.5 * learning_rate
    moved = largest_change(start, clipped)
    assert moved < 1e-3 * learning_rate, f"a gradient clipped to norm 1e-12 moved a weight by {moved:.2e}"
