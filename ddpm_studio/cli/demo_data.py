"""``ddpm-studio demo-data``: write the procedural demo dataset of coloured shapes to a new folder."""

from __future__ import annotations

from pathlib import Path

from tqdm import tqdm

from ddpm_studio.cli.reporting import fail
from ddpm_studio.core.data.demo import DemoDataset, write_demo_dataset


def run(args) -> int:
    if args.count < 1 or args.size < 8:
        fail("The demo dataset needs at least 1 image of at least 8 pixels.")
    bar = None
    paths: list[Path] = []
    try:
        for event in write_demo_dataset(args.out, args.count, args.size, args.seed, args.classes):
            if isinstance(event, DemoDataset):
                paths = event.paths
                continue
            if bar is None:  # opened at the first image, so that a refused folder prints only its error
                bar = tqdm(total=event.total, unit="img", desc="Drawing shapes")
            bar.update(event.done - bar.n)
    finally:
        if bar is not None:
            bar.close()
    print(f"Wrote {len(paths)} images to {args.out}" + (", one subfolder per shape" if args.classes else ""))
    return 0
