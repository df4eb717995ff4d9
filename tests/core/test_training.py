"""The training engine: exact resume, crash safety under kill -9, and stopping on a non-finite loss.

Everything runs for real on the CPU: tiny models, 16x16 images, T = 50, a few steps.
"""

from __future__ import annotations

import multiprocessing
import os
import random
import signal
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from ddpm_studio.core.data.demo import make_demo_images
from ddpm_studio.core.model import store as model_store
from ddpm_studio.core.model.lock import LOCK_FILE, ModelFolderInUse
from ddpm_studio.core.model.store import ModelError
from ddpm_studio.core.system.devices import threads_beside_a_window
from ddpm_studio.core.training import state as training_state
from ddpm_studio.core.training.config import TrainingConfig
from ddpm_studio.core.training.events import CheckpointEvent, FailedEvent, FinishedEvent, StartedEvent, StepEvent
from ddpm_studio.core.training.loop import train


def images_uint8(count: int = 32, size: int = 16, seed: int = 0) -> torch.Tensor:
    return torch.from_numpy(make_demo_images(count, size=size, seed=seed)).permute(0, 3, 1, 2).contiguous()


def tiny_config(**overrides) -> TrainingConfig:
    values = dict(steps=10, num_timesteps=50, preview_count=0, checkpoint_every=1000, warmup_steps=3, seed=3)
    values.update(overrides)
    return TrainingConfig.for_preset("tiny", **values)


def state_tensors(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / model_store.STATE_FILE))


def assert_same_tensors(first: dict[str, torch.Tensor], second: dict[str, torch.Tensor], prefix: str = "") -> None:
    names = sorted(name for name in first if name.startswith(prefix))
    assert names, f"no tensors named {prefix}*"
    assert names == sorted(name for name in second if name.startswith(prefix))
    for name in names:
        assert torch.equal(first[name], second[name]), f"{name} differs"


# --- resume ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("checkpoint_every", [1000, 2])
def test_stop_and_resume_gives_the_same_weights_and_losses_as_one_run(tmp_path, checkpoint_every):
    images = images_uint8()
    # Dropout draws from the global torch RNG, flips and indices from the data generator, the
    # noise from the noise generator, and warm-up changes the learning rate across the split:
    # every piece of state that resuming must restore is in play.
    config = tiny_config(dropout=0.1, checkpoint_every=checkpoint_every)

    straight = list(train(config, images, tmp_path / "straight"))
    assert isinstance(straight[-1], FinishedEvent) and straight[-1].step == 10
    straight_losses = [loss for event in straight if isinstance(event, StepEvent) for loss in event.losses]
    assert len(straight_losses) == 10

    # Stop after step 5: closing the generator makes the trainer's cleanup save a checkpoint.
    split = tmp_path / "split"
    events = train(config, images, split)
    first_half = []
    for event in events:
        first_half.append(event)
        if isinstance(event, StepEvent) and event.step == 5:
            break
    events.close()
    assert model_store.read_model_info(split).step == 5
    assert len(model_store.load_loss_history(split)) == 5
    assert model_store.read_safetensors_metadata(split / model_store.STATE_FILE)["step"] == "5"

    second_half = list(train(config, images, split, resume=True))
    started = second_half[0]
    assert isinstance(started, StartedEvent) and started.step == 5 and started.total_steps == 10
    np.testing.assert_array_equal(started.loss_history, np.asarray(straight_losses[:5], dtype=np.float32))
    assert isinstance(second_half[-1], FinishedEvent) and second_half[-1].step == 10
    assert [e.step for e in second_half if isinstance(e, StepEvent)] == [6, 7, 8, 9, 10]
    split_losses = [loss for e in first_half + second_half if isinstance(e, StepEvent) for loss in e.losses]
    assert split_losses == straight_losses

    # Weights: raw, EMA (in the state and in the sampling file), optimizer and RNG states, all bit for bit.
    a, b = state_tensors(tmp_path / "straight"), state_tensors(split)
    for prefix in ("model.", "ema.", "optimizer.", "generator.", "rng."):
        assert_same_tensors(a, b, prefix)
    assert torch.equal(a["loss"], b["loss"]) and len(a["loss"]) == 10
    assert_same_tensors(load_file(str(tmp_path / "straight" / model_store.EMA_FILE)),
                        load_file(str(split / model_store.EMA_FILE)))

    # The loss history on disk, as loss.npy and through the model store.
    history = model_store.load_loss_history(split)
    assert history.dtype == np.float32 and len(history) == 10
    np.testing.assert_array_equal(history, model_store.load_loss_history(tmp_path / "straight"))
    np.testing.assert_array_equal(history, np.load(split / model_store.LOSS_FILE))
    np.testing.assert_array_equal(history, np.asarray(straight_losses, dtype=np.float32))

    info = model_store.read_model_info(split)
    assert info.step == 10 and info.can_resume
    assert info.last_loss == pytest.approx(float(history[-1]))


def test_resume_refuses_a_run_that_has_already_reached_its_steps(tmp_path):
    config = tiny_config(steps=2)
    list(train(config, images_uint8(), tmp_path / "m"))
    with pytest.raises(ValueError, match="already trained 2 steps"):
        next(train(config, images_uint8(), tmp_path / "m", resume=True))


def test_a_new_run_refuses_to_overwrite_a_model(tmp_path):
    config = tiny_config(steps=2)
    list(train(config, images_uint8(), tmp_path / "m"))
    before = (tmp_path / "m" / model_store.EMA_FILE).read_bytes()
    with pytest.raises(ValueError, match="already holds a model"):
        next(train(config, images_uint8(), tmp_path / "m"))
    assert (tmp_path / "m" / model_store.EMA_FILE).read_bytes() == before


def test_resuming_a_folder_without_training_state_is_a_model_error(tmp_path):
    config = tiny_config(steps=2)
    list(train(config, images_uint8(), tmp_path / "m"))
    (tmp_path / "m" / model_store.STATE_FILE).unlink()
    with pytest.raises(ModelError, match=model_store.STATE_FILE):
        next(train(tiny_config(steps=4), images_uint8(), tmp_path / "m", resume=True))


# --- non-finite loss --------------------------------------------------------------------------------


def assert_one_sentence_about_non_finite_loss(reason: str) -> None:
    assert "\n" not in reason
    assert "non-finite" in reason and "learning rate" in reason
    assert reason.endswith(".") and ". " not in reason, reason


def assert_finite_loadable_model(folder: Path, step: int, ema_bytes: bytes) -> None:
    info = model_store.read_model_info(folder)
    assert info.step == step
    assert (folder / model_store.EMA_FILE).read_bytes() == ema_bytes  # untouched by the failed run
    loaded = model_store.load_model(folder)
    assert all(torch.isfinite(p).all() for p in loaded.unet.parameters())
    tensors = state_tensors(folder)
    assert all(torch.isfinite(v).all() for k, v in tensors.items() if k.startswith(("model.", "ema.")))
    history = model_store.load_loss_history(folder)
    assert len(history) == step and np.isfinite(history).all()


class NaNAfter(training_state.UNet):
    """The tiny U-Net, except that from the ``limit``-th training forward pass on it predicts NaN.

    The learning-rate route does not blow up reliably (Adam bounds every update by the
    learning rate, and GroupNorm absorbs the rest), so this is how a loss turns NaN mid-run.
    """

    calls = 0
    limit = 10**9

    def forward(self, x, t):
        out = super().forward(x, t)
        if self.training:
            type(self).calls += 1
            if type(self).calls >= type(self).limit:
                return out * float("nan")
        return out


@pytest.mark.parametrize("log_every", [1, 3])
def test_a_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch, log_every):
    class Poisoned(NaNAfter):
        calls = 0
        limit = 6  # step 6's forward pass

    monkeypatch.setattr(training_state, "UNet", Poisoned)
    folder = tmp_path / "m"
    config = tiny_config(steps=20, checkpoint_every=4, log_every=log_every, learning_rate=1e-3)
    events = []
    ema_at_checkpoint = None
    for event in train(config, images_uint8(), folder):
        events.append(event)
        if isinstance(event, CheckpointEvent):
            assert event.step == 4
            ema_at_checkpoint = (folder / model_store.EMA_FILE).read_bytes()
    failed = events[-1]
    assert isinstance(failed, FailedEvent), events[-3:]
    assert not any(isinstance(e, FinishedEvent) for e in events)
    assert failed.step == 6  # read back at step 6 either way: every step, or every 3rd
    assert_one_sentence_about_non_finite_loss(failed.reason)
    assert ema_at_checkpoint is not None
    assert_finite_loadable_model(folder, 4, ema_at_checkpoint)
    # And the run can go on from there (with whatever the user changes, here nothing poisoned).
    monkeypatch.undo()
    resumed = list(train(tiny_config(steps=6, checkpoint_every=4), images_uint8(), folder, resume=True))
    assert isinstance(resumed[0], StartedEvent) and resumed[0].step == 4
    assert isinstance(resumed[-1], FinishedEvent) and resumed[-1].step == 6


@pytest.mark.parametrize("checkpoint_every", [1, 2])
def test_non_finite_weights_are_never_saved_as_a_checkpoint(tmp_path, checkpoint_every):
    """A step can have a finite loss and still leave NaN weights (a NaN in the optimizer's moments,
    or an infinite gradient). The checkpoint after it must not overwrite the good one."""
    folder = tmp_path / "m"
    list(train(tiny_config(steps=4, checkpoint_every=2), images_uint8(), folder))
    ema_before = (folder / model_store.EMA_FILE).read_bytes()
    tensors = state_tensors(folder)
    metadata = model_store.read_safetensors_metadata(folder / model_store.STATE_FILE)
    name = next(k for k in sorted(tensors) if k.startswith("optimizer.") and k.endswith(".exp_avg"))
    tensors[name] = torch.full_like(tensors[name], float("nan"))
    model_store.save_safetensors_atomic(folder / model_store.STATE_FILE, tensors, metadata)

    events = list(train(tiny_config(steps=10, checkpoint_every=checkpoint_every), images_uint8(), folder, resume=True))
    failed = events[-1]
    assert isinstance(failed, FailedEvent), events[-3:]
    assert 5 <= failed.step <= 6
    assert_one_sentence_about_non_finite_loss(failed.reason)
    assert_finite_loadable_model(folder, 4, ema_before)


def test_a_huge_learning_rate_is_refused_before_training():
    with pytest.raises(ValueError, match="learning rate"):
        tiny_config(learning_rate=5.0).validate()


# --- out of memory ------------------------------------------------------------------------------------


def train_with_little_memory(folder: str, batch_size: int, report: str) -> None:
    """In a forked child: allow this process only a little more address space than it has, then resume
    training at ``batch_size``. The CPU allocator fails for real, without gigabytes ever being touched."""
    import json
    import resource

    with open("/proc/self/status") as stream:
        in_use = next(int(line.split()[1]) * 1024 for line in stream if line.startswith("VmSize:"))
    headroom = 256 * 2**20
    resource.setrlimit(resource.RLIMIT_AS, (in_use + headroom, in_use + headroom))
    events = []
    for event in train(tiny_config(steps=8, batch_size=batch_size, checkpoint_every=2), images_uint8(), Path(folder),
                       resume=True):
        events.append([type(event).__name__, getattr(event, "reason", None)])
    Path(report).write_text(json.dumps(events))


def test_a_cpu_allocation_failure_ends_the_run_in_one_sentence_and_keeps_the_checkpoint(tmp_path, fork_context):
    import json

    folder = tmp_path / "m"
    list(train(tiny_config(steps=4, checkpoint_every=2), images_uint8(), folder))
    ema_before = (folder / model_store.EMA_FILE).read_bytes()
    report = tmp_path / "events.json"
    # Batch 4096 of 16x16 images needs about 6 GB of activations for this U-Net; the child may use 256 MB more.
    process = fork_context.Process(target=train_with_little_memory, args=(str(folder), 4096, str(report)))
    process.start()
    process.join(300)
    assert process.exitcode == 0, f"the child ended with {process.exitcode}"
    events = json.loads(report.read_text())
    names = [name for name, _ in events]
    assert names[0] == "StartedEvent" and names[-1] == "FailedEvent", names
    assert "FinishedEvent" not in names and "CheckpointEvent" not in names
    reason = events[-1][1]
    assert reason.startswith("Out of CPU memory at batch size 4096") and "lower the batch size" in reason
    assert f"the checkpoint of step 4 in {folder} is kept" in reason
    assert reason.count(". ") == 0 and reason.endswith(".") and "\n" not in reason  # one sentence, no allocator text
    assert_finite_loadable_model(folder, 4, ema_before)


def test_cpu_threads_apply_to_the_thread_that_drives_the_run_only(tmp_path):
    """The window trains in a worker thread with one core fewer: OpenMP keeps the count per thread, so the
    setting must reach the thread that runs the steps, and leave the window's own thread alone."""
    import threading

    main_threads = torch.get_num_threads()
    seen = {}

    def drive():
        seen["before"] = torch.get_num_threads()
        events = train(tiny_config(steps=2), images_uint8(), tmp_path / "m", cpu_threads=main_threads + 2)
        for event in events:
            if isinstance(event, StepEvent):
                seen.setdefault("during", torch.get_num_threads())
        seen["after"] = torch.get_num_threads()

    worker = threading.Thread(target=drive)
    worker.start()
    worker.join(120)
    assert seen["during"] == main_threads + 2
    assert seen["after"] == seen["before"]  # given back, also for threads started later
    assert torch.get_num_threads() == main_threads
    assert 1 <= threads_beside_a_window() == max(1, main_threads - 1)


# --- crash safety: kill -9 at random moments ---------------------------------------------------------


@pytest.fixture(scope="module")
def fork_context():
    """Training runs are forked from a fork server: each is a separate process that the test can
    kill -9, and starts in milliseconds, because the server imported torch once (a fresh interpreter
    takes 5-15 s here). The server itself never runs a torch operation. Forking this test process
    instead, after it has run OpenMP-parallel operators, once left a child hung for good inside
    scaled_dot_product_attention on a 2-core CI machine: a thread pool does not survive fork."""
    if "forkserver" not in multiprocessing.get_all_start_methods():
        pytest.skip("needs the forkserver start method")
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["torch", "tests.train_worker", "ddpm_studio.core.training.loop"])
    return context


def launch_worker(context, folder: Path, resume: bool):
    from tests import train_worker

    process = context.Process(target=train_worker.run, args=(str(folder), resume), daemon=True)
    process.start()
    return process


def wait_for_checkpoint_after(folder: Path, step: int, process, deadline: float) -> None:
    """Wait until model.json reports more than ``step`` steps. Every read on the way must succeed."""
    while time.monotonic() < deadline:
        if (folder / model_store.CONFIG_FILE).exists():
            if model_store.read_model_info(folder).step > step:  # a file being replaced is still whole
                return
        if not process.is_alive():
            raise AssertionError(f"the training process exited early ({process.exitcode})")
        time.sleep(0.02)
    raise AssertionError(f"no checkpoint after step {step} in {folder} in time")


def check_folder_after_crash(folder: Path) -> int:
    """The folder loads for sampling and for resuming, whatever temporary files the kill left."""
    info = model_store.read_model_info(folder)
    assert info.step >= 1 and info.can_resume
    loaded = model_store.load_model(folder)
    assert all(torch.isfinite(p).all() for p in loaded.unet.parameters())
    history = model_store.load_loss_history(folder)
    assert len(history) >= info.step and np.isfinite(history).all()
    state_step = int(model_store.read_safetensors_metadata(folder / model_store.STATE_FILE)["step"])
    assert state_step >= info.step
    # Resuming starts from the training state, with the history of exactly its steps.
    events = train(tiny_config(steps=100000, checkpoint_every=1), images_uint8(), folder, resume=True)
    started = next(events)
    assert isinstance(started, StartedEvent) and started.step == state_step
    assert len(started.loss_history) == state_step
    # Leave the folder as the crash left it (closing before any step saves nothing).
    events.close()
    return state_step


def test_kill_minus_9_at_random_moments_leaves_a_loadable_resumable_model(tmp_path, fork_context):
    rng = random.Random(20240601)
    folders = [tmp_path / "run0", tmp_path / "run1"]
    last_steps = {folder: 0 for folder in folders}
    leftovers_seen = 0
    for round_index in range(3):  # a fresh run, then resumed ones, each killed at a random moment
        for folder in folders:
            process = launch_worker(fork_context, folder, resume=round_index > 0)
            try:
                # A guard against hanging, not a timing assertion.
                wait_for_checkpoint_after(folder, last_steps[folder], process, time.monotonic() + 180)
                time.sleep(rng.uniform(0.0, 0.8))
                os.kill(process.pid, signal.SIGKILL)
                process.join(timeout=60)
                assert process.exitcode == -signal.SIGKILL
            finally:
                if process.is_alive():
                    process.kill()
                    process.join()
            leftovers_seen += len(list(folder.rglob("*.tmp")))
            step = check_folder_after_crash(folder)
            assert step > last_steps[folder]
            last_steps[folder] = step
    # Finally each run finishes normally, in this process, from where it was killed.
    for folder in folders:
        target = last_steps[folder] + 2
        events = list(train(tiny_config(steps=target, checkpoint_every=1), images_uint8(), folder, resume=True))
        assert isinstance(events[-1], FinishedEvent) and events[-1].step == target
        assert model_store.read_model_info(folder).step == target
        assert len(model_store.load_loss_history(folder)) == target
        # Temporary files that kills left behind are cleared when a run writes the folder again.
        assert list(folder.rglob("*.tmp")) == []
    print(f"{leftovers_seen} temporary files were left by the kills")


def test_stale_temporary_files_are_removed_and_nothing_else(tmp_path):
    folder = tmp_path / "m"
    list(train(tiny_config(steps=2), images_uint8(), folder))
    stale = [folder / ".training_state.safetensors.abcd1234.tmp",
             folder / model_store.PREVIEW_DIR / ".step_0000002.png.x_y0z9qq.tmp"]
    keep = [folder / "notes.tmp", folder / ".hidden", folder / "my.file.abcd1234.tmp"]
    for path in stale + keep:
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(b"partial")
    assert model_store.load_model(folder)  # they don't get in the way of loading
    list(train(tiny_config(steps=3), images_uint8(), folder, resume=True))
    assert not any(path.exists() for path in stale)
    assert all(path.exists() for path in keep)


def test_a_second_run_into_a_folder_being_trained_is_refused_and_the_first_goes_on(tmp_path):
    folder = tmp_path / "model"
    first = train(tiny_config(steps=4), images_uint8(), folder)
    assert isinstance(next(first), StartedEvent)
    second = train(tiny_config(steps=4), images_uint8(), folder, resume=True)
    with pytest.raises(ModelFolderInUse, match="in use by another run"):
        next(second)
    events = list(first)  # the first run is untouched and ends normally
    assert isinstance(events[-1], FinishedEvent)
    assert model_store.read_model_info(folder).step == 4
    assert not (folder / LOCK_FILE).exists()  # released at the end
    third = train(tiny_config(steps=6), images_uint8(), folder, resume=True)
    assert isinstance(list(third)[-1], FinishedEvent)
