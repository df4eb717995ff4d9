"""Train from a memory-mapped cache file several times larger than a resident-memory budget, and measure.

    python tests/stream_check.py FOLDER BUDGET_MIB

Prints one JSON line: the file's size, and how far this process's resident memory rose above
where it stood before (its peak, VmHWM, reset first) while
- training a few steps from the mapped file ("train_growth");
- gathering many batches that touch far more rows than the budget holds ("stream_growth");
- the same batches gathered through the memory map instead ("mapped_growth"): it must exceed
  the budget for the check to mean anything (the file is large enough to show).
It also checks that every gathered row is the row that was asked for. Linux only (/proc).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch

SHAPE = (3, 16, 16)
ROW_BYTES = int(np.prod(SHAPE))


def status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def reset_peak() -> int:
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
    return status_kib("VmRSS") * 1024


def growth_since(base: int) -> int:
    return status_kib("VmHWM") * 1024 - base


def write_rows(path: Path, count: int) -> None:
    """Row i holds the value i % 251 in every byte, so a gathered row tells which row it is."""
    chunk = 65536
    with open(path, "wb") as stream:
        for start in range(0, count, chunk):
            values = (np.arange(start, min(count, start + chunk)) % 251).astype(np.uint8)
            stream.write(np.repeat(values, ROW_BYTES).tobytes())


def stream(images, batches: int) -> tuple[int, bool]:
    from ddpm_studio.core.data.batches import BatchSource, draw_step

    base = reset_peak()
    source = BatchSource(images, seed=0, batch_size=1024, rank=0, world_size=1, device=torch.device("cpu"),
                         first_step=1, last_step=batches)
    right = True
    try:
        for step in range(1, batches + 1):
            batch = source.next()
            indices, _ = draw_step(0, step, len(images), 1024)
            right &= bool((batch.images[:, 0, 0, 0].numpy() == indices % 251).all())
            right &= bool((batch.images.amin(dim=(1, 2, 3)) == batch.images.amax(dim=(1, 2, 3))).all())
    finally:
        source.close()
    return growth_since(base), right


def main() -> int:
    torch.set_num_threads(1)
    from ddpm_studio.core.data.cache import CachedImages
    from ddpm_studio.core.training.config import TrainingConfig
    from ddpm_studio.core.training.loop import train

    folder, budget = Path(sys.argv[1]), int(sys.argv[2]) * 2**20
    count = 4 * budget // ROW_BYTES + 1
    write_rows(folder / "images.u8", count)
    cached = CachedImages(folder / "images.u8", count, SHAPE)

    def config(steps: int) -> TrainingConfig:
        return TrainingConfig.for_preset("tiny", steps=steps, batch_size=16, num_timesteps=50, preview_count=0)

    # A first run from a small dataset in memory warms up what any run needs (kernels, allocator).
    list(train(config(2), torch.zeros(8, *SHAPE, dtype=torch.uint8), folder / "warm-up"))
    base = reset_peak()
    list(train(config(4), cached, folder / "model"))
    train_growth = growth_since(base)

    stream_growth, right = stream(cached, 60)
    mapped_growth, right_too = stream(cached.tensor, 60)  # a plain tensor: gathered through the map
    print(json.dumps(dict(file_bytes=count * ROW_BYTES, budget=budget, train_growth=train_growth,
                          stream_growth=stream_growth, mapped_growth=mapped_growth,
                          rows_right=right and right_too)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
