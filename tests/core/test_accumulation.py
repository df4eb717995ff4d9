"""Memory savers for large models: gradient accumulation and activation checkpointing change how a step is
computed, never what it computes; and a run that accumulates still resumes exactly."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from ddpm_studio.core.diffusion.process import GaussianDiffusion
from ddpm_studio.core.diffusion.schedule import NoiseSchedule, ScheduleConfig
from ddpm_studio.core.model import store as model_store
from ddpm_studio.core.model.unet import UNet, preset_config
from ddpm_studio.core.training.config import TrainingConfig
from ddpm_studio.core.training.events import FinishedEvent
from ddpm_studio.core.training.loop import accumulate_gradients, train
from ddpm_studio.core.training.memory import FIT_SHARE, check_training_memory, estimate_training_memory
from ddpm_studio.core.training.run_memory import check_memory, micro_batch_count
from tests.helpers.images import tiny_images


def tiny_diffusion() -> GaussianDiffusion:
    return GaussianDiffusion(NoiseSchedule.from_config(ScheduleConfig("linear", 50)))


def gradients_of(model: UNet, micro_batches: int, seed: int = 0) -> tuple[dict[str, torch.Tensor], float]:
    model.zero_grad(set_to_none=True)
    x0 = torch.rand(32, 3, 16, 16, generator=torch.Generator().manual_seed(1)) * 2 - 1
    loss = accumulate_gradients(model, None, tiny_diffusion(), x0, micro_batches,
                                torch.Generator().manual_seed(seed), bf16=False)
    return {name: p.grad.clone() for name, p in model.named_parameters()}, float(loss)


def test_four_micro_batches_of_8_give_the_gradients_of_one_batch_of_32():
    torch.manual_seed(0)
    model = UNet(preset_config("tiny"))
    whole, whole_loss = gradients_of(model, 1)
    split, split_loss = gradients_of(model, 4)
    uneven, _ = gradients_of(model, 5)  # 7, 7, 6, 6, 6 images: weighted by their share
    assert split_loss == pytest.approx(whole_loss, rel=1e-6)
    assert any(gradient.abs().max() > 0 for gradient in whole.values())
    for name in whole:
        torch.testing.assert_close(split[name], whole[name], rtol=1e-5, atol=1e-7, msg=name)
        torch.testing.assert_close(uneven[name], whole[name], rtol=1e-5, atol=1e-7, msg=name)
    # And a different draw of t and the noise is a different gradient: the comparison can fail.
    other, _ = gradients_of(model, 1, seed=5)
    assert not all(torch.allclose(other[name], whole[name], rtol=1e-5, atol=1e-7) for name in whole)


def step_config(**overrides) -> TrainingConfig:
    # float32 whatever the CPU: "auto" is bf16 where it is native, and the comparisons below are of float rounding
    values = dict(steps=1, batch_size=32, num_timesteps=50, preview_count=0, warmup_steps=0, seed=4, precision="fp32")
    values.update(overrides)
    return TrainingConfig.for_preset("tiny", **values)


def trained_weights(config: TrainingConfig, folder) -> dict[str, torch.Tensor]:
    events = list(train(config, tiny_images(48), folder))
    assert isinstance(events[-1], FinishedEvent)
    return {k: v for k, v in load_file(str(folder / model_store.STATE_FILE)).items() if k.startswith("model.")}


def test_accumulation_gives_the_parameters_of_the_whole_batch_after_a_step(tmp_path):
    # One step, as Adam's second step divides by the square root of tiny second moments for the
    # zero-initialised layers, which magnifies float rounding: the gradients are compared above.
    whole = trained_weights(step_config(), tmp_path / "whole")
    accumulated = trained_weights(step_config(accumulate=4), tmp_path / "accumulated")
    by_size = trained_weights(step_config(micro_batch=8), tmp_path / "by-size")
    initial = {f"model.{k}": v for k, v in UNet(preset_config("tiny")).state_dict().items()}
    assert any(not torch.equal(whole[name], initial[name]) for name in whole)  # it trained
    for name in whole:
        torch.testing.assert_close(accumulated[name], whole[name], rtol=1e-4, atol=1e-6, msg=name)
        assert torch.equal(by_size[name], accumulated[name]), name  # --micro-batch 8 is --accumulate 4 here


def saved_bytes_and_gradients(model: UNet, checkpointing: bool) -> tuple[int, dict[str, torch.Tensor]]:
    model.set_activation_checkpointing(checkpointing)
    model.zero_grad(set_to_none=True)
    saved = 0

    def pack(tensor):
        nonlocal saved
        saved += tensor.numel() * tensor.element_size()
        return tensor

    x = torch.randn(8, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    t = torch.randint(0, 50, (8,), generator=torch.Generator().manual_seed(3))
    torch.manual_seed(7)  # dropout's masks
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        loss = model(x, t).square().mean()
    loss.backward()
    return saved, {name: p.grad.clone() for name, p in model.named_parameters()}


def test_activation_checkpointing_keeps_less_and_gives_the_same_gradients():
    config = preset_config("tiny")
    torch.manual_seed(0)
    model = UNet(type(config)(**{**config.__dict__, "dropout": 0.1})).train()
    plain_bytes, plain = saved_bytes_and_gradients(model, False)
    checkpointed_bytes, checkpointed = saved_bytes_and_gradients(model, True)
    assert checkpointed_bytes < plain_bytes * 0.7
    for name in plain:
        torch.testing.assert_close(checkpointed[name], plain[name], rtol=1e-6, atol=1e-8, msg=name)


def test_a_run_with_accumulation_and_checkpointing_resumes_exactly(tmp_path):
    config = TrainingConfig.for_preset("tiny", steps=6, batch_size=12, num_timesteps=50, preview_count=0,
                                       warmup_steps=3, seed=3, dropout=0.1, accumulate=3, checkpoint_activations=True)
    images = tiny_images()
    list(train(config, images, tmp_path / "straight"))
    events = train(config, images, tmp_path / "split")
    for event in events:
        if getattr(event, "step", 0) == 3 and type(event).__name__ == "StepEvent":
            break
    events.close()  # the trainer checkpoints step 3 as it stops
    assert model_store.read_model_info(tmp_path / "split").step == 3
    list(train(config, images, tmp_path / "split", resume=True))
    straight = load_file(str(tmp_path / "straight" / model_store.STATE_FILE))
    split = load_file(str(tmp_path / "split" / model_store.STATE_FILE))
    assert sorted(straight) == sorted(split)
    for name in straight:
        assert torch.equal(straight[name], split[name]), f"{name} differs after resuming"


def test_how_a_batch_is_split():
    cpu = torch.device("cpu")
    assert micro_batch_count(step_config(micro_batch=5), 16, cpu) == 4  # 4, 4, 4, 4 images
    assert micro_batch_count(step_config(micro_batch=64), 16, cpu) == 1
    assert micro_batch_count(step_config(accumulate=4), 16, cpu) == 4
    with pytest.raises(ValueError, match="cannot be split into 32"):
        micro_batch_count(step_config(accumulate=32), 16, cpu)
    for bad in (dict(accumulate=0), dict(micro_batch=0), dict(micro_batch="most"), dict(accumulate=2, micro_batch=4),
                dict(accumulate=64), dict(micro_batch=2.5), dict(checkpoint_activations="yes")):
        with pytest.raises(ValueError):
            step_config(**bad).validate()


def test_an_auto_micro_batch_is_the_largest_the_estimate_fits(monkeypatch):
    cpu = torch.device("cpu")
    config = step_config(micro_batch="auto", batch_size=16, precision="fp32")
    unet = config.unet_config()
    seven_images = estimate_training_memory(unet, 7).total_bytes
    monkeypatch.setenv("DDPM_STUDIO_MEMORY_LIMIT", str(int(seven_images / FIT_SHARE) + 1))
    assert check_training_memory(unet, 16, False, cpu).largest_batch == 7
    assert micro_batch_count(config, 16, cpu) == 3  # 16 images as 6, 5 and 5: none above 7
    assert micro_batch_count(config, 7, cpu) == 1
    # The memory check before a run looks at one micro-batch, not at the whole batch.
    assert not check_memory(step_config(batch_size=16, precision="fp32")).fits
    assert check_memory(config).fits
    assert check_memory(step_config(batch_size=16, accumulate=3, precision="fp32")).fits
