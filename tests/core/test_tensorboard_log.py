"""TensorBoard logging: the event files hold the run's losses, learning rates, throughput and preview grids;
without the package, one sentence names the extra to install."""

from __future__ import annotations

import io
import sys

import numpy as np
import pytest
from PIL import Image

from ddpm_studio import cli
from ddpm_studio.core.sampling.imaging import make_grid
from ddpm_studio.core.training.config import TrainingConfig
from ddpm_studio.core.training.events import EvaluationEvent, PreviewEvent, StepEvent
from ddpm_studio.core.training.loop import train
from ddpm_studio.core.training.tensorboard_log import EXTRA_SENTENCE, MissingExtra, TensorBoardLog
from tests.helpers.images import tiny_images


def test_event_files_hold_the_scalars_and_preview_grids(tmp_path):
    event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    config = TrainingConfig.for_preset("tiny", steps=4, num_timesteps=50, preview_every=2, preview_count=4,
                                       preview_steps=3, log_every=2, warmup_steps=2)
    log = TensorBoardLog(tmp_path / "tb")
    events = []
    for event in train(config, tiny_images(), tmp_path / "model"):
        log.record(event)
        events.append(event)
    log.record(EvaluationEvent(4, "kid", 0.25, 0.01, 100))  # what --eval-every yields (it needs Inception weights)
    log.close()

    reader = event_accumulator.EventAccumulator(str(tmp_path / "tb"), size_guidance={"images": 0, "scalars": 0})
    reader.Reload()
    losses = [loss for event in events if isinstance(event, StepEvent) for loss in event.losses]
    logged = reader.Scalars("train/loss")
    assert [point.step for point in logged] == [1, 2, 3, 4]  # each loss at its own step, though read back in pairs
    np.testing.assert_allclose([point.value for point in logged], losses, rtol=1e-6)
    rates = {point.step: point.value for point in reader.Scalars("train/learning_rate")}
    assert rates == pytest.approx({step: config.learning_rate * min(1, step / 2) for step in (1, 2, 3, 4)})
    assert [point.step for point in reader.Scalars("train/images_per_second")] == [2, 4]
    assert all(point.value > 0 for point in reader.Scalars("train/images_per_second"))

    assert [(point.step, point.value) for point in reader.Scalars("eval/kid")] == [(4, 0.25)]
    assert reader.Scalars("eval/kid_std")[0].value == pytest.approx(0.01)

    previews = {event.step: event.images for event in events if isinstance(event, PreviewEvent)}
    logged_images = reader.Images("preview")
    assert [image.step for image in logged_images] == [2, 4]
    for image in logged_images:
        decoded = np.asarray(Image.open(io.BytesIO(image.encoded_image_string)).convert("RGB"))
        np.testing.assert_array_equal(decoded, make_grid(previews[image.step], padding=1))


def test_without_the_package_one_sentence_names_the_extra(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # what an absent package looks like to import
    with pytest.raises(MissingExtra, match="ddpm-studio\\[tensorboard\\]"):
        TensorBoardLog(tmp_path / "tb")
    status = cli.main(["train", str(tmp_path), "--out", str(tmp_path / "model"), "--preset", "tiny",
                       "--tensorboard", str(tmp_path / "tb")])
    error = capsys.readouterr().err.strip()
    assert status == 2 and error == f"ddpm-studio: error: {EXTRA_SENTENCE}"
    assert not (tmp_path / "model").exists() and not (tmp_path / "tb").exists()
