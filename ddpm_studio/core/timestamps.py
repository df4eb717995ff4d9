"""The time as model folders and evaluation records write it: UTC, ISO 8601, to the second."""

from __future__ import annotations

import datetime


def now_iso() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
