"""The images of every training step: drawn by step number, gathered ahead of the loop.

Which images step k trains on, and which of them are flipped, depend only on the seed and k
(``draw_step``). A resumed run therefore sees the batches that a run that never stopped would
have seen, and the batches can be gathered ahead of time with no state to save.

Where they come from:
- on a GPU with room for the dataset (a quarter of its free memory), the whole dataset is
  copied there once and each batch is gathered on the GPU;
- otherwise a background thread gathers the next batches from the images in RAM or from the
  cache file (``dataset_cache.CachedImages.gather``, which keeps resident memory bounded however
  large the dataset is), into pinned memory on CUDA so the copy to the GPU runs asynchronously.
Under torchrun every process draws the same global batch and gathers only its own slice.
With class labels the same holds for them: the labels are gathered with the images' indices and
which of them drop to the null label is drawn from (seed, step) too (``draw_label_drops``), for
the global batch, each rank keeping its slice.
"""

from __future__ import annotations

import queue
import threading
from dataclasses import dataclass

import numpy as np
import torch

from ddpm_studio.core.data.cache import CachedImages
from ddpm_studio.core.data.folders import UNLABELLED
from ddpm_studio.core.system.devices import host_to_device

PREFETCH_BATCHES = 2
LABEL_STREAM = 1  # keeps the label coins' generator apart from draw_step's
GPU_RESIDENT_SHARE = 4  # the dataset lives on the GPU when it takes under 1/4 of the free memory


def draw_step(seed: int, step: int, dataset_size: int, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """The dataset indices (with replacement) and the horizontal-flip coins of the global batch of ``step``."""
    generator = np.random.default_rng([seed, step])
    return generator.integers(0, dataset_size, batch_size), generator.random(batch_size) < 0.5


def draw_label_drops(seed: int, step: int, batch_size: int, label_dropout: float) -> np.ndarray:
    """Which labels of the global batch of ``step`` are replaced by the null label, each with ``label_dropout``."""
    generator = np.random.default_rng([seed, step, LABEL_STREAM])
    return generator.random(batch_size) < label_dropout


def step_labels(labels: np.ndarray, indices: np.ndarray, drops: np.ndarray, null_label: int) -> np.ndarray:
    """The labels the model sees: each image's class, or ``null_label`` when dropped or unlabelled."""
    chosen = labels[indices].astype(np.int64)
    return np.where(drops | (chosen == UNLABELLED), null_label, chosen)


@dataclass
class StepImages:
    """One step's images for this process: uint8 (B, C, S, S), the flip coins (B,) and, for a class-conditional
    run, the int64 labels (B,) (the null label where dropped), all on the run device."""

    step: int
    images: torch.Tensor
    flips: torch.Tensor
    labels: torch.Tensor | None = None


class _Stopped(Exception):
    pass


class BatchSource:
    """Hands the training loop the images of steps ``first_step``, ``first_step + 1``, ... in order.

    ``next()`` returns the following step's ``StepImages``; ``close()`` stops the
    background thread (call it when the loop ends, however it ends).
    """

    def __init__(
        self,
        images: torch.Tensor | CachedImages,
        *,
        seed: int,
        batch_size: int,
        rank: int,
        world_size: int,
        device: torch.device,
        first_step: int,
        last_step: int,
        prefetch: int = PREFETCH_BATCHES,
        labels: torch.Tensor | np.ndarray | None = None,
        label_dropout: float = 0.0,
        null_label: int = 0,
    ):
        self.mapping = images if isinstance(images, CachedImages) else None
        rows = images.tensor if isinstance(images, CachedImages) else images
        self.dataset_size = len(rows)
        self.seed, self.batch_size = seed, batch_size
        self.per_rank = batch_size // world_size
        self.local = slice(rank * self.per_rank, (rank + 1) * self.per_rank)
        self.device = device
        # labels (N,) with UNLABELLED for none; None: an unconditional run, whose batches carry no labels
        self.labels = None if labels is None else np.asarray(labels, dtype=np.int64)
        self.label_dropout, self.null_label = label_dropout, null_label
        self.first_step, self.next_step, self.last_step = first_step, first_step, last_step
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

        self.resident = (device.type == "cuda"
                         and rows.numel() < torch.cuda.mem_get_info(device)[0] // GPU_RESIDENT_SHARE)
        if self.resident:
            self.rows = rows.to(device)
            if self.mapping is not None:
                self.mapping.release_pages()  # the copy on the GPU is the one in use now
            return
        self.rows = rows
        self.pin = device.type == "cuda"
        self._queue: queue.Queue = queue.Queue(maxsize=max(1, prefetch))
        # Started by the first next(): a source that is made and never used leaves no thread behind.
        self._thread = threading.Thread(target=self._produce, name="ddpm-batches", daemon=True)

    # --- the consumer's side ----------------------------------------------------------------------
    def next(self) -> StepImages:
        if self.next_step > self.last_step:
            raise IndexError(f"no batch after step {self.last_step}")
        step = self.next_step
        self.next_step += 1
        if self.resident:
            indices, flips = self._draw_local(step)
            labels = self._labels_local(step, indices)
            # Through pinned memory, so that the host does not wait for the GPU at every step.
            return StepImages(step, self.rows[host_to_device(torch.from_numpy(indices), self.device)],
                              host_to_device(torch.from_numpy(flips), self.device),
                              None if labels is None else host_to_device(torch.from_numpy(labels), self.device))
        if not self._thread.is_alive() and not self._stop.is_set() and self._thread.ident is None:
            self._thread.start()
        item = self._queue.get()
        if isinstance(item, BaseException):
            raise item
        produced_step, images, flips, labels = item
        assert produced_step == step, "the batch thread fell out of step"
        # From pinned memory the copy is asynchronous; torch's pinned-memory allocator keeps the
        # buffer from being reused until the copy has finished.
        return StepImages(step, images.to(self.device, non_blocking=self.pin),
                          flips.to(self.device, non_blocking=self.pin),
                          None if labels is None else labels.to(self.device, non_blocking=self.pin))

    def close(self) -> None:
        if self._thread is None:
            return
        self._stop.set()
        if self._thread.ident is None:  # never started
            self._thread = None
            return
        while self._thread.is_alive():
            try:  # unblock a producer waiting on a full queue
                self._queue.get(timeout=0.05)
            except queue.Empty:
                pass
        self._thread = None

    # --- the producer's side ------------------------------------------------------------------
    def _draw_local(self, step: int) -> tuple[np.ndarray, np.ndarray]:
        indices, flips = draw_step(self.seed, step, self.dataset_size, self.batch_size)
        return indices[self.local], flips[self.local]

    def _labels_local(self, step: int, local_indices: np.ndarray) -> np.ndarray | None:
        if self.labels is None:
            return None
        drops = draw_label_drops(self.seed, step, self.batch_size, self.label_dropout)[self.local]
        return step_labels(self.labels, local_indices, drops, self.null_label)

    def _put(self, item) -> None:
        while True:
            if self._stop.is_set():
                raise _Stopped
            try:
                self._queue.put(item, timeout=0.05)
                return
            except queue.Full:
                pass

    def _produce(self) -> None:
        row_shape = tuple(self.rows.shape[1:])
        try:
            for step in range(self.first_step, self.last_step + 1):
                indices, flips = self._draw_local(step)
                images = torch.empty((len(indices), *row_shape), dtype=torch.uint8, pin_memory=self.pin)
                if self.mapping is not None:
                    self.mapping.gather(indices, images)
                else:
                    torch.index_select(self.rows, 0, torch.from_numpy(indices), out=images)
                labels = self._labels_local(step, indices)
                if labels is not None:
                    labels = torch.from_numpy(labels).pin_memory() if self.pin else torch.from_numpy(labels)
                self._put((step, images, torch.from_numpy(flips), labels))
        except _Stopped:
            pass
        except BaseException as error:  # handed to the loop, which raises it in its own thread
            try:
                self._put(error)
            except _Stopped:
                pass
