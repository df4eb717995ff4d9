"""Benchmark of the exact nearest-neighbour search: queries against a large synthetic training set, no decoding.

    nice python benchmarks/neighbours.py [--train 100000] [--queries 1000] [--size 32] [--k 1]
                                         [--device auto] [--budget-mib 256] [--check 64] [--features D]

The training set is a uint8 array (N, 3, S, S) written to a file and mapped as the dataset cache maps its
entries (``CachedImages``), so the timing includes reading rows from the file as a real search does.
Prints the search time, the rate in comparisons per second, and a check of ``--check`` queries against a
float64 brute force; a JSON summary last. The goal: 100,000 images at 32 px in seconds on a GPU.
With ``--features D`` the rows are instead float32 feature vectors of D values (2048 for the FID network's pool
features), held in memory as the training features are, and the check is Euclidean.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ddpm_studio.core.data.cache import CachedImages  # noqa: E402
from ddpm_studio.core.evaluation.neighbours import nearest_neighbours  # noqa: E402
from ddpm_studio.core.system.devices import choose_device  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--k", type=int, default=1)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--budget-mib", type=int, default=256)
    parser.add_argument("--check", type=int, default=64, help="queries checked against a float64 brute force")
    parser.add_argument("--features", type=int, default=0, metavar="D",
                        help="search float32 feature vectors of D values instead of images")
    args = parser.parse_args()
    device = choose_device(args.device)
    rng = np.random.default_rng(0)
    shape = (3, args.size, args.size)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "images.u8"
        if args.features:
            training = rng.standard_normal((args.train, args.features), dtype=np.float32)
            mapping = torch.from_numpy(training)
            queries = torch.from_numpy(rng.standard_normal((args.queries, args.features), dtype=np.float32))
        else:
            training = rng.integers(0, 256, (args.train, *shape), dtype=np.uint8)
            path.write_bytes(training.tobytes())
            mapping = CachedImages(path, args.train, shape)
            queries = torch.from_numpy(rng.integers(0, 256, (args.queries, *shape), dtype=np.uint8))
        nearest_neighbours(queries[:8], mapping, args.k, device, args.budget_mib * 2**20)  # warm-up
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        found = nearest_neighbours(queries, mapping, args.k, device, args.budget_mib * 2**20)
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
        check = min(args.check, args.queries)
        flat = training.reshape(args.train, -1)
        exact = 0
        for index in range(check):
            squared = (flat.astype(np.float64) - queries[index].numpy().reshape(-1).astype(np.float64)) ** 2
            rms = np.sqrt(squared.sum(axis=1) if args.features else squared.mean(axis=1))
            nearest = int(np.argmin(rms))
            exact += int(nearest == found.indices[index, 0] and abs(rms[nearest] - found.distances[index, 0]) < 1e-9)
    comparisons = args.train * args.queries
    rows = f"feature vectors of {args.features}" if args.features else f"images of {args.size}x{args.size}x3"
    print(f"{args.queries:,} queries against {args.train:,} {rows} on {device}: "
          f"{seconds:.2f} s ({comparisons / seconds / 1e6:.1f} M comparisons/s)")
    print(f"float64 brute force agrees on {exact} of {check} checked queries")
    print(json.dumps({"device": str(device), "train": args.train, "queries": args.queries, "size": args.size,
                      "k": args.k, "features": args.features, "budget_mib": args.budget_mib,
                      "seconds": round(seconds, 3), "checked": check, "agree": exact,
                      "torch_threads": torch.get_num_threads()}))
    return 0 if exact == check else 1


if __name__ == "__main__":
    sys.exit(main())
