"""The base of every page of the window: its share of the context, its jobs, drops and settings."""

from __future__ import annotations

from pathlib import Path

from PySide6.QtWidgets import QWidget

from .context import StudioContext
from .workers import JobRunner


def paths_from_mime(mime) -> list[Path]:
    """Local file paths carried by a drag's QMimeData."""
    if not mime.hasUrls():
        return []
    return [Path(url.toLocalFile()) for url in mime.urls() if url.isLocalFile()]


class Page(QWidget):
    """A page owns its jobs; the window asks it whether it is busy and tells it to shut down."""

    def __init__(self, context: StudioContext, parent: QWidget | None = None):
        super().__init__(parent)
        self.context = context
        self.jobs: list[JobRunner] = []

    def start_job(self, runner: JobRunner) -> JobRunner:
        """Start a runner and keep it until its thread ends."""
        self.jobs.append(runner)
        runner.done.connect(lambda _stopped, r=runner: self.jobs.remove(r) if r in self.jobs else None)
        runner.start()
        return runner

    def is_busy(self) -> bool:
        return any(runner.is_running() for runner in self.jobs)

    def busy_description(self) -> str:
        return ", ".join(runner.name for runner in self.jobs if runner.is_running())

    def shutdown(self, timeout_ms: int = 60_000) -> None:
        """Stop this page's jobs and wait for their threads (a training run saves first)."""
        for runner in list(self.jobs):
            runner.stop()
        for runner in list(self.jobs):
            runner.wait(timeout_ms)
        self.jobs.clear()

    def handle_drop(self, paths: list[Path]) -> None:
        """Files or folders dropped while this page is showing."""

    def save_settings(self) -> None:
        """Remember this page's settings in ``self.context.settings``."""
