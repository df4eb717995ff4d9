"""The training loop's device paths, checked on the CPU: Adam's layout after a resume, out-of-memory
failures that free what they held, and stopping on request with a checkpoint."""

from __future__ import annotations

import weakref

import pytest
import torch

from ddpm_studio.core.diffusion.process import GaussianDiffusion
from ddpm_studio.core.model import store as model_store
from ddpm_studio.core.training import state as training_state
from ddpm_studio.core.training.config import TrainingConfig
from ddpm_studio.core.training.distributed import DistributedContext
from ddpm_studio.core.training.events import FailedEvent, FinishedEvent, StepEvent
from ddpm_studio.core.training.loop import train
from tests.helpers.images import tiny_images


def tiny_config(**overrides) -> TrainingConfig:
    values = dict(steps=4, num_timesteps=50, preview_count=0, checkpoint_every=1000, warmup_steps=2, seed=5,
                  precision="fp32")
    values.update(overrides)
    return TrainingConfig.for_preset("tiny", **values)


def test_adam_moments_take_the_parameters_channels_last_layout_on_resume(tmp_path, monkeypatch):
    """On a GPU the model is channels_last; the file holds the moments contiguous. Moments left
    NCHW make foreach Adam slow and fused Adam fail. The CPU runs channels_last too, so it can show it."""
    config = tiny_config()
    list(train(config, tiny_images(), tmp_path / "run"))
    saved = model_store.read_safetensors(tmp_path / "run" / model_store.STATE_FILE)
    monkeypatch.setattr(training_state, "use_channels_last", lambda device: True)
    state = training_state.TrainingState(config, torch.device("cpu"), DistributedContext())
    state.load_state(tmp_path / "run")
    parameters = list(state.model.parameters())
    checked = 0
    for index, parameter in enumerate(parameters):
        moments = state.optimizer.state[parameter]
        for key in ("exp_avg", "exp_avg_sq"):
            assert torch.equal(moments[key], saved[f"optimizer.{index}.{key}"])
            assert moments[key].stride() == parameter.stride(), f"{key} of parameter {index}"
        checked += parameter.ndim == 4 and not parameter.is_contiguous()  # a 3x3 convolution, channels_last
    assert checked > 0
    # And a fused step runs on them (torch's fused Adam refuses mismatched layouts).
    fused = torch.optim.Adam(parameters, lr=1e-4, fused=True)
    fused.load_state_dict(state.optimizer.state_dict() | {"param_groups": fused.state_dict()["param_groups"]})
    for parameter in parameters:
        parameter.grad = torch.ones_like(parameter)
    fused.step()


def test_an_out_of_memory_error_while_building_the_model_is_a_failure_event(tmp_path, monkeypatch):
    def out_of_memory(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(training_state, "UNet", out_of_memory)
    events = list(train(tiny_config(), tiny_images(), tmp_path / "run"))
    assert len(events) == 1 and isinstance(events[0], FailedEvent)
    assert events[0].reason.startswith("Out of CPU memory") and "(while building the model)" in events[0].reason


def test_the_failed_step_frees_its_tensors_before_the_failure_is_reported(tmp_path, monkeypatch):
    """The consumer may start a smaller run as it handles the failure: the failed step's tensors,
    held by the exception's frames, must be gone by then."""
    held: list[weakref.ref] = []
    real_loss = GaussianDiffusion.training_loss

    def loss_then_out_of_memory(self, model, x0, *args, **kwargs):
        if len(held) == 2:
            activations = torch.ones(1 << 20)  # what the failed forward pass had built
            held.append(weakref.ref(activations))
            raise torch.OutOfMemoryError("CUDA out of memory.")
        held.append(None)
        return real_loss(self, model, x0, *args, **kwargs)

    monkeypatch.setattr(GaussianDiffusion, "training_loss", loss_then_out_of_memory)
    for event in train(tiny_config(), tiny_images(), tmp_path / "run"):
        if isinstance(event, FailedEvent):
            assert held[-1]() is None, "the failed step's tensors are still alive"
            assert event.reason.startswith("Out of CPU memory") and "(step 3)" in event.reason
            break
    else:
        pytest.fail("no FailedEvent")


def test_a_stop_request_ends_the_run_after_that_step_with_a_checkpoint(tmp_path):
    steps_seen: list[int] = []
    events = []
    for event in train(tiny_config(steps=100), tiny_images(), tmp_path / "run",
                       stop_requested=lambda: len(steps_seen) >= 3):
        events.append(event)
        if isinstance(event, StepEvent):
            steps_seen.append(event.step)
    # Asked after step 4's work (3 steps were reported then): step 4 is the last, and it is saved.
    assert isinstance(events[-1], FinishedEvent) and events[-1].stopped
    assert steps_seen == [1, 2, 3, 4]
    assert events[-1].step == 4 == model_store.read_model_info(tmp_path / "run").step
