"""Nearest training images: the chunked float32 search returns exactly what a float64 brute force does, whatever
the chunking, by pixels and by (the stand-in extractor's) features; memorisation flags a "model" that returns
training images and not fresh draws of the same data."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from ddpm_studio.core.data.cache import CachedImages
from ddpm_studio.core.evaluation.memorization import (
    FeatureSpace,
    MemorizationProgress,
    MemorizationResult,
    closest_pairs_grid,
    feature_extractor_if_there,
    pair_gap,
    pixels_only_note,
    run_memorization,
)
from ddpm_studio.core.evaluation.metrics import INCEPTION, STANDIN, create_feature_extractor
from ddpm_studio.core.evaluation.neighbours import (
    FEATURE_DISTANCE_UNIT,
    NeighbourProgress,
    nearest_neighbours,
    search_neighbours,
)

SHAPE = (3, 8, 8)


def random_images(count: int, seed: int) -> torch.Tensor:
    return torch.randint(0, 256, (count, *SHAPE), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def brute_force(queries: torch.Tensor, training: torch.Tensor, k: int) -> tuple[np.ndarray, np.ndarray]:
    """float64 RMS per pixel on [0, 255] to every training row; nearest first, ties by the lower row."""
    q = queries.reshape(len(queries), -1).numpy().astype(np.float64)
    x = training.reshape(len(training), -1).numpy().astype(np.float64)
    rms = np.sqrt(((q[:, None, :] - x[None, :, :]) ** 2).mean(axis=2))
    order = np.argsort(rms, axis=1, kind="stable")[:, :k]
    return order, np.take_along_axis(rms, order, 1)


@pytest.fixture(scope="module")
def training() -> torch.Tensor:
    images = random_images(300, seed=1)
    images[40] = images[41]  # an exact tie: the lower row comes first
    return images


@pytest.fixture(scope="module")
def queries(training) -> torch.Tensor:
    images = random_images(17, seed=2)
    images[0] = training[123]  # a copy: distance 0
    images[1] = training[41]
    images[2] = training[7] // 2 + 60  # near row 7, not equal to it
    return images


@pytest.mark.parametrize("chunk_rows", [1, 3, 7, 64, 299, 300, 5000])
def test_search_matches_float64_brute_force(training, queries, chunk_rows):
    k = 5
    expected_indices, expected_distances = brute_force(queries, training, k)
    found = nearest_neighbours(queries, training, k=k, chunk_rows=chunk_rows)
    np.testing.assert_array_equal(found.indices, expected_indices)
    np.testing.assert_allclose(found.distances, expected_distances, rtol=0, atol=1e-9)
    assert found.indices[0, 0] == 123 and found.distances[0, 0] == 0.0
    assert list(found.indices[1, :2]) == [40, 41]
    assert found.indices[2, 0] == 7
    assert found.searched == found.total == 300


def test_memory_budget_forces_many_chunks_with_the_same_answer(training, queries):
    events = list(search_neighbours(queries, training, k=4, memory_budget_bytes=10_000))
    progress = [e for e in events if isinstance(e, NeighbourProgress)]
    assert len(progress) > 20  # the budget fits a handful of rows
    assert [p.done for p in progress] == sorted(p.done for p in progress) and progress[-1].done == 300
    expected_indices, expected_distances = brute_force(queries, training, 4)
    np.testing.assert_array_equal(events[-1].indices, expected_indices)
    np.testing.assert_allclose(events[-1].distances, expected_distances, rtol=0, atol=1e-9)


def test_search_reads_a_cache_mapping_like_a_tensor(tmp_path: Path, training, queries):
    path = tmp_path / "images.u8"
    path.write_bytes(training.numpy().tobytes())
    mapping = CachedImages(path, len(training), SHAPE)
    found = nearest_neighbours(queries, mapping, k=3, chunk_rows=32)
    expected_indices, expected_distances = brute_force(queries, training, 3)
    np.testing.assert_array_equal(found.indices, expected_indices)
    np.testing.assert_allclose(found.distances, expected_distances, rtol=0, atol=1e-9)


def test_k_larger_than_the_training_set_returns_all_rows(training, queries):
    found = nearest_neighbours(queries, training[:4], k=10, chunk_rows=3)
    assert found.indices.shape == (17, 4)
    np.testing.assert_array_equal(np.sort(found.indices, axis=1), np.tile(np.arange(4), (17, 1)))


def test_search_refuses_another_shape(training):
    with pytest.raises(ValueError, match="shape"):
        nearest_neighbours(torch.zeros((2, 1, 8, 8), dtype=torch.uint8), training)


def smooth_images(count: int, seed: int) -> torch.Tensor:
    """A procedural distribution: random colour gradients plus noise, the same law for every seed."""
    generator = torch.Generator().manual_seed(seed)
    corners = torch.rand((count, 3, 2, 2), generator=generator)
    smooth = torch.nn.functional.interpolate(corners, size=SHAPE[1:], mode="bilinear", align_corners=True)
    noisy = smooth + 0.15 * torch.randn((count, *SHAPE), generator=generator)
    return (noisy.clamp(0, 1) * 255).round().to(torch.uint8)


def result_of(events: list) -> MemorizationResult:
    assert isinstance(events[-1], MemorizationResult)
    return events[-1]


def test_a_model_that_returns_training_images_is_all_copies():
    training = smooth_images(400, seed=10)
    held_out = smooth_images(200, seed=11)
    picks = torch.Generator().manual_seed(5)

    def copy_training(count: int, batch_index: int) -> torch.Tensor:
        return training[torch.randint(0, len(training), (count,), generator=picks)]

    result = result_of(list(run_memorization(copy_training, 120, training, held_out, batch_size=50)))
    assert len(result.pixels.sample_distances) == 120 and result.complete
    assert result.pixels.copies == 120 and result.pixels.copy_share == 1.0
    assert result.pixels.threshold > 0 and np.all(result.pixels.sample_distances == 0)
    grid = closest_pairs_grid(result, training, pairs=4)
    gap = pair_gap(8)
    left, right = grid[gap:gap + 8, gap:gap + 8], grid[gap:gap + 8, gap + 9:gap + 17]  # sample | its nearest
    np.testing.assert_array_equal(left, right)


def test_the_grid_sets_each_pair_apart():
    training = smooth_images(20, seed=12)
    result = result_of(list(run_memorization(lambda count, index: training[:count] // 2, 5, training,
                                             smooth_images(4, seed=13), batch_size=5)))
    grid = closest_pairs_grid(result, training, pairs=5)
    gap, pair_width = pair_gap(8), 2 * 8 + 1
    # three rows of two pairs (the last row one pair): gaps around and between the pairs, 1 px inside a pair
    assert grid.shape == (gap + 3 * (8 + gap), gap + 2 * (pair_width + gap), 3)
    assert gap > 1
    columns_white = np.all(grid == 255, axis=(0, 2))
    between = slice(gap + pair_width, 2 * gap + pair_width)
    assert columns_white[between].all() and columns_white[gap + 8]  # the gap between pairs and the line inside one


def standin_features(images: torch.Tensor) -> torch.Tensor:
    pool, _ = create_feature_extractor(STANDIN, torch.device("cpu"))(images)
    return pool


def brute_force_features(queries: np.ndarray, training: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """float64 Euclidean distance to every training feature vector; nearest first, ties by the lower row."""
    distances = np.sqrt(((queries[:, None, :].astype(np.float64) - training[None].astype(np.float64)) ** 2).sum(2))
    order = np.argsort(distances, axis=1, kind="stable")[:, :k]
    return order, np.take_along_axis(distances, order, 1)


@pytest.mark.parametrize("chunk_rows", [1, 13, 300, None])
def test_feature_neighbours_match_float64_brute_force_over_the_standin_features(training, queries, chunk_rows):
    train_features, query_features = standin_features(training), standin_features(queries)
    assert train_features.dtype == torch.float32 and train_features.shape == (300, 32)
    found = nearest_neighbours(query_features, train_features, k=5, chunk_rows=chunk_rows)
    expected_indices, expected_distances = brute_force_features(query_features.numpy(), train_features.numpy(), 5)
    np.testing.assert_array_equal(found.indices, expected_indices)
    np.testing.assert_allclose(found.distances, expected_distances, rtol=0, atol=1e-9)
    assert found.unit == FEATURE_DISTANCE_UNIT and found.indices[0, 0] == 123 and found.distances[0, 0] == 0.0


def test_images_are_not_searched_against_features(training, queries):
    with pytest.raises(TypeError, match="compare uint8 images with images"):
        nearest_neighbours(queries, standin_features(training))


def test_training_features_come_from_the_cache_in_batches(tmp_path: Path, training):
    path = tmp_path / "images.u8"
    path.write_bytes(training.numpy().tobytes())
    space = FeatureSpace(create_feature_extractor(STANDIN, torch.device("cpu")), "stand-in features", batch_size=64)
    progress = list(space.read_training(CachedImages(path, len(training), SHAPE)))
    assert [event.done for event in progress] == [64, 128, 192, 256, 300]
    np.testing.assert_allclose(space.training_features.numpy(), standin_features(training).numpy(), atol=1e-6)


def test_memorization_reports_feature_neighbours_beside_pixels():
    training = smooth_images(200, seed=50)
    held_out = smooth_images(60, seed=51)
    space = FeatureSpace(create_feature_extractor(STANDIN, torch.device("cpu")), "stand-in features", batch_size=32)
    list(space.read_training(training))

    def copy_training(count: int, batch_index: int) -> torch.Tensor:
        return training[batch_index * count:(batch_index + 1) * count]

    result = result_of(list(run_memorization(copy_training, 40, training, held_out, batch_size=20, features=space)))
    assert result.features is not None and result.feature_space == "stand-in features"
    assert result.features.copies == 40 and np.all(result.features.sample_distances == 0)
    np.testing.assert_array_equal(result.features.sample_neighbours, np.arange(40))
    _, expected = brute_force_features(standin_features(held_out).numpy(), space.training_features.numpy(), 1)
    np.testing.assert_allclose(result.features.reference_distances, expected[:, 0], rtol=0, atol=1e-9)
    lines = result.report_lines()
    assert any(line.startswith("Nearest training image by pixels") for line in lines)
    assert any(line.startswith("Nearest training image by stand-in features") for line in lines)
    assert any(line.startswith("Copies by stand-in features: 40 of 40") for line in lines)
    record = result.record()
    assert record["features"]["extractor"] == "stand-in features" and record["features"]["value"] == 1.0


def test_without_the_inception_weights_only_pixels_are_used(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # an empty torch cache: no weights there
    extractor, why = feature_extractor_if_there(INCEPTION, "cpu")
    note = pixels_only_note(why)
    assert extractor is None and note.startswith("Nearest neighbours in pixel space only: ")
    assert ("--inception-weights" in note or 'pip install -e ".[eval]"' in note) and "\n" not in note


def test_fresh_draws_of_the_training_distribution_are_flagged_at_the_reference_rate():
    training = smooth_images(500, seed=20)
    held_out = smooth_images(2000, seed=21)
    draws = iter(range(1000))

    def fresh(count: int, batch_index: int) -> torch.Tensor:
        return smooth_images(count, seed=100 + next(draws))

    result = result_of(list(run_memorization(fresh, 2000, training, held_out, batch_size=500)))
    # both the sample share and the reference's 5th percentile vary: a binomial sd of each, 4 sd in all
    sd = math.sqrt(2 * 0.05 * 0.95 / 2000)
    assert abs(result.pixels.copy_share - 0.05) < 4 * sd, result.report_lines()


def test_stopping_keeps_the_samples_compared_so_far():
    training = smooth_images(100, seed=30)
    held_out = smooth_images(50, seed=31)
    events = run_memorization(lambda count, index: smooth_images(count, 40 + index), 100, training, held_out,
                              batch_size=25)
    partial = None
    for event in events:
        if isinstance(event, MemorizationProgress) and event.partial is not None:
            partial = event.partial
            if len(partial.pixels.sample_distances) == 50:
                break  # Stop
    events.close()
    assert partial is not None and len(partial.pixels.sample_distances) == 50 and not partial.complete
    assert len(partial.samples) == 50 and len(partial.pixels.reference_distances) == 50
