"""The base of every page of the window: its share of the context, its job controller, drops and settings."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from PySide6.QtWidgets import QWidget

from ddpm_studio.core.errors import UserError, describe_os_error
from ddpm_studio.gui.context import StudioContext
from ddpm_studio.gui.jobs.controller import JobController
from ddpm_studio.gui.jobs.workers import JobRunner


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

    def export_file(self, write: Callable[[], Path]) -> Path | None:
        """Run ``write`` (an export that returns the file it wrote) and say on the page what came of it: the file's
        name, or the sentence of the user's error (a folder that cannot be written, an impossible setting)."""
        try:
            written = write()
        except OSError as error:
            self.jobs.set_status(f"Could not export: {describe_os_error(error)}.", error=True)
            return None
        except UserError as error:
            self.jobs.set_status(f"Could not export: {error}", error=True)
            return None
        self.jobs.set_status(f"Exported {written.name}.")
        self.context.show_message(f"Exported {written}.")
        return written

    def _update_enabled(self) -> None:
        """Enable what may be used now (called whenever a job starts, is asked to stop or ends)."""

    def shutdown(self) -> None:
        """The window is closing: start no new work and stop timers (the window stops the jobs)."""

    def handle_drop(self, paths: list[Path]) -> None:
        """Files or folders dropped while this page is showing."""

    def save_settings(self) -> None:
        """Remember this page's settings in ``self.context.settings``."""
