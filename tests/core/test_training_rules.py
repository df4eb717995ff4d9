"""The training loop's small rules, tested directly: the learning-rate warm-up, the EMA decay and update,
and the batches the trainer draws (random images, mirrored half of the time).

The exact-resume test checks that a run is deterministic; these check that its formulas are the right ones.
"""

import copy

import pytest
import torch

from ddpm_studio.core.data.batches import BatchSource
from ddpm_studio.core.data.folders import to_model_range
from ddpm_studio.core.training.config import TrainingConfig
from ddpm_studio.core.training.distributed import DistributedContext
from ddpm_studio.core.training.loop import model_input
from ddpm_studio.core.training.state import TrainingState, ema_decay_at, learning_rate_at


def test_the_learning_rate_warms_up_linearly_then_stays():
    config = TrainingConfig(learning_rate=2e-4, warmup_steps=500)
    assert learning_rate_at(config, 1) == pytest.approx(2e-4 / 500)
    assert learning_rate_at(config, 250) == pytest.approx(1e-4)
    assert learning_rate_at(config, 500) == pytest.approx(2e-4)
    assert learning_rate_at(config, 10_000) == pytest.approx(2e-4)
    assert learning_rate_at(TrainingConfig(learning_rate=3e-4, warmup_steps=0), 1) == pytest.approx(3e-4)


def test_the_ema_decay_warms_up_as_min_of_the_decay_and_1_plus_t_over_10_plus_t():
    config = TrainingConfig(ema_decay=0.9999, ema_warmup=True)
    assert ema_decay_at(config, 0) == pytest.approx(0.1)
    assert ema_decay_at(config, 10) == pytest.approx(11 / 20)
    assert ema_decay_at(config, 1000) == pytest.approx(1001 / 1010)
    assert ema_decay_at(config, 10**6) == pytest.approx(0.9999)  # capped by the configured decay
    assert ema_decay_at(TrainingConfig(ema_decay=0.999, ema_warmup=False), 0) == 0.999


def test_the_ema_update_moves_each_weight_by_one_minus_decay_towards_the_model():
    config = TrainingConfig.for_preset("tiny", image_size=16, ema_decay=0.9, ema_warmup=False)
    state = TrainingState(config, torch.device("cpu"), DistributedContext())
    before = copy.deepcopy(state.ema.state_dict())
    with torch.no_grad():
        for parameter in state.model.parameters():
            parameter.add_(1.0)
    state.update_ema()
    for name, parameter in state.model.named_parameters():
        # ema <- decay * ema + (1 - decay) * theta, with theta = ema_before + 1 (the copies started equal)
        expected = 0.9 * before[name] + 0.1 * parameter.detach()
        torch.testing.assert_close(state.ema.state_dict()[name], expected)
        torch.testing.assert_close(state.ema.state_dict()[name], before[name] + 0.1)


def asymmetric_images(count: int = 8, size: int = 8) -> torch.Tensor:
    """uint8 images whose left half is dark and right half light, each a different shade: a mirror shows."""
    images = torch.zeros(count, 3, size, size, dtype=torch.uint8)
    images[:, :, :, size // 2:] = 200
    images += torch.arange(count, dtype=torch.uint8).view(-1, 1, 1, 1)
    return images


SINGLE_PROCESS = DistributedContext()


def draw(config: TrainingConfig, images: torch.Tensor, seed: int, context=SINGLE_PROCESS) -> torch.Tensor:
    """This rank's model input at the first step of a run seeded with ``seed``, as the trainer makes it."""
    source = BatchSource(images, seed=seed, batch_size=config.batch_size, rank=context.rank,
                         world_size=context.world_size, device=torch.device("cpu"), first_step=1, last_step=1)
    try:
        return model_input(source.next(), config)
    finally:
        source.close()


def test_the_trainer_mirrors_about_half_of_the_images_it_draws_and_none_without_flips():
    images = asymmetric_images()
    config = TrainingConfig(batch_size=400)
    batch = draw(config, images, seed=0)
    originals, mirrored = to_model_range(images), to_model_range(images).flip(-1)
    is_original = [any(torch.equal(x, o) for o in originals) for x in batch]
    is_mirrored = [any(torch.equal(x, m) for m in mirrored) for x in batch]
    assert all(a != b for a, b in zip(is_original, is_mirrored))  # each is an image of the set, mirrored or not
    assert 160 < sum(is_mirrored) < 240  # 400 fair coins
    assert torch.equal(batch, draw(config, images, seed=0))  # the seed (and the step) decide

    plain = draw(TrainingConfig(batch_size=400, random_flip=False), images, seed=0)
    assert all(any(torch.equal(x, o) for o in originals) for x in plain)
    # The same images are drawn with and without flips (each has its own darkest shade, which a mirror keeps).
    assert torch.equal(plain.amin(dim=(1, 2, 3)), batch.amin(dim=(1, 2, 3)))


def test_each_rank_takes_its_own_slice_of_the_same_global_batch():
    images = asymmetric_images()
    config = TrainingConfig(batch_size=8)
    whole = draw(config, images, seed=3)
    halves = [draw(config, images, seed=3, context=DistributedContext(rank=rank, world_size=2)) for rank in (0, 1)]
    assert torch.equal(torch.cat(halves), whole)
