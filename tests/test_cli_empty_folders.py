"""``ddpm-studio train`` on folders without a usable image, one after the other: each error names its own
folder (they once shared one cache entry, so the second named the first)."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.helpers.cli_commands import ERROR_PREFIX, TIMEOUT


def train(folder, env: dict, cwd) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ddpm_studio", "train", str(folder)], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=TIMEOUT)


def error_line(result: subprocess.CompletedProcess) -> str:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2 and len(lines) == 1 and lines[0].startswith(ERROR_PREFIX), result.stderr
    return lines[0]


def test_each_empty_folder_is_named_in_its_own_error(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DDPM_STUDIO_MODELS": str(tmp_path / "models"),
           "DDPM_STUDIO_CACHE": str(tmp_path / "cache")}
    (tmp_path / "e").mkdir()
    (tmp_path / "t").mkdir()
    (tmp_path / "t" / "a.txt").write_text("hi\n")

    empty = error_line(train("e", env, tmp_path))
    assert f"No usable images in {tmp_path / 'e'}: the folder is empty." in empty

    text_only = error_line(train("t", env, tmp_path))
    assert f"No usable images in {tmp_path / 't'}: 1 file found, but no file has an image extension" in text_only
    assert str(tmp_path / "e") not in text_only
