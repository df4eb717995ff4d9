"""Shared test settings: Qt runs offscreen, torch uses few threads, and paths are temporary."""

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import torch  # noqa: E402

torch.set_num_threads(min(2, os.cpu_count() or 1))
