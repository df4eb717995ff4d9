"""What one training run holds and how it reaches its model folder.

``TrainingState`` is the model, its EMA copy, the optimiser with its warm-up, the random
streams and the loss history; it saves and restores all of them, so that a resumed run
continues bit for bit. ``ModelFolderWriter`` writes checkpoints and previews (rank 0 only).
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.optim.lr_scheduler import LambdaLR
from torch.optim.swa_utils import get_ema_multi_avg_fn

from ddpm_studio.core.model import store as model_store
from ddpm_studio.core.model.store import ModelError, ModelInfo
from ddpm_studio.core.model.unet import UNet
from ddpm_studio.core.sampling.imaging import make_grid, save_png
from ddpm_studio.core.system.devices import use_channels_last
from ddpm_studio.core.timestamps import now_iso
from ddpm_studio.core.training.config import TrainingConfig
from ddpm_studio.core.training.distributed import DistributedContext
from ddpm_studio.core.training.fine_tune import check_starting_weights


def warmup_factor(config: TrainingConfig, step: int) -> float:
    """The share of the learning rate that step ``step`` (counting from 1) takes: a linear warm-up over
    ``warmup_steps``."""
    if config.warmup_steps <= 0:
        return 1.0
    return min(1.0, step / config.warmup_steps)


def learning_rate_at(config: TrainingConfig, step: int) -> float:
    """The learning rate of step ``step`` (counting from 1), as the warm-up scheduler sets it."""
    return config.learning_rate * warmup_factor(config, step)


def ema_decay_at(config: TrainingConfig, step: int) -> float:
    if not config.ema_warmup:
        return config.ema_decay
    return min(config.ema_decay, (1 + step) / (10 + step))


def rank_seed(seed: int, rank: int, step: int = 0) -> int:
    """The seed of one rank's own random streams; rank 0 of a fresh run keeps ``seed`` itself."""
    return seed + 1000 * rank + 1_000_003 * step


class TrainingState:
    """The model, its EMA copy, the optimiser and its warm-up, the generators and the loss history of one run.

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
        self.warmup: LambdaLR | None = None
        # No generator for the data: each step's images are drawn from (seed, step) alone (batches.py).
        self.noise_generator = torch.Generator(device=device)
        self.seed_own_streams(0)
        self.step = 0
        self.losses: list[float] = []
        # Every other rank's streams as of the last checkpoint they all took part in (rank 0 saves them).
        self.other_ranks_streams: dict[int, dict[str, torch.Tensor]] = {}
        self.start_warmup()

    def start_warmup(self) -> None:
        """Set the learning rate of the next step, and of each one after it, by a ``LambdaLR`` warm-up.

        Its whole state is the step and the config's learning rate: built anew at ``self.step``, it
        continues a resumed run exactly, with the learning rate the resumed run asks for.
        """
        config = self.config
        for group in self.optimizer.param_groups:
            group["initial_lr"] = config.learning_rate
        # The scheduler's count is the number of steps done; the step it sets the rate for is one more.
        self.warmup = LambdaLR(self.optimizer, lambda done: warmup_factor(config, done + 1), last_epoch=self.step - 1)

    @property
    def learning_rate(self) -> float:
        """The learning rate the next optimiser step takes."""
        return self.optimizer.param_groups[0]["lr"]

    def optimizer_step(self) -> None:
        """One Adam step on the gradients there are, then the warm-up's rate for the next step and the EMA."""
        self.optimizer.step()
        self.warmup.step()
        self.step += 1
        self.update_ema()

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
        check_starting_weights(source, loaded.info, self.model.config, self.config.schedule_config())
        weights = loaded.unet.state_dict()
        for network in (self.model, self.ema):
            # Classes added to an unconditional model: its class embedding is new and stays at zero (UNet
            # initialises it so), so the fine-tune starts from the very function the model computed.
            missing, unexpected = network.load_state_dict(weights, strict=False)
            if unexpected or any(not name.startswith("class_embedding.") for name in missing):
                raise RuntimeError(f"{source}: weights do not match the network ({missing + unexpected})")

    def update_ema(self) -> None:
        """EMA <- decay EMA + (1 - decay) weights, with the decay of ``self.step`` (torch's EMA of SWA)."""
        update = get_ema_multi_avg_fn(ema_decay_at(self.config, self.step))
        update(list(self.ema.parameters()), [p.detach() for p in self.model.parameters()], self.step)

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
        self.start_warmup()


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


def weights_are_finite(state: TrainingState) -> bool:
    """Whether the raw and EMA weights hold no NaN or infinity (one host sync)."""
    tensors = [p.detach() for p in state.model.parameters()] + list(state.ema.parameters())
    return bool(torch.stack([torch.isfinite(tensor).all() for tensor in tensors]).all())
