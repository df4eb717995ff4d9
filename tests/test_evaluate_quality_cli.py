"""``ddpm-studio evaluate --fid --kid --is`` in real subprocesses: results printed and recorded (then listed by
``info``), Ctrl-C records nothing, and missing or wrong Inception weights give one sentence and exit status 2."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from ddpm_studio import cli
from ddpm_studio.core.data.demo import write_demo_dataset
from ddpm_studio.core.evaluation.inception import WEIGHTS_FILE, WEIGHTS_SHA256_PREFIX, WEIGHTS_URL
from ddpm_studio.core.evaluation.metrics import STANDIN
from ddpm_studio.core.model import store as model_store
from tests.helpers.cli_commands import ERROR_PREFIX, TIMEOUT, command, started


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("evaluate")
    list(write_demo_dataset(folder / "shapes", count=24, size=16, seed=2))
    return folder


@pytest.fixture
def env(workspace, tmp_path) -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "DDPM_STUDIO_MODELS": str(workspace / "m"),
            "DDPM_STUDIO_CACHE": str(tmp_path / "cache"), "TORCH_HOME": str(tmp_path / "torch"),
            "DDPM_STUDIO_OFFLINE": "1"}


@pytest.fixture
def model(tiny_model, tmp_path) -> Path:
    return Path(shutil.copytree(tiny_model, tmp_path / "model"))


def run(args, env, cwd) -> subprocess.CompletedProcess:
    return subprocess.run(command(*args), env=env, cwd=cwd, capture_output=True, text=True, timeout=TIMEOUT)


def assert_one_line_error(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 2, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith(ERROR_PREFIX)]
    assert len(errors) == 1 and "Traceback" not in result.stderr, result.stderr
    return errors[0]


def test_evaluate_prints_records_and_info_lists_them(model, workspace, env, capsys):
    result = run(["evaluate", model, workspace / "shapes", "--fid", "--kid", "--num", 20, "--batch-size", 10,
                  "--steps", 3, "--feature-extractor", STANDIN], env, workspace)
    assert result.returncode == 0, result.stderr
    assert "warning: FID from 20 samples" in result.stderr
    assert "Sampling" in result.stderr and "Dataset features" in result.stderr  # the progress bars
    lines = result.stdout.splitlines()
    assert lines[0].startswith("FID ") and lines[1].startswith("KID ") and " ± " in lines[1]
    assert "20 samples, DDIM 3 steps" in lines[0] and "shapes (24 images at 16x16, RGB)" in lines[0]
    records = json.loads((model / "model.json").read_text())["evaluations"]
    assert [r["metric"] for r in records] == ["fid", "kid"]

    info = run_in_process(["info", model], capsys)
    assert info.returncode == 0, info.stderr
    listed = info.stdout.split("Evaluations", 1)[1].splitlines()
    assert len(listed) == 2 and f"FID {records[0]['value']:.4g};" in listed[0] and listed[1].split()[0] == "KID"


def run_in_process(args, capsys) -> subprocess.CompletedProcess:
    """The same entry point in this process (torch is already imported), for the quick error paths."""
    status = cli.main([str(a) for a in args])
    captured = capsys.readouterr()
    return subprocess.CompletedProcess(args, status, captured.out, captured.err)


@pytest.fixture
def offline(env, monkeypatch):
    for name in ("TORCH_HOME", "DDPM_STUDIO_OFFLINE", "DDPM_STUDIO_CACHE"):
        monkeypatch.setenv(name, env[name])


def test_missing_weights_offline_is_one_sentence_with_where_and_how(model, workspace, env, offline, capsys):
    before = (model / "model.json").read_bytes()
    line = assert_one_line_error(run_in_process(["evaluate", model, workspace / "shapes", "--kid", "--num", 8], capsys))
    checkpoints = str(Path(env["TORCH_HOME"]) / "hub" / "checkpoints")
    for needed in (WEIGHTS_FILE, WEIGHTS_SHA256_PREFIX, WEIGHTS_URL, checkpoints, "--inception-weights"):
        assert needed in line
    assert (model / "model.json").read_bytes() == before


def test_wrong_weights_files_are_refused_in_one_sentence(model, workspace, offline, tmp_path, capsys):
    absent = assert_one_line_error(run_in_process(["evaluate", model, "--kid", "--inception-weights",
                                                   tmp_path / "no.pth"], capsys))
    assert "no such file" in absent and WEIGHTS_URL in absent
    impostor = tmp_path / WEIGHTS_FILE
    impostor.write_bytes(b"\x80\x04not the weights")
    wrong = assert_one_line_error(run_in_process(["evaluate", model, workspace / "shapes", "--is",
                                                  "--inception-weights", impostor], capsys))
    assert "SHA-256" in wrong and WEIGHTS_SHA256_PREFIX in wrong


def test_ctrl_c_stops_cleanly_and_records_nothing(model, workspace, env):
    with started(["evaluate", model, workspace / "shapes", "--kid", "--num", 4000, "--batch-size", 8, "--sampler",
                  "ddpm", "--feature-extractor", STANDIN], env, workspace) as process:
        deadline = time.monotonic() + TIMEOUT
        seen = ""
        while "Sampling" not in seen:  # tqdm writes bars with carriage returns: read characters, not lines
            character = process.stderr.read(1)
            assert character or process.poll() is None, seen
            seen += character
            assert time.monotonic() < deadline, "sampling never started"
        process.send_signal(signal.SIGINT)
        stdout, stderr = process.communicate(timeout=TIMEOUT)
    assert process.returncode == 130, stderr
    assert "Stopped; nothing was recorded." in stderr and "Traceback" not in stderr
    assert model_store.evaluations(model_store.read_model_info(model)) == []
