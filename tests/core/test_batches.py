"""The batch source: each step's images depend on the seed and the step alone, every process gathers its
own slice, a background thread works ahead and stops when asked, and streaming from a cache file far
larger than a memory budget keeps resident memory within it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from ddpm_studio.core.data.batches import BatchSource, draw_step
from ddpm_studio.core.data.cache import CachedImages
from ddpm_studio.core.data.folders import DatasetError

TESTS_DIR = Path(__file__).resolve().parents[1]
SHAPE = (3, 4, 4)


def numbered_rows(count: int) -> torch.Tensor:
    """Row i holds the value i in every byte, so a gathered row tells which row it is."""
    return torch.arange(count, dtype=torch.uint8)[:, None, None, None].expand(count, *SHAPE).contiguous()


def test_a_step_draw_depends_on_the_seed_and_the_step_alone():
    indices, flips = draw_step(3, 17, 50, 64)
    again, flips_again = draw_step(3, 17, 50, 64)
    np.testing.assert_array_equal(indices, again)
    np.testing.assert_array_equal(flips, flips_again)
    assert indices.min() >= 0 and indices.max() < 50 and 0 < flips.sum() < 64
    assert not np.array_equal(draw_step(3, 18, 50, 64)[0], indices)
    assert not np.array_equal(draw_step(4, 17, 50, 64)[0], indices)


@pytest.fixture
def cached_rows(tmp_path) -> CachedImages:
    path = tmp_path / "rows.u8"
    path.write_bytes(numbered_rows(40).numpy().tobytes())
    return CachedImages(path, 40, SHAPE)


@pytest.mark.parametrize("source_kind", ["tensor", "cache file"])
def test_each_process_gets_its_slice_of_each_step_in_order(source_kind, cached_rows):
    images = numbered_rows(40) if source_kind == "tensor" else cached_rows
    for rank in (0, 1):
        source = BatchSource(images, seed=5, batch_size=8, rank=rank, world_size=2, device=torch.device("cpu"),
                             first_step=3, last_step=7)
        try:
            for step in range(3, 8):
                batch = source.next()
                indices, flips = draw_step(5, step, 40, 8)
                mine = slice(4 * rank, 4 * rank + 4)
                assert batch.step == step
                np.testing.assert_array_equal(batch.images[:, 0, 0, 0].numpy(), indices[mine])
                assert torch.equal(batch.images, numbered_rows(40)[torch.from_numpy(indices[mine])])
                np.testing.assert_array_equal(batch.flips.numpy(), flips[mine])
            with pytest.raises(IndexError):
                source.next()
        finally:
            source.close()


def test_closing_early_stops_the_thread(cached_rows):
    before = threading.active_count()
    source = BatchSource(cached_rows, seed=0, batch_size=4, rank=0, world_size=1, device=torch.device("cpu"),
                         first_step=1, last_step=10_000, prefetch=2)
    source.next()
    assert threading.active_count() == before + 1
    source.close()
    assert threading.active_count() == before


def test_a_read_error_reaches_the_loop(tmp_path):
    path = tmp_path / "rows.u8"
    path.write_bytes(numbered_rows(40).numpy().tobytes())
    images = CachedImages(path, 40, SHAPE)
    os.truncate(path, 10 * int(np.prod(SHAPE)))  # the file shrank under the mapping
    if not hasattr(os, "preadv"):
        pytest.skip("reads go through the map here")
    source = BatchSource(images, seed=0, batch_size=16, rank=0, world_size=1, device=torch.device("cpu"),
                         first_step=1, last_step=5)
    try:
        with pytest.raises(DatasetError, match="shorter than its cache index"):
            for _ in range(5):
                source.next()
    finally:
        source.close()


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="measures resident memory through Linux /proc")
def test_training_streams_a_cache_file_several_times_larger_than_a_memory_budget(tmp_path):
    budget_mib = 32
    result = subprocess.run([sys.executable, str(TESTS_DIR / "stream_check.py"), str(tmp_path), str(budget_mib)],
                            capture_output=True, text=True, timeout=600,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    measured = json.loads(result.stdout.strip().splitlines()[-1])
    budget = budget_mib * 2**20
    assert measured["file_bytes"] >= 4 * budget
    assert measured["rows_right"]
    assert measured["train_growth"] < budget, measured
    assert measured["stream_growth"] < budget, measured
    # Gathering the same rows through the memory map would have made most of the file resident:
    # the file is large enough for the bound to mean something.
    assert measured["mapped_growth"] > 2 * budget, measured
