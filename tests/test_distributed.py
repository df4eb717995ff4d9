"""Training under torchrun: two CPU processes (gloo) through the ``train`` command, accumulating
two micro-batches a step. Both must end with identical weights, only rank 0 may write the model
folder, and both train from the one dataset cache entry that rank 0 decoded. A resume gives each
rank its own random streams back, and a stop that reaches one rank stops both, with rank 0's checkpoint."""

from __future__ import annotations

import json
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

from ddpm_studio.core.data.demo import make_demo_images
from ddpm_studio.core.model import store as model_store
from ddpm_studio.core.system.devices import choose_device

TESTS_DIR = Path(__file__).resolve().parent
STEPS = 6
STOP_AFTER = STEPS + 3  # in the resumed run, rank 1 alone is signalled as it reports this step

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
    result = torchrun(root, dumps, "train", str(data), "--out", str(out), "--preset", "tiny", "--image-size", "16",
                      "--steps", str(STEPS), "--timesteps", "50", "--batch-size", "8", "--checkpoint-every", "4",
                      "--preview-every", "3", "--preview-count", "2", "--device", "cpu", "--accumulate", "2")
    return dict(result=result, out=out, dumps=dumps, root=root)


def torchrun(root: Path, dumps: Path, *arguments: str, **environment: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               str(TESTS_DIR / "distributed_check.py"), str(dumps), *arguments]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "DDPM_STUDIO_MODELS": str(root / "user"),
           "DDPM_STUDIO_CACHE": str(root / "user" / "cache"), **environment}
    # The timeout guards against a hang (a collective that one rank never joins), not against slowness.
    return subprocess.run(command, env=env, cwd=root, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def resumed_and_stopped(run) -> dict:
    """Resume the finished run for many more steps; rank 1 alone is asked to stop at STOP_AFTER."""
    first_state = load_file(str(run["out"] / model_store.STATE_FILE))
    dumps = run["root"] / "dumps-resumed"
    result = torchrun(run["root"], dumps, "train", "--resume", "--out", str(run["out"]), "--steps", "100000",
                      "--checkpoint-every", "1000", "--preview-count", "0", "--device", "cpu",
                      STOP_RANK="1", STOP_AFTER_STEP=str(STOP_AFTER))
    return dict(result=result, dumps=dumps, first_state=first_state, out=run["out"])


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
        if not name.startswith("streams."):  # the random streams are each rank's own
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


def test_rank_0_decodes_into_the_cache_and_rank_1_waits_for_it(run):
    records = [json.loads((run["dumps"] / f"rank{rank}.cache.json").read_text()) for rank in (0, 1)]
    assert records[0]["builder"] is True and records[1]["builder"] is False
    # it opened rank 0's entry; it decoded nothing itself
    assert records[0]["decoded"] is True and records[1]["decoded"] is False
    assert records[0]["entry"] == records[1]["entry"]
    entries = list((run["root"] / "user" / "cache" / "datasets").iterdir())
    assert [str(entry) for entry in entries] == [records[0]["entry"]]  # one entry, no leftovers
    assert "Cached 24 decoded images" in run["result"].stdout or "Opened 24 decoded images" in run["result"].stdout


def test_an_explicit_cuda_device_means_each_process_own_gpu():
    """``--device cuda`` under torchrun: each process takes the GPU of its local rank, not all of them GPU 0."""
    assert choose_device("cuda", local_rank=1) == torch.device("cuda", 1)
    assert choose_device("cuda:0", local_rank=1) == torch.device("cuda", 0)
    assert choose_device("cpu", local_rank=1) == torch.device("cpu")
    if not torch.cuda.is_available():
        assert choose_device("auto", local_rank=1) == torch.device("cpu")


def test_each_rank_keeps_its_own_random_streams_across_a_resume(run, resumed_and_stopped):
    """Identical streams on two ranks would draw the same t, eps and dropout masks on both."""
    first = [load_file(str(run["dumps"] / f"rank{rank}.safetensors")) for rank in (0, 1)]
    started = [load_file(str(resumed_and_stopped["dumps"] / f"rank{rank}.started.safetensors")) for rank in (0, 1)]
    for name in ("streams.rng.torch", "streams.generator.noise"):
        assert not torch.equal(first[0][name], first[1][name]), f"{name}: both ranks drew the same numbers"
        for rank in (0, 1):  # each rank goes on where it stopped, not where rank 0 stopped
            assert torch.equal(started[rank][name], first[rank][name]), f"{name} of rank {rank} was not restored"
    saved = resumed_and_stopped["first_state"]
    assert torch.equal(saved["rank1.generator.noise"], first[1]["streams.generator.noise"])
    assert torch.equal(saved["generator.noise"], first[0]["streams.generator.noise"])


def test_a_stop_that_reaches_one_rank_stops_both_at_the_same_step_with_a_checkpoint(resumed_and_stopped):
    result = resumed_and_stopped["result"]
    output = f"{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
    # Both ranks stop after the step whose loss read-back carried rank 1's request: no rank waits
    # in a collective that the other never joins, and none fails with a lost connection.
    assert f"Stopped after step {STOP_AFTER + 1}" in result.stderr, output
    assert "RuntimeError" not in result.stderr and "Connection closed" not in result.stderr, output
    ranks = [load_file(str(resumed_and_stopped["dumps"] / f"rank{rank}.safetensors")) for rank in (0, 1)]
    for name in ranks[0]:
        if name.startswith(("model.", "ema.")):
            assert torch.equal(ranks[0][name], ranks[1][name]), f"{name} differs between the ranks"
    out = resumed_and_stopped["out"]
    assert model_store.read_model_info(out).step == STOP_AFTER + 1
    saved = load_file(str(out / model_store.STATE_FILE))
    assert len(saved["loss"]) == STOP_AFTER + 1
    for name, value in ranks[0].items():
        if name.startswith(("model.", "ema.")):
            assert torch.equal(saved[name], value), f"the saved {name} is not the final one"
    # The checkpoint taken at the agreed stop holds rank 1's streams as they were then.
    assert torch.equal(saved["rank1.generator.noise"], ranks[1]["streams.generator.noise"])
    assert torch.equal(saved["rank1.rng.torch"], ranks[1]["streams.rng.torch"])


def test_a_class_conditional_run_gives_each_rank_its_slice_of_the_labels_with_its_images(tmp_path):
    """Two ranks train with --classes: each image goes with its own class (or the null label), each step's labels
    over both ranks are the whole global draw, and both ranks end with the same class embedding."""
    from ddpm_studio.core.data.batches import draw_label_drops, draw_step

    data = tmp_path / "classes"
    rng = np.random.default_rng(0)
    levels = {"dark": 40, "mid": 120, "light": 200}  # each class its own grey level, so an image tells its class
    for name, level in levels.items():
        (data / name).mkdir(parents=True)
        for index in range(6):
            pixels = np.clip(level + rng.integers(-10, 10, (16, 16, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(data / name / f"{index}.png")
    out, dumps = tmp_path / "model", tmp_path / "dumps"
    steps, batch = 4, 8
    result = torchrun(tmp_path, dumps, "train", str(data), "--classes", "--label-dropout", "0.3", "--out", str(out),
                      "--preset", "tiny", "--image-size", "16", "--steps", str(steps), "--timesteps", "50",
                      "--batch-size", str(batch), "--checkpoint-every", "100", "--preview-count", "0",
                      "--device", "cpu", "--seed", "4")
    assert result.returncode == 0, f"{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
    null = len(levels)
    names = sorted(levels)
    seen = [json.loads((dumps / f"rank{rank}.labels.json").read_text()) for rank in (0, 1)]
    assert [len(rank) for rank in seen] == [steps, steps]
    labels = np.repeat(np.arange(3), 6)  # the dataset's labels, in its sorted order of classes and files
    for step in range(1, steps + 1):
        per_rank = [next(entry for entry in rank if entry["step"] == step) for rank in seen]
        for entry in per_rank:
            for label, mean in zip(entry["labels"], entry["means"]):
                if label != null:  # the image is of the class it is trained with
                    assert abs(mean - levels[names[label]]) < 15, (step, label, mean)
        indices, _ = draw_step(4, step, len(labels), batch)
        drops = draw_label_drops(4, step, batch, 0.3)
        expected = np.where(drops, null, labels[indices])
        assert per_rank[0]["labels"] + per_rank[1]["labels"] == expected.tolist()
    weights = [load_file(str(dumps / f"rank{rank}.safetensors")) for rank in (0, 1)]
    embedding = weights[0]["model.class_embedding.weight"]
    assert torch.equal(embedding, weights[1]["model.class_embedding.weight"]) and embedding[:3].abs().sum() > 0
    assert model_store.read_model_info(out).extra["classes"]["names"] == names
