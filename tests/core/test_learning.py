"""A real learning check: a tiny U-Net trained briefly on a few fixed images must cut L_simple clearly."""

import pytest
import torch

from ddpm_studio.core.diffusion.process import GaussianDiffusion
from ddpm_studio.core.diffusion.schedule import NoiseSchedule
from ddpm_studio.core.model.unet import UNet, preset_config

STEPS = 200
LEARNING_RATE = 2e-3


def simple_images() -> torch.Tensor:
    """Eight fixed 16x16 RGB images in [-1, 1]: halves, a square, a disc, ramps, a checkerboard, bars."""
    y, x = torch.meshgrid(torch.linspace(-1, 1, 16), torch.linspace(-1, 1, 16), indexing="ij")
    checker = ((torch.arange(16)[None, :] // 4 + torch.arange(16)[:, None] // 4) % 2).float()
    masks = [
        (x > 0).float(),
        (y > 0).float(),
        ((x.abs() < 0.5) & (y.abs() < 0.5)).float(),
        (x * x + y * y < 0.5).float(),
        (x + 1) / 2,
        (y + 1) / 2,
        checker,
        (x.abs() > 0.6).float(),
    ]
    base = torch.stack(masks) * 2 - 1
    colours = torch.tensor(
        [[1, 0.2, -0.5], [0.3, 1, -1], [-1, 0.5, 1], [1, 1, 1]]
        + [[0.5, -1, 0.2], [-0.3, 0.1, 1], [1, -1, -1], [0, 0.7, 0.7]]
    )
    return (base[:, None] * colours[:, :, None, None]).clamp(-1, 1)


def test_tiny_unet_learns_to_predict_noise():
    images = simple_images()
    assert images.shape == (8, 3, 16, 16) and images.min() >= -1 and images.max() <= 1
    diffusion = GaussianDiffusion(NoiseSchedule.linear(1000))

    # A fixed evaluation set: every image with 16 (t, noise) draws from a fixed generator, so the
    # loss before and after is measured on exactly the same inputs and is not noisy.
    g = torch.Generator().manual_seed(0)
    x0 = images.repeat(16, 1, 1, 1)
    t_eval = torch.randint(0, 1000, (len(x0),), generator=g)
    noise_eval = torch.randn(x0.shape, generator=g)
    x_t_eval = diffusion.q_sample(x0, t_eval, noise_eval)

    def evaluate(model) -> float:
        model.eval()
        with torch.no_grad():
            loss = torch.nn.functional.mse_loss(model(x_t_eval, t_eval), noise_eval).item()
        model.train()
        return loss

    # A reference that knows nothing about the images: eps_hat = x_t (exact in the limit t -> T).
    identity_loss = torch.nn.functional.mse_loss(x_t_eval, noise_eval).item()

    torch.manual_seed(0)
    model = UNet(preset_config("tiny"))
    optimizer = torch.optim.Adam(model.parameters(), lr=LEARNING_RATE)
    train_generator = torch.Generator().manual_seed(1)
    before = evaluate(model)
    for _ in range(STEPS):
        loss = diffusion.training_loss(model, images, generator=train_generator)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        assert torch.isfinite(loss)
    after = evaluate(model)

    # Observed (torch 2.13 CPU): before = 1.003 (the fresh net outputs 0, so this is E[eps^2] = 1);
    # identity reference = 0.304; after 100 / 200 / 300 steps at lr 2e-3: 0.228 / 0.137 / 0.104
    # (at lr 1e-3: 0.360 / 0.195 / 0.143). So the asserts below hold with a margin of about 2x.
    assert before == pytest.approx(1.0, abs=0.1)
    assert after < 0.3 * before, (before, after)
    # It learned more than "x_t is mostly noise": it beats the identity reference clearly.
    assert after < 0.75 * identity_loss, (after, identity_loss)
