"""The training loop, as an iterator of events that the CLI and the window both drive.

``train(...)`` yields a ``StartedEvent``, then a ``StepEvent`` after every optimisation step,
``PreviewEvent`` and ``CheckpointEvent`` now and then, and ends with ``FinishedEvent`` or
``FailedEvent`` (events.py). To stop, the consumer stops iterating (``close()`` the generator):
the run's finish saves a checkpoint. Under ``torchrun`` each process runs the same iterator;
only rank 0 writes the model folder. A ``Trainer`` is one run in named phases: ``set_up``, then
``step`` with ``preview``, ``evaluate`` and ``checkpoint`` between steps, and ``finish``.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from ddpm_studio.core.data.batches import BatchSource, StepImages
from ddpm_studio.core.data.cache import CachedImages, CachedScanResult, open_cached_dataset
from ddpm_studio.core.data.folders import random_horizontal_flip, scan_images, to_model_range, usable_scan
from ddpm_studio.core.diffusion.process import GaussianDiffusion
from ddpm_studio.core.diffusion.samplers import sample
from ddpm_studio.core.diffusion.schedule import NoiseSchedule
from ddpm_studio.core.errors import SettingError
from ddpm_studio.core.model import store as model_store
from ddpm_studio.core.model.lock import ModelFolderLock
from ddpm_studio.core.model.store import ModelInfo
from ddpm_studio.core.model.unet import count_parameters
from ddpm_studio.core.sampling.imaging import to_uint8
from ddpm_studio.core.system.devices import (
    choose_device,
    describe_device,
    use_bf16,
    use_channels_last,
)
from ddpm_studio.core.timestamps import now_iso
from ddpm_studio.core.training.config import TrainingConfig
from ddpm_studio.core.training.distributed import distributed_context, gather_random_streams
from ddpm_studio.core.training.evaluator import TrainingEvaluator, prepare_evaluator
from ddpm_studio.core.training.events import (
    CheckpointEvent,
    EvaluationEvent,
    FailedEvent,
    FinishedEvent,
    PreviewEvent,
    StartedEvent,
    StepEvent,
    TrainingEvent,
)
from ddpm_studio.core.training.run_memory import (
    is_out_of_memory,
    micro_batch_count,
    out_of_memory_reason,
    release_cached_memory,
)
from ddpm_studio.core.training.state import ModelFolderWriter, TrainingState, weights_are_finite


class NonFiniteLoss(RuntimeError):
    pass


@dataclass
class TrainingOptions:
    """How a run is driven, beside what it trains: ``train``, ``train_from_folder`` and a plan's ``events`` take it.

    With ``resume`` the run continues from its folder's training state. ``cpu_threads`` sets the
    intra-op threads of a run on the CPU (see ``threads_beside_a_window``). ``stop_requested`` is
    asked after every step; once it returns True the run saves a checkpoint and ends with
    ``FinishedEvent(stopped=True)``; under torchrun the ranks agree on it at the next loss
    read-back, so that all stop after the same step. ``feature_extractor`` measures KID
    (``config.eval_every``): Inception, from ``inception_weights``, unless given.
    """

    resume: bool = False
    command: str | None = None
    device: str | None = None
    cpu_threads: int | None = None
    stop_requested: Callable[[], bool] | None = None
    inception_weights: Path | None = None
    feature_extractor: str | None = None


def train(
    config: TrainingConfig,
    images: torch.Tensor | CachedImages,
    out_dir: Path | str,
    dataset_summary: dict | None = None,
    options: TrainingOptions | None = None,
    labels: torch.Tensor | None = None,
    **chosen,
) -> Iterator[TrainingEvent]:
    """Train on uint8 ``images`` (N, C, S, S) into the model folder ``out_dir``, yielding events.

    ``options`` (or its fields as keywords, ``resume=True``...) say how the run is driven. ``labels``
    (int64 (N,), an index into ``dataset_summary["classes"]["names"]`` or UNLABELLED) are what a
    run with ``config.classes`` conditions on. ``images``
    can be a tensor in memory or images mapped from the dataset cache, which are streamed. A resumed
    run restores weights, EMA, optimizer, step, RNG states and loss history, and goes on up to
    ``config.steps`` in total. With ``config.eval_every`` the dataset's features for KID are computed
    (``EvaluationProgress`` events) before the ``StartedEvent``, so missing Inception weights stop the
    run before its first step.
    """
    trainer = Trainer(config, images, Path(out_dir), dataset_summary, replace(options or TrainingOptions(), **chosen),
                      labels)
    # One writer per model folder: a second run into it (another window, another shell) is refused in one sentence.
    main = distributed_context(trainer.options.device).is_main
    with ModelFolderLock(trainer.out_dir) if main else contextlib.nullcontext():
        state = yield from trainer.set_up()
        if state is not None:  # None: it did not fit in memory, and said so
            yield from trainer.run()


def train_from_folder(
    paths: list[Path],
    config: TrainingConfig,
    out_dir: Path | str,
    options: TrainingOptions | None = None,
    use_cache: bool = True,
    **chosen,
) -> Iterator:
    """Scan image folders at the config's resolution, then train: yields ``ScanProgress`` events (and
    ``CacheMessage`` sentences), the ``ScanResult`` (so callers can report skipped files), then the
    training events.

    With ``use_cache`` the images are decoded once into the dataset cache and streamed from it;
    under torchrun local rank 0 decodes and the other processes wait for its cache entry.
    """
    options = replace(options or TrainingOptions(), **chosen)
    config.validate()
    if options.resume:
        if config.classes:  # how many classes comes from the dataset, which the model records
            config = replace(config, num_classes=model_store.read_model_info(Path(out_dir)).unet.num_classes)
        model_store.check_resumable(Path(out_dir), config.unet_config(), config.schedule_config())
    if use_cache:
        builder = distributed_context(options.device).local_rank == 0
        scan = open_cached_dataset(paths, config.image_size, config.image_channels, builder=builder)
    else:
        scan = scan_images(paths, config.image_size, config.image_channels)
    result = yield from usable_scan(scan)
    yield result
    images = result.mapping if isinstance(result, CachedScanResult) else result.images
    # As keywords, the way callers name them (tests/distributed_check.py wraps train and reads resume).
    yield from train(config, images, out_dir, result.summary(), labels=result.labels, **vars(options))


class Trainer:
    """One training run in named phases: ``set_up``; ``step``, with ``preview``, ``evaluate`` and ``checkpoint``
    between steps; and ``finish``, which saves what was trained however the run ends."""

    def __init__(self, config: TrainingConfig, images: torch.Tensor | CachedImages, out_dir: Path,
                 dataset_summary: dict | None, options: TrainingOptions, labels: torch.Tensor | None = None):
        self.config, self.images, self.out_dir, self.options = config, images, out_dir, options
        self.labels = labels
        self.dataset_summary = dataset_summary
        self.state: TrainingState | None = None
        self.writer: ModelFolderWriter | None = None  # rank 0 only
        self.evaluator: TrainingEvaluator | None = None
        self.batches: BatchSource | None = None  # built last: a run without them never started
        self.pending: list[torch.Tensor] = []  # losses not yet read back
        self.stopping = False  # agreed by every rank
        self.last_checkpoint_time = self.report_time = time.monotonic()
        self.report_step = 0

    # --- set up ---------------------------------------------------------------------------------
    def set_up(self) -> Generator[object, None, TrainingState | None]:
        """Check the request, build the run and open its folder; yields KID's preparation events, then returns the
        state (None after a ``FailedEvent``, when the model or the dataset did not fit in memory)."""
        self.check_request()
        self.context = distributed_context(self.options.device)
        if self.config.batch_size % self.context.world_size:
            raise SettingError(f"Batch size {self.config.batch_size} cannot be split evenly over "
                               f"{self.context.world_size} processes.")
        self.device = choose_device(self.options.device, self.context.local_rank)
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
            torch.backends.cudnn.benchmark = True  # shapes are fixed: cuDNN may pick its algorithms once
        self.bf16 = use_bf16(self.config.precision, self.device)
        self.log_every = self.config.log_every or (1 if self.device.type == "cpu" else 20)
        self.channels_last = use_channels_last(self.device)
        self.diffusion = GaussianDiffusion(NoiseSchedule.from_config(self.config.schedule_config()).to(self.device))
        try:
            self.build()
        except (RuntimeError, MemoryError) as error:
            if not is_out_of_memory(error):
                raise
            self.state = self.network = self.ddp = self.batches = None  # freed with the traceback, after this clause
        if self.batches is None:
            yield self.failed(out_of_memory_reason(self.config, self.device, "while building the model"))
            return None
        if self.config.eval_every and self.writer is not None:
            recorded = [Path(path) for path in (self.writer.info.dataset or {}).get("paths", [])]
            options = self.options
            self.evaluator = yield from prepare_evaluator(self.config, recorded, self.rows, self.device,
                                                          options.inception_weights, options.feature_extractor)
        return self.state

    def check_request(self) -> None:
        """Validate the config against the folder (a resumed run keeps its own architecture) and the images."""
        if self.options.resume:
            # The folder's own architecture is the one its weights were trained with (a folder saved before
            # the downsampling padding became a setting has the old padding, which no preset has now).
            info = model_store.read_model_info(self.out_dir)
            if (self.config.image_size, self.config.image_channels) != (info.unet.image_size, info.unet.image_channels):
                raise model_store.inconsistent_settings(info)
            self.config = replace(self.config, unet=info.unet.to_dict())
        self.check_classes()
        self.config.validate()
        unet_config = self.config.unet_config()
        if self.options.resume:  # before the network and the schedule are given memory
            model_store.check_resumable(self.out_dir, unet_config, self.config.schedule_config())
        expected_shape = (unet_config.image_channels, unet_config.image_size, unet_config.image_size)
        self.rows = self.images.tensor if isinstance(self.images, CachedImages) else self.images
        if self.rows.dtype != torch.uint8 or self.rows.ndim != 4 or tuple(self.rows.shape[1:]) != expected_shape:
            raise ValueError(f"Training images must be uint8 of shape (N, {', '.join(map(str, expected_shape))}).")
        if len(self.rows) == 0:
            raise SettingError("There are no images to train on.")

    def check_classes(self) -> None:
        """A run with classes needs a labelled dataset; resuming, or fine-tuning a conditional model, needs the
        model's own class names. Sets the run's number of classes from the dataset."""
        if not self.config.classes:
            return
        names = ((self.dataset_summary or {}).get("classes") or {}).get("names") if self.labels is not None else None
        if not names or len(names) < 2:
            raise SettingError("Training with classes needs a labelled dataset: a folder with two or more class "
                               "subfolders of images.")
        source = self.out_dir if self.options.resume else (Path(self.config.init_from) if self.config.init_from
                                                            else None)
        if source is not None:
            info = model_store.read_model_info(source)
            recorded = (info.extra.get("classes") or {}).get("names") if info.unet.num_classes else None
            if recorded is not None and list(recorded) != list(names):
                doing = "resumed" if self.options.resume else "fine-tuned"
                raise SettingError(f"{info.name} was trained on the classes {', '.join(recorded)}, not "
                                   f"{', '.join(names)}; a {doing} run keeps the model's classes.")
        self.config = replace(self.config, num_classes=len(names))

    def build(self) -> None:
        """The state (resumed, or started from a fine-tune's weights), the model folder, the network each step runs
        (DDP under torchrun, compiled if asked) and the batches."""
        config, context = self.config, self.context
        self.state = state = TrainingState(config, self.device, context)
        state.model.set_activation_checkpointing(config.checkpoint_activations)
        if self.options.resume:
            state.load_state(self.out_dir)
        elif config.init_from:
            state.initialise_from(Path(config.init_from))
        if state.step >= config.steps:
            raise SettingError(f"{self.out_dir.name} has already trained {state.step} steps; ask for more than that "
                               "to continue.")
        self.report_step = state.step
        if context.is_main:
            self.writer = ModelFolderWriter(self.out_dir, self.model_info())
            model_store.remove_stale_temporaries(self.out_dir)  # left by a run that was killed mid-write
        self.ddp = network = None
        if context.enabled:
            self.ddp = network = torch.nn.parallel.DistributedDataParallel(
                state.model, device_ids=[self.device.index] if self.device.type == "cuda" else None
            )
        per_rank = config.batch_size // context.world_size
        self.micro_batches = micro_batch_count(config, per_rank, self.device)
        # The dataset lives on the GPU when it takes under a quarter of free memory; otherwise a
        # thread gathers each batch from memory or the cache file and pins it on its way (batches.py).
        self.batches = BatchSource(
            self.images, seed=config.seed, batch_size=config.batch_size, rank=context.rank,
            world_size=context.world_size, device=self.device, first_step=state.step + 1, last_step=config.steps,
            labels=self.labels if config.classes else None, label_dropout=config.label_dropout,
            null_label=state.model.null_class,
        )
        network = network or state.model
        self.network = torch.compile(network) if config.compile else network

    def model_info(self) -> ModelInfo:
        """What model.json says of this run: the folder's own record when resuming, else a new one."""
        if self.options.resume:
            info = model_store.read_model_info(self.out_dir)
            info.training = self.config.to_dict()
            if self.options.command:
                info.extra.setdefault("commands", []).append(self.options.command)
            return info
        if (self.out_dir / model_store.CONFIG_FILE).exists():
            raise SettingError(f"{self.out_dir} already holds a model; resume it, or choose another name.")
        return ModelInfo(
            path=self.out_dir, unet=self.config.unet_config(), schedule=self.config.schedule_config(),
            training=self.config.to_dict(), dataset=self.dataset_summary or {"count": len(self.images)},
            command=self.options.command, created=now_iso(), extra=self.classes_record(),
        )

    def classes_record(self) -> dict:
        """model.json's top-level "classes" of a class-conditional run: the names and images of each class."""
        if not self.config.classes:
            return {}
        recorded = self.dataset_summary["classes"]
        return {"classes": {"names": list(recorded["names"]), "counts": list(recorded["counts"])}}

    # --- the run ----------------------------------------------------------------------------------
    def run(self) -> Iterator[TrainingEvent]:
        """From the ``StartedEvent`` on: steps, with what is due between them, until the last step or a stop."""
        state, config = self.state, self.config
        yield StartedEvent(
            state.step, config.steps, count_parameters(state.model), describe_device(self.device),
            "bfloat16" if self.bf16 else "float32", self.out_dir, np.asarray(state.losses, dtype=np.float32),
        )
        failure: str | None = None  # the sentence of a run that failed; it then saves nothing more
        # OpenMP keeps a thread count per thread, and torch hands the last one set to threads it meets later:
        # set here, in the thread that drives the run, and given back when the run ends.
        threads_before = torch.get_num_threads()
        if self.options.cpu_threads and self.device.type == "cpu":
            torch.set_num_threads(self.options.cpu_threads)
        try:
            self.network.train()
            while state.step < config.steps and not self.stopping:
                yield self.step()
                if not self.stopping:
                    yield from self.between_steps()
            self.checkpoint()
            yield FinishedEvent(state.step, self.out_dir, stopped=self.stopping)
        except NonFiniteLoss:
            failure = f"The loss or the weights became non-finite near step {state.step}; try a lower learning rate"
        except (RuntimeError, MemoryError) as error:
            if not is_out_of_memory(error):
                raise
            failure = out_of_memory_reason(config, self.device, f"step {state.step + 1}")
        finally:
            self.finish(save=failure is None)  # reached when the consumer stops iterating too
            torch.set_num_threads(threads_before)
        if failure is not None:
            # Reported outside the handler: an exception held while suspended would keep the failed step's tensors.
            yield self.failed(failure)

    def step(self) -> StepEvent:
        """One optimisation step: the batch's gradients (in micro-batches), clipped, Adam, warm-up and EMA."""
        state, config = self.state, self.config
        batch = self.batches.next()
        x0 = model_input(batch, config)
        if self.channels_last:
            x0 = x0.contiguous(memory_format=torch.channels_last)
        learning_rate = state.learning_rate
        state.optimizer.zero_grad(set_to_none=True)
        loss = accumulate_gradients(self.network, self.ddp, self.diffusion, x0, self.micro_batches,
                                    state.noise_generator, self.bf16, batch.labels)
        torch.nn.utils.clip_grad_norm_(state.model.parameters(), config.grad_clip)
        state.optimizer_step()
        self.pending.append(loss.detach().float())
        return self.report(learning_rate)

    def report(self, learning_rate: float) -> StepEvent:
        """The step's event: the losses and speed when a read-back is due; a single process also learns here whether
        it was asked to stop."""
        step = self.state.step
        losses: list[float] = []
        images_per_second = steps_per_second = None
        if step % self.log_every == 0 or step == self.config.steps:
            losses = self.read_back_losses()
            elapsed = time.monotonic() - self.report_time
            if elapsed > 0:
                steps_per_second = (step - self.report_step) / elapsed
                images_per_second = steps_per_second * self.config.batch_size
            self.report_time, self.report_step = time.monotonic(), step
        stop_requested = self.options.stop_requested
        if not self.context.enabled and stop_requested is not None and stop_requested():
            self.stopping = True  # one process needs no agreement: stop after this step
        return StepEvent(step, self.config.steps, learning_rate, losses, images_per_second, steps_per_second)

    def between_steps(self) -> Iterator[TrainingEvent]:
        """A preview, a KID measurement and a checkpoint, each when it is due after this step."""
        step, config, main = self.state.step, self.config, self.context.is_main
        if config.preview_count and (step % config.preview_every == 0 or step == config.steps) and main:
            yield self.preview()
        if self.evaluator is not None and main and step % config.eval_every == 0:
            yield self.evaluate()
        due = step % config.checkpoint_every == 0
        # The clock differs between processes, so only a single process checkpoints by time:
        # under torchrun a rank checkpointing alone would wait forever in its collective call.
        minutes = (time.monotonic() - self.last_checkpoint_time) / 60
        due = due or (not self.context.enabled and minutes > config.checkpoint_minutes)
        if due and step != config.steps:
            self.checkpoint()
            self.last_checkpoint_time = time.monotonic()
            if self.writer is not None:
                yield CheckpointEvent(step, self.out_dir)

    def preview(self) -> PreviewEvent:
        images = sample_preview(self.state, self.diffusion, self.bf16)
        event = PreviewEvent(self.state.step, images, self.writer.save_preview(self.state.step, images))
        self.report_time = time.monotonic()  # previews are not training time
        return event

    def evaluate(self) -> EvaluationEvent:
        event = self.evaluator.measure(self.state, self.diffusion, self.bf16, self.writer)
        self.report_time = time.monotonic()  # evaluations are not training time
        return event

    def read_back_losses(self, reduce: bool = True) -> list[float]:
        """One host sync for all steps since the last read-back; raises NonFiniteLoss.

        Under torchrun the same all-reduce carries each rank's stop request, so that every
        rank learns of any request at the same step."""
        if not self.pending:
            return []
        stacked = torch.stack(self.pending)
        if self.context.enabled and reduce:
            wants_stop = bool(self.options.stop_requested and self.options.stop_requested())
            stacked = torch.cat([stacked, stacked.new_tensor([float(wants_stop)])])
            dist.all_reduce(stacked)
            self.stopping = self.stopping or bool(stacked[-1] > 0)  # rides along with the losses' host sync
            stacked = stacked[:-1] / self.context.world_size
        values = stacked.tolist()
        self.pending = []
        if not all(math.isfinite(value) for value in values):
            raise NonFiniteLoss()
        self.state.losses.extend(values)
        return values

    def checkpoint(self, reduce: bool = True) -> None:
        """Save the run into its folder (rank 0), unless its weights are broken; ``reduce=False``: no collective
        call (when other ranks may be gone)."""
        self.read_back_losses(reduce)
        # A step can end with a finite loss and non-finite weights (an infinite gradient, a NaN in
        # Adam's moments); such weights must never replace the last good checkpoint. Every rank
        # checks (their weights are identical), so that all of them stop together.
        if not weights_are_finite(self.state):
            raise NonFiniteLoss()
        if self.context.enabled:
            # Rank 0 saves every rank's random streams: a collective call, which each rank makes at
            # the same step. Without one (reduce=False) the others' would be stale: save none.
            self.state.other_ranks_streams = (gather_random_streams(self.state.own_streams(), self.context, self.device)
                                              if reduce else {})
        if self.writer is not None:
            self.writer.save_checkpoint(self.state)
        if self.context.enabled and reduce:
            # No rank goes on (or exits, which makes torchrun end the others) before the
            # checkpoint is written: a tiny all-reduce serves as a barrier on either backend.
            dist.all_reduce(torch.zeros(1, device=self.device))

    # --- finish -----------------------------------------------------------------------------------
    def finish(self, save: bool) -> None:
        """However the run ends: stop the batches and, with ``save``, keep what was trained since the last
        checkpoint, unless it is broken."""
        self.batches.close()
        if save and self.writer is not None and self.state.step > (self.writer.info.step or 0):
            try:
                self.checkpoint(reduce=False)  # other ranks may be gone: no collective call here
            except NonFiniteLoss:
                pass

    def failed(self, reason: str) -> FailedEvent:
        """The one way a run fails: what it held is released first, and the sentence says what was kept."""
        self.pending = []
        if self.state is not None:
            self.state.optimizer.zero_grad(set_to_none=True)  # the failed step's gradients
        release_cached_memory(self.device)
        if self.batches is None:  # it never started
            return FailedEvent(0, f"{reason}.", self.out_dir)
        saved = self.writer.info.step if self.writer is not None else None
        kept = f"the checkpoint of step {saved} in {self.out_dir} is kept" if saved else "no checkpoint was saved"
        return FailedEvent(self.state.step, f"{reason} ({kept}).", self.out_dir)


# --- the pieces of a step -----------------------------------------------------------------------


def model_input(batch: StepImages, config: TrainingConfig) -> torch.Tensor:
    """This rank's images of a step in model range, each mirrored when its coin says so and ``config.random_flip``.

    The coins are drawn even without flipping (``batches.draw_step``), so that turning flips off
    does not change which images are drawn.
    """
    x0 = to_model_range(batch.images)
    return random_horizontal_flip(x0, coins=batch.flips) if config.random_flip else x0


def accumulate_gradients(
    network: torch.nn.Module,
    ddp: torch.nn.parallel.DistributedDataParallel | None,
    diffusion: GaussianDiffusion,
    x0: torch.Tensor,
    micro_batches: int,
    generator: torch.Generator,
    bf16: bool,
    labels: torch.Tensor | None = None,
) -> torch.Tensor:
    """Backpropagate L_simple of the batch ``x0`` in ``micro_batches`` pieces; returns the batch's loss, detached.

    t and the noise are drawn for the whole batch first and each piece's loss is weighted by its
    share of the batch, so the gradients add up to the whole batch's, however it is split. Under
    DDP every piece but the last runs under ``no_sync()``: gradients are all-reduced once a step.
    ``labels`` (B,), for a class-conditional run, are split with the images.
    """
    t, noise = diffusion.draw_training_noise(x0, generator)
    label_pieces = labels.tensor_split(micro_batches) if labels is not None else [None] * micro_batches
    pieces = list(zip(x0.tensor_split(micro_batches), t.tensor_split(micro_batches), noise.tensor_split(micro_batches),
                      label_pieces))
    total = torch.zeros((), device=x0.device)
    for index, (x0_piece, t_piece, noise_piece, label_piece) in enumerate(pieces):
        last = index == len(pieces) - 1
        with contextlib.nullcontext() if last or ddp is None else ddp.no_sync():
            with torch.autocast(x0.device.type, dtype=torch.bfloat16, enabled=bf16):
                loss = diffusion.training_loss(network, x0_piece, t=t_piece, noise=noise_piece, classes=label_piece)
            weighted = loss * (len(x0_piece) / len(x0))
            weighted.backward()
        total += weighted.detach()
    return total


def sample_preview(state: TrainingState, diffusion: GaussianDiffusion, use_bf16_autocast: bool) -> torch.Tensor:
    """Sample preview images from the EMA weights at a fixed seed (DDIM), as uint8 on the CPU."""
    config = state.config
    unet_config = state.ema.config
    generator = torch.Generator(device=state.device).manual_seed(config.preview_seed)
    shape = (config.preview_count, unet_config.image_channels, unet_config.image_size, unet_config.image_size)
    steps = min(config.preview_steps, config.num_timesteps)
    with torch.autocast(state.device.type, dtype=torch.bfloat16, enabled=use_bf16_autocast):
        images = sample(diffusion, state.ema, shape, "ddim", num_steps=steps, generator=generator, device=state.device)
    return to_uint8(images)
