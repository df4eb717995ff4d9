"""Train a tiny model until killed: the subject of the kill -9 test in tests/core/test_training.py.

The test forks these runs from a fork server that has imported torch already, so
that each run starts in milliseconds rather than the many seconds a fresh interpreter needs.
It also works as a script:

    python tests/train_worker.py FOLDER [--steps N] [--checkpoint-every K] [--resume]
"""

from __future__ import annotations

import argparse
import faulthandler
import sys
from pathlib import Path

import torch

# The same settings as tiny_config() in test_training.py, so that the test can resume these runs.
SETTINGS = dict(num_timesteps=50, preview_count=0, warmup_steps=3, seed=3)


def run(folder: str | Path, resume: bool = False, steps: int = 100_000, checkpoint_every: int = 1) -> int:
    # Should a run ever hang (the kill test waits 180 s for its first checkpoint), its threads' stacks go to stderr.
    faulthandler.dump_traceback_later(120, exit=False)
    torch.set_num_threads(1)
    from ddpm_studio.core.data.demo import make_demo_images
    from ddpm_studio.core.training.config import TrainingConfig
    from ddpm_studio.core.training.events import FailedEvent
    from ddpm_studio.core.training.loop import train

    images = torch.from_numpy(make_demo_images(32, size=16, seed=0)).permute(0, 3, 1, 2).contiguous()
    config = TrainingConfig.for_preset("tiny", steps=steps, checkpoint_every=checkpoint_every, **SETTINGS)
    for event in train(config, images, Path(folder), resume=resume):
        if isinstance(event, FailedEvent):
            print(event.reason, file=sys.stderr)
            return 1
    return 0


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("folder", type=Path)
    parser.add_argument("--steps", type=int, default=100_000)
    parser.add_argument("--checkpoint-every", type=int, default=1)
    parser.add_argument("--resume", action="store_true")
    args = parser.parse_args()
    return run(args.folder, args.resume, args.steps, args.checkpoint_every)


if __name__ == "__main__":
    sys.exit(main())
