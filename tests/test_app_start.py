"""Launching the studio: without a display it explains itself in one line and exits non-zero."""

import os
import subprocess
import sys


def run_studio(env_changes: dict, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY", "QT_QPA_PLATFORM")}
    env.update(env_changes)
    return subprocess.run([sys.executable, "-m", "ddpm_studio"], env=env, capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


def test_without_a_display_the_window_explains_how_to_run_headless():
    result = run_studio({})
    assert result.returncode == 3
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "no display" in lines[0] and "ddpm-studio train" in lines[0] and "offscreen" in lines[0]
    assert "Traceback" not in result.stderr


def test_main_py_behaves_like_the_command():
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY", "QT_QPA_PLATFORM")}
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    result = subprocess.run([sys.executable, "main.py", "--help"], cwd=root, env=env, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0
    for command in ("train", "sample", "info", "bench", "demo-data"):
        assert command in result.stdout
