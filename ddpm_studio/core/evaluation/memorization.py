"""Does the model copy its training images? Nearest-neighbour distances of samples against those of held-out images.

Held-out real images, never trained on, give the reference: how close a fresh image of the same
distribution comes to the training set by chance. A sample closer to a training image than the
reference's 5th percentile counts as a copy; a model that does not copy is flagged at about 5%.
Distances are by pixels always, and also by the FID network's pool features where its weights are
on this machine (they are never downloaded for this): pixels find copies, features find near-copies
that are shifted or recoloured.
"""

from __future__ import annotations

import dataclasses
import importlib.util
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ddpm_studio.core.data.cache import CachedImages, CachedScanResult, open_cached_dataset
from ddpm_studio.core.data.folders import DatasetError, ScanProgress, describe_sources, explain_no_usable_images
from ddpm_studio.core.evaluation.inception import (
    COMMAND_WEIGHTS_WORDS,
    MetricsUnavailable,
    cached_weights_path,
    find_weights,
    import_torch_fidelity,
    missing_weights_message,
)
from ddpm_studio.core.evaluation.metrics import INCEPTION, create_feature_extractor, extract_features
from ddpm_studio.core.evaluation.neighbours import (
    DEFAULT_MEMORY_BUDGET,
    DISTANCE_UNIT,
    NeighbourProgress,
    Neighbours,
    nearest_neighbours,
    search_neighbours,
)
from ddpm_studio.core.model.store import ModelInfo
from ddpm_studio.core.sampling.imaging import make_grid, save_png
from ddpm_studio.core.sampling.job import SamplingRequest, sample_images

PERCENTILES = (1, 5, 25, 50, 75, 95)
COPY_PERCENTILE = 5.0
DEFAULT_SAMPLES = 1_000  # enough for the copies share to within about ±1.5%, in minutes
PIXELS_ONLY = "Nearest neighbours in pixel space only"
FEATURE_SPACE_NAMES = {INCEPTION: "Inception pool features"}  # others (the tests' stand-in) go by their own name

SampleBatch = Callable[[int, int], torch.Tensor]  # (count, batch index) -> uint8 images (count, C, S, S)


@dataclass
class MemorizationProgress:
    """``done`` of ``total`` in ``phase`` ("reading ..." the datasets, "training features", "reference", "reference
    features", "samples", "searching"); ``partial``: the result so far, once samples have been compared."""

    phase: str
    done: int
    total: int
    partial: MemorizationResult | None = None


@dataclass
class NearestDistances:
    """In one space (pixels or features): each sample's distance to its nearest training image and that image's row,
    and the held-out reference's distances, in ``unit``."""

    sample_distances: np.ndarray
    sample_neighbours: np.ndarray
    reference_distances: np.ndarray
    unit: str
    copy_percentile: float = COPY_PERCENTILE

    @property
    def threshold(self) -> float:
        """The reference's ``copy_percentile``: a sample nearer than this is a copy."""
        return float(np.percentile(self.reference_distances, self.copy_percentile))

    @property
    def copies(self) -> int:
        return int((self.sample_distances < self.threshold).sum())

    @property
    def copy_share(self) -> float:
        return self.copies / max(1, len(self.sample_distances))

    def percentiles(self, distances: np.ndarray) -> dict[str, float]:
        return {f"p{p}": float(np.percentile(distances, p)) for p in PERCENTILES} if len(distances) else {}

    def report_lines(self, space: str) -> list[str]:
        def row(name: str, distances: np.ndarray) -> str:
            values = "  ".join(f"{k} {v:6.2f}" for k, v in self.percentiles(distances).items())
            return f"{name:<22} {values}"

        return [
            f"Nearest training image by {space}, {self.unit}:",
            row(f"samples ({len(self.sample_distances)})", self.sample_distances),
            row(f"held-out ({len(self.reference_distances)})", self.reference_distances),
            f"Copies by {space}: {self.copies} of {len(self.sample_distances)} samples ({self.copy_share:.1%}) are "
            f"nearer a training image than {self.threshold:.2f}, the held-out images' {self.copy_percentile:g}th "
            f"percentile; about {self.copy_percentile:g}% is what a model that does not copy gives.",
        ]

    def record(self) -> dict:
        return {"value": self.copy_share, "copies": self.copies, "threshold": self.threshold,
                "copy_percentile": self.copy_percentile, "unit": self.unit,
                "samples": self.percentiles(self.sample_distances),
                "reference": self.percentiles(self.reference_distances), "reference_n": len(self.reference_distances)}


@dataclass
class MemorizationResult:
    """Nearest-training-image distances of the samples and of the held-out reference: by pixels (RMS per pixel on
    [0, 255]) always, and by the feature extractor's pool features when it was there (``features``)."""

    pixels: NearestDistances  # the headline: the copies count, the grid and the record's value are of it
    samples: torch.Tensor  # uint8 (n, C, S, S): the samples compared so far
    num_requested: int
    features: NearestDistances | None = None
    feature_space: str = ""  # what made ``features``, e.g. "Inception pool features"
    extra: dict = field(default_factory=dict)

    @property
    def complete(self) -> bool:
        return len(self.pixels.sample_distances) == self.num_requested

    def report_lines(self) -> list[str]:
        """The report, four lines a space: both distributions, the copies count and how to read it."""
        lines = self.pixels.report_lines("pixels")
        if self.features is not None:
            lines += self.features.report_lines(self.feature_space)
        return lines

    def record(self) -> dict:
        """The model.json evaluation fields (without n, data and date, which the caller knows)."""
        record = {"metric": "memorization_copies", **self.pixels.record(), "complete": self.complete}
        if self.features is not None:
            record["features"] = {"extractor": self.feature_space, **self.features.record()}
        return record


# --- feature space ----------------------------------------------------------------------------------


@dataclass
class FeatureSpace:
    """The extractor whose pool features are searched, and the training images' features (N, D) float32."""

    extractor: torch.nn.Module
    name: str
    training_features: torch.Tensor | None = None
    batch_size: int = 100
    device: torch.device | str = "cpu"

    def features_of(self, images: torch.Tensor) -> torch.Tensor:
        """Pool features of uint8 images (N, C, S, S), in batches."""
        batches = (images[start:start + self.batch_size] for start in range(0, len(images), self.batch_size))
        return torch.cat([pool for pool, _ in extract_features(self.extractor, batches, torch.device(self.device))])

    def read_training(self, training: CachedImages | torch.Tensor) -> Iterator[MemorizationProgress]:
        """Features of every training image, batch by batch, read from the cache mapping (never decoded again)."""
        pools = []
        for start in range(0, len(training), self.batch_size):
            stop = min(start + self.batch_size, len(training))
            if isinstance(training, CachedImages):
                batch = torch.empty((stop - start, *training.tensor.shape[1:]), dtype=torch.uint8)
                training.gather(np.arange(start, stop), batch)
            else:
                batch = training[start:stop]
            pools.append(self.features_of(batch))
            yield MemorizationProgress("training features", stop, len(training))
        self.training_features = torch.cat(pools)


def pixels_only_note(why: MetricsUnavailable, words: tuple[str, str] = COMMAND_WEIGHTS_WORDS) -> str:
    """The one line that says only pixels are compared, and why: the FID sentence that says how to get the weights,
    naming the file's chooser in ``words`` (the command's option, or a window's field)."""
    reason = why.worded(*words)
    return f"{PIXELS_ONLY}: {reason[0].lower()}{reason[1:]}"


def feature_extractor_if_there(name: str, device: torch.device | str, weights: Path | str | None = None
                               ) -> tuple[torch.nn.Module | None, MetricsUnavailable | None]:
    """The extractor ``name`` (the FID Inception, or the tests' stand-in) and None, or None and why it is not here.

    The Inception weights are used where they are (``weights``, else torch's cache), never downloaded for this;
    a ``weights`` file that is not them raises its sentence, since the user chose it."""
    device = torch.device(device)
    if name == INCEPTION:
        try:
            if importlib.util.find_spec("torch_fidelity") is None:
                import_torch_fidelity()  # raises the sentence that says how to install the eval extra
            if weights is None and not cached_weights_path().is_file():
                raise MetricsUnavailable(missing_weights_message("nearest neighbours never download them"), "weights")
        except MetricsUnavailable as error:
            return None, error
        weights = find_weights(weights, download=False)
    return create_feature_extractor(name, device, weights), None


def feature_space_name(extractor_name: str) -> str:
    return FEATURE_SPACE_NAMES.get(extractor_name, f"{extractor_name} features")


def _search(queries: torch.Tensor, training, device, budget: int, phase: str, done_before: int, total: int):
    """One nearest-neighbour search, its progress counted in queries of the phase."""
    result: Neighbours | None = None
    for event in search_neighbours(queries, training, 1, device, budget):
        if isinstance(event, NeighbourProgress):
            done = done_before + int(len(queries) * event.done / event.total)
            yield MemorizationProgress(phase, done, total)
        else:
            result = event
    return result


def run_memorization(
    sample_batch: SampleBatch,
    num_samples: int,
    training: CachedImages | torch.Tensor,
    held_out: torch.Tensor,
    batch_size: int = 100,
    device: torch.device | str = "cpu",
    memory_budget_bytes: int = DEFAULT_MEMORY_BUDGET,
    features: FeatureSpace | None = None,
) -> Iterator[MemorizationProgress | MemorizationResult]:
    """The reference (held-out vs training) first, then samples in batches, by pixels and, with ``features`` (its
    training features read), by features too; each batch's progress carries the result so far, so a stopped run
    keeps what it compared. Ends with the ``MemorizationResult``."""
    if len(held_out) < 2:
        raise ValueError("the reference needs at least two held-out images")
    reference = yield from _search(held_out, training, device, memory_budget_bytes, "reference", 0, len(held_out))
    feature_reference = None
    if features is not None:
        feature_reference = yield from _search(features.features_of(held_out), features.training_features, device,
                                               memory_budget_bytes, "reference features", 0, len(held_out))
    by_pixels, by_features, samples = [], [], []
    result = None
    for batch_index, start in enumerate(range(0, num_samples, batch_size)):
        count = min(batch_size, num_samples - start)
        yield MemorizationProgress("samples", start, num_samples, result)
        images = sample_batch(count, batch_index).cpu()
        by_pixels.append((yield from _search(images, training, device, memory_budget_bytes, "samples", start,
                                             num_samples)))
        if features is not None:  # a shorter search than the pixels': its progress is theirs
            by_features.append(nearest_neighbours(features.features_of(images), features.training_features, 1, device,
                                                  memory_budget_bytes))
        samples.append(images)
        result = MemorizationResult(_nearest(by_pixels, reference), torch.cat(samples), num_samples,
                                    _nearest(by_features, feature_reference) if features else None,
                                    features.name if features else "")
        yield MemorizationProgress("samples", start + count, num_samples, result)
    yield result


def _nearest(found: list[Neighbours], reference: Neighbours) -> NearestDistances:
    """The nearest training image of each sample of the batches so far, beside the reference's."""
    return NearestDistances(np.concatenate([batch.distances[:, 0] for batch in found]),
                            np.concatenate([batch.indices[:, 0] for batch in found]),
                            reference.distances[:, 0], reference.unit)


def _rows(training: CachedImages | torch.Tensor, rows: np.ndarray) -> torch.Tensor:
    if isinstance(training, CachedImages):
        out = torch.empty((len(rows), *training.tensor.shape[1:]), dtype=torch.uint8)
        training.gather(rows, out)
        return out
    return training[torch.from_numpy(np.asarray(rows, dtype=np.int64))]


def closest_pairs_grid(result: MemorizationResult, training: CachedImages | torch.Tensor, pairs: int = 16,
                       pairs_a_row: int = 2) -> np.ndarray:
    """The closest sample | nearest training image pairs by pixels, nearest first, ``pairs_a_row`` pairs a row: the
    two images of a pair 1 px apart, the pairs a quarter of an image apart, so that each pair reads as one."""
    order = np.argsort(result.pixels.sample_distances, kind="stable")[:pairs]
    samples, nearest = result.samples[torch.from_numpy(order)], _rows(training, result.pixels.sample_neighbours[order])
    size = samples.shape[-1]
    joined = torch.full((len(order), samples.shape[1], size, 2 * size + 1), 255, dtype=torch.uint8)
    joined[..., :size], joined[..., size + 1:] = samples, nearest
    return make_grid(joined, columns=min(pairs_a_row, len(order)), padding=pair_gap(size))


def pair_gap(image_size: int) -> int:
    """White space between two pairs of the grid (and around it): a quarter of an image, at least 4 px."""
    return max(4, image_size // 4)


def save_closest_pairs(result: MemorizationResult, training, path: Path | str, pairs: int = 16) -> Path:
    """Write ``closest_pairs_grid`` as a PNG (atomically)."""
    return save_png(path, closest_pairs_grid(result, training, pairs),
                    {"layout": "pairs of sample | nearest training image by pixels, two pairs a row, nearest first",
                     "distance": result.pixels.unit})


# --- the datasets and the model, for the CLI and the window -----------------------------------------


def training_paths(info: ModelInfo) -> list[Path]:
    """The model's own dataset folders from model.json; one sentence when they are not recorded or are gone."""
    paths = [Path(p) for p in info.dataset.get("paths", [])]
    if not paths:
        raise DatasetError(f"{info.path} does not record the folders it was trained on, so its training images "
                           "cannot be searched; give them with --training-images FOLDER.")
    missing = [p for p in paths if not p.exists()]
    if missing:
        raise DatasetError(f"The training dataset folder {missing[0]} is gone, so the training images cannot be "
                           "searched; give them with --training-images FOLDER.")
    return paths


def open_images(paths: list[Path], image_size: int, channels: int, phase: str
                ) -> Iterator[MemorizationProgress | CachedScanResult]:
    """Open (or decode once into) the dataset cache at the model's resolution, as training does; ends with it."""
    result = None
    for event in open_cached_dataset(paths, image_size, channels):
        if isinstance(event, ScanProgress):
            yield MemorizationProgress(phase, event.done, event.total)
        elif isinstance(event, CachedScanResult):
            result = event
    if result is None or len(result.files) == 0:
        raise DatasetError(explain_no_usable_images(result))
    return result


def check_held_out(result: CachedScanResult, image_size: int, channels: int) -> None:
    """Held-out images must be of the model's kind: not all smaller than its resolution, not grey for a colour
    model (they would be upscaled or tinted into a reference that no sample is compared fairly with)."""
    where = describe_sources(result.sources)
    if len(result.files) < 2:
        raise DatasetError(f"{where} has only one usable image; the reference needs at least two held-out images.")
    if all(max(width, height) < image_size for width, height in result.source_sizes):
        width, height = max(result.source_sizes, key=lambda size: size[0] * size[1])
        raise DatasetError(f"The held-out images in {where} are at most {width}x{height}, below the model's "
                           f"{image_size}x{image_size}; hold out images of the training set's resolution.")
    if channels == 3:
        images = result.images
        grey = bool(torch.all(images[:, 0] == images[:, 1]) and torch.all(images[:, 1] == images[:, 2]))
        if grey:
            raise DatasetError(f"The held-out images in {where} are greyscale and the model makes colour images; "
                               "hold out images like the training set's.")


def model_sampler(model, template: SamplingRequest) -> SampleBatch:
    """Draw batches from ``model`` with the template's sampler; batch i uses seed ``template.seed + i``."""
    def sample_batch(count: int, batch_index: int) -> torch.Tensor:
        request = dataclasses.replace(template, num_images=count, seed=template.seed + batch_index,
                                      keep_trajectory_of=[])
        return sample_images(request, model).images

    return sample_batch


def memorization_of_model(
    model, held_out_paths: list[Path], template: SamplingRequest, num_samples: int, batch_size: int = 100,
    device: torch.device | str = "cpu", memory_budget_bytes: int = DEFAULT_MEMORY_BUDGET,
    sample_batch: SampleBatch | None = None, features: FeatureSpace | None = None,
    training_folders: list[Path] | None = None,
) -> Iterator[MemorizationProgress | CachedScanResult | MemorizationResult]:
    """The whole job for a model: the training set and the held-out images through the cache (and, with
    ``features``, the training images' features from it), then ``run_memorization``. Yields the training set's
    ``CachedScanResult`` (for the grid) before searching. ``training_folders`` stand in for the folders model.json
    records (a model trained on the procedural demo data, or whose folder has moved)."""
    info = model.info
    channels, image_size, _ = model.image_shape
    if training_folders:
        paths = [Path(p) for p in training_folders]
        for path in paths:
            if not path.is_dir():
                raise DatasetError(f"No folder of training images at {path}.")
    else:
        paths = training_paths(info)
    for path in held_out_paths:
        if not Path(path).is_dir():
            raise DatasetError(f"No folder of held-out images at {path}.")
    training = yield from open_images(paths, image_size, channels, "reading the training set")
    held_out = yield from open_images(list(held_out_paths), image_size, channels, "reading the held-out images")
    check_held_out(held_out, image_size, channels)
    if tuple(held_out.images.shape[1:]) != tuple(training.images.shape[1:]):
        raise DatasetError(f"The held-out images are {tuple(held_out.images.shape[1:])} and the training images "
                           f"{tuple(training.images.shape[1:])}; they must match the model.")
    yield training
    if features is not None:
        yield from features.read_training(training.mapping)
    yield from run_memorization(sample_batch or model_sampler(model, template), num_samples, training.mapping,
                                held_out.images.clone(), batch_size, device, memory_budget_bytes, features)


@dataclass
class ImageNeighbours:
    """One image's nearest training images in one ``space`` ("pixels" or a feature space's name): uint8
    (k, C, S, S), their file names and distances in ``unit``."""

    images: torch.Tensor
    files: list[Path]
    distances: np.ndarray
    unit: str = DISTANCE_UNIT
    space: str = "pixels"


@dataclass
class PixelsOnly:
    """Only pixels were compared: the feature extractor is not here, for the reason ``why``."""

    why: MetricsUnavailable


def neighbours_of_image(info: ModelInfo, image_uint8: torch.Tensor, k: int = 8, device: torch.device | str = "cpu",
                        extractor_name: str | None = INCEPTION, weights: Path | None = None, cache: dict | None = None
                        ) -> Iterator[MemorizationProgress | ImageNeighbours | PixelsOnly]:
    """The window's question of one sample: its ``k`` nearest images of the model's training set, from the cache,
    by pixels, then by the extractor's pool features where it is there (else ``PixelsOnly``). ``cache`` keeps the
    extractor and the training set's features between calls, so that the next click only searches."""
    channels, image_size = info.unet.image_channels, info.unet.image_size
    training = yield from open_images(training_paths(info), image_size, channels, "reading the training set")
    found = yield from _search_one(image_uint8[None].cpu(), training.mapping, k, device)
    yield _image_neighbours(found, training, "pixels")
    if extractor_name is None:
        return
    cache = {} if cache is None else cache
    extractor_key = (extractor_name, str(weights), str(device))
    if cache.get("extractor_key") != extractor_key:
        extractor, why = feature_extractor_if_there(extractor_name, device, weights)
        if extractor is None:  # not kept: the weights may be there by the next click
            yield PixelsOnly(why)
            return
        cache.clear()
        cache["extractor"], cache["extractor_key"] = extractor, extractor_key
    extractor = cache["extractor"]
    space = FeatureSpace(extractor, feature_space_name(extractor_name), device=device)
    # the cache entry's name changes with any file's size or date; the file list covers an entry-less decode
    features_key = (image_size, channels, str(training.entry), tuple(str(path) for path in training.files))
    if cache.get("features_key") != features_key:
        cache.pop("features", None)  # one dataset's features at a time: they can be large
        yield from space.read_training(training.mapping)
        cache["features"], cache["features_key"] = space.training_features, features_key
    found = yield from _search_one(space.features_of(image_uint8[None].cpu()), cache["features"], k, device)
    yield _image_neighbours(found, training, space.name)


def _search_one(query: torch.Tensor, training, k: int, device) -> Iterator[MemorizationProgress]:
    """One query's search, its progress counted in training rows; returns the ``Neighbours``."""
    found = None
    for event in search_neighbours(query, training, k, device):
        if isinstance(event, NeighbourProgress):
            yield MemorizationProgress("searching", event.done, event.total)
        else:
            found = event
    return found


def _image_neighbours(found: Neighbours, training: CachedScanResult, space: str) -> ImageNeighbours:
    rows = found.indices[0]
    return ImageNeighbours(_rows(training.mapping, rows), [Path(training.files[int(row)]) for row in rows],
                           found.distances[0], found.unit, space)
