"""The base of every page of the window: its share of the context, its job controller, drops and settings."""

from __future__ import annotations

from pathlib import Path

from PySide6.QtWidgets import QWidget

from ddpm_studio.gui.context import StudioContext
from ddpm_studio.gui.jobs.controller import JobController
from ddpm_studio.gui.jobs.workers import JobRunner


def paths_from_mime(mime) -> list[Path]:
    """Local file paths carried by a drag's QMimeData."""
    if not mime.hasUrls():
        return []
    return [Path(url.toLocalFile()) for url in mime.urls() if url.isLocalFile()]


class Page(QWidget):
    """A page runs its long jobs through ``self.jobs`` (see ``jobs.JobController``), which owns its
    Stop button, progress bar and status line; the page lays those out and reacts to events."""

    def __init__(self, context: StudioContext, parent: QWidget | None = None, job_name: str = "job",
                 stopping_text: str = "Stopping…"):
        super().__init__(parent)
        self.context = context
        self.jobs = JobController(self, job_name, stopping_text=stopping_text)
        self.jobs.changed = self._update_enabled

    @property
    def runner(self) -> JobRunner | None:
        """The page's current job, None when it has none."""
        return self.jobs.current

    def run_job(self, make_iterator, **options) -> JobRunner:
        """``self.jobs.run``: start a job, see ``JobController.run`` for the callbacks."""
        return self.jobs.run(make_iterator, **options)

    def _update_enabled(self) -> None:
        """Enable what may be used now (called whenever a job starts, is asked to stop or ends)."""

    def shutdown(self) -> None:
        """The window is closing: start no new work and stop timers (the window stops the jobs)."""

    def handle_drop(self, paths: list[Path]) -> None:
        """Files or folders dropped while this page is showing."""

    def save_settings(self) -> None:
        """Remember this page's settings in ``self.context.settings``."""
