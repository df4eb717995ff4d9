"""The training loop, as an iterator of events that the CLI and the window both drive.

``train(...)`` yields a ``StartedEvent``, then a ``StepEvent`` after every optimisation step,
``PreviewEvent`` and ``CheckpointEvent`` now and then, and ends with ``FinishedEvent`` or
``FailedEvent``. To stop, the consumer stops iterating (``close()`` the generator): the
loop's cleanup saves a checkpoint. Under ``torchrun`` each process runs the same iterator;
only rank 0 writes the model folder.
"""

from __future__ import annotations

import contextlib
import copy
import datetime
import json
import math
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from ddpm_studio.core.data.batches import BatchSource, StepImages
from ddpm_studio.core.data.cache import CachedImages, CachedScanResult, open_cached_dataset
from ddpm_studio.core.data.folders import random_horizontal_flip, scan_images, to_model_range, usable_scan
from ddpm_studio.core.diffusion.process import GaussianDiffusion
from ddpm_studio.core.diffusion.schedule import NoiseSchedule, ScheduleConfig
from ddpm_studio.core.errors import SettingError
from ddpm_studio.core.model import check as model_check
from ddpm_studio.core.model import store as model_store
from ddpm_studio.core.model.store import ModelError, ModelInfo
from ddpm_studio.core.model.unet import PRESETS, UNet, UNetConfig, count_parameters, preset_config
from ddpm_studio.core.sampling.imaging import make_grid, save_png, to_uint8
from ddpm_studio.core.system.devices import (
    PRECISIONS,
    choose_device,
    describe_device,
    process_group_backend,
    use_bf16,
    use_channels_last,
)
from ddpm_studio.core.training.memory import MemoryCheck, check_training_memory

# "fixed": L_simple, sigma_t^2 chosen when sampling; "learned": L_hybrid and the learned range of sigma_t^2.
TRAINING_VARIANCES = ("fixed", "learned")


@dataclass
class TrainingConfig:
    """Everything that defines a training run. Defaults are the paper's where it gives one."""

    preset: str = "small"
    image_size: int = 32
    image_channels: int = 3
    batch_size: int = 32
    learning_rate: float = 2e-4
    steps: int = 10_000
    warmup_steps: int = 500
    grad_clip: float = 1.0
    ema_decay: float = 0.9999
    ema_warmup: bool = True  # decay = min(ema_decay, (1 + step) / (10 + step)), so short runs sample well
    random_flip: bool = True
    dropout: float | None = None  # None: the preset's
    variance: str = "fixed"  # one of TRAINING_VARIANCES
    schedule: str = "linear"
    num_timesteps: int = 1000
    checkpoint_every: int = 1000
    checkpoint_minutes: float = 10.0
    preview_every: int = 500
    preview_count: int = 16
    preview_steps: int = 50  # DDIM steps for previews
    preview_seed: int = 1234
    log_every: int = 0  # steps between loss read-backs; 0: every step on the CPU, 20 on a GPU
    seed: int = 0
    precision: str = "auto"
    compile: bool = False
    eval_every: int = 0  # steps between KID measurements of the EMA weights; 0: none
    eval_num: int = 1000  # EMA samples per KID measurement (DDIM, preview_steps steps)
    unet: dict | None = None  # the architecture, when it is not the preset's (a fine-tune of an imported model)
    init_from: str | None = None  # a model folder whose EMA weights start this new run (a fine-tune)
    accumulate: int = 1  # micro-batches per step: each process's share of the batch is split this many ways
    micro_batch: int | str | None = None  # or the largest micro-batch size; "auto": what the memory estimate fits
    checkpoint_activations: bool = False  # residual blocks recompute activations in the backward pass

    def validate(self) -> None:
        """Raise ValueError, in one sentence, for an impossible setting."""
        for setting in fields(self):  # settings read back from a model.json can be anything JSON holds
            value, kind = getattr(self, setting.name), setting.type
            number = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
            kinds = {"bool": isinstance(value, bool), "str": isinstance(value, str), "None": value is None,
                     "int": number and isinstance(value, int), "dict": isinstance(value, dict)}
            fits = any(kinds.get(part.strip(), number) for part in kind.split("|"))  # "float | None": either
            if not fits:
                words = {"bool": "true or false", "str": "text", "int": "a whole number", "str | None": "text",
                         "dict | None": "a table of settings",
                         "int | str | None": "a number of images or auto"}.get(kind, "a number")
                raise SettingError(f"The training setting {setting.name} must be {words}, not {value!r}.")
        positive = ("batch_size", "steps", "num_timesteps", "checkpoint_every", "preview_every", "preview_steps")
        for name in positive:
            if getattr(self, name) < 1:
                raise SettingError(f"{name.replace('_', ' ').capitalize()} must be at least 1, not {getattr(self, name)}.")
        if not (0 < self.learning_rate < 1):
            raise SettingError(f"The learning rate must lie in (0, 1), not {self.learning_rate}.")
        if not 0 <= self.ema_decay < 1:
            raise SettingError(f"The EMA decay must lie in [0, 1), not {self.ema_decay}.")
        if self.warmup_steps < 0 or self.grad_clip <= 0 or self.preview_count < 0 or self.log_every < 0:
            raise SettingError("Warm-up steps, preview count and log interval cannot be negative, and clipping must be positive.")
        if self.eval_every < 0 or (self.eval_every and self.eval_num < 2):
            raise SettingError("KID during training needs --eval-every of 0 or more and --eval-num of at least 2.")
        if self.precision not in PRECISIONS:
            raise SettingError(f"Precision must be one of {', '.join(PRECISIONS)}, not '{self.precision}'.")
        if self.variance not in TRAINING_VARIANCES:
            raise SettingError(f"The variance must be one of {', '.join(TRAINING_VARIANCES)}, not '{self.variance}'.")
        if not isinstance(self.accumulate, int) or self.accumulate < 1:
            raise SettingError(f"Accumulation must be at least 1 micro-batch per step, not {self.accumulate}.")
        if self.micro_batch is not None and self.micro_batch != "auto" and (
            not isinstance(self.micro_batch, int) or self.micro_batch < 1
        ):
            raise SettingError(f"The micro-batch must be a number of images of at least 1, or auto, not '{self.micro_batch}'.")
        if self.micro_batch is not None and self.accumulate > 1:
            raise SettingError("Give either the number of micro-batches to accumulate or the micro-batch size, not both.")
        if self.accumulate > self.batch_size:
            raise SettingError(f"A batch of {self.batch_size} cannot be split into {self.accumulate} micro-batches.")
        self.unet_config()  # raises for a bad preset, size or channels
        ScheduleConfig(self.schedule, self.num_timesteps).validate()

    def unet_config(self):
        if self.unet is not None:
            try:
                config = UNetConfig.from_dict(self.unet)
                model_check.check_unet_config(config)
            except TypeError:
                raise SettingError(f"The training setting unet is not a U-Net architecture ({self.unet!r:.80}).") from None
            if (config.image_size, config.image_channels) != (self.image_size, self.image_channels):
                raise SettingError(f"This architecture works at {config.image_size}x{config.image_size}x"
                                   f"{config.image_channels}, not {self.image_size}x{self.image_size}x"
                                   f"{self.image_channels}.")
        else:
            config = preset_config(self.preset, self.image_size, self.image_channels)
        changes = {}
        if self.unet is not None and config.learned_variance != (self.variance == "learned"):
            changes["learned_variance"] = self.variance == "learned"  # the run's loss decides the output channels
        if self.dropout is not None:
            changes["dropout"] = self.dropout
        if self.variance == "learned":
            changes["learned_variance"] = True
        if changes:
            config = type(config)(**{**asdict(config), **changes})
            config.validate()
        return config

    def schedule_config(self) -> ScheduleConfig:
        return ScheduleConfig(self.schedule, self.num_timesteps)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> TrainingConfig:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})

    @classmethod
    def for_preset(cls, preset: str, **overrides) -> TrainingConfig:
        """A config with the preset's suggested batch size, learning rate and warm-up, then ``overrides``."""
        if preset not in PRESETS:
            raise SettingError(f"Unknown preset '{preset}'; choose one of {', '.join(PRESETS)}.")
        base = PRESETS[preset]
        values = {"preset": preset, "image_size": base.config.image_size, **base.defaults}
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    @classmethod
    def for_fine_tune(cls, source: ModelInfo, **overrides) -> TrainingConfig:
        """A new run that starts from the EMA weights of the model ``source``: its architecture and schedule,
        the training settings it was trained with (or those of the preset it matches), then ``overrides``."""
        preset = source.training.get("preset") if source.training.get("preset") in PRESETS else matching_preset(source.unet)
        names = {f.name for f in fields(cls)}
        values = dict(PRESETS[preset].defaults) if preset else {}
        kept = ("batch_size", "learning_rate", "warmup_steps", "grad_clip", "ema_decay", "ema_warmup", "random_flip",
                "checkpoint_every", "checkpoint_minutes", "preview_every", "preview_count", "preview_steps",
                "preview_seed", "log_every", "precision")
        values.update({k: v for k, v in source.training.items() if k in kept and k in names})
        values.update({
            "preset": preset or "custom", "image_size": source.unet.image_size,
            "image_channels": source.unet.image_channels, "unet": source.unet.to_dict(),
            "schedule": source.schedule.kind, "num_timesteps": source.schedule.num_timesteps,
            "variance": "learned" if source.unet.learned_variance else "fixed", "init_from": str(source.path),
        })
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)


def matching_preset(unet: UNetConfig) -> str | None:
    """The preset with this architecture (any dropout, either padding), if one has it."""
    def shape(config: UNetConfig) -> UNetConfig:
        return replace(config, dropout=0.0, downsample_padding="same")

    return next((name for name, preset in PRESETS.items()
                 if shape(replace(preset.config, image_size=unet.image_size, image_channels=unet.image_channels))
                 == shape(unet)), None)


def same_architecture(a: UNetConfig, b: UNetConfig) -> bool:
    """Whether weights of one network compute the same function in the other (dropout aside)."""
    return replace(a, dropout=0.0) == replace(b, dropout=0.0)


# --- events -----------------------------------------------------------------------------------


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


TrainingEvent = StartedEvent | StepEvent | PreviewEvent | EvaluationEvent | CheckpointEvent | FinishedEvent | FailedEvent


class NonFiniteLoss(RuntimeError):
    pass


# --- the run's moving parts -------------------------------------------------------------------


@dataclass
class DistributedContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def distributed_context(requested_device: str | None = None) -> DistributedContext:
    """Join the process group that ``torchrun`` describes in the environment (a no-op for one process),
    with the backend that suits the device the run will use."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistributedContext()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        dist.init_process_group(backend=process_group_backend(choose_device(requested_device, local_rank)))
    return DistributedContext(dist.get_rank(), dist.get_world_size(), local_rank)


def ema_decay_at(config: TrainingConfig, step: int) -> float:
    if not config.ema_warmup:
        return config.ema_decay
    return min(config.ema_decay, (1 + step) / (10 + step))


def learning_rate_at(config: TrainingConfig, step: int) -> float:
    """Linear warm-up to the learning rate over ``warmup_steps`` (step counts from 1)."""
    if config.warmup_steps <= 0:
        return config.learning_rate
    return config.learning_rate * min(1.0, step / config.warmup_steps)


def rank_seed(seed: int, rank: int, step: int = 0) -> int:
    """The seed of one rank's own random streams; rank 0 of a fresh run keeps ``seed`` itself."""
    return seed + 1000 * rank + 1_000_003 * step


class TrainingState:
    """The model, its EMA copy, the optimiser, the generators and the loss history of one run.

    Each step's images are the same draw on every rank (they split one global batch, batches.py). The noise
    generator (t and eps) and the global generators (dropout) are each rank's own: identical
    streams would make every rank draw the same noise and the same dropout masks.
    """

    def __init__(self, config: TrainingConfig, device: torch.device, context: DistributedContext):
        self.config = config
        self.device = device
        self.rank = context.rank
        unet_config = config.unet_config()
        torch.manual_seed(config.seed)  # identical initial weights on every rank
        self.model = UNet(unet_config).to(device)
        if use_channels_last(device):
            self.model = self.model.to(memory_format=torch.channels_last)
        self.ema = copy.deepcopy(self.model).eval().requires_grad_(False)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=config.learning_rate, fused=device.type == "cuda")
        # No generator for the data: each step's images are drawn from (seed, step) alone (batches.py).
        self.noise_generator = torch.Generator(device=device)
        self.seed_own_streams(0)
        self.step = 0
        self.losses: list[float] = []
        # Every other rank's streams as of the last checkpoint they all took part in (rank 0 saves them).
        self.other_ranks_streams: dict[int, dict[str, torch.Tensor]] = {}

    def seed_own_streams(self, step: int) -> None:
        seed = rank_seed(self.config.seed, self.rank, step)
        if self.rank or step:  # a single process draws its dropout from the stream that built the model
            torch.manual_seed(seed)
        self.noise_generator.manual_seed(seed + 2)

    def own_streams(self) -> dict[str, torch.Tensor]:
        """This process's random streams: the global generators (dropout) and the noise generator."""
        streams = {"rng.torch": torch.get_rng_state(), "generator.noise": self.noise_generator.get_state()}
        if self.device.type == "cuda":
            streams["rng.cuda"] = torch.cuda.get_rng_state(self.device)
        return streams

    def restore_own_streams(self, tensors: dict[str, torch.Tensor], step: int) -> None:
        """Take this rank's streams from a training state; a rank the file has none for (an older
        file, or more processes than before) starts fresh streams, distinct from every other rank's."""
        prefix = "" if self.rank == 0 else f"rank{self.rank}."
        if f"{prefix}rng.torch" not in tensors:
            if self.rank == 0:  # every training state holds rank 0's streams: without them the file is damaged
                raise KeyError("rng.torch")
            self.seed_own_streams(step)
            return
        torch.set_rng_state(tensors[f"{prefix}rng.torch"])
        if self.device.type == "cuda" and f"{prefix}rng.cuda" in tensors:
            torch.cuda.set_rng_state(tensors[f"{prefix}rng.cuda"], self.device)
        noise = tensors[f"{prefix}generator.noise"]
        if noise.numel() == self.noise_generator.get_state().numel():  # not when resumed on another device type
            self.noise_generator.set_state(noise)

    def initialise_from(self, source: Path) -> None:
        """Start from the EMA weights of the model in ``source`` (same architecture); the optimizer stays new."""
        loaded = model_store.load_model(source)
        if not same_architecture(loaded.info.unet, self.model.config):
            raise ModelError(f"{source} has another architecture than this run ({describe_architecture(loaded.info.unet)}"
                             f" against {describe_architecture(self.model.config)}); a fine-tune keeps the model's.")
        if loaded.info.schedule != self.config.schedule_config():
            raise ModelError(f"{source} was trained with another noise schedule ({loaded.info.schedule.kind}, "
                             f"T = {loaded.info.schedule.num_timesteps}); a fine-tune keeps the model's.")
        weights = loaded.unet.state_dict()
        self.model.load_state_dict(weights)
        self.ema.load_state_dict(weights)

    def update_ema(self) -> None:
        decay = ema_decay_at(self.config, self.step)
        ema_params = list(self.ema.parameters())
        params = [p.detach() for p in self.model.parameters()]
        torch._foreach_lerp_(ema_params, params, 1.0 - decay)

    # --- saving and loading -------------------------------------------------------------------
    def state_tensors(self) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
        tensors = {f"model.{k}": v for k, v in self.model.state_dict().items()}
        tensors.update({f"ema.{k}": v for k, v in self.ema.state_dict().items()})
        optimizer_state = self.optimizer.state_dict()
        for index, state in optimizer_state["state"].items():
            for key, value in state.items():
                tensors[f"optimizer.{index}.{key}"] = torch.as_tensor(value)
        tensors.update(self.own_streams())
        for rank, streams in self.other_ranks_streams.items():
            tensors.update({f"rank{rank}.{name}": value for name, value in streams.items()})
        tensors["loss"] = torch.tensor(self.losses, dtype=torch.float32)
        metadata = {
            "step": str(self.step),
            "param_groups": json.dumps(optimizer_state["param_groups"]),
            "format_version": str(model_store.FORMAT_VERSION),
        }
        return tensors, metadata

    def load_state(self, path: Path) -> None:
        """Restore every piece of a run from a model folder's training state."""
        state_path = path / model_store.STATE_FILE
        tensors = model_store.read_safetensors(state_path)
        metadata = model_store.read_safetensors_metadata(state_path)
        try:
            step = int(metadata["step"])
            param_groups = json.loads(metadata["param_groups"])
        except (KeyError, ValueError) as error:
            raise ModelError(f"{state_path} lacks its training metadata ({error}).") from None

        def group(prefix: str) -> dict[str, torch.Tensor]:
            return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}

        model_store.load_weights_into(self.model, group("model."), state_path)
        model_store.load_weights_into(self.ema, group("ema."), state_path)
        optimizer_state: dict[int, dict] = {}
        parameters = list(self.model.parameters())
        try:
            for name, value in group("optimizer.").items():
                index, key = name.split(".", 1)
                optimizer_state.setdefault(int(index), {})[key] = value
            check_optimizer_state(optimizer_state, parameters)
            for index, entry in optimizer_state.items():
                for key in ("exp_avg", "exp_avg_sq"):
                    # The file holds the moments contiguous; give them the parameter's layout
                    # (channels_last on a GPU), which foreach and fused Adam need.
                    entry[key] = torch.empty_like(parameters[index]).copy_(entry[key])
            for saved, current in zip(param_groups, self.optimizer.param_groups):
                # How Adam runs (fused on a GPU) is this device's choice, not the saving device's.
                saved.update({key: current[key] for key in ("fused", "foreach", "capturable") if key in current})
            self.optimizer.load_state_dict({"state": optimizer_state, "param_groups": param_groups})
            self.restore_own_streams(tensors, step)
            losses = tensors["loss"].tolist()[:step]
        except (KeyError, ValueError, RuntimeError) as error:
            detail = str(error).splitlines()[0][:120] if str(error) else type(error).__name__
            raise ModelError(f"{state_path} does not match this model's training setup ({detail}).") from None
        self.step = step
        self.losses = losses


def check_optimizer_state(state: dict[int, dict], parameters: list[torch.Tensor]) -> None:
    """Raise ValueError unless ``state`` holds Adam's moments, shaped like ``parameters``, for some of them.

    The optimizer's own ``load_state_dict`` checks none of this, and a mismatch would only fail
    at the next step, deep inside Adam.
    """
    for index, entry in state.items():
        if not 0 <= index < len(parameters):
            raise ValueError(f"optimizer state for parameter {index}, but the model has {len(parameters)}")
        for key in ("step", "exp_avg", "exp_avg_sq"):
            if key not in entry:
                raise ValueError(f"optimizer.{index}.{key} is missing")
        for key, value in entry.items():
            if key != "step" and value.shape != parameters[index].shape:
                raise ValueError(f"optimizer.{index}.{key} has shape {tuple(value.shape)}, "
                                 f"expected {tuple(parameters[index].shape)}")


@dataclass
class ModelFolderWriter:
    """Writes checkpoints and previews of one run into its model folder (rank 0 only)."""

    path: Path
    info: ModelInfo

    def save_checkpoint(self, state: TrainingState) -> None:
        tensors, metadata = state.state_tensors()
        model_store.save_safetensors_atomic(self.path / model_store.STATE_FILE, tensors, metadata)
        model_store.save_safetensors_atomic(
            self.path / model_store.EMA_FILE, state.ema.state_dict(), {"step": str(state.step)}
        )
        model_store.save_numpy_atomic(self.path / model_store.LOSS_FILE, np.asarray(state.losses, dtype=np.float32))
        self.info.step = state.step
        self.info.last_loss = state.losses[-1] if state.losses else None
        self.info.updated = now_iso()
        self.keep_evaluations()
        model_store.write_json_atomic(self.path / model_store.CONFIG_FILE, model_store.json_safe(self.info.to_json()))

    def keep_evaluations(self) -> None:
        """Carry over evaluations appended to model.json since this run read it (by `evaluate`, or by this run)."""
        try:
            on_disk = model_store.read_model_info(self.path).extra.get(model_store.EVALUATIONS_KEY)
        except ModelError:
            return
        if on_disk is not None:
            self.info.extra[model_store.EVALUATIONS_KEY] = on_disk

    def save_preview(self, step: int, images: torch.Tensor) -> Path:
        grid = make_grid(images, padding=1)
        metadata = {"Software": "DDPM Studio", "model": self.path.name, "step": str(step)}
        save_png(self.path / model_store.PREVIEW_DIR / f"step_{step:07d}.png", grid, metadata)
        return save_png(self.path / model_store.PREVIEW_FILE, grid, metadata)


def now_iso() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def sample_preview(state: TrainingState, diffusion: GaussianDiffusion, use_bf16_autocast: bool) -> torch.Tensor:
    """Sample preview images from the EMA weights at a fixed seed (DDIM), as uint8 on the CPU."""
    config = state.config
    unet_config = state.ema.config
    generator = torch.Generator(device=state.device).manual_seed(config.preview_seed)
    shape = (config.preview_count, unet_config.image_channels, unet_config.image_size, unet_config.image_size)
    steps = min(config.preview_steps, config.num_timesteps)
    with torch.autocast(state.device.type, dtype=torch.bfloat16, enabled=use_bf16_autocast):
        images = diffusion.sample(state.ema, shape, "ddim", num_steps=steps, generator=generator, device=state.device)
    return to_uint8(images)


# --- the loop -------------------------------------------------------------------------------


def train(
    config: TrainingConfig,
    images: torch.Tensor | CachedImages,
    out_dir: Path | str,
    dataset_summary: dict | None = None,
    resume: bool = False,
    command: str | None = None,
    device: str | None = None,
    cpu_threads: int | None = None,
    stop_requested: Callable[[], bool] | None = None,
    inception_weights: Path | None = None,
    feature_extractor: str | None = None,
) -> Iterator[TrainingEvent]:
    """Train on uint8 ``images`` (N, C, S, S) into the model folder ``out_dir``, yielding events.

    With ``config.eval_every`` the main process measures KID of the EMA weights every
    ``eval_every`` steps (``feature_extractor``: Inception unless given). The dataset's features
    (cached per the recorded dataset folders) are computed before the ``StartedEvent``, with
    ``EvaluationProgress`` events, so missing Inception weights stop the run before its first step.

    ``images`` can be a tensor in memory or images mapped from the dataset cache, which are
    streamed. With ``resume`` the run continues from the folder's training state: weights, EMA,
    optimizer, step, RNG states and loss history, up to ``config.steps`` in total.
    ``cpu_threads`` sets the intra-op threads of a run on the CPU (see ``threads_beside_a_window``).
    ``stop_requested`` is asked after every step; once it returns True the run saves a
    checkpoint and ends with ``FinishedEvent(stopped=True)``. Under torchrun the ranks agree
    on it at the next loss read-back, so that all stop after the same step, together.
    """
    out_dir = Path(out_dir)
    if resume:
        # The folder's own architecture is the one its weights were trained with (a folder saved before
        # the downsampling padding became a setting has the old padding, which no preset has now).
        info = model_store.read_model_info(out_dir)
        if (config.image_size, config.image_channels) != (info.unet.image_size, info.unet.image_channels):
            raise model_store.inconsistent_settings(info)
        config = replace(config, unet=info.unet.to_dict())
    config.validate()
    unet_config = config.unet_config()
    if resume:  # before the network and the schedule are given memory
        model_store.check_resumable(out_dir, unet_config, config.schedule_config())
    expected_shape = (unet_config.image_channels, unet_config.image_size, unet_config.image_size)
    rows = images.tensor if isinstance(images, CachedImages) else images
    if rows.dtype != torch.uint8 or rows.ndim != 4 or tuple(rows.shape[1:]) != expected_shape:
        raise ValueError(f"Training images must be uint8 of shape (N, {', '.join(map(str, expected_shape))}).")
    if len(rows) == 0:
        raise SettingError("There are no images to train on.")

    context = distributed_context(device)
    if config.batch_size % context.world_size:
        raise SettingError(f"Batch size {config.batch_size} cannot be split evenly over {context.world_size} processes.")
    run_device = choose_device(device, context.local_rank)
    if run_device.type == "cuda":
        torch.cuda.set_device(run_device)
    bf16 = use_bf16(config.precision, run_device)
    log_every = config.log_every or (1 if run_device.type == "cpu" else 20)

    try:
        state = TrainingState(config, run_device, context)
        state.model.set_activation_checkpointing(config.checkpoint_activations)
        if resume:
            state.load_state(out_dir)
        elif config.init_from:
            state.initialise_from(Path(config.init_from))
    except (RuntimeError, MemoryError) as error:
        if not is_out_of_memory(error):
            raise
        state = None  # outside the except clause, so that the traceback frees what was built
    if state is None:
        release_cached_memory(run_device)
        yield FailedEvent(0, out_of_memory_reason(config, run_device, "while building the model") + ".", out_dir)
        return
    if state.step >= config.steps:
        raise SettingError(f"{out_dir.name} has already trained {state.step} steps; ask for more than that to continue.")

    writer = None
    if context.is_main:
        if resume:
            info = model_store.read_model_info(out_dir)
            info.training = config.to_dict()
            if command:
                info.extra.setdefault("commands", []).append(command)
        else:
            if (out_dir / model_store.CONFIG_FILE).exists():
                raise SettingError(f"{out_dir} already holds a model; resume it, or choose another name.")
            info = ModelInfo(
                path=out_dir, unet=unet_config, schedule=config.schedule_config(), training=config.to_dict(),
                dataset=dataset_summary or {"count": len(images)}, command=command, created=now_iso(),
            )
        writer = ModelFolderWriter(out_dir, info)
        model_store.remove_stale_temporaries(out_dir)  # left by a run that was killed mid-write

    evaluator = None
    if config.eval_every and writer is not None:
        recorded = [Path(p) for p in (writer.info.dataset or {}).get("paths", [])]
        evaluator = yield from prepare_evaluator(config, recorded, rows, run_device, inception_weights,
                                                 feature_extractor)

    diffusion = GaussianDiffusion(NoiseSchedule.from_config(config.schedule_config()).to(run_device))
    if run_device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # shapes are fixed: cuDNN may pick its algorithms once
    network: torch.nn.Module = state.model
    per_rank = config.batch_size // context.world_size
    try:
        if context.enabled:
            network = torch.nn.parallel.DistributedDataParallel(
                state.model, device_ids=[run_device.index] if run_device.type == "cuda" else None
            )
        # The dataset lives on the GPU when it takes under a quarter of free memory; otherwise a
        # thread gathers each batch from memory or the cache file and pins it on its way (batches.py).
        batches = BatchSource(
            images, seed=config.seed, batch_size=config.batch_size, rank=context.rank, world_size=context.world_size,
            device=run_device, first_step=state.step + 1, last_step=config.steps,
        )
    except (RuntimeError, MemoryError) as error:
        if not is_out_of_memory(error):
            raise
        network = None
    if network is None:
        state = None
        release_cached_memory(run_device)
        yield FailedEvent(0, out_of_memory_reason(config, run_device, "while building the model") + ".", out_dir)
        return
    ddp = network if context.enabled else None
    if config.compile:
        network = torch.compile(network)
    micro_batches = micro_batch_count(config, per_rank, run_device)
    channels_last = use_channels_last(run_device)

    yield StartedEvent(
        state.step, config.steps, count_parameters(state.model), describe_device(run_device),
        "bfloat16" if bf16 else "float32", out_dir, np.asarray(state.losses, dtype=np.float32),
    )

    pending: list[torch.Tensor] = []
    failure: str | None = None  # the sentence of a run that failed; it then saves nothing more
    stopping = False  # agreed by every rank
    last_checkpoint_time = time.monotonic()
    report_time, report_step = time.monotonic(), state.step

    def read_back_losses(reduce: bool = True) -> list[float]:
        """One host sync for all steps since the last read-back; raises NonFiniteLoss.

        Under torchrun the same all-reduce carries each rank's stop request, so that every
        rank learns of any request at the same step."""
        nonlocal pending, stopping
        if not pending:
            return []
        stacked = torch.stack(pending)
        if context.enabled and reduce:
            wants_stop = bool(stop_requested and stop_requested())
            stacked = torch.cat([stacked, stacked.new_tensor([float(wants_stop)])])
            dist.all_reduce(stacked)
            stopping = stopping or bool(stacked[-1] > 0)  # rides along with the losses' host sync
            stacked = stacked[:-1] / context.world_size
        values = stacked.tolist()
        pending = []
        if not all(math.isfinite(v) for v in values):
            raise NonFiniteLoss()
        state.losses.extend(values)
        return values

    def checkpoint(reduce: bool = True) -> None:
        read_back_losses(reduce)
        # A step can end with a finite loss and non-finite weights (an infinite gradient, a NaN in
        # Adam's moments); such weights must never replace the last good checkpoint. Every rank
        # checks (their weights are identical), so that all of them stop together.
        if not weights_are_finite(state):
            raise NonFiniteLoss()
        if context.enabled:
            # Rank 0 saves every rank's random streams: a collective call, which each rank makes at
            # the same step. Without one (reduce=False) the others' would be stale: save none.
            state.other_ranks_streams = gather_random_streams(state, context, run_device) if reduce else {}
        if writer is not None:
            writer.save_checkpoint(state)
        if context.enabled and reduce:
            # No rank goes on (or exits, which makes torchrun end the others) before the
            # checkpoint is written: a tiny all-reduce serves as a barrier on either backend.
            dist.all_reduce(torch.zeros(1, device=run_device))

    # OpenMP keeps a thread count per thread, and torch hands the last one set to threads it meets later:
    # set here, in the thread that drives the run, and given back when the run ends.
    threads_before = torch.get_num_threads()
    if cpu_threads and run_device.type == "cpu":
        torch.set_num_threads(cpu_threads)
    try:
        network.train()
        while state.step < config.steps and not stopping:
            step = state.step + 1
            x0 = model_input(batches.next(), config)
            if channels_last:
                x0 = x0.contiguous(memory_format=torch.channels_last)

            learning_rate = learning_rate_at(config, step)
            for group in state.optimizer.param_groups:
                group["lr"] = learning_rate
            state.optimizer.zero_grad(set_to_none=True)
            loss = accumulate_gradients(network, ddp, diffusion, x0, micro_batches, state.noise_generator, bf16)
            torch.nn.utils.clip_grad_norm_(state.model.parameters(), config.grad_clip)
            state.optimizer.step()
            state.step = step
            state.update_ema()
            pending.append(loss.detach().float())

            losses: list[float] = []
            images_per_second = steps_per_second = None
            if step % log_every == 0 or step == config.steps:
                losses = read_back_losses()
                elapsed = time.monotonic() - report_time
                if elapsed > 0:
                    steps_per_second = (step - report_step) / elapsed
                    images_per_second = steps_per_second * config.batch_size
                report_time, report_step = time.monotonic(), step
            if not context.enabled and stop_requested is not None and stop_requested():
                stopping = True  # one process needs no agreement: stop after this step
            yield StepEvent(step, config.steps, learning_rate, losses, images_per_second, steps_per_second)
            if stopping:
                break

            if config.preview_count and (step % config.preview_every == 0 or step == config.steps) and context.is_main:
                preview = sample_preview(state, diffusion, bf16)
                yield PreviewEvent(step, preview, writer.save_preview(step, preview))
                report_time = time.monotonic()  # previews are not training time
            if evaluator is not None and context.is_main and config.eval_every and step % config.eval_every == 0:
                yield evaluator.measure(state, diffusion, bf16, writer)
                report_time = time.monotonic()  # evaluations are not training time
            due = step % config.checkpoint_every == 0
            # The clock differs between processes, so only a single process checkpoints by time:
            # under torchrun a rank checkpointing alone would wait forever in its collective call.
            due = due or (not context.enabled and time.monotonic() - last_checkpoint_time > config.checkpoint_minutes * 60)
            if due and step != config.steps:
                checkpoint()
                last_checkpoint_time = time.monotonic()
                if writer is not None:
                    yield CheckpointEvent(step, out_dir)
        checkpoint()
        yield FinishedEvent(state.step, out_dir, stopped=stopping)
    except NonFiniteLoss:
        failure = f"The loss or the weights became non-finite near step {state.step}; try a lower learning rate"
    except (RuntimeError, MemoryError) as error:
        if not is_out_of_memory(error):
            raise
        failure = out_of_memory_reason(config, run_device, f"step {state.step + 1}")
    finally:
        batches.close()
        # Reached when the consumer stops iterating too: save what was trained, unless it is broken.
        if failure is None and writer is not None and state.step > (writer.info.step or 0):
            try:
                checkpoint(reduce=False)  # other ranks may be gone: no collective call here
            except NonFiniteLoss:
                pass
        torch.set_num_threads(threads_before)
    if failure is None:
        return
    # Reported outside the handler: an exception held while suspended would keep the failed step's tensors alive.
    kept = (f"the checkpoint of step {writer.info.step} in {out_dir} is kept" if writer is not None and writer.info.step
            else "no checkpoint was saved")
    batch = x0 = loss = pending = None  # noqa: F841 (released before the consumer sees the failure)
    state.optimizer.zero_grad(set_to_none=True)  # and the failed step's gradients
    release_cached_memory(run_device)
    yield FailedEvent(state.step, f"{failure} ({kept}).", out_dir)


def out_of_memory_reason(config: TrainingConfig, device: torch.device, when: str) -> str:
    where = "GPU" if device.type == "cuda" else "CPU"
    return (f"Out of {where} memory at batch size {config.batch_size} ({when}); lower the batch size, split it into "
            "micro-batches (--accumulate, --micro-batch auto), checkpoint activations, or choose a smaller preset")


def release_cached_memory(device: torch.device) -> None:
    """Hand the GPU memory that torch caches back, after an out-of-memory failure."""
    if device.type == "cuda":
        torch.cuda.empty_cache()


def gather_random_streams(state: TrainingState, context: DistributedContext,
                          device: torch.device) -> dict[int, dict[str, torch.Tensor]]:
    """The random streams of ranks 1.., for rank 0 to save (a collective call: all ranks make it)."""
    mine = state.own_streams()
    names = sorted(mine)
    sizes = [mine[name].numel() for name in names]
    flat = torch.cat([mine[name].flatten() for name in names]).to(device)  # all uint8, same sizes on every rank
    gathered = [torch.empty_like(flat) for _ in range(context.world_size)]
    dist.all_gather(gathered, flat)
    return {rank: dict(zip(names, (part.clone() for part in buffer.cpu().split(sizes))))
            for rank, buffer in enumerate(gathered) if rank != 0}


def micro_batch_count(config: TrainingConfig, per_rank: int, device: torch.device) -> int:
    """How many micro-batches each process splits its ``per_rank`` images into, from the accumulation settings.

    ``micro_batch="auto"`` takes the largest micro-batch that the memory estimate fits in what
    ``device`` has available (free GPU memory, or RAM); at least one image.
    """
    if config.micro_batch is None:
        if config.accumulate > per_rank:
            raise SettingError(f"Each process's {per_rank} images cannot be split into {config.accumulate} micro-batches.")
        return config.accumulate
    size = config.micro_batch
    if size == "auto":
        check = check_training_memory(config.unet_config(), per_rank, use_bf16(config.precision, device), device)
        size = per_rank if check.largest_batch is None else max(1, check.largest_batch)
    return math.ceil(per_rank / min(size, per_rank))


def accumulate_gradients(
    network: torch.nn.Module,
    ddp: torch.nn.parallel.DistributedDataParallel | None,
    diffusion: GaussianDiffusion,
    x0: torch.Tensor,
    micro_batches: int,
    generator: torch.Generator,
    bf16: bool,
) -> torch.Tensor:
    """Backpropagate L_simple of the batch ``x0`` in ``micro_batches`` pieces; returns the batch's loss, detached.

    t and the noise are drawn for the whole batch first and each piece's loss is weighted by its
    share of the batch, so the gradients add up to the whole batch's, however it is split. Under
    DDP every piece but the last runs under ``no_sync()``: gradients are all-reduced once a step.
    """
    t, noise = diffusion.draw_training_noise(x0, generator)
    pieces = list(zip(x0.tensor_split(micro_batches), t.tensor_split(micro_batches), noise.tensor_split(micro_batches)))
    total = torch.zeros((), device=x0.device)
    for index, (x0_piece, t_piece, noise_piece) in enumerate(pieces):
        last = index == len(pieces) - 1
        with contextlib.nullcontext() if last or ddp is None else ddp.no_sync():
            with torch.autocast(x0.device.type, dtype=torch.bfloat16, enabled=bf16):
                loss = diffusion.training_loss(network, x0_piece, t=t_piece, noise=noise_piece)
            weighted = loss * (len(x0_piece) / len(x0))
            weighted.backward()
        total += weighted.detach()
    return total


def train_from_folder(
    paths: list[Path],
    config: TrainingConfig,
    out_dir: Path | str,
    resume: bool = False,
    command: str | None = None,
    device: str | None = None,
    cpu_threads: int | None = None,
    stop_requested: Callable[[], bool] | None = None,
    inception_weights: Path | None = None,
    feature_extractor: str | None = None,
    use_cache: bool = True,
) -> Iterator:
    """Scan image folders at the config's resolution, then train: yields ``ScanProgress`` events (and
    ``CacheMessage`` sentences), the ``ScanResult`` (so callers can report skipped files), then the
    training events.

    With ``use_cache`` the images are decoded once into the dataset cache and streamed from it;
    under torchrun local rank 0 decodes and the other processes wait for its cache entry.
    """
    config.validate()
    if resume:
        model_store.check_resumable(Path(out_dir), config.unet_config(), config.schedule_config())
    if use_cache:
        builder = distributed_context(device).local_rank == 0
        scan = open_cached_dataset(paths, config.image_size, config.image_channels, builder=builder)
    else:
        scan = scan_images(paths, config.image_size, config.image_channels)
    result = yield from usable_scan(scan)
    yield result
    images = result.mapping if isinstance(result, CachedScanResult) else result.images
    yield from train(config, images, out_dir, result.summary(), resume=resume, command=command, device=device,
                     cpu_threads=cpu_threads, stop_requested=stop_requested, inception_weights=inception_weights,
                     feature_extractor=feature_extractor)


def threads_beside_a_window() -> int:
    """Intra-op threads for training in the window's process: one core fewer than torch would use, left to
    the window, so that it keeps drawing while the machine is busy."""
    return max(1, torch.get_num_threads() - 1)


def is_out_of_memory(error: BaseException) -> bool:
    """Whether ``error`` is an allocation that failed: CUDA's out of memory, the CPU allocator's, or Python's."""
    if isinstance(error, (torch.OutOfMemoryError, MemoryError)):
        return True
    text = str(error)
    return isinstance(error, RuntimeError) and ("DefaultCPUAllocator" in text or "can't allocate memory" in text
                                                or "not enough memory" in text)


def check_memory(config: TrainingConfig, device: str | None = None,
                 context: DistributedContext | None = None, dataset_images: int = 0) -> MemoryCheck:
    """Whether a run of ``config`` fits in the memory its device has available now, and which batch would.

    ``dataset_images`` counts where the dataset is kept on the GPU (the window's runs), not on the CPU.
    """
    context = context or DistributedContext()
    run_device = choose_device(device, context.local_rank)
    per_rank = config.batch_size // context.world_size
    # Activations are held for one micro-batch at a time.
    micro_batch = math.ceil(per_rank / micro_batch_count(config, per_rank, run_device))
    return check_training_memory(config.unet_config(), micro_batch, use_bf16(config.precision, run_device), run_device,
                                 dataset_images if run_device.type == "cuda" else 0)


@dataclass
class TrainingEvaluator:
    """What KID during training needs: the feature extractor and the dataset's (cached) reference features."""

    extractor: torch.nn.Module
    reference: object  # evaluation.ReferenceFeatures
    device: torch.device
    feature_extractor: str
    batch_size: int = 100

    def measure(self, state: TrainingState, diffusion: GaussianDiffusion, bf16: bool,
                writer: ModelFolderWriter | None) -> EvaluationEvent:
        """KID of ``eval_num`` DDIM samples of the EMA weights (a fixed seed, so runs compare); recorded in model.json."""
        from ddpm_studio.core.evaluation.quality import kid_of_network
        from ddpm_studio.core.evaluation.quality import now_iso as evaluation_date

        config = state.config
        unet_config = state.ema.config
        shape = (unet_config.image_channels, unet_config.image_size, unet_config.image_size)
        self.extractor.to(state.device)
        mean, std = kid_of_network(state.ema, diffusion, shape, self.reference, self.extractor, state.device,
                                   config.eval_num, self.batch_size, config.preview_steps, config.preview_seed, bf16)
        if writer is not None:
            record = {
                "metric": "kid", "value": mean, "std": std, "n": config.eval_num, "sampler": "ddim",
                "steps": min(config.preview_steps, config.num_timesteps), "data": self.reference.description,
                "date": evaluation_date(), "model_step": state.step, "feature_extractor": self.feature_extractor,
                "during_training": True,
            }
            if (writer.path / model_store.CONFIG_FILE).is_file():
                model_store.append_evaluation(writer.path, record)
            else:  # before the first checkpoint: written with it
                writer.info.extra.setdefault(model_store.EVALUATIONS_KEY, []).append(record)
        return EvaluationEvent(state.step, "kid", mean, std, config.eval_num)


def prepare_evaluator(config: TrainingConfig, paths: list[Path], images: torch.Tensor, device: torch.device,
                      inception_weights: Path | None = None, feature_extractor: str | None = None):
    """Load the feature extractor and the dataset's reference features (from the cache of ``paths``, else from
    ``images``, decoded as training decodes them); yields progress events and returns a ``TrainingEvaluator``."""
    from ddpm_studio.core.evaluation.metrics import INCEPTION, create_feature_extractor
    from ddpm_studio.core.evaluation.quality import ReferenceFeatures, dataset_reference

    name = feature_extractor or INCEPTION
    extractor = create_feature_extractor(name, device, inception_weights)
    reference = None
    for event in dataset_reference(paths, config.image_size, config.image_channels, name, extractor, device,
                                   images=images):
        if isinstance(event, ReferenceFeatures):
            reference = event
        else:
            yield event
    return TrainingEvaluator(extractor, reference, device, name)


def model_input(batch: StepImages, config: TrainingConfig) -> torch.Tensor:
    """This rank's images of a step in model range, each mirrored when its coin says so and ``config.random_flip``.

    The coins are drawn even without flipping (``batches.draw_step``), so that turning flips off
    does not change which images are drawn.
    """
    x0 = to_model_range(batch.images)
    return random_horizontal_flip(x0, coins=batch.flips) if config.random_flip else x0


def weights_are_finite(state: TrainingState) -> bool:
    """Whether the raw and EMA weights hold no NaN or infinity (one host sync)."""
    tensors = [p.detach() for p in state.model.parameters()] + list(state.ema.parameters())
    return bool(torch.stack([torch.isfinite(tensor).all() for tensor in tensors]).all())


def describe_architecture(unet: UNetConfig) -> str:
    return (f"{unet.image_size} px, {unet.image_channels} channels, base {unet.base_channels}, "
            f"multipliers {list(unet.channel_multipliers)}, {unet.num_res_blocks} blocks per level, "
            f"attention at {list(unet.attention_resolutions)}, {unet.downsample_padding} padding")
