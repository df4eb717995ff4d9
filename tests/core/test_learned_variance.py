"""Learned variance end to end on the demo shapes (16 px, T = 50): a short L_hybrid run learns sigma_t^2 inside
[beta~_t, beta_t] that bounds the likelihood tighter than either fixed choice, its bits/dim fall as it trains,
and resuming it is bit-exact."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import pytest
import torch

from ddpm_studio.core.diffusion.process import GaussianDiffusion, split_model_output
from ddpm_studio.core.diffusion.schedule import NoiseSchedule
from ddpm_studio.core.evaluation.likelihood import LikelihoodRequest, LikelihoodResult, evaluate_likelihood
from ddpm_studio.core.model import store as model_store
from ddpm_studio.core.model.unet import UNet, UNetConfig
from ddpm_studio.core.training.config import TrainingConfig
from ddpm_studio.core.training.events import FinishedEvent, StepEvent
from ddpm_studio.core.training.loop import train
from tests.helpers.images import tiny_images

T = 50


def learned_config(**overrides) -> TrainingConfig:
    values = dict(steps=20, num_timesteps=T, preview_count=0, variance="learned", ema_decay=0.99, seed=0)
    return TrainingConfig.for_preset("tiny", **{**values, **overrides})


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[int, Path]:
    """The same L_hybrid run saved at step 20 and, resumed, at step 150."""
    root = tmp_path_factory.mktemp("learned")
    images = tiny_images(96)
    assert isinstance(list(train(learned_config(), images, root / "run"))[-1], FinishedEvent)
    shutil.copytree(root / "run", root / "step20")
    assert isinstance(list(train(learned_config(steps=150), images, root / "run", resume=True))[-1], FinishedEvent)
    return {20: root / "step20", 150: root / "run"}


def held_out() -> torch.Tensor:
    return tiny_images(16, seed=1)


def bound(folder: Path, variance: str | None = None, timesteps: int | None = 8) -> LikelihoodResult:
    model = model_store.load_model(folder)
    *_, result = evaluate_likelihood(model, held_out(), LikelihoodRequest(16, timesteps, 16, variance))
    return result


def test_the_model_folder_records_the_learned_variance(checkpoints):
    info = model_store.read_model_info(checkpoints[150])
    assert info.unet.learned_variance and info.training["variance"] == "learned"
    assert UNet(info.unet).output_conv.out_channels == 6
    # Folders written before the field existed load as fixed-variance models.
    old = {k: v for k, v in info.unet.to_dict().items() if k != "learned_variance"}
    assert UNetConfig.from_dict(old).learned_variance is False


def test_learned_sigma_lies_between_beta_tilde_and_beta(checkpoints):
    model = model_store.load_model(checkpoints[150])
    d = model.diffusion
    x0 = held_out().float() / 127.5 - 1
    fractions = []
    with torch.no_grad():
        for index in range(1, T):
            t = torch.full((len(x0),), index)
            x_t = d.q_sample(x0, t, torch.randn(x0.shape, generator=torch.Generator().manual_seed(index)))
            _, v = split_model_output(model.unet(x_t, t), 3)
            log_var = d.model_log_variance(t, x0.shape, "learned", v)
            # where the image-mean log sigma^2 sits between log beta~_t (0) and log beta_t (1)
            low, high = d.schedule.posterior_log_variance_clipped[index], d.schedule.log_betas[index]
            fractions.append(((log_var.mean() - low) / (high - low)).item())
    assert all(0.0 <= f <= 1.0 for f in fractions), fractions
    assert max(abs(f - 0.5) for f in fractions) > 0.05, "v stayed at its initial 0: nothing was learned"


def test_learned_variance_bounds_tighter_than_both_fixed_variances(checkpoints):
    # Same images, timesteps and noise for all three (one seed): the differences are paired.
    learned = bound(checkpoints[150], "learned")
    for fixed in ("fixed_large", "fixed_small"):
        assert bound(checkpoints[150], fixed).bits_per_dim > learned.bits_per_dim + 0.02, fixed


def test_bits_per_dim_fall_as_it_trains(checkpoints):
    early, late = bound(checkpoints[20]), bound(checkpoints[150])
    # One seed: the same images, timesteps and noise at both steps, so the per-image differences are paired.
    fall = early.per_image_bpd - late.per_image_bpd
    assert late.bits_per_dim < early.bits_per_dim
    assert fall.mean() > 3 * fall.std(ddof=1) / len(fall) ** 0.5, fall


def test_resume_with_a_learned_variance_is_bit_exact(tmp_path):
    images = tiny_images(32)
    config = learned_config(steps=6, dropout=0.1, warmup_steps=3, checkpoint_every=1000)
    straight = list(train(config, images, tmp_path / "straight"))
    split = train(config, images, tmp_path / "split")
    for event in split:
        if isinstance(event, StepEvent) and event.step == 3:
            break
    split.close()  # the trainer saves a checkpoint as it stops
    resumed = list(train(config, images, tmp_path / "split", resume=True))
    assert isinstance(straight[-1], FinishedEvent) and isinstance(resumed[-1], FinishedEvent)
    first = model_store.read_safetensors(tmp_path / "straight" / model_store.STATE_FILE)
    second = model_store.read_safetensors(tmp_path / "split" / model_store.STATE_FILE)
    for name in first:
        if name.startswith(("model.", "ema.", "optimizer.", "loss")):
            assert torch.equal(first[name], second[name]), name
    assert first["loss"].shape == (6,)


def hybrid_loss_by_hand(d: GaussianDiffusion, x0, t, noise, eps_hat, v) -> torch.Tensor:
    """L_hybrid = L_simple + lambda L_vlb (Nichol and Dhariwal 2021, eq. 16), in float64 from the betas alone:
    L_vlb is T L_{t-1} in bits per dimension, with eps_hat frozen in it (only v trains through the bound).

    L_{t-1} is the KL of eq. 5 (t > 1), L_0 the discretized decoder of section 3.3 (t = 1, index 0);
    log sigma_t^2 = v' log beta_t + (1 - v') log beta~_t, v' = (v + 1) / 2, with beta~_1 (= 0) taken as beta~_2."""
    x0, noise, eps_hat, v = (tensor.double() for tensor in (x0, noise, eps_hat, v))
    T = d.num_timesteps
    betas = torch.as_tensor(d.schedule.float64["betas"])
    alphas_cumprod = torch.cumprod(1 - betas, 0)
    alphas_cumprod_prev = torch.cat([torch.ones(1, dtype=torch.float64), alphas_cumprod[:-1]])
    beta_tilde = (1 - alphas_cumprod_prev) / (1 - alphas_cumprod) * betas
    beta_tilde[0] = beta_tilde[1]

    terms = []
    for i, index in enumerate(t.tolist()):
        beta, alpha_bar, alpha_bar_prev = betas[index], alphas_cumprod[index], alphas_cumprod_prev[index]
        x_t = alpha_bar.sqrt() * x0[i] + (1 - alpha_bar).sqrt() * noise[i]
        mean = (x_t - beta / (1 - alpha_bar).sqrt() * eps_hat[i].detach()) / (1 - beta).sqrt()
        fraction = (v[i] + 1) / 2
        log_var = fraction * beta.log() + (1 - fraction) * beta_tilde[index].log()
        if index > 0:
            true_mean = (alpha_bar_prev.sqrt() * beta * x0[i] + (1 - beta).sqrt() * (1 - alpha_bar_prev) * x_t) / (
                1 - alpha_bar)
            true_log_var = beta_tilde[index].log()
            kl = 0.5 * (log_var - true_log_var + (true_log_var - log_var).exp() + (true_mean - mean) ** 2
                        / log_var.exp() - 1)
            terms.append(kl.sum())
        else:
            scale = (0.5 * log_var).exp()
            upper = torch.where(x0[i] > 1 - 1 / 255, 1.0, torch.special.ndtr((x0[i] + 1 / 255 - mean) / scale))
            lower = torch.where(x0[i] < -1 + 1 / 255, 0.0, torch.special.ndtr((x0[i] - 1 / 255 - mean) / scale))
            terms.append(-(upper - lower).log().sum())
    bits_per_dim = torch.stack(terms) / (x0[0].numel() * math.log(2))
    return ((eps_hat - noise) ** 2).mean() + 0.001 * T * bits_per_dim.mean()


def test_hybrid_loss_trains_v_only_through_the_bound_and_eps_only_through_l_simple():
    d = GaussianDiffusion(NoiseSchedule.linear(T))
    x0 = tiny_images(4).float() / 127.5 - 1
    eps_part = torch.zeros(4, 3, 16, 16, requires_grad=True)
    v_part = torch.zeros(4, 3, 16, 16, requires_grad=True)
    loss = d.training_loss(lambda x, t: torch.cat([eps_part, v_part], 1), x0, torch.Generator().manual_seed(0))
    loss.backward()
    g = torch.Generator().manual_seed(0)  # the same draws, for L_simple alone: t first, then the noise
    t = torch.randint(0, T, (4,), generator=g)
    noise = torch.randn(x0.shape, generator=g)
    expected_eps_grad = 2 * (eps_part.detach() - noise) / noise.numel()  # of mean((eps - noise)^2) only
    torch.testing.assert_close(eps_part.grad, expected_eps_grad)
    v = v_part.detach().double().requires_grad_()
    expected = hybrid_loss_by_hand(d, x0, t, noise, eps_part.detach(), v)
    expected.backward()
    torch.testing.assert_close(loss.double(), expected.detach(), rtol=1e-5, atol=0)
    torch.testing.assert_close(v_part.grad.double(), v.grad, rtol=1e-4, atol=1e-9)


def test_hybrid_loss_weighs_the_bound_by_lambda_T_at_every_t_including_the_decoder():
    """A model far from right, at t = 1 (the decoder), 2, T / 2 and T: L_hybrid and its gradient in v as computed
    by hand. The bound's share is a third of the loss here: a wrong weight (lambda without T) cannot pass."""
    d = GaussianDiffusion(NoiseSchedule.linear(T))
    g = torch.Generator().manual_seed(4)
    x0 = torch.randint(0, 256, (4, 3, 4, 4), generator=g).float() / 127.5 - 1
    t = torch.tensor([0, 1, T // 2, T - 1])
    noise = torch.randn(x0.shape, generator=g)
    eps_hat = noise + 0.3 * torch.randn(x0.shape, generator=g)
    v_part = (torch.rand(x0.shape, generator=g) * 2 - 1).requires_grad_()
    loss = d.training_loss(lambda x, t: torch.cat([eps_hat, v_part], 1), x0, t=t, noise=noise)
    loss.backward()
    v = v_part.detach().double().requires_grad_()
    expected = hybrid_loss_by_hand(d, x0, t, noise, eps_hat, v)
    expected.backward()
    l_simple = torch.nn.functional.mse_loss(eps_hat, noise).item()
    assert expected.item() - l_simple > 0.1 * l_simple  # lambda T L_vlb: a share far above the tolerance
    torch.testing.assert_close(loss.double(), expected.detach(), rtol=1e-5, atol=0)
    torch.testing.assert_close(v_part.grad.double(), v.grad, rtol=1e-4, atol=1e-9)
