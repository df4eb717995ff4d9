"""A trained model on disk: one folder, saved atomically, loaded without running code from it.

Layout of a model folder:

    model.json                  architecture, schedule, training settings, dataset summary, step, evaluations
    ema.safetensors             the EMA weights used for sampling
    training_state.safetensors  what resuming needs: raw weights, EMA, optimizer, RNG states, loss history
    loss.npy                    the loss of every step, float32 (so reopening shows the curve)
    preview.png, previews/      preview grids sampled during training

Every file is written to a temporary name and moved into place with ``os.replace``;
``model.json`` goes last. A crash at any instant leaves the previous version of each
file whole, and the folder loadable.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from ddpm_studio.core.atomic import TEMPORARY_NAME, atomic_write, write_bytes_atomic
from ddpm_studio.core.diffusion.process import VARIANCES, GaussianDiffusion
from ddpm_studio.core.diffusion.schedule import NoiseSchedule, ScheduleConfig
from ddpm_studio.core.errors import SettingError
from ddpm_studio.core.model import check as model_check
from ddpm_studio.core.model.check import ModelError, WeightsHeader
from ddpm_studio.core.model.unet import UNet, UNetConfig
from ddpm_studio.core.training.config import TrainingConfig
from ddpm_studio.paths import BUNDLED_MODELS_DIR

FORMAT_VERSION = 1
CONFIG_FILE = "model.json"
EMA_FILE = "ema.safetensors"
STATE_FILE = "training_state.safetensors"
LOSS_FILE = "loss.npy"
PREVIEW_FILE = "preview.png"
PREVIEW_DIR = "previews"


# --- atomic writes ----------------------------------------------------------------------------


def remove_stale_temporaries(folder: Path) -> list[Path]:
    """Delete the temporary files that writes cut short (a crash, kill -9) left in a model folder; return them.

    Only call this while no other process writes the folder.
    """
    removed = []
    for directory in (Path(folder), Path(folder) / PREVIEW_DIR):
        if directory.is_dir():
            for path in directory.iterdir():
                if TEMPORARY_NAME.fullmatch(path.name) and path.is_file():
                    path.unlink(missing_ok=True)
                    removed.append(path)
    return removed


def write_json_atomic(path: Path, data: dict) -> None:
    write_bytes_atomic(Path(path), (json.dumps(data, indent=2) + "\n").encode("utf-8"))


def save_safetensors_atomic(
    path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None
) -> None:
    tensors = {name: tensor.detach().to("cpu").contiguous() for name, tensor in tensors.items()}
    atomic_write(Path(path), lambda temporary: save_file(tensors, str(temporary), metadata=metadata))


def save_numpy_atomic(path: Path, array: np.ndarray) -> None:
    def write(temporary: Path) -> None:
        with open(temporary, "wb") as stream:
            np.save(stream, array, allow_pickle=False)

    atomic_write(Path(path), write)


# --- reading --------------------------------------------------------------------------------------


@dataclass
class ModelInfo:
    """What ``model.json`` says about a model folder, and what its weights file's header says (``weights``)."""

    path: Path
    unet: UNetConfig
    schedule: ScheduleConfig
    step: int = 0
    training: dict = field(default_factory=dict)
    dataset: dict = field(default_factory=dict)
    last_loss: float | None = None
    command: str | None = None
    created: str | None = None
    updated: str | None = None
    extra: dict = field(default_factory=dict)
    weights: WeightsHeader | None = None  # the EMA file's header, once checked; never written to model.json

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def sampling_defaults(self) -> dict:
        """The variance and clipping the model samples with unless asked otherwise (an import records its own)."""
        recorded = self.extra.get("sampling") if isinstance(self.extra.get("sampling"), dict) else {}
        own = "learned" if self.unet.learned_variance else "fixed_large"  # a model that learned it samples with it
        usable = recorded.get("variance") in VARIANCES and (
            recorded["variance"] != "learned" or self.unet.learned_variance)
        variance = recorded["variance"] if usable else own
        clip = recorded.get("clip") if isinstance(recorded.get("clip"), bool) else True
        return {"variance": variance, "clip": clip}

    @property
    def can_resume(self) -> bool:
        return (self.path / STATE_FILE).is_file()

    def to_json(self) -> dict:
        return {
            "format": "ddpm-studio-model",
            "format_version": FORMAT_VERSION,
            "unet": self.unet.to_dict(),
            "schedule": dict(vars(self.schedule)),
            "step": self.step,
            "last_loss": self.last_loss,
            "training": self.training,
            "dataset": self.dataset,
            "command": self.command,
            "created": self.created,
            "updated": self.updated,
            **self.extra,
        }


def read_model_info(path: Path | str) -> ModelInfo:
    """Read and check ``model.json`` of a model folder and its EMA file's header; raise ModelError in one
    sentence if the folder is unusable.

    Nothing is built and no tensor is read: the numbers are checked against ``model_check``'s bounds,
    and the header against the file's length. ``load_model`` checks the rest.
    """
    folder = Path(path)
    if folder.is_file() and folder.name == CONFIG_FILE:
        folder = folder.parent
    config_path = folder / CONFIG_FILE
    if not folder.is_dir():
        raise ModelError(f"No model folder at {folder}.")
    if not config_path.is_file():
        raise ModelError(f"{config_path} is missing, so {folder} is not a DDPM Studio model folder.")
    try:
        if config_path.stat().st_size > model_check.MAX_DESCRIPTION_BYTES:
            raise ModelError(f"{config_path} is {config_path.stat().st_size:,} bytes, "
                             "too large for a model description.")
        data = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as error:  # ValueError: bad JSON, or an integer of 5000 digits
        if isinstance(error, ModelError):
            raise

        raise ModelError(f"{config_path} is damaged and cannot be read ({type(error).__name__}).") from None
    if not isinstance(data, dict) or data.get("format") != "ddpm-studio-model":
        raise ModelError(f"{config_path} is not a DDPM Studio model description.")
    version = data.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise ModelError(f"{config_path} has format version {version}, "
                         f"newer than this DDPM Studio reads ({FORMAT_VERSION}).")
    try:
        unet = UNetConfig.from_dict(data["unet"])
        model_check.check_unet_config(unet)
        schedule = ScheduleConfig(**data["schedule"])
        model_check.check_schedule_config(schedule)
        known = {"format", "format_version", "unet", "schedule", "step", "last_loss", "training", "dataset",
                 "command", "created", "updated"}
        info = ModelInfo(
            path=folder,
            unet=unet,
            schedule=schedule,
            step=int(data.get("step") or 0),
            training=dict(data.get("training") or {}),
            dataset=dict(data.get("dataset") or {}),
            last_loss=None if data.get("last_loss") is None else float(data["last_loss"]),
            command=data.get("command"),
            created=data.get("created"),
            updated=data.get("updated"),
            extra={k: v for k, v in data.items() if k not in known},
        )
        paths = info.dataset.get("paths", [])
        if not isinstance(paths, list) or not all(isinstance(p, str) for p in paths):
            raise SettingError(f"dataset.paths must be a list of folder names, not {str(paths)[:40]}")
        if info.training:  # what resuming and the Train page read back
            TrainingConfig.from_dict(info.training).validate()
    except (KeyError, TypeError, ValueError, OverflowError) as error:
        raise ModelError(f"{config_path} describes a model this DDPM Studio cannot build "
                         f"({str(error).rstrip('.')}).") from None
    info.weights = model_check.read_safetensors_header(folder / EMA_FILE)
    model_check.check_weight_dtypes(info.weights)
    return info


def read_safetensors(path: Path, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """Load tensors from a safetensors file (no code can run); a damaged file raises ModelError."""
    if not path.is_file():
        raise ModelError(f"{path} is missing.")
    try:
        return load_file(str(path), device=str(device))
    except (SafetensorError, OSError, ValueError, RuntimeError) as error:
        raise ModelError(f"{path} is damaged or not a safetensors file ({str(error).splitlines()[0][:80]}).") from None


def read_safetensors_metadata(path: Path) -> dict[str, str]:
    try:
        with safe_open(str(path), framework="pt") as handle:
            return dict(handle.metadata() or {})
    except (SafetensorError, OSError, ValueError, RuntimeError) as error:
        raise ModelError(f"{path} is damaged or not a safetensors file ({str(error).splitlines()[0][:80]}).") from None


def all_finite(tensor: torch.Tensor) -> bool:
    """Whether no element is NaN or infinite. A sum is finite exactly when they all are, unless finite values
    overflow it; it is many times faster than ``isfinite`` over every element, which only settles that case."""
    return bool(torch.isfinite(tensor.sum())) or bool(torch.isfinite(tensor).all())


def load_weights_into(module: torch.nn.Module, tensors: dict[str, torch.Tensor], source: Path) -> None:
    """Give ``module`` these weights, raising ModelError if names or shapes don't match it or a value is not finite.

    A module on the ``meta`` device (from ``model_check.check_weights_fit``) takes the tensors themselves,
    as float32, so loading costs one copy of the weights and no random initialisation.
    """
    model_check.check_tensors_match(model_check.tensor_shapes(module), {k: tuple(v.shape) for k, v in tensors.items()},
                                    source, CONFIG_FILE)
    for name, tensor in tensors.items():
        if not all_finite(tensor):
            raise ModelError(f"{source} holds non-finite weights ({name}).")
    on_meta = any(tensor.is_meta for tensor in module.state_dict().values())
    if on_meta:
        module.load_state_dict({name: tensor.float() for name, tensor in tensors.items()}, assign=True)
    else:
        module.load_state_dict(tensors)


EVALUATIONS_KEY = "evaluations"
SAMPLE_METRIC_NAMES = {"fid": "FID", "kid": "KID", "is": "IS"}


def append_evaluation(folder: Path, record: dict) -> None:
    """Add an evaluation record (metric, value, n, data, date, and any detail) to the model's ``model.json``.

    The file is read and rewritten atomically; everything else in it is kept as it was.
    """
    info = read_model_info(folder)  # one clear sentence for a folder that is not a usable model
    for key in ("metric", "value", "n", "data", "date"):
        if key not in record:
            raise ValueError(f"An evaluation record needs '{key}'.")
    config_path = info.path / CONFIG_FILE
    data = json.loads(config_path.read_text(encoding="utf-8"))
    data.setdefault(EVALUATIONS_KEY, []).append(json_safe(record))
    write_json_atomic(config_path, data)


def evaluations(info: ModelInfo) -> list[dict]:
    """The evaluation records of a model, oldest first (malformed entries left out)."""
    records = info.extra.get(EVALUATIONS_KEY) or []
    if not isinstance(records, list):
        return []
    return [r for r in records if isinstance(r, dict) and "metric" in r and "value" in r]


def describe_evaluation(record: dict) -> str:
    """One line for an evaluation record, e.g. "NLL 3.75 ± 0.02 bits/dim (64 images, all t, ...)"."""
    metric, value = record.get("metric"), record.get("value")
    if metric == "nll_bpd" and isinstance(value, (int, float)):
        error = record.get("standard_error")
        text = f"NLL {value:.3f}" + (f" ± {error:.3f}" if isinstance(error, (int, float)) else "") + " bits/dim"
        if all(isinstance(record.get(k), (int, float)) for k in ("L_0", "sum_L_t-1", "L_T")):
            text += f" (L_0 {record['L_0']:.3f} + ΣL_t-1 {record['sum_L_t-1']:.3f} + L_T {record['L_T']:.4f})"
        details = [f"{record.get('n')} images", f"t: {record.get('timesteps', 'all')}"]
    elif metric == "memorization_copies" and isinstance(value, (int, float)):  # the nearest-neighbour copies share
        text = f"Copies {value:.1%} of samples nearer a training image than the held-out 5th percentile"
        if isinstance(record.get("threshold"), (int, float)):
            text += f" ({record['threshold']:.2f} RMS on [0, 255])"
        features = record.get("features")
        if isinstance(features, dict) and isinstance(features.get("value"), (int, float)):
            text += f"; by {features.get('extractor', 'features')}: {features['value']:.1%}"
        details = [f"{record.get('n')} samples"]
    elif metric == "rate_distortion" and isinstance(record.get("table"), list):  # evaluation/rate_distortion.py
        text = "Rate-distortion " + ", ".join(
            f"{row['reverse_steps']}: {row['rate_bpd']:.3f} bpd / {row['distortion_rmse']:.1f}"
            for row in record["table"][::3]) + " (reverse steps: rate / RMSE)"
        details = [f"{record.get('n')} images", f"t: {record.get('timesteps', 'all')}"]
        if record.get("null_label"):
            details.append("null label")
    elif metric in SAMPLE_METRIC_NAMES and isinstance(value, (int, float)):  # FID, KID, IS of the model's samples
        std = record.get("std")
        text = f"{SAMPLE_METRIC_NAMES[metric]} {value:.4g}" + (f" ± {std:.2g}" if isinstance(std, (int, float)) else "")
        details = [f"{record.get('n')} samples"]
        if record.get("sampler"):
            details.append(f"{str(record['sampler']).upper()} {record.get('steps')} steps")
        if record.get("during_training"):
            details.append("EMA, during training")
    else:
        text = f"{metric} {value:.4g}" if isinstance(value, (int, float)) else f"{metric} {value}"
        details = [f"{record.get('n')} images"]
    if record.get("model_step") is not None:
        details.append(f"step {record['model_step']}")
    details += [str(record.get("data", "")), str(record.get("date", ""))[:10]]
    return f"{text}; {', '.join(d for d in details if d)}"


@dataclass
class LoadedModel:
    """A model ready to sample: its description, the EMA U-Net in eval mode, and its diffusion."""

    info: ModelInfo
    unet: UNet
    diffusion: GaussianDiffusion

    @property
    def image_shape(self) -> tuple[int, int, int]:
        config = self.info.unet
        return (config.image_channels, config.image_size, config.image_size)


def load_model(path: Path | str, device: str | torch.device = "cpu") -> LoadedModel:
    """Load a model folder's EMA weights for sampling, after checking them against ``model.json``.

    The network is built on the ``meta`` device and compared with the weights file's header first, so
    nothing is allocated unless the file really holds the weights of the network ``model.json`` describes.
    """
    info = read_model_info(path)
    unet = model_check.check_weights_fit(info.unet, info.weights, CONFIG_FILE)
    load_weights_into(unet, read_safetensors(info.path / EMA_FILE), info.path / EMA_FILE)
    unet.to(device).eval().requires_grad_(False)
    schedule = NoiseSchedule.from_config(info.schedule).to(device)
    return LoadedModel(info, unet, GaussianDiffusion(schedule))


def inconsistent_settings(info: ModelInfo) -> ModelError:
    """The sentence for a model.json whose training settings and architecture disagree."""
    return ModelError(f"{info.path / CONFIG_FILE} is inconsistent: its training settings describe another "
                      "network or schedule than its unet and schedule entries.")


def check_resumable(folder: Path, unet: UNetConfig, schedule: ScheduleConfig) -> None:
    """Check a model folder before resuming gives memory to its run, raising ModelError in one sentence.

    The run's network and schedule (from the training settings in ``model.json``) must be the ones
    ``model.json`` describes, which ``read_model_info`` bounds, and the training state's header must
    hold that network's raw and EMA weights.
    """
    info = read_model_info(folder)
    if unet != info.unet or schedule != info.schedule:
        raise inconsistent_settings(info)
    header = model_check.read_safetensors_header(info.path / STATE_FILE)
    for prefix in ("model.", "ema."):
        model_check.check_weights_fit(unet, header, CONFIG_FILE, prefix)


def load_loss_history(path: Path | str) -> np.ndarray:
    """The per-step loss of a model (float32, step 1 first); empty if none was saved."""
    loss_path = Path(path) / LOSS_FILE
    if not loss_path.is_file():
        return np.zeros(0, dtype=np.float32)
    try:
        check_npy_length(loss_path)
        losses = np.load(loss_path, allow_pickle=False)
    except ModelError:
        raise
    except (OSError, ValueError, EOFError) as error:
        reason = str(error).splitlines()[0][:80] if str(error) else type(error).__name__
        raise ModelError(f"{loss_path} is damaged ({reason}).") from None
    if not isinstance(losses, np.ndarray):  # a zip file (an .npz archive, a torch.save file) opens as an NpzFile
        losses.close()
        raise ModelError(f"{loss_path} is not a loss history.")
    if losses.ndim != 1 or losses.dtype.kind not in "fiu":
        raise ModelError(f"{loss_path} is not a loss history.")
    return losses.astype(np.float32)


def check_npy_length(path: Path) -> None:
    """Raise ModelError unless a .npy file's header describes exactly the data that follows it.

    ``np.load`` allocates what the header claims before reading; a forged shape would cost that much.
    """
    with open(path, "rb") as stream:
        version = np.lib.format.read_magic(stream)
        if version == (1, 0):
            shape, _, dtype = np.lib.format.read_array_header_1_0(stream)
        else:
            shape, _, dtype = np.lib.format.read_array_header_2_0(stream)
        data_bytes = Path(path).stat().st_size - stream.tell()
    if dtype.hasobject or math.prod(shape) * dtype.itemsize != data_bytes:
        raise ModelError(f"{path} is damaged (its header describes {shape} {dtype}, "
                         f"but the file holds {data_bytes:,} bytes of data).")


@dataclass
class ModelEntry:
    """One row of the model library: a usable model, or a folder that failed to load and why."""

    path: Path
    info: ModelInfo | None
    error: str | None = None
    preview_problem: str | None = None  # why preview.png cannot be shown, when it is there


def default_user_models_dir() -> Path:
    """Where new models are saved: $DDPM_STUDIO_MODELS, else the platform's user data folder."""
    override = os.environ.get("DDPM_STUDIO_MODELS")
    if override:
        return Path(override).expanduser()
    if os.name == "nt":
        base = Path(os.environ.get("LOCALAPPDATA", Path.home() / "AppData" / "Local"))
    elif os.uname().sysname == "Darwin":
        base = Path.home() / "Library" / "Application Support"
    else:
        base = Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share")
    return base / "ddpm-studio" / "models"


def bundled_models_dir() -> Path:
    """The repository's ``models/`` folder, where the demo model ships."""
    return BUNDLED_MODELS_DIR


def model_search_dirs() -> list[Path]:
    return [bundled_models_dir(), default_user_models_dir()]


def read_entry(path: Path) -> ModelEntry:
    """A library row for one folder: its description and the reason it is unusable, checked without loading it."""
    try:
        info = read_model_info(path)
    except ModelError as error:
        return ModelEntry(Path(path), None, str(error))
    preview = info.path / PREVIEW_FILE
    problem = model_check.preview_problem(preview) if preview.exists() else None
    return ModelEntry(info.path, info, preview_problem=problem)


def list_models(folders: list[Path] | None = None) -> list[ModelEntry]:
    """Every model folder directly inside ``folders`` (default: bundled and user folders), sorted by name."""
    entries = []
    seen = set()
    for folder in folders if folders is not None else model_search_dirs():
        if not Path(folder).is_dir():
            continue
        for candidate in sorted(Path(folder).iterdir()):
            if not (candidate / CONFIG_FILE).is_file() or candidate.resolve() in seen:
                continue
            seen.add(candidate.resolve())
            entries.append(read_entry(candidate))
    return entries


def json_safe(value: Any) -> Any:
    """Convert dataclass-ish values (Paths, tuples) into JSON types."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value
