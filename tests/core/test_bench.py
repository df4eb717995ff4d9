"""The bench's cost of KID during training: sampling from the measured speed, KID's subsets timed, a safe interval."""

from __future__ import annotations

import re

import torch

from ddpm_studio.core.system.bench import BenchSettings, kid_cost


def test_kid_cost_adds_up_and_suggests_an_interval(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # no Inception weights here: that part is said to be unmeasured
    monkeypatch.setenv("DDPM_STUDIO_OFFLINE", "1")
    (line,) = kid_cost(BenchSettings(eval_num=40), torch.device("cpu"), solver_images_per_second=2.0,
                       steps_per_second=0.5, image_size=16)
    assert "sampling 20.0 s (DPM-Solver++ 20)" in line and "Inception features not measured (weights absent)" in line
    kid, total, steps, interval = re.search(r"KID ([\d.]+) s = ([\d.]+) s, the time of ([\d,]+) training steps; "
                                            r"--eval-every ([\d,]+)", line).groups()
    assert float(total) == float(kid) + 20.0 or abs(float(total) - float(kid) - 20.0) < 0.11
    assert int(interval.replace(",", "")) >= 10 * int(steps.replace(",", "")) - 10
