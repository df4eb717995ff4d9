"""The ``ddpm-studio`` command end to end, in real subprocesses: demo-data, train (stopped with Ctrl-C,
then resumed), sample and info; and bad input, which must give one line on stderr and exit status 2."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ddpm_studio import cli
from ddpm_studio.cli import info as cli_info
from ddpm_studio.core.data.demo import make_demo_images
from ddpm_studio.core.model import store as model_store
from ddpm_studio.core.model.unet import UNet, count_parameters
from ddpm_studio.core.sampling.job import SamplingRequest, sample_images
from ddpm_studio.core.training.config import TrainingConfig
from ddpm_studio.core.training.loop import train
from ddpm_studio.paths import BUNDLED_MODELS_DIR
from tests.helpers.cli_commands import TIMEOUT, assert_one_error_line, command, started

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cli")


@pytest.fixture(scope="module")
def env(workspace) -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1",
            "DDPM_STUDIO_MODELS": str(workspace / "user-models"), "DDPM_STUDIO_CACHE": str(workspace / "cache")}


def run_all(commands: list[list[str]], env: dict, cwd: Path) -> list[subprocess.CompletedProcess]:
    """Run commands side by side (each pays for importing torch) and wait for all of them."""
    processes = [subprocess.Popen(c, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for c in commands]
    results = []
    try:
        for c, process in zip(commands, processes):
            stdout, stderr = process.communicate(timeout=TIMEOUT)
            results.append(subprocess.CompletedProcess(c, process.returncode, stdout, stderr))
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
    return results


def run_one(args: list, env: dict, cwd: Path) -> subprocess.CompletedProcess:
    return run_all([command(*args)], env, cwd)[0]


def assert_ok(result: subprocess.CompletedProcess) -> None:
    assert result.returncode == 0, f"{result.args}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    assert "Traceback" not in result.stderr


# --- the happy path, and Ctrl-C -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def demo_folder(workspace, env) -> Path:
    folder = workspace / "shapes"
    result = run_one(["demo-data", folder, "--count", 40, "--size", 16], env, workspace)
    assert_ok(result)
    assert "Wrote 40 images" in result.stdout
    return folder


def test_demo_data_writes_small_pngs(demo_folder):
    pngs = sorted(demo_folder.glob("*.png"))
    assert len(pngs) == 40
    with Image.open(pngs[0]) as image:
        assert image.size == (16, 16) and image.mode == "RGB"


@pytest.fixture(scope="module")
def trained(workspace, env, demo_folder) -> dict:
    """Train until the first checkpoints, press Ctrl-C, then resume to the end with previews."""
    out = workspace / "models" / "shapes-tiny"
    with started(["train", demo_folder, "--out", out, "--preset", "tiny", "--image-size", 16, "--steps", 100_000,
                  "--timesteps", 50, "--batch-size", 8, "--checkpoint-every", 2, "--preview-count", 0, "--seed", 1],
                 env, workspace) as process:
        deadline = time.monotonic() + TIMEOUT
        while not ((out / model_store.CONFIG_FILE).exists() and model_store.read_model_info(out).step >= 2):
            assert process.poll() is None, process.communicate()
            assert time.monotonic() < deadline, "no checkpoint in time"
            time.sleep(0.05)
        process.send_signal(signal.SIGINT)
        stdout, stderr = process.communicate(timeout=TIMEOUT)
    interrupted = subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)
    info = model_store.read_model_info(out)
    state_step = int(model_store.read_safetensors_metadata(out / model_store.STATE_FILE)["step"])
    model_store.load_model(out)  # loadable as it was left
    target = state_step + 4
    resumed = run_one(["train", "--resume", "--out", out, "--steps", target, "--preview-every", 2,
                       "--preview-count", 4], env, workspace)
    return dict(out=out, interrupted=interrupted, info_after_stop=info, state_step=state_step, target=target,
                resumed=resumed)


def test_ctrl_c_stops_training_with_status_130_and_a_resumable_model(trained):
    interrupted = trained["interrupted"]
    assert interrupted.returncode == 130, interrupted.stderr[-3000:]
    assert "Traceback" not in interrupted.stderr
    assert "can be resumed with --resume" in interrupted.stderr
    assert "Training " in interrupted.stdout and "Finished" not in interrupted.stdout
    assert "40 images at 16x16" in interrupted.stdout
    assert "0 skipped; 1 other file ignored (not images)." in interrupted.stdout  # the demo folder's README.txt
    info = trained["info_after_stop"]
    assert info.can_resume and info.step >= 2
    assert trained["state_step"] >= info.step


def test_the_interrupted_model_resumes_where_it_stopped(trained):
    resumed = trained["resumed"]
    assert_ok(resumed)
    assert f"from step {trained['state_step']} to {trained['target']}" in resumed.stdout
    assert "Opened 40 decoded images from the cache" in resumed.stdout  # decoded once, by the first run
    assert "Cached 40 decoded images" in trained["interrupted"].stdout
    assert f"Finished {trained['target']} steps" in resumed.stdout
    info = model_store.read_model_info(trained["out"])
    assert info.step == trained["target"]
    assert len(model_store.load_loss_history(trained["out"])) == trained["target"]
    assert info.training["preview_count"] == 4 and info.unet.image_size == 16 and info.schedule.num_timesteps == 50
    assert any("--resume" in c for c in info.extra.get("commands", []))
    assert (trained["out"] / model_store.PREVIEW_FILE).is_file()
    assert len(list((trained["out"] / model_store.PREVIEW_DIR).glob("step_*.png"))) >= 2
    assert not list(trained["out"].rglob("*.tmp"))


@pytest.fixture(scope="module")
def sampled_and_described(trained, workspace, env) -> tuple:
    out = workspace / "samples"
    console_script = Path(sys.executable).with_name("ddpm-studio")
    info_command = [str(console_script), "info", str(trained["out"])] if console_script.exists() else \
        command("info", trained["out"])
    sample, info = run_all([
        command("sample", trained["out"], "--num", 4, "--sampler", "ddim", "--steps", 5, "--seed", 7, "--out", out,
                "--trajectory", "strip", "--trajectory", "gif"),
        info_command,
    ], env, workspace)
    return sample, info, out


def test_sample_writes_pngs_of_the_right_size_with_metadata(sampled_and_described, trained):
    sample, _, out = sampled_and_described
    assert_ok(sample)
    assert "Saved 4 images and a grid" in sample.stdout
    images = sorted(p for p in out.glob("*.png") if p.stem[-3:].isdigit())
    assert len(images) == 4
    for index, path in enumerate(images):
        with Image.open(path) as image:
            assert image.size == (16, 16) and image.mode == "RGB"
            assert image.text["model"] == trained["out"].name and image.text["model_step"] == str(trained["target"])
            assert image.text["seed"] == "7" and image.text["sampler"] == "ddim" and image.text["steps"] == "5"
            assert image.text["index"] == str(index)
    assert len(list(out.glob("*_grid.png"))) == 1
    assert (out / "trajectory_0.png").is_file() and (out / "trajectory_0.gif").is_file()


def test_info_describes_the_model(sampled_and_described, trained):
    _, info, _ = sampled_and_described
    assert_ok(info)
    config = model_store.read_model_info(trained["out"]).unet
    parameters = count_parameters(UNet(config))
    assert f"Trained      {trained['target']:,} steps (preset tiny)" in info.stdout
    assert f"Architecture U-Net, {parameters:,} parameters: 16x16x3, base 8, multipliers [1, 2]" in info.stdout
    assert "Schedule     linear, T = 50" in info.stdout
    assert "Resumable    yes" in info.stdout
    assert "Last loss" in info.stdout
    assert f"Dataset      40 images from {trained['out'].parents[1] / 'shapes'}" in info.stdout
    lines = info.stdout.splitlines()
    made = next(index for index, line in enumerate(lines) if line.startswith("Made by      ddpm-studio train "))
    assert "--steps 100000" in lines[made]  # the command that made it, then the one that resumed it
    resumed = f"ddpm-studio train --resume --out {trained['out']} --steps {trained['target']} --preview-every 2"
    assert lines[made + 1] == f"Resumed by   {resumed} --preview-count 4"


def test_info_lists_every_recorded_command_and_invents_no_dataset_folder(capsys):
    """The demo model was made by one command and resumed by another; its dataset was drawn, not read."""
    assert cli.main(["info", str(BUNDLED_MODELS_DIR / "demo")]) == 0
    printed = capsys.readouterr().out
    info = model_store.read_model_info(BUNDLED_MODELS_DIR / "demo")
    assert f"Made by      {info.command}\n" in printed and "--steps 4000" in info.command
    assert f"Resumed by   {info.extra['commands'][0]}\n" in printed and "--steps 8000" in info.extra["commands"][0]
    assert "Trained      8,000 steps" in printed
    assert f"Dataset      2000 images: {info.dataset['source']}\n" in printed
    assert "unknown" not in printed


# --- bad input ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    """Image folders and model folders, good and bad, made in this process."""
    root = tmp_path_factory.mktemp("bad-input")
    images = make_demo_images(12, size=16)
    (root / "images").mkdir()
    for index, image in enumerate(images):
        Image.fromarray(image).save(root / "images" / f"{index}.png")
    (root / "empty").mkdir()
    (root / "junk").mkdir()
    (root / "junk" / "notes.png").write_text("not a picture")
    (root / "junk" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0" + b"\x00" * 20)
    (root / "junk" / "empty.gif").write_bytes(b"")
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        config = TrainingConfig.for_preset("tiny", steps=1, num_timesteps=50, preview_count=0)
        tensor = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
        list(train(config, tensor, root / "model", {"count": 12, "paths": [str(root / "images")]}))
    finally:
        torch.set_num_threads(previous)
    shutil.copytree(root / "model", root / "damaged-model")
    weights = root / "damaged-model" / model_store.EMA_FILE
    weights.write_bytes(weights.read_bytes()[:1000])
    shutil.copytree(root / "model", root / "junk-json-model")
    (root / "junk-json-model" / model_store.CONFIG_FILE).write_text("{ this is not json")
    shutil.copytree(root / "model", root / "sampling-only-model")
    (root / "sampling-only-model" / model_store.STATE_FILE).unlink()
    (root / "a-file.png").write_bytes(b"x")
    (root / "not-empty").mkdir()
    (root / "not-empty" / "holiday.jpg").write_bytes(b"x")
    return {path.name: path for path in root.iterdir()}


TRAIN = ["train", "--preset", "tiny", "--image-size", "16", "--steps", "3", "--timesteps", "50", "--preview-count", "0"]

BAD_INPUT = {
    "missing folder": (lambda f: TRAIN + [f["images"].parent / "no-such-folder", "--out", f["images"].parent / "m1"],
                       "No such file or folder"),
    "empty folder": (lambda f: TRAIN + [f["empty"], "--out", f["empty"].parent / "m2"], "empty"),
    "folder of junk": (lambda f: TRAIN + [f["junk"], "--out", f["junk"].parent / "m3"], "No usable images"),
    "image size 15 for tiny": (lambda f: ["train", f["images"], "--preset", "tiny", "--image-size", "15",
                                          "--out", f["images"].parent / "m4"], "Image size 15"),
    "batch size 0": (lambda f: TRAIN + [f["images"], "--batch-size", "0", "--out", f["images"].parent / "m5"],
                     "Batch size must be at least 1"),
    "learning rate 2": (lambda f: TRAIN + [f["images"], "--lr", "2", "--out", f["images"].parent / "m6"],
                        "learning rate"),
    "zero timesteps": (lambda f: TRAIN + [f["images"], "--timesteps", "0", "--out", f["images"].parent / "m7"],
                       "at least 1"),
    "no data": (lambda f: TRAIN + ["--out", f["images"].parent / "m8"], "Give the folder of images"),
    "resume without out": (lambda f: ["train", "--resume"], "--resume needs --out"),
    "resume a sampling-only model": (lambda f: ["train", "--resume", "--out", f["sampling-only-model"], "--steps", "9"],
                                     "no training state"),
    "resume with another size": (lambda f: ["train", "--resume", "--out", f["model"], "--image-size", "32",
                                            "--steps", "9"], "cannot change when resuming"),
    "resume a finished model": (lambda f: ["train", "--resume", "--out", f["model"]], "already trained 1 steps"),
    "train over a model": (lambda f: TRAIN + [f["images"], "--out", f["model"]], "already holds a model"),
    "train with an unknown device": (lambda f: TRAIN + [f["images"], "--device", "gpu7",
                                                        "--out", f["images"].parent / "m9"], "Unknown device"),
    "sample a non-model folder": (lambda f: ["sample", f["images"], "--out", f["images"].parent / "s1"],
                                  "model.json is missing"),
    "sample a damaged model": (lambda f: ["sample", f["damaged-model"], "--out", f["images"].parent / "s2"],
                               "ema.safetensors is damaged"),
    "sample a model with junk json": (lambda f: ["sample", f["junk-json-model"], "--out", f["images"].parent / "s3"],
                                      "model.json is damaged"),
    "sample an unknown model name": (lambda f: ["sample", "no-model-by-this-name", "--out", f["images"].parent / "s4"],
                                     "No model folder at 'no-model-by-this-name'"),
    "sample zero images": (lambda f: ["sample", f["model"], "--num", "0", "--out", f["images"].parent / "s5"],
                           "number of images"),
    "sample ddim with zero steps": (lambda f: ["sample", f["model"], "--steps", "0",
                                               "--out", f["images"].parent / "s6"], "at least 1 step"),
    "sample eta 2": (lambda f: ["sample", f["model"], "--eta", "2", "--out", f["images"].parent / "s7"], "eta"),
    "sample into a file": (lambda f: ["sample", f["model"], "--out", f["a-file.png"]], "is a file"),
    "sample on an unknown device": (lambda f: ["sample", f["model"], "--device", "warp-drive",
                                               "--out", f["images"].parent / "s8"], "Unknown device"),
    "info on a non-model folder": (lambda f: ["info", f["empty"]], "model.json is missing"),
    "info on a damaged model.json": (lambda f: ["info", f["junk-json-model"]], "model.json is damaged"),
    "demo data into a folder of photos": (lambda f: ["demo-data", f["not-empty"], "--count", "3", "--size", "16"],
                                          "already holds other files"),
    "demo data of zero images": (lambda f: ["demo-data", f["images"].parent / "d0", "--count", "0"],
                                 "at least 1 image"),
    "demo data too small": (lambda f: ["demo-data", f["images"].parent / "d1", "--size", "4"], "at least 8 pixels"),
    "accumulate 0": (lambda f: TRAIN + [f["images"], "--accumulate", "0", "--out", f["images"].parent / "m11"],
                     "Accumulation must be at least 1"),
    "accumulate and micro-batch": (lambda f: TRAIN + [f["images"], "--accumulate", "2", "--micro-batch", "4",
                                                      "--out", f["images"].parent / "m12"], "not both"),
    "accumulate more than the batch": (lambda f: TRAIN + [f["images"], "--batch-size", "4", "--accumulate", "8",
                                                          "--out", f["images"].parent / "m13"], "cannot be split"),
}
if not torch.cuda.is_available():
    BAD_INPUT["sample on CUDA without a GPU"] = (
        lambda f: ["sample", f["model"], "--device", "cuda", "--out", f["images"].parent / "s9"], "CUDA")
    BAD_INPUT["train on CUDA without a GPU"] = (
        lambda f: TRAIN + [f["images"], "--device", "cuda:0", "--out", f["images"].parent / "m10"], "CUDA")


@pytest.mark.parametrize("case", BAD_INPUT)
def test_bad_input_is_one_line_on_stderr_and_status_2(folders, case, capsys):
    """In this process, through the same main() as the command (fast); the subprocess test below
    checks a few of these end to end."""
    argv, fragment = BAD_INPUT[case]
    before = sorted(p.name for p in folders["images"].parent.iterdir())
    status = cli.main([str(a) for a in argv(folders)])
    captured = capsys.readouterr()
    assert status == 2, captured
    assert_one_error_line(captured.err, fragment)
    assert "Traceback" not in captured.err + captured.out
    # Nothing half-made is left behind: no new model or sample folders.
    assert sorted(p.name for p in folders["images"].parent.iterdir()) == before


def test_a_run_that_cannot_fit_is_refused_unless_forced(folders, monkeypatch, capsys):
    """A fake, small memory limit: the tiny U-Net at 16 px needs about 0.7 MB per image in float32 (0.4 MB in bf16),
    so batch 64 does not fit in 12 MB."""
    monkeypatch.setenv("DDPM_STUDIO_MEMORY_LIMIT", "12M")
    out = folders["images"].parent / "too-big"
    argv = ["train", str(folders["images"]), "--preset", "tiny", "--image-size", "16", "--steps", "2", "--timesteps",
            "50", "--preview-count", "0", "--batch-size", "64", "--out", str(out)]
    assert cli.main(argv) == 2
    line = assert_one_error_line(capsys.readouterr().err, "at batch size 64, but the CPU has 12 MiB available")
    assert "the largest batch size that fits is " in line and "--force" in line
    assert not out.exists()

    assert cli.main(argv + ["--force"]) == 0
    captured = capsys.readouterr()
    assert "ddpm-studio: warning: Training needs about" in captured.err and "Going on (--force)" in captured.err
    assert model_store.read_model_info(out).step == 2

    # Resuming keeps batch 64: the way out is to split it, never another batch size.
    resume = ["train", "--resume", "--out", str(out), "--steps", "4"]
    assert cli.main(resume) == 2
    line = assert_one_error_line(capsys.readouterr().err, "at batch size 64")
    assert "a resumed run keeps its batch size" in line and "Lower --batch-size" not in line
    assert cli.main(resume + ["--micro-batch", "auto"]) == 0  # the largest micro-batch that fits
    capsys.readouterr()
    info = model_store.read_model_info(out)
    assert info.step == 4 and info.training["batch_size"] == 64 and info.training["micro_batch"] == "auto"
    shutil.rmtree(out)  # the bad-input tests compare this folder's contents


def test_the_largest_batch_that_fits_does_fit(monkeypatch):
    from ddpm_studio.core.model.unet import preset_config
    from ddpm_studio.core.training.memory import check_training_memory

    monkeypatch.setenv("DDPM_STUDIO_MEMORY_LIMIT", "40M")
    config = preset_config("tiny", 16)
    too_big = check_training_memory(config, 64)
    assert not too_big.fits and too_big.available == 40 * 2**20
    assert check_training_memory(config, too_big.largest_batch).fits
    assert not check_training_memory(config, too_big.largest_batch + 1).fits
    monkeypatch.setenv("DDPM_STUDIO_MEMORY_LIMIT", "1M")  # less than the weights and Adam's state
    nothing = check_training_memory(config, 1)
    assert nothing.largest_batch == 0 and "not even batch size 1 fits" in nothing.explain()
    monkeypatch.setenv("DDPM_STUDIO_MEMORY_LIMIT", "lots")
    with pytest.raises(ValueError, match="write it like 512M or 8G"):
        check_training_memory(config, 1)


SUBPROCESS_CASES = ["folder of junk", "sample a damaged model"]


def test_bad_input_in_real_processes(folders, env, workspace):
    results = run_all([command(*BAD_INPUT[case][0](folders)) for case in SUBPROCESS_CASES], env, workspace)
    for case, result in zip(SUBPROCESS_CASES, results):
        assert result.returncode == 2, (case, result.stderr)
        assert "Traceback" not in result.stderr, (case, result.stderr)
        assert_one_error_line(result.stderr, BAD_INPUT[case][1])


def test_an_unknown_choice_is_one_line_with_status_2(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["train", "--preset", "gigantic"])
    assert exit_info.value.code == 2
    assert_one_error_line(capsys.readouterr().err, "argument --preset: invalid choice: 'gigantic'")


def test_sample_computes_in_the_precision_asked_for(tmp_path):
    """The images of ``sample --precision P`` are those the engine makes in precision P from the same seed (and
    the two precisions make different images, so that the test tells them apart). The demo model: a barely trained
    one saturates to the same images in both."""
    model = BUNDLED_MODELS_DIR / "demo"
    images = {}
    for precision in ("fp32", "bf16"):
        out = tmp_path / precision
        assert cli.main(["sample", str(model), "--num", "2", "--seed", "3", "--sampler", "ddim",
                         "--steps", "2", "--device", "cpu", "--precision", precision, "--out", str(out)]) == 0
        saved = sorted(path for path in out.glob("*.png") if path.stem[-3:].isdigit())
        images[precision] = [np.asarray(Image.open(path)) for path in saved]
        request = SamplingRequest(model_path=model, num_images=2, seed=3, sampler="ddim", steps=2,
                                  device="cpu", precision=precision)
        reference = sample_images(request).images.permute(0, 2, 3, 1).numpy()
        assert len(images[precision]) == 2 and np.array_equal(np.stack(images[precision]), reference), precision
    assert not np.array_equal(np.stack(images["fp32"]), np.stack(images["bf16"]))


def test_a_programming_error_is_reported_as_a_bug_not_as_a_user_error(monkeypatch):
    """Only ``UserError`` (and the system's OSError) become one line and exit 2; a stray ValueError keeps its
    traceback."""
    def broken(args):
        raise ValueError("not enough values to unpack")

    monkeypatch.setattr(cli_info, "run", broken)
    with pytest.raises(ValueError, match="not enough values"):
        cli.main(["info", "anything"])


# --- the dataset cache ----------------------------------------------------------------------------------


def test_cache_list_and_clear(folders, cache_folder, capsys):
    from ddpm_studio.core.data.cache import open_cached_dataset

    assert cli.main(["cache", "list"]) == 0
    assert "(empty)" in capsys.readouterr().out
    list(open_cached_dataset([folders["images"]], 16))
    assert cli.main(["cache", "list"]) == 0
    listing = capsys.readouterr().out
    assert f"Dataset cache: {cache_folder}" in listing
    assert f"12 images at 16x16x3 from {folders['images']}, 0 skipped" in listing and "1 entry" in listing
    assert cli.main(["cache", "clear"]) == 0
    assert "Removed 1 cached dataset" in capsys.readouterr().out
    assert not list((cache_folder / "datasets").iterdir())


def test_sample_with_dpm_solver_takes_20_calls_in_log_snr_spacing_unless_told(tmp_path):
    model = BUNDLED_MODELS_DIR / "demo"
    runs = {"default": [], "linspace": ["--spacing", "linspace"], "steps": ["--steps", "12"]}
    for name, extra in runs.items():
        out = tmp_path / name
        assert cli.main(["sample", str(model), "--num", "1", "--sampler", "dpm-solver++", "--device", "cpu",
                         "--precision", "fp32", "--out", str(out), *extra]) == 0
        saved = next(path for path in sorted(out.glob("*.png")) if path.stem[-3:].isdigit())
        runs[name] = Image.open(saved).text
    assert (runs["default"]["steps"], runs["default"]["spacing"]) == ("20", "logsnr")
    assert (runs["linspace"]["steps"], runs["linspace"]["spacing"]) == ("20", "linspace")
    assert runs["steps"]["steps"] == "12"
