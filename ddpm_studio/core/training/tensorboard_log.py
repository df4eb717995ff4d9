"""TensorBoard logging of a training run, for watching a headless run on a remote server.

A ``TensorBoardLog`` is fed the training events the CLI already receives: each step's loss,
learning rate and images/s become scalars, each preview grid an image, each KID measured during
training (``--eval-every``) a scalar with its standard deviation. It needs the optional
``tensorboard`` package (``pip install "ddpm-studio[tensorboard]"``); without it, opening the
log raises ``MissingExtra`` with one sentence saying so.
"""

from __future__ import annotations

from pathlib import Path

from ddpm_studio.core.errors import UserError
from ddpm_studio.core.sampling.imaging import make_grid
from ddpm_studio.core.training.events import (
    EvaluationEvent,
    FailedEvent,
    FinishedEvent,
    PreviewEvent,
    StepEvent,
    TrainingEvent,
)

EXTRA_SENTENCE = ("TensorBoard logging needs the optional 'tensorboard' package; "
                  "install it with: pip install \"ddpm-studio[tensorboard]\".")


class MissingExtra(UserError):
    """An optional feature whose package is not installed; the message names the extra."""


class TensorBoardLog:
    """Writes the scalars and preview grids of one run into ``log_dir`` as TensorBoard event files."""

    def __init__(self, log_dir: Path | str):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise MissingExtra(EXTRA_SENTENCE) from None
        self.log_dir = Path(log_dir)
        self.writer = SummaryWriter(log_dir=str(self.log_dir))

    def record(self, event: TrainingEvent) -> None:
        if isinstance(event, StepEvent):
            # The losses read back since the last report belong to the steps just before this one.
            first = event.step - len(event.losses) + 1
            for offset, loss in enumerate(event.losses):
                self.writer.add_scalar("train/loss", loss, first + offset)
            self.writer.add_scalar("train/learning_rate", event.learning_rate, event.step)
            if event.images_per_second is not None:
                self.writer.add_scalar("train/images_per_second", event.images_per_second, event.step)
        elif isinstance(event, PreviewEvent):
            grid = make_grid(event.images, padding=1)
            self.writer.add_image("preview", grid, event.step, dataformats="HW" if grid.ndim == 2 else "HWC")
        elif isinstance(event, EvaluationEvent):
            self.writer.add_scalar(f"eval/{event.metric}", event.value, event.step)
            self.writer.add_scalar(f"eval/{event.metric}_std", event.std, event.step)
        elif isinstance(event, (FinishedEvent, FailedEvent)):
            self.writer.flush()

    def close(self) -> None:
        self.writer.close()
