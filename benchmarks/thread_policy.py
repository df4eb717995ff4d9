"""How many CPU threads the studio's jobs should use, measured beside other work.

A user's machine always runs something else. With torch's default (one intra-op thread per core), a run whose
threads meet at a barrier every operation waits for the slowest, and a core taken by another process makes every
operation wait for the scheduler. This script measures, for each count of CPU-burning processes beside it (0, 1,
2 by default), sampling and training throughput at each thread count and OpenMP wait policy:

- sampling: the demo model (``models/demo``), a 16-image DDIM grid, milliseconds per step (median of the steps);
- training: the ``small`` preset at 32 px, batch 16, milliseconds per step (median).

Each configuration runs in a fresh process (OMP_WAIT_POLICY is read when OpenMP starts). Run it on a quiet machine:

    python benchmarks/thread_policy.py --burners 0,1,2 --threads 1,2 --policies default,passive

It prints one Markdown table.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

MEASURE = r"""
import json, statistics, sys, time
import torch
from ddpm_studio.core.diffusion.samplers import sample_progressive
from ddpm_studio.core.model.store import load_model
from ddpm_studio.core.model.unet import UNet
from ddpm_studio.core.training.config import TrainingConfig
from ddpm_studio.core.training.plain_step import plain_training_step
from ddpm_studio.core.diffusion.process import GaussianDiffusion
from ddpm_studio.core.diffusion.schedule import NoiseSchedule
from ddpm_studio.paths import BUNDLED_MODELS_DIR

threads, seconds = int(sys.argv[1]), float(sys.argv[2])
torch.set_num_threads(threads)
model = load_model(BUNDLED_MODELS_DIR / "demo", "cpu")
shape = (16, *model.image_shape)

def timed(step, budget):
    times, start = [], time.perf_counter()
    while time.perf_counter() - start < budget or len(times) < 3:
        t0 = time.perf_counter(); step(); times.append(time.perf_counter() - t0)
    return 1000 * statistics.median(times[1:])  # the first carries the warm-up

with torch.inference_mode():
    iterator = iter(sample_progressive(model.diffusion, model.unet, shape, "ddim", num_steps=1000,
                                       generator=torch.Generator().manual_seed(0)))
    sampling = timed(lambda: next(iterator), seconds)

config = TrainingConfig.for_preset("small", image_size=32)
network = UNet(config.unet_config())
diffusion = GaussianDiffusion(NoiseSchedule.from_config(config.schedule_config()))
optimizer = torch.optim.Adam(network.parameters(), lr=2e-4)
x0 = torch.rand(16, 3, 32, 32) * 2 - 1
training = timed(lambda: plain_training_step(network, optimizer, diffusion, x0, False, network.parameters()), seconds)
print(json.dumps({"sampling_ms": sampling, "training_ms": training}))
"""


def burn(stop_at: float) -> None:
    while time.monotonic() < stop_at:
        pass


def measure(threads: int, policy: str, burners: int, seconds: float) -> dict:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.pop("OMP_WAIT_POLICY", None)
    if policy != "default":
        env["OMP_WAIT_POLICY"] = policy.upper()
    stop_at = time.monotonic() + 10 * seconds + 60
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=burn, args=(stop_at,), daemon=True) for _ in range(burners)]
    for worker in workers:
        worker.start()
    try:
        result = subprocess.run([sys.executable, "-c", MEASURE, str(threads), str(seconds)], env=env,
                                capture_output=True, text=True, timeout=20 * seconds + 300, check=True)
    finally:
        for worker in workers:
            worker.terminate()
            worker.join()
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--burners", default="0,1,2", help="counts of CPU-burning processes beside the run")
    parser.add_argument("--threads", default=f"1,{os.cpu_count()}", help="intra-op thread counts to try")
    parser.add_argument("--policies", default="default,passive", help="OMP_WAIT_POLICY values (default: unset)")
    parser.add_argument("--seconds", type=float, default=4.0, help="time per measurement")
    args = parser.parse_args()
    print(f"{os.cpu_count()} cores; sampling: demo model, 16-image DDIM grid, ms/step; training: small preset, "
          "32 px, batch 16, ms/step (medians)\n")
    print("| burners | threads | OMP_WAIT_POLICY | sampling ms/step | training ms/step |")
    print("| ---: | ---: | --- | ---: | ---: |")
    for burners in (int(n) for n in args.burners.split(",")):
        for threads in (int(n) for n in args.threads.split(",")):
            for policy in args.policies.split(","):
                numbers = measure(threads, policy, burners, args.seconds)
                print(f"| {burners} | {threads} | {policy} | {numbers['sampling_ms']:,.0f} | "
                      f"{numbers['training_ms']:,.0f} |", flush=True)


if __name__ == "__main__":
    main()
