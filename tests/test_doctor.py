"""``ddpm-studio doctor`` on the CPU: valid JSON, the CPU checks run and pass within their stated
tolerances, and the CUDA checks are reported as skipped, never as passed."""

from __future__ import annotations

import json

import pytest
import torch

from ddpm_studio import cli
from ddpm_studio.core.system.doctor import FAILED, PASSED, SKIPPED, check_two_processes


@pytest.fixture(scope="module")
def doctor_run(tmp_path_factory) -> tuple[int, dict]:
    path = tmp_path_factory.mktemp("doctor") / "sub" / "doctor-cpu.json"
    status = cli.main(["doctor", "--quick", "--device", "cpu", "--json", str(path)])
    return status, json.loads(path.read_text())


def test_doctor_writes_valid_json_with_versions_and_devices(doctor_run):
    status, report = doctor_run
    assert status == 0
    environment = report["environment"]
    assert environment["torch"] == torch.__version__ and environment["python"]
    assert environment["run_device"] == "cpu" and isinstance(environment["cpu"]["native_bf16"], bool)
    assert isinstance(environment["gpus"], list) and "nccl_available" in environment


def test_cpu_checks_pass_within_their_stated_tolerances(doctor_run):
    checks = {check["name"]: check for check in doctor_run[1]["checks"]}
    for name in ("bf16 loss vs fp32", "channels_last vs default"):
        check = checks[name]
        assert check["status"] == PASSED, check
        # a real comparison: the two ways differ a little (random weights), within the tolerance
        assert 0 < check["difference"] <= check["tolerance"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU machine these run")
def test_cuda_checks_are_skipped_not_passed(doctor_run):
    checks = {check["name"]: check for check in doctor_run[1]["checks"]}
    for name in ("compiled vs eager", "2-process NCCL DDP"):
        assert checks[name]["status"] == SKIPPED and checks[name]["difference"] is None
        assert checks[name]["detail"]  # says why
    assert not any(check["status"] == FAILED for check in checks.values())
    speed = [m for m in doctor_run[1]["measurements"] if m["name"] == "GPU speed options"]
    assert speed and speed[0]["value"] is None and speed[0]["detail"].startswith("skipped")


def test_throughput_is_measured(doctor_run):
    measurements = {m["name"]: m for m in doctor_run[1]["measurements"]}
    train = [m for name, m in measurements.items() if name.startswith("train ")]
    sample = [m for name, m in measurements.items() if name.startswith("sample DDPM") or name.startswith("sample DDIM")]
    assert train and all(m["value"] > 0 and m["unit"] == "images/s" for m in train)
    assert len(sample) >= 2 and all(m["value"] > 0 and m["unit"] == "image-steps/s" for m in sample)


def test_the_two_process_check_runs_ddp_to_identical_weights_with_gloo():
    """The code of the NCCL check, on the CPU's backend."""
    check = check_two_processes("gloo", quick=False)
    assert check.status == PASSED, check.detail
    assert check.difference == 0.0


def test_a_folder_as_json_path_is_one_line_error(tmp_path, capsys):
    assert cli.main(["doctor", "--quick", "--json", str(tmp_path)]) == 2
    assert "is a folder" in capsys.readouterr().err
