"""Numbers as the pages show them: sizes in bytes and pixels, and durations."""

from __future__ import annotations

import time

from ddpm_studio.core.training.memory import format_bytes  # noqa: F401 (one rule for sizes, in the CLI's sentences and the pages)


def counted(count: int, noun: str, plural: str | None = None) -> str:
    """"1 image", "2 images", "1,024 images": a number with its noun, singular when it is one."""
    return f"{count:,} {noun if count == 1 else plural or noun + 's'}"


def format_duration(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    if hours:
        return f"{hours} h {minutes:02d} min"
    if minutes:
        return f"{minutes} min {seconds:02d} s"
    return f"{seconds} s"


def format_image_size(size: tuple[int, int] | list[int] | None) -> str:
    """(width, height) as "W×H", or "?" when unknown."""
    return f"{size[0]}×{size[1]}" if size else "?"


class RateClock:
    """The rate of a job's progress and its time left, counted from the first progress it reports (so that loading
    a model before it is not counted as work)."""

    def __init__(self) -> None:
        self.start()

    def start(self) -> None:
        self._first: tuple[float, int] | None = None

    def rate(self, done: int) -> float | None:
        """Units done per second since the first ``done`` seen; None until there are two to compare."""
        now = time.monotonic()
        if self._first is None:
            self._first = (now, done)
            return None
        started, first = self._first
        return (done - first) / (now - started) if done > first and now > started else None

    def left(self, done: int, total: int) -> tuple[float, str] | None:
        """(rate, "12 s") of the time left to reach ``total``, or None while unknown."""
        rate = self.rate(done)
        return None if rate is None else (rate, format_duration((total - done) / rate))
