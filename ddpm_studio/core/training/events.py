"""The events of a training run: what ``train`` yields to the CLI and the window, in the order it yields them.

``StartedEvent``, then a ``StepEvent`` after every optimisation step, ``PreviewEvent``,
``EvaluationEvent`` and ``CheckpointEvent`` now and then, and ``FinishedEvent`` or ``FailedEvent``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch


@dataclass
class StartedEvent:
    step: int
    total_steps: int
    parameters: int
    device: str
    dtype: str
    path: Path
    loss_history: np.ndarray  # of the steps already done (resume), else empty


@dataclass
class StepEvent:
    """After each step. ``losses`` holds the per-step losses read back since the last report (may be empty)."""

    step: int
    total_steps: int
    learning_rate: float
    losses: list[float]
    images_per_second: float | None
    steps_per_second: float | None

    @property
    def loss(self) -> float | None:
        return sum(self.losses) / len(self.losses) if self.losses else None


def merge_step_events(pending: object | None, event: object) -> object:
    """Fold a newer progress event into one not yet shown; two steps keep every loss of both.

    A consumer that shows progress now and then (the window, at 20 Hz) passes this to its
    throttle, so that the loss curve still gets every value.
    """
    if isinstance(pending, StepEvent) and isinstance(event, StepEvent):
        return StepEvent(
            event.step, event.total_steps, event.learning_rate, pending.losses + event.losses,
            event.images_per_second or pending.images_per_second, event.steps_per_second or pending.steps_per_second,
        )
    return event


@dataclass
class PreviewEvent:
    step: int
    images: torch.Tensor  # uint8 (N, C, H, W) on the CPU
    path: Path | None


@dataclass
class EvaluationEvent:
    """KID of ``n`` EMA samples against the dataset, measured at ``step``."""

    step: int
    metric: str
    value: float
    std: float
    n: int


@dataclass
class CheckpointEvent:
    step: int
    path: Path


@dataclass
class FinishedEvent:
    step: int
    path: Path
    stopped: bool = False  # ended early, by ``stop_requested``, with a checkpoint of ``step``


@dataclass
class FailedEvent:
    step: int
    reason: str
    path: Path


TrainingEvent = (StartedEvent | StepEvent | PreviewEvent | EvaluationEvent | CheckpointEvent | FinishedEvent
                 | FailedEvent)
