"""Planning a training run: the decisions that the CLI and the window share, made in one place.

A plan says which train function runs (on the images already decoded, when their resolution
and channels are the run's, else on a fresh scan of their folders), what the model folder
records about its dataset, what the model is called, and which settings a resumed run may
change. ``plan.events()`` is then the run itself, an iterator of training events.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from ddpm_studio.core.data.cache import CachedImages, CachedScanResult
from ddpm_studio.core.data.folders import ScanResult
from ddpm_studio.core.errors import SettingError, UserError
from ddpm_studio.core.model import store as model_store
from ddpm_studio.core.training.config import RESUMABLE_IN_WORDS, RESUMABLE_SETTINGS, TrainingConfig
from ddpm_studio.core.training.loop import TrainingOptions, train, train_from_folder

# What a resumed run may change (RESUMABLE_SETTINGS, and RESUMABLE_IN_WORDS, the sentence that names them) is
# declared with each setting in config.py: how long it goes on, how it reports and how it saves memory.
_NAME_PATTERN = re.compile(r"[^A-Za-z0-9._-]+")


class TrainingImagesMissing(UserError):
    """A resumed run cannot find the images its model was trained on, and was given none."""


def setting_label(name: str) -> str:
    """A TrainingConfig field as words: "batch_size" -> "batch size"."""
    return name.replace("_", " ")




# --- names ------------------------------------------------------------------------------------


def model_name_for(sources: Sequence[Path]) -> str:
    """A model name from the dataset: the folder's name (or the folder of the files given), made safe."""
    if not sources:
        return "model"
    source = Path(sources[0])
    name = source.name if source.is_dir() else source.parent.name
    return _NAME_PATTERN.sub("-", name).strip("-.") or "model"


def unique_name(base: str, folder: Path) -> str:
    """``base``, or ``base-2``, ``base-3``… whichever is not yet a folder in ``folder``."""
    candidate, number = base, 2
    while (Path(folder) / candidate).exists():
        candidate, number = f"{base}-{number}", number + 1
    return candidate


def check_model_name(name: str) -> None:
    """Raise SettingError unless ``name`` can be a model folder's name."""
    if not name:
        raise SettingError("Give the model a name.")
    if _NAME_PATTERN.search(name) or name.startswith("."):
        raise SettingError("Use only letters, digits, '.', '_' and '-' in the model name.")


def check_new_model_folder(out_dir: Path) -> None:
    if (Path(out_dir) / model_store.CONFIG_FILE).exists():
        raise SettingError(f"{out_dir} already holds a model; resume it, or choose another name.")


# --- the plan ---------------------------------------------------------------------------------


@dataclass
class RunPlan:
    """One training run, decided: what to train, on what, into which folder."""

    config: TrainingConfig
    out_dir: Path
    resume: bool = False
    start_step: int = 0
    images: torch.Tensor | CachedImages | None = None  # decoded at the run's resolution: trained on as they are
    dataset_summary: dict | None = None
    data_paths: list[Path] = field(default_factory=list)  # otherwise: scanned first, at the run's resolution
    use_cache: bool = True  # a scan goes through the decoded-dataset cache
    labels: torch.Tensor | None = None  # the decoded images' class labels, when their folder has classes

    def events(self, options: TrainingOptions | None = None, **chosen) -> Iterator:
        """The run: ``ScanProgress`` and a ``ScanResult`` first if the folders are scanned, then training events
        (with ``config.eval_every``, the features of the dataset for KID before the first step). ``options``, or
        its fields as keywords (``device=``, ``stop_requested=``...), say how it is driven; the plan says whether
        it resumes."""
        options = replace(options or TrainingOptions(), **chosen, resume=self.resume)
        if self.images is not None:
            return train(self.config, self.images, self.out_dir, self.dataset_summary, options, labels=self.labels)
        return train_from_folder(self.data_paths, self.config, self.out_dir, options, use_cache=self.use_cache)

    def describe(self) -> str:
        if self.resume:
            return f"Resuming {self.out_dir.name} from step {self.start_step:,}…"
        return f"Training {self.out_dir.name}…"


def _images_of(scanned: ScanResult) -> torch.Tensor | CachedImages:
    """What to train on: images mapped from the dataset cache are streamed from it."""
    if isinstance(scanned, CachedScanResult) and scanned.mapping is not None:
        return scanned.mapping
    return scanned.images


def _fits(scanned: ScanResult | None, image_size: int, channels: int) -> bool:
    return scanned is not None and len(scanned.files) > 0 and (scanned.image_size, scanned.channels) == (image_size,
                                                                                                           channels)


def plan_new_run(config: TrainingConfig, out_dir: Path, data_paths: Sequence[Path] = (),
                 scanned: ScanResult | None = None) -> RunPlan:
    """A new model in ``out_dir``, trained on ``scanned`` if it fits the config, else on a scan of its sources
    (or of ``data_paths``)."""
    config.validate()
    out_dir = Path(out_dir)
    check_new_model_folder(out_dir)
    if _fits(scanned, config.image_size, config.image_channels):
        return RunPlan(config, out_dir, images=_images_of(scanned), dataset_summary=scanned.summary(),
                       labels=scanned.labels)
    paths = [Path(path) for path in (data_paths or (scanned.sources if scanned is not None else []))]
    if not paths:
        raise SettingError("Give the folder of images to train on.")
    return RunPlan(config, out_dir, data_paths=paths)


def resumed_config(info: model_store.ModelInfo, changes: dict) -> TrainingConfig:
    """The model's own training settings with ``changes`` applied; SettingError for a change the rule forbids."""
    config = TrainingConfig.from_dict(info.training)
    if changes.get("accumulate") is not None or changes.get("micro_batch") is not None:
        config.accumulate, config.micro_batch = 1, None  # a new split of the batch replaces the old one
    for name, value in changes.items():
        if value is None:
            continue
        stored = getattr(config, name)
        same = math.isclose(value, stored, rel_tol=1e-9) if isinstance(stored, float) else value == stored
        if name not in RESUMABLE_SETTINGS and not same:
            raise SettingError(f"The {setting_label(name)} cannot change when resuming {info.name} (it is {stored}, "
                               f"not {value}); only {RESUMABLE_IN_WORDS} can.")
        setattr(config, name, type(stored)(value) if stored is not None and not isinstance(value, str) else value)
    config.validate()
    if config.steps <= info.step:
        raise SettingError(f"{info.name} has already trained {info.step:,} steps; ask for more than that to continue.")
    return config


def plan_resume(out_dir: Path, changes: dict, data_paths: Sequence[Path] = (),
                scanned: ScanResult | None = None) -> RunPlan:
    """Continue the model in ``out_dir`` with ``changes`` (see ``RESUMABLE_SETTINGS``).

    It trains on ``scanned`` if that fits the model, else on ``data_paths``, else on the
    folders the model records; ``TrainingImagesMissing`` when none of those is there.
    """
    out_dir = Path(out_dir)
    info = model_store.read_model_info(out_dir)
    if not info.can_resume:
        raise SettingError(f"{out_dir} has no training state to resume from (it holds sampling weights only).")
    config = resumed_config(info, changes)
    plan = RunPlan(config, out_dir, resume=True, start_step=info.step)
    if _fits(scanned, info.unet.image_size, info.unet.image_channels):
        plan.images, plan.labels = _images_of(scanned), scanned.labels
        plan.dataset_summary = scanned.summary()
        return plan
    plan.data_paths = [Path(path) for path in data_paths] or [Path(path) for path in info.dataset.get("paths", [])]
    missing = [path for path in plan.data_paths if not path.exists()]
    if not plan.data_paths or missing:
        where = f" ({missing[0]})" if missing else " (the model does not record where they were)"
        raise TrainingImagesMissing(f"The images {info.name} was trained on are not found{where}.")
    return plan
