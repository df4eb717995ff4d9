"""How quickly a folder scan stops when its consumer closes it early (the Stop button, a new scan).

    python benchmarks/scan_close.py [--files 200] [--size 64] [--workers 2] [--repeats 5]

A folder of identical noise PNGs is scanned; after the first progress event the iterator is
closed, and the time ``close()`` takes is printed (median and worst of the repeats), with the
number of scan threads left afterwards (which must be 0). The numbers are this machine's.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from PIL import Image

from ddpm_studio.core.data.folders import scan_images


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=200)
    parser.add_argument("--size", type=int, default=64, help="side of each PNG in pixels")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="ddpm-scan-close-") as folder:
        first = Path(folder) / "image_00000.png"
        noise = np.random.default_rng(0).integers(0, 256, (args.size, args.size, 3), dtype=np.uint8)
        Image.fromarray(noise).save(first)
        for index in range(1, args.files):
            shutil.copyfile(first, Path(folder) / f"image_{index:05d}.png")
        durations = []
        for _ in range(args.repeats):
            scan = scan_images(folder, 16, workers=args.workers)
            next(scan)
            started = time.perf_counter()
            scan.close()
            durations.append(time.perf_counter() - started)
        left = [thread.name for thread in threading.enumerate() if thread.name.startswith("ddpm-scan")]
    print(f"close() of a scan of {args.files} files with {args.workers} workers: median "
          f"{statistics.median(durations) * 1000:.1f} ms, worst {max(durations) * 1000:.1f} ms; "
          f"scan threads left: {len(left)}")
    return 0 if not left else 1


if __name__ == "__main__":
    raise SystemExit(main())
