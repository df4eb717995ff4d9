"""Benchmark of the decoded-dataset cache on a large synthetic folder.

    nice python benchmarks/dataset_cache.py WORK_DIR [--count 100000] [--size 64] [--budget-mib 512]

Writes ``--count`` synthetic PNGs at ``--size`` px into WORK_DIR/images (once; reused by later
runs), then measures, with its own cache folder WORK_DIR/cache:
1. the first scan: decoding every file into the cache, in images/s;
2. the second start: opening the cache without decoding, in a fresh process, in seconds
   (the goal is under 2 s for 100,000 images);
3. resident memory while training from the cache, whose file is larger than the memory budget
   (``--budget-mib``): the process's peak RSS (VmHWM) while it trains a few steps of the tiny
   preset at ``--size`` px from the cache, against its peak in the same run from 256 images in
   memory (what training needs whatever the data); and while its batch source streams more rows
   than the dataset holds, against where it stood before.
Prints one line per measurement and a JSON summary last. Linux (it reads /proc for memory).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
BATCH = 32


def write_synthetic_folder(folder: Path, count: int, size: int) -> None:
    """Smooth colour gradients with a little noise: PNGs that cost about what photos of that size cost to decode."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    existing = sum(1 for _ in folder.rglob("*.png"))
    if existing >= count:
        return
    generator = np.random.default_rng(0)
    ramp = np.linspace(0.0, 1.0, size, dtype=np.float32)

    def save(index: int, pixels: np.ndarray) -> None:
        Image.fromarray(pixels).save(folder / f"{index // 1000:03d}" / f"{index:06d}.png", compress_level=1)

    with ThreadPoolExecutor(max_workers=2) as pool:
        for start in range(0, count, 1000):
            (folder / f"{start // 1000:03d}").mkdir(exist_ok=True)
            chunk = min(1000, count - start)
            corners = generator.uniform(0, 255, (chunk, 2, 3)).astype(np.float32)
            horizontal = ramp[None, None, :, None]
            vertical = ramp[None, :, None, None]
            mix = (horizontal + vertical) / 2
            pixels = corners[:, None, None, 0] * (1 - mix) + corners[:, None, None, 1] * mix
            pixels += generator.normal(0, 6, pixels.shape).astype(np.float32)
            pixels = np.clip(pixels, 0, 255).astype(np.uint8)
            list(pool.map(save, range(start, start + chunk), pixels))
            print(f"\rwriting synthetic images: {start + chunk:,}/{count:,}", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)


def status_mib(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise KeyError(field)


def open_child(folder: str, size: int) -> None:
    """In a fresh process: how long opening the cache takes (the second start)."""
    started = time.perf_counter()
    from ddpm_studio.core.data.cache import CachedScanResult, open_cached_dataset

    imported, cpu_before = time.perf_counter(), time.process_time()
    result = [event for event in open_cached_dataset([Path(folder)], size, 3)][-1]
    opened, cpu_after = time.perf_counter(), time.process_time()
    assert isinstance(result, CachedScanResult) and not result.decoded, "the second start decoded again"
    print(json.dumps({"open_s": opened - imported, "open_cpu_s": cpu_after - cpu_before, "import_s": imported - started,
                      "images": len(result.images)}))


def train_child(folder: str, size: int, out: str, steps: int) -> None:
    """In a fresh process: peak resident memory while training from the cache, then while streaming."""
    import torch

    from ddpm_studio.core.data.batches import BatchSource
    from ddpm_studio.core.data.cache import CachedScanResult, open_cached_dataset
    from ddpm_studio.core.training.config import TrainingConfig
    from ddpm_studio.core.training.events import FinishedEvent
    from ddpm_studio.core.training.loop import train

    torch.set_num_threads(2)
    result = [event for event in open_cached_dataset([Path(folder)], size, 3)][-1]
    assert isinstance(result, CachedScanResult)
    config = TrainingConfig.for_preset("tiny", image_size=size, steps=steps, batch_size=BATCH, preview_count=0)
    # The same run from 256 images in memory first: what training needs whatever the data.
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak
    list(train(config, torch.zeros(256, 3, size, size, dtype=torch.uint8), Path(out + "-in-memory")))
    in_memory_peak = status_mib("VmHWM")
    Path("/proc/self/clear_refs").write_text("5")
    before = status_mib("VmRSS")
    started = time.perf_counter()
    events = list(train(config, result.mapping, Path(out)))
    assert isinstance(events[-1], FinishedEvent)
    train_seconds = time.perf_counter() - started
    train_peak = status_mib("VmHWM")

    Path("/proc/self/clear_refs").write_text("5")  # reset the peak
    stream_before = status_mib("VmRSS")
    batches = len(result.mapping) // BATCH + 100  # more rows than the dataset holds
    source = BatchSource(result.mapping, seed=1, batch_size=BATCH, rank=0, world_size=1, device=torch.device("cpu"),
                         first_step=1, last_step=batches)
    started = time.perf_counter()
    try:
        for _ in range(batches):
            source.next()
    finally:
        source.close()
    stream_seconds = time.perf_counter() - started
    print(json.dumps({
        "rss_before_mib": before, "in_memory_peak_mib": in_memory_peak, "train_peak_mib": train_peak,
        "train_steps": steps, "train_s": train_seconds,
        "stream_before_mib": stream_before, "stream_peak_mib": status_mib("VmHWM"), "stream_rows": batches * BATCH,
        "stream_rows_per_s": batches * BATCH / stream_seconds,
    }))


def child(arguments: list[str], env: dict) -> dict:
    result = subprocess.run([sys.executable, __file__, *arguments], env=env, capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(result.stderr)
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("work", type=Path)
    parser.add_argument("--count", type=int, default=100_000)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--budget-mib", type=int, default=512)
    parser.add_argument("--train-steps", type=int, default=20)
    parser.add_argument("--child", choices=("open", "train"), help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    images = args.work / "images"
    if args.child == "open":
        open_child(str(images), args.size)
        return 0
    if args.child == "train":
        train_child(str(images), args.size, args.out, args.train_steps)
        return 0

    write_synthetic_folder(images, args.count, args.size)
    env = {**os.environ, "DDPM_STUDIO_CACHE": str(args.work / "cache"), "PYTHONPATH": str(REPO_ROOT)}
    os.environ.update(env)
    sys.path.insert(0, str(REPO_ROOT))
    from ddpm_studio.core.data.cache import CachedScanResult, clear_cache, open_cached_dataset

    clear_cache()
    started = time.perf_counter()
    result = [event for event in open_cached_dataset([images], args.size, 3)][-1]
    first_scan = time.perf_counter() - started
    assert isinstance(result, CachedScanResult) and result.decoded
    count, cache_bytes = len(result.images), result.mapping.nbytes
    print(f"first scan      {count:,} images in {first_scan:.1f} s: {count / first_scan:,.0f} images/s "
          f"({os.cpu_count()} CPUs), cache {cache_bytes / 2**20:,.0f} MiB", flush=True)

    opened = child(["--child", "open", str(args.work), "--size", str(args.size)], env)
    print(f"second start    {opened['open_s']:.2f} s ({opened['open_cpu_s']:.2f} s of CPU) to open the cache of "
          f"{opened['images']:,} images (goal < 2 s), after {opened['import_s']:.2f} s of imports", flush=True)

    budget = args.budget_mib
    out = args.work / f"model-{time.time_ns()}"
    trained = child(["--child", "train", str(args.work), "--size", str(args.size), "--out", str(out),
                     "--train-steps", str(args.train_steps)], env)
    print(f"training        cache {cache_bytes / 2**20:,.0f} MiB vs budget {budget} MiB: peak RSS "
          f"{trained['train_peak_mib']:,.0f} MiB from the cache, {trained['in_memory_peak_mib']:,.0f} MiB from 256 "
          f"images in memory; {trained['train_steps']} steps of batch {BATCH} (tiny preset) in "
          f"{trained['train_s']:.1f} s", flush=True)
    print(f"streaming       {trained['stream_rows']:,} random rows at {trained['stream_rows_per_s']:,.0f} rows/s: "
          f"peak RSS {trained['stream_peak_mib']:,.0f} MiB ({trained['stream_before_mib']:,.0f} MiB before)",
          flush=True)
    within = trained["train_peak_mib"] - trained["in_memory_peak_mib"] < budget and \
        trained["stream_peak_mib"] - trained["stream_before_mib"] < budget
    print(json.dumps({"count": count, "size": args.size, "first_scan_s": first_scan,
                      "first_scan_images_per_s": count / first_scan, "cache_mib": cache_bytes / 2**20,
                      "second_start_open_s": opened["open_s"], "second_start_open_cpu_s": opened["open_cpu_s"],
                      "budget_mib": budget, **trained,
                      "growth_within_budget": within}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
