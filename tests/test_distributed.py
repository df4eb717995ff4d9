"""Training under torchrun: two CPU processes (gloo) through the ``train`` command. Both must end
with identical weights, and only rank 0 may write the model folder."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
from PIL import Image
from safetensors.torch import load_file

from ddpm_studio.core import model_store
from ddpm_studio.core.demo_data import make_demo_images
from ddpm_studio.core.devices import choose_device

TESTS_DIR = Path(__file__).resolve().parent
STEPS = 6

pytestmark = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                                reason="needs torch.distributed with gloo")


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("distributed")
    data = root / "images"
    data.mkdir()
    for index, image in enumerate(make_demo_images(24, size=16)):
        Image.fromarray(image).save(data / f"{index:02d}.png")
    out, dumps = root / "model", root / "dumps"
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
        str(TESTS_DIR / "distributed_check.py"), str(dumps),
        "train", str(data), "--out", str(out), "--preset", "tiny", "--image-size", "16", "--steps", str(STEPS),
        "--timesteps", "50", "--batch-size", "8", "--checkpoint-every", "4", "--preview-every", "3",
        "--preview-count", "2", "--device", "cpu",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "DDPM_STUDIO_MODELS": str(root / "user")}
    # The timeout guards against a hang (a collective that one rank never joins), not against slowness.
    result = subprocess.run(command, env=env, cwd=root, capture_output=True, text=True, timeout=400)
    return dict(result=result, out=out, dumps=dumps, root=root)


def test_two_processes_finish(run):
    result = run["result"]
    assert result.returncode == 0, f"{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
    assert "Traceback" not in result.stderr
    assert result.stdout.count(f"Finished {STEPS} steps") == 1  # only rank 0 reports


def test_both_ranks_end_with_identical_weights(run):
    ranks = [load_file(str(run["dumps"] / f"rank{rank}.safetensors")) for rank in (0, 1)]
    assert set(ranks[0]) == set(ranks[1])
    assert any(name.startswith("model.") for name in ranks[0]) and any(name.startswith("ema.") for name in ranks[0])
    for name in ranks[0]:
        assert torch.equal(ranks[0][name], ranks[1][name]), f"{name} differs between the ranks"
    assert len(ranks[0]["losses"]) == STEPS  # and the losses are the same mean over both ranks
    # They trained: the final weights are not the initial ones (same seed, so same initial weights).
    saved = load_file(str(run["out"] / model_store.STATE_FILE))
    for name, value in ranks[0].items():
        if name.startswith(("model.", "ema.")):
            assert torch.equal(saved[name], value), f"the saved {name} is not the final one"
    assert torch.isfinite(saved["loss"]).all()


def test_only_rank_0_writes_the_model_folder(run):
    out = run["out"]
    assert not Path(f"{out}.rank1").exists()
    assert {p.name for p in run["root"].iterdir()} - {"user"} == {"dumps", "images", "model"}
    info = model_store.read_model_info(out)
    assert info.step == STEPS and info.can_resume
    history = model_store.load_loss_history(out)
    assert len(history) == STEPS and np.isfinite(history).all()
    np.testing.assert_array_equal(history, load_file(str(run["dumps"] / "rank0.safetensors"))["losses"].numpy())
    assert len(list((out / model_store.PREVIEW_DIR).glob("step_*.png"))) == 2  # steps 3 and 6
    assert not list(out.rglob("*.tmp"))
    model_store.load_model(out)


def test_an_explicit_cuda_device_means_each_process_own_gpu():
    """``--device cuda`` under torchrun: each process takes the GPU of its local rank, not all of them GPU 0."""
    assert choose_device("cuda", local_rank=1) == torch.device("cuda", 1)
    assert choose_device("cuda:0", local_rank=1) == torch.device("cuda", 0)
    assert choose_device("cpu", local_rank=1) == torch.device("cpu")
    if not torch.cuda.is_available():
        assert choose_device("auto", local_rank=1) == torch.device("cpu")
