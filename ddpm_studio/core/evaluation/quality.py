"""Evaluating a model's samples against a dataset (FID, KID, IS), as an iterator of events.

``run_evaluation(request)`` yields ``EvaluationProgress`` events and ends with an
``EvaluationResult`` whose records are already appended to the model's ``model.json``.
Real images are decoded exactly as training decodes them (``scan_images`` at the model's
resolution and channels); samples are rounded to uint8 exactly as saved PNGs are
(``to_uint8``). The dataset's feature statistics are cached per dataset fingerprint, so a
second evaluation skips the real-image pass. Closing the iterator stops between two
steps and records nothing.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Generator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ddpm_studio.core.atomic import atomic_write
from ddpm_studio.core.data.folders import (
    DatasetError,
    ScanResult,
    describe_sources,
    explain_no_usable_images,
    find_image_files,
    scan_images,
)
from ddpm_studio.core.diffusion.dpm_solver import DEFAULT_SPACING
from ddpm_studio.core.diffusion.dpm_solver import DEFAULT_STEPS as DPM_SOLVER_STEPS
from ddpm_studio.core.diffusion.process import GaussianDiffusion, SampleStep
from ddpm_studio.core.diffusion.samplers import sample
from ddpm_studio.core.errors import SettingError
from ddpm_studio.core.evaluation.inception import import_torch_fidelity
from ddpm_studio.core.evaluation.metrics import (
    INCEPTION,
    METRICS,
    FeatureStatistics,
    create_feature_extractor,
    extract_features,
    frechet_distance,
    inception_score,
    kernel_inception_distance,
)
from ddpm_studio.core.model import store as model_store
from ddpm_studio.core.model.store import LoadedModel
from ddpm_studio.core.sampling.guidance import class_mix
from ddpm_studio.core.sampling.imaging import to_uint8
from ddpm_studio.core.sampling.job import SamplingRequest, SamplingResult, run_sampling
from ddpm_studio.core.system.devices import choose_device
from ddpm_studio.core.timestamps import now_iso

FID_MINIMUM = 2048  # below the features' 2048 dimensions the sample covariance is singular and FID biased upward
KID_REFERENCE_MAX = 10_000  # dataset features kept for KID's subsets (all of them enter FID's statistics)
CACHE_VERSION = 1
LIBRARY_REFERENCES = ("cifar10-train",)


@dataclass
class EvaluationRequest:
    """What to measure. ``data_paths`` empty means the model's own recorded dataset."""

    model_path: Path
    data_paths: list[Path] = field(default_factory=list)
    against: str | None = None  # a library reference instead of a folder: "cifar10-train"
    metrics: tuple[str, ...] = METRICS
    num_samples: int = 10_000
    sampler: str = "ddim"
    steps: int | None = None  # DDIM: 50 if None; DPM-Solver++: 20; DDPM: every timestep, else respaced to this many
    spacing: str = DEFAULT_SPACING  # DPM-Solver++'s timesteps
    eta: float = 0.0
    variance: str | None = None  # DDPM: None is the model's learned variance if it has one, else fixed_large
    clip: bool = True
    seed: int = 0
    batch_size: int = 100
    device: str = "auto"
    feature_extractor: str = INCEPTION
    inception_weights: Path | None = None
    cache_dir: Path | None = None
    record: bool = True  # append the results to model.json
    guidance: float = 0.0  # class-conditional models: classifier-free guidance weight; samples follow the class mix

    def validate(self) -> None:
        unknown = [metric for metric in self.metrics if metric not in METRICS]
        if not self.metrics or unknown:
            raise SettingError(f"Choose metrics among {', '.join(METRICS)}"
                               + (f", not {', '.join(unknown)}." if unknown else "."))
        if self.num_samples < 2:
            raise SettingError(f"Evaluating needs at least 2 samples, not {self.num_samples}.")
        if self.batch_size < 1:
            raise SettingError(f"The batch size must be at least 1, not {self.batch_size}.")
        if self.against is not None and self.against not in LIBRARY_REFERENCES:
            raise SettingError(f"--against knows {', '.join(LIBRARY_REFERENCES)}, not '{self.against}'.")
        if self.against is not None and self.data_paths:
            raise SettingError("Give either a dataset folder or --against, not both.")
        self.sampling_request(1).validate()

    def warnings(self) -> list[str]:
        notes = []
        if "fid" in self.metrics and self.num_samples < FID_MINIMUM:
            notes.append(f"FID from {self.num_samples} samples is biased upward and not comparable with published "
                         f"values (use at least {FID_MINIMUM}, 50,000 for papers); KID suits small sets.")
        return notes

    def needs_reference(self) -> bool:
        return any(metric in self.metrics for metric in ("fid", "kid"))

    def default_steps(self) -> int:
        return DPM_SOLVER_STEPS if self.sampler == "dpm-solver++" else 50

    def sampling_request(self, count: int, batch_index: int = 0, classes: list[int] | None = None) -> SamplingRequest:
        return SamplingRequest(classes=classes, guidance=self.guidance,
            model_path=self.model_path, num_images=count, seed=self.seed + batch_index, sampler=self.sampler,
            steps=self.default_steps() if self.steps is None else self.steps, eta=self.eta, spacing=self.spacing,
            variance=self.variance or "fixed_large",
            ddpm_steps=self.steps if self.sampler == "ddpm" else None, clip=self.clip, device=self.device,
            keep_trajectory_of=[],
        )


@dataclass
class EvaluationProgress:
    """``done`` of ``total`` units (files or images) of one phase; ``detail`` says more (a sampling step)."""

    phase: str  # "reading dataset", "dataset features", "sampling", "sample features"
    done: int
    total: int
    detail: str = ""


@dataclass
class EvaluationResult:
    records: list[dict]
    model_path: Path
    reference: str | None
    reference_from_cache: bool


@dataclass
class ReferenceFeatures:
    """What a dataset contributes: FID statistics and (up to ``KID_REFERENCE_MAX``) features for KID."""

    statistics: FeatureStatistics
    kid_features: torch.Tensor
    description: str
    from_cache: bool = False


# --- the dataset side, cached ---------------------------------------------------------------------


def default_cache_dir() -> Path:
    """$DDPM_STUDIO_CACHE, else the platform's user cache folder, + ``reference-features``."""
    override = os.environ.get("DDPM_STUDIO_CACHE")
    if override:
        base = Path(override).expanduser()
    elif os.name == "nt":
        base = Path(os.environ.get("LOCALAPPDATA", Path.home() / "AppData" / "Local")) / "ddpm-studio" / "cache"
    else:
        base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "ddpm-studio"
    return base / "reference-features"


def _digest(value) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode("utf-8")).hexdigest()[:24]


def reference_cache_path(sources: list[Path] | str, image_size: int, channels: int, extractor_name: str,
                         cache_dir: Path | None = None) -> Path:
    """The cache file for a dataset: its name is keyed by the file list with sizes and modification times,
    the resolution, the channels and the feature extractor, so any change to a file makes a new key."""
    settings = {"version": CACHE_VERSION, "size": image_size, "channels": channels, "extractor": extractor_name}
    if isinstance(sources, str):  # a library dataset: fixed content
        where, content = {"library": sources}, {}
    else:
        where = {"sources": sorted(str(Path(p).resolve()) for p in sources)}
        files, _ = find_image_files(sources)
        stats = [(str(path), path.stat()) for path in files]
        content = {"files": [(name, stat.st_size, stat.st_mtime_ns) for name, stat in stats]}
    return (cache_dir or default_cache_dir()) / f"{_digest({**where, **settings})}-{_digest(content)}.npz"


def load_cached_reference(path: Path) -> ReferenceFeatures | None:
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as stored:
            statistics = FeatureStatistics(stored["mu"], stored["sigma"], int(stored["count"]))
            return ReferenceFeatures(statistics, torch.from_numpy(stored["kid_features"]), str(stored["description"]),
                                     from_cache=True)
    except (OSError, KeyError, ValueError):  # a damaged cache file is simply computed again
        return None


def save_cached_reference(path: Path, reference: ReferenceFeatures) -> None:
    """Write the cache file, and remove older ones of the same dataset and settings (their files changed)."""
    def write(temporary: Path) -> None:
        with open(temporary, "wb") as stream:
            np.savez(stream, mu=reference.statistics.mu, sigma=reference.statistics.sigma,
                     count=np.int64(reference.statistics.count), kid_features=reference.kid_features.numpy(),
                     description=np.str_(reference.description))

    atomic_write(path, write, durable=False)
    prefix = path.name.split("-")[0] + "-"
    for older in path.parent.glob(prefix + "*.npz"):
        if older != path:
            older.unlink(missing_ok=True)


def features_of_images(extractor: torch.nn.Module, images: torch.Tensor, batch_size: int, device: torch.device,
                       phase: str) -> Iterator[EvaluationProgress | tuple[torch.Tensor, torch.Tensor]]:
    """Features of a uint8 image tensor in batches: progress after each, then (pool, logits) of all."""
    pools, logits = [], []
    batches = (images[start:start + batch_size] for start in range(0, len(images), batch_size))
    for pool, logit in extract_features(extractor, batches, device):
        pools.append(pool)
        logits.append(logit)
        yield EvaluationProgress(phase, sum(len(p) for p in pools), len(images))
    yield torch.cat(pools), torch.cat(logits)


def reference_from_features(pool: torch.Tensor, description: str) -> ReferenceFeatures:
    kid_features = pool
    if len(pool) > KID_REFERENCE_MAX:  # a fixed random subset: the same every time for the same dataset
        keep = np.sort(np.random.RandomState(0).choice(len(pool), KID_REFERENCE_MAX, replace=False))
        kid_features = pool[torch.from_numpy(keep)]
    return ReferenceFeatures(FeatureStatistics.from_features(pool), kid_features.contiguous(), description)


def reference_of_images(extractor: torch.nn.Module, images: torch.Tensor, batch_size: int, device: torch.device,
                        description: str) -> Generator[EvaluationProgress, None, ReferenceFeatures]:
    """Pass feature progress on and return the reference: ``reference = yield from reference_of_images(...)``."""
    pool = None
    for event in features_of_images(extractor, images, batch_size, device, "dataset features"):
        if isinstance(event, EvaluationProgress):
            yield event
        else:
            pool = event[0]
    return reference_from_features(pool, description)


def dataset_reference(
    paths: list[Path], image_size: int, channels: int, extractor_name: str, extractor: torch.nn.Module,
    device: torch.device, batch_size: int = 100, cache_dir: Path | None = None, images: torch.Tensor | None = None,
) -> Iterator[EvaluationProgress | ReferenceFeatures]:
    """The reference features of the image folders ``paths``: from the cache, else decoded as training decodes
    them (or ``images``, those folders already decoded) and run through the extractor; ends with them.
    Without ``paths`` (images of unknown origin) nothing is cached."""
    cache_path = reference_cache_path(paths, image_size, channels, extractor_name, cache_dir) if paths else None
    cached = load_cached_reference(cache_path) if cache_path else None
    if cached is not None:
        yield cached
        return
    if images is None:
        result = None
        for event in scan_images(paths, image_size, channels):
            if isinstance(event, ScanResult):
                result = event
            else:
                yield EvaluationProgress("reading dataset", event.done, event.total)
        if result is None or not result.files:
            raise DatasetError(explain_no_usable_images(result))
        images = result.images
    if len(images) < 2:
        raise DatasetError(f"{describe_sources(paths)} has only one usable image; FID and KID need more.")
    where = describe_sources(paths) if paths else "the training images"
    description = f"{where} ({len(images)} images at {image_size}x{image_size}, {'RGB' if channels == 3 else 'grey'})"
    reference = yield from reference_of_images(extractor, images, batch_size, device, description)
    if cache_path:
        save_cached_reference(cache_path, reference)
    yield reference


def library_reference(
    name: str, image_size: int, channels: int, extractor_name: str, extractor: torch.nn.Module, device: torch.device,
    batch_size: int = 100, cache_dir: Path | None = None,
) -> Iterator[EvaluationProgress | ReferenceFeatures]:
    """A torch-fidelity registered input (``cifar10-train``), read from its cache under $TORCH_HOME, never
    downloaded."""
    if (image_size, channels) != (32, 3):
        raise SettingError(f"{name} holds 32x32 colour images; this model makes {image_size}x{image_size}x{channels}.")
    cache_path = reference_cache_path(name, image_size, channels, extractor_name, cache_dir)
    cached = load_cached_reference(cache_path)
    if cached is not None:
        yield cached
        return
    import_torch_fidelity()
    from torch_fidelity.registry import DATASETS_REGISTRY

    root = Path(torch.hub._get_torch_home()) / "fidelity_datasets"
    try:
        dataset = DATASETS_REGISTRY[name](str(root), False)
    except RuntimeError:
        raise DatasetError(f"{name} is not in torch-fidelity's cache at {root}; with a network, run "
                         f"`fidelity --input1 {name} --isc` once (it downloads it), or copy CIFAR-10's "
                         f"cifar-10-batches-py folder there.") from None
    images = torch.stack([dataset[index] for index in range(len(dataset))])
    reference = yield from reference_of_images(extractor, images, batch_size, device,
                                               f"{name} ({len(images)} images, torch-fidelity)")
    save_cached_reference(cache_path, reference)
    yield reference


# --- the model side -------------------------------------------------------------------------------


def sample_features(
    request: EvaluationRequest, model: LoadedModel, extractor: torch.nn.Module, device: torch.device
) -> Iterator[EvaluationProgress | tuple[torch.Tensor, torch.Tensor]]:
    """Sample ``num_samples`` images batch by batch (batch k at seed + k), rounding them to uint8 as saved
    PNGs are, and keep only their features; progress after each reverse step and each batch."""
    pools, logits = [], []
    done = 0
    labels = class_mix(model.info, request.num_samples)
    for batch_index, start in enumerate(range(0, request.num_samples, request.batch_size)):
        count = min(request.batch_size, request.num_samples - start)
        classes = None if labels is None else labels[start : start + count]
        result = None
        for event in run_sampling(request.sampling_request(count, batch_index, classes), model):
            if isinstance(event, SampleStep):
                yield EvaluationProgress("sampling", done, request.num_samples,
                                         f"step {event.step + 1}/{event.num_steps}")
            elif isinstance(event, SamplingResult):
                result = event
        (pool, logit), = extract_features(extractor, [result.images], device)
        pools.append(pool)
        logits.append(logit)
        done += count
        yield EvaluationProgress("sampling", done, request.num_samples)
    yield torch.cat(pools), torch.cat(logits)


def sampler_fields(request: EvaluationRequest, model: LoadedModel) -> dict:
    if model.info.unet.num_classes:
        return {**unguided_sampler_fields(request, model), "classes": "dataset mix", "guidance": request.guidance}
    return unguided_sampler_fields(request, model)


def unguided_sampler_fields(request: EvaluationRequest, model: LoadedModel) -> dict:
    sampling = request.sampling_request(1)
    if request.sampler == "ddim":
        return {"sampler": "ddim", "steps": sampling.steps, "eta": sampling.eta}
    if request.sampler == "dpm-solver++":
        return {"sampler": "dpm-solver++", "steps": min(sampling.steps, model.diffusion.num_timesteps),
                "spacing": sampling.spacing}
    steps = min(sampling.ddpm_steps or model.diffusion.num_timesteps, model.diffusion.num_timesteps)
    return {"sampler": "ddpm", "steps": steps, "variance": sampling.variance}


def compute_records(metrics: tuple[str, ...], pool: torch.Tensor, logits: torch.Tensor,
                    reference: ReferenceFeatures | None, common: dict) -> list[dict]:
    """One record per metric, with ``common`` (n, sampler, steps, data, date, ...) in each."""
    records = []
    if "fid" in metrics:
        value = frechet_distance(FeatureStatistics.from_features(pool), reference.statistics)
        records.append({"metric": "fid", "value": value, **common})
    if "kid" in metrics:
        kid = kernel_inception_distance(reference.kid_features, pool)
        records.append({"metric": "kid", "value": kid.mean, "std": kid.std, "subsets": kid.subsets,
                        "subset_size": kid.subset_size, **common})
    if "is" in metrics:
        mean, std = inception_score(logits)
        records.append({"metric": "is", "value": mean, "std": std, **common, "data": ""})  # needs no dataset
    return records


def run_evaluation(
    request: EvaluationRequest, model: LoadedModel | None = None
) -> Iterator[EvaluationProgress | EvaluationResult]:
    """Measure the request's metrics; yields progress, then the result (already appended to ``model.json``)."""
    request.validate()
    device = choose_device(request.device)
    info = model_store.read_model_info(request.model_path)
    model = model or model_store.load_model(request.model_path, device)
    if request.variance is None and info.unet.learned_variance:
        request = dataclasses.replace(request, variance="learned")
    image_size, channels = info.unet.image_size, info.unet.image_channels
    extractor = create_feature_extractor(request.feature_extractor, device, request.inception_weights)

    reference = None
    if request.needs_reference():
        if request.against:
            references = library_reference(request.against, image_size, channels, request.feature_extractor, extractor,
                                           device, request.batch_size, request.cache_dir)
        else:
            paths = list(request.data_paths) or [Path(p) for p in info.dataset.get("paths", [])]
            if not paths:
                raise DatasetError(f"{info.path} does not record its dataset; give the image folder to compare with.")
            missing = [p for p in paths if not Path(p).exists()]
            if missing:
                raise DatasetError(f"The dataset folder {missing[0]} does not exist.")
            references = dataset_reference(paths, image_size, channels, request.feature_extractor, extractor, device,
                                           request.batch_size, request.cache_dir)
        for event in references:
            if isinstance(event, ReferenceFeatures):
                reference = event
            else:
                yield event

    pool = logits = None
    for event in sample_features(request, model, extractor, device):
        if isinstance(event, EvaluationProgress):
            yield event
        else:
            pool, logits = event
    common = {"n": request.num_samples, **sampler_fields(request, model),
              "data": reference.description if reference else "", "date": now_iso(),
              "model_step": info.step, "feature_extractor": request.feature_extractor, "seed": request.seed}
    records = compute_records(request.metrics, pool, logits, reference, common)
    if request.record:
        for record in records:
            model_store.append_evaluation(info.path, record)
    yield EvaluationResult(records, info.path, reference.description if reference else None,
                           bool(reference and reference.from_cache))


def evaluate(request: EvaluationRequest) -> EvaluationResult:
    """Run ``run_evaluation`` to the end."""
    result = None
    for event in run_evaluation(request):
        result = event
    return result


# --- during training ------------------------------------------------------------------------------


def kid_of_network(
    network: torch.nn.Module, diffusion: GaussianDiffusion, shape: tuple[int, int, int], reference: ReferenceFeatures,
    extractor: torch.nn.Module, device: torch.device, num_samples: int, batch_size: int, steps: int = 50,
    seed: int = 0, use_bf16: bool = False, sampler: str = "ddim",
) -> tuple[float, float]:
    """KID of ``num_samples`` samples of ``network`` (the EMA weights in training) against ``reference``, drawn with
    ``sampler`` ("ddim" or "dpm-solver++") in ``steps`` steps."""
    pools = []
    generator = torch.Generator(device=device).manual_seed(seed)
    for start in range(0, num_samples, batch_size):
        count = min(batch_size, num_samples - start)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
            images = sample(diffusion, network, (count, *shape), sampler, num_steps=min(steps, diffusion.num_timesteps),
                                      generator=generator, device=device)
        (pool, _), = extract_features(extractor, [to_uint8(images)], device)
        pools.append(pool)
    kid = kernel_inception_distance(reference.kid_features, torch.cat(pools))
    return kid.mean, kid.std
