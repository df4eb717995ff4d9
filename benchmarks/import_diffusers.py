"""Time and memory of importing a paper-size diffusers folder, against the time to read its weights file.

    python benchmarks/import_diffusers.py [--format safetensors|bin] [--keep DIR]

It writes a google/ddpm-*-256 style folder (113,673,219 float32 parameters: a 455 MB weights file) with
diffusers' own save_pretrained from a random model (diffusers is in the ``test`` extra), then, in a fresh
process for each measurement:
- reads the weights file once, in 16 MiB blocks (the floor for any import);
- imports it with ``ddpm-studio``'s importer, and reports the wall time and the peak resident memory above
  the process's resident memory just before the import, as a multiple of the weights' size.
Both run with the file in the page cache (it was just written), so they compare like with like.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

GOOGLE_256 = {
    "sample_size": 256, "in_channels": 3, "out_channels": 3, "block_out_channels": [128, 128, 256, 256, 512, 512],
    "down_block_types": ["DownBlock2D"] * 4 + ["AttnDownBlock2D", "DownBlock2D"],
    "up_block_types": ["UpBlock2D", "AttnUpBlock2D"] + ["UpBlock2D"] * 4, "layers_per_block": 2,
    "attention_head_dim": None, "downsample_padding": 0, "flip_sin_to_cos": False, "freq_shift": 1,
    "norm_eps": 1e-6, "norm_num_groups": 32, "act_fn": "silu", "center_input_sample": False,
    "time_embedding_type": "positional", "mid_block_scale_factor": 1,
}

READ = """
import sys, time
start = time.perf_counter()
with open(sys.argv[1], "rb") as stream:
    while stream.read(16 * 2**20):
        pass
print(time.perf_counter() - start)
"""

IMPORT = """
import json, resource, sys, time
from ddpm_studio.core.model.importer import import_folder

def resident_bytes():
    with open("/proc/self/statm") as stream:
        return int(stream.read().split()[1]) * resource.getpagesize()

before = resident_bytes()
start = time.perf_counter()
result = import_folder(sys.argv[1], sys.argv[2])
seconds = time.perf_counter() - start
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kilobytes on Linux
print(json.dumps({"seconds": seconds, "peak_above_start": peak - before, "weights_bytes": result.weights_bytes}))
"""


def write_source(folder: Path, bin_file: bool) -> None:
    import torch

    try:
        import torchvision  # noqa: F401  (diffusers imports it when present; a mismatched build must not matter)
    except Exception:
        import diffusers.utils.import_utils as import_utils

        import_utils._torchvision_available = False
    from diffusers import DDPMScheduler, UNet2DModel

    with torch.device("meta"):
        model = UNet2DModel(**GOOGLE_256)
    model = model.to_empty(device="cpu")
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.normal_(0, 0.02)
    model.save_pretrained(folder, safe_serialization=not bin_file)
    DDPMScheduler(variance_type="fixed_small").save_pretrained(folder)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--format", choices=("safetensors", "bin"), default="safetensors")
    parser.add_argument("--keep", type=Path, help="write the folders here and keep them")
    args = parser.parse_args()
    work = args.keep or Path(tempfile.mkdtemp(prefix="ddpm-import-bench-"))
    source = work / f"ddpm-256-{args.format}"
    if not source.exists():
        write_source(source, args.format == "bin")
    weights = next(source.glob("diffusion_pytorch_model.*"))
    read_seconds = float(subprocess.run([sys.executable, "-c", READ, str(weights)], check=True, capture_output=True,
                                        text=True).stdout)
    out = work / f"imported-{args.format}-{time.time_ns()}"
    measured = json.loads(subprocess.run([sys.executable, "-c", IMPORT, str(source), str(out)], check=True,
                                         capture_output=True, text=True).stdout)
    size = measured["weights_bytes"]
    print(f"weights file      {weights.name}, {size / 1e6:,.0f} MB")
    print(f"reading it        {read_seconds:.2f} s ({size / 1e6 / read_seconds:,.0f} MB/s)")
    print(f"importing it      {measured['seconds']:.2f} s ({measured['seconds'] / read_seconds:.1f}x the read)")
    print(f"peak memory       {measured['peak_above_start'] / 1e6:,.0f} MB above the start "
          f"({measured['peak_above_start'] / size:.2f}x the weights)")
    if args.keep is None:
        import shutil

        shutil.rmtree(work)


if __name__ == "__main__":
    main()
