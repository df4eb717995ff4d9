"""Shared test settings and fixtures: Qt runs offscreen, torch uses few threads, models are tiny and temporary."""

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
# The dataset cache of every test and of the commands they start lives in a temporary folder, never
# in the user's cache (tests that look at the cache set their own folder per test).
if "DDPM_STUDIO_CACHE" not in os.environ:
    import tempfile

    os.environ["DDPM_STUDIO_CACHE"] = tempfile.mkdtemp(prefix="ddpm-studio-test-cache-")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

from tests.helpers.images import tiny_images  # noqa: E402

# Test tensors are tiny: one thread is faster than two fighting over small kernels.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def user_models_dir(tmp_path_factory, monkeypatch) -> Path:
    """Models saved "by default" go to a temporary user folder, never the real home."""
    folder = tmp_path_factory.mktemp("user-models")
    monkeypatch.setenv("DDPM_STUDIO_MODELS", str(folder))
    return folder


@pytest.fixture
def cache_folder(tmp_path_factory, monkeypatch) -> Path:
    """An empty dataset cache folder of this test's own."""
    folder = tmp_path_factory.mktemp("dataset-cache")
    monkeypatch.setenv("DDPM_STUDIO_CACHE", str(folder))
    return folder


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """A tiny model (16x16, T = 50) trained for a few steps, with a training state; shared read-only."""
    from ddpm_studio.core.training.config import TrainingConfig
    from ddpm_studio.core.training.events import FinishedEvent
    from ddpm_studio.core.training.loop import train

    folder = tmp_path_factory.mktemp("models") / "tiny"
    config = TrainingConfig.for_preset("tiny", steps=12, num_timesteps=50, preview_count=4, preview_every=6,
                                       preview_steps=5, checkpoint_every=6)
    events = list(train(config, tiny_images(), folder, {"count": 32, "paths": []}))
    assert isinstance(events[-1], FinishedEvent)
    return folder
