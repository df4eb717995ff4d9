"""Exact k-nearest training rows of query rows, batched on the device: images by their pixels, or feature vectors.

Pixel space is the model's: uint8 images at its resolution, decoded once into the dataset cache and
mapped to [-1, 1] as training maps them (``to_model_range``). Feature space is any float vectors
(N, D), such as the FID network's pool features of those images. Either way the squared distance is
||q||^2 - 2 q.x + ||x||^2, one matrix product per chunk of the training rows, the chunk sized within
a memory budget; a running top-k is kept over the chunks. The product runs in float32, so the final
candidates' distances are recomputed exactly in float64 from the stored rows (uint8 pixels or float32
features), and a few spare candidates per query are carried so that float32 rounding cannot push the
true neighbour out. Pixel distances are the RMS difference per pixel value on the [0, 255] scale (0:
identical; about 128: unrelated uniform noise); feature distances are Euclidean.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from ddpm_studio.core.data.cache import CachedImages
from ddpm_studio.core.data.folders import to_model_range

DEFAULT_MEMORY_BUDGET = 256 * 2**20  # bytes of device memory for one chunk and its distances
SPARE_CANDIDATES = 8  # carried beyond k, re-ranked exactly in float64
DISTANCE_UNIT = "RMS per pixel on the [0, 255] scale"
FEATURE_DISTANCE_UNIT = "Euclidean distance between feature vectors"
MODEL_RANGE_TO_255 = 127.5  # one step of [-1, 1] is 127.5 steps of [0, 255]


@dataclass
class NeighbourProgress:
    """``done`` of ``total`` training images compared with every query."""

    done: int
    total: int


@dataclass
class Neighbours:
    """For each query, its ``k`` nearest training rows, nearest first.

    ``indices`` (Q, k) are rows of the training set; ``distances`` (Q, k) float64 are in ``unit`` (RMS
    per pixel on [0, 255] for images, Euclidean for features); ``searched`` is how many training rows
    were compared (less than all when stopped).
    """

    indices: np.ndarray
    distances: np.ndarray
    searched: int
    total: int
    unit: str = DISTANCE_UNIT


def chunk_rows_for(budget_bytes: int, num_queries: int, row_values: int, staging_bytes: int = 1) -> int:
    """Training rows per chunk: a float32 copy of the rows plus their staging (uint8 pixels, float32 features)
    and the (Q, rows) distances."""
    per_row = row_values * (4 + staging_bytes) + num_queries * 4 + 8
    return max(1, int(budget_bytes // per_row))


def _training_rows(training: CachedImages | torch.Tensor, start: int, stop: int) -> torch.Tensor:
    """Rows start..stop, read from the cache file for a mapping (nothing decoded), else sliced."""
    if isinstance(training, CachedImages):
        out = torch.empty((stop - start, *training.tensor.shape[1:]), dtype=torch.uint8)
        training.gather(np.arange(start, stop), out)
        return out
    return training[start:stop]


def _vectors(rows: torch.Tensor, device: torch.device) -> torch.Tensor:
    """The float32 vectors the product compares: images mapped to [-1, 1] as training maps them, features as is."""
    rows = rows.to(device)
    vectors = to_model_range(rows) if rows.dtype == torch.uint8 else rows.float()
    return vectors.reshape(len(rows), -1)


def _exact_distances(queries: torch.Tensor, training: CachedImages | torch.Tensor, candidates: np.ndarray
                     ) -> np.ndarray:
    """float64 distances between each query and its candidate training rows, from the stored values: RMS per pixel
    on [0, 255] for uint8 images, Euclidean for features."""
    flat_queries = queries.reshape(len(queries), -1).to(torch.float64)
    unique, inverse = np.unique(candidates, return_inverse=True)
    if isinstance(training, CachedImages):
        rows = torch.empty((len(unique), *training.tensor.shape[1:]), dtype=torch.uint8)
        training.gather(unique, rows)
    else:
        rows = training[torch.from_numpy(unique)]
    rows = rows.reshape(len(unique), -1).to(torch.float64)[torch.from_numpy(inverse.reshape(candidates.shape))]
    differences = (rows - flat_queries[:, None, :]) ** 2
    squared = differences.mean(dim=2) if queries.dtype == torch.uint8 else differences.sum(dim=2)
    return squared.sqrt().numpy()


def search_neighbours(
    queries: torch.Tensor,
    training: CachedImages | torch.Tensor,
    k: int = 1,
    device: torch.device | str = "cpu",
    memory_budget_bytes: int = DEFAULT_MEMORY_BUDGET,
    chunk_rows: int | None = None,
) -> Iterator[NeighbourProgress | Neighbours]:
    """Yield progress after each chunk of the training set, then the ``Neighbours`` (Stop: stop iterating).

    uint8 ``queries`` are images, searched against a cache mapping (rows read from its file, never decoded)
    or a uint8 tensor (N, C, S, S); float queries (Q, D) are feature vectors, searched against float features
    (N, D) of the training images."""
    state = _Search(queries, training, k, torch.device(device), memory_budget_bytes, chunk_rows)
    for start in range(0, state.total, state.chunk):
        state.add_chunk(start)
        yield NeighbourProgress(state.searched, state.total)
    yield state.result()


def nearest_neighbours(queries: torch.Tensor, training: CachedImages | torch.Tensor, k: int = 1,
                       device: torch.device | str = "cpu", memory_budget_bytes: int = DEFAULT_MEMORY_BUDGET,
                       chunk_rows: int | None = None) -> Neighbours:
    """Run ``search_neighbours`` to the end."""
    result = None
    for event in search_neighbours(queries, training, k, device, memory_budget_bytes, chunk_rows):
        result = event
    return result


class _Search:
    """The running top-k of one search over the chunks of the training set."""

    def __init__(self, queries: torch.Tensor, training: CachedImages | torch.Tensor, k: int,
                 device: torch.device, budget: int, chunk_rows: int | None):
        stored = training.tensor if isinstance(training, CachedImages) else training
        pixels = queries.dtype == torch.uint8
        if pixels != (stored.dtype == torch.uint8) or not (pixels or queries.is_floating_point()):
            raise TypeError(f"{queries.dtype} queries against {stored.dtype} training rows: compare uint8 "
                            "images with images, float features with features")
        shape = tuple(stored.shape[1:])
        if tuple(queries.shape[1:]) != shape:
            raise ValueError(f"queries of shape {tuple(queries.shape[1:])} against training rows of {shape}")
        self.total = len(training)
        if self.total == 0:
            raise ValueError("an empty training set has no neighbours")
        if k < 1:
            raise ValueError(f"k must be at least 1, not {k}")
        self.k = min(k, self.total)
        self.keep = min(self.k + SPARE_CANDIDATES, self.total)
        self.training, self.device = training, device
        self.unit = DISTANCE_UNIT if pixels else FEATURE_DISTANCE_UNIT
        self.stored_queries = queries.cpu()
        self.queries = _vectors(self.stored_queries, device)
        # ||q||^2 accumulated in float64, kept for the float32 product as the value nearest to exact
        self.query_norms = self.queries.double().pow(2).sum(dim=1).float()
        row_values = int(np.prod(shape))
        self.chunk = chunk_rows or chunk_rows_for(budget, len(queries), row_values, stored.element_size())
        self.best_distances = torch.full((len(queries), 0), float("inf"), device=device)
        self.best_indices = torch.zeros((len(queries), 0), dtype=torch.long, device=device)
        self.searched = 0

    def add_chunk(self, start: int) -> None:
        stop = min(start + self.chunk, self.total)
        rows = _vectors(_training_rows(self.training, start, stop), self.device)
        row_norms = rows.double().pow(2).sum(dim=1).float()
        squared = self.query_norms[:, None] - 2.0 * (self.queries @ rows.T) + row_norms[None, :]
        indices = torch.arange(start, stop, device=self.device).expand(len(self.queries), -1)
        distances = torch.cat([self.best_distances, squared], dim=1)
        all_indices = torch.cat([self.best_indices, indices], dim=1)
        keep = min(self.keep, distances.shape[1])
        self.best_distances, order = torch.topk(distances, keep, dim=1, largest=False)
        self.best_indices = torch.gather(all_indices, 1, order)
        self.searched = stop

    def result(self) -> Neighbours:
        """The top k so far, re-ranked by the exact float64 distance."""
        if self.searched == 0:
            return Neighbours(np.zeros((len(self.queries), 0), np.int64), np.zeros((len(self.queries), 0)), 0,
                              self.total, self.unit)
        candidates = self.best_indices.cpu().numpy()
        exact = _exact_distances(self.stored_queries, self.training, candidates)
        order = np.lexsort((candidates, exact), axis=1)[:, : self.k]  # nearest first; ties by the lower row
        return Neighbours(np.take_along_axis(candidates, order, 1), np.take_along_axis(exact, order, 1),
                          self.searched, self.total, self.unit)
