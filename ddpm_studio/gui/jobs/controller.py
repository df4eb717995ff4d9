"""The one job controller: every page starts, follows and stops its long jobs the same way.

``JobController.run(make_iterator, on_event=..., on_progress=..., on_image=..., on_error=...,
on_done=...)`` runs a core iterator in a worker thread and calls the page back in the GUI
thread. The controller owns what every job shows: the Stop button, the progress bar and the
status line (a page lays them out where it likes). Only the current job reaches the page:
starting a new one stops the old one, and whatever the old one still sends is dropped. Every
job is registered in ``JobRunner.running``, the one registry that closing the window drains.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from PySide6.QtCore import QObject, Slot
from PySide6.QtWidgets import QLabel, QProgressBar, QPushButton, QWidget

from ddpm_studio.gui.jobs.workers import JobRunner, JobWorker, MergeRule, keep_newest
from ddpm_studio.gui.style import ACTION_BUTTON_HEIGHT, ERROR_TEXT_STYLE
from ddpm_studio.gui.widgets.status_line import StatusBox, StatusLabel

Callback = Callable[[object], None]


class _Relay(QObject):
    """Receives one job's signals in the GUI thread and passes them on while that job is current.

    A QObject of the GUI thread, so that Qt queues the worker thread's signals to it (a plain
    Python callable would be called in the worker thread).
    """

    def __init__(self, controller: JobController, runner: JobRunner, callbacks: dict[str, Callable | None]):
        super().__init__(controller)
        self.controller = controller
        self.runner = runner
        self.callbacks = callbacks
        worker = runner.worker
        worker.progress.connect(self.on_progress)
        worker.event.connect(self.on_event)
        worker.image.connect(self.on_image)
        worker.failed.connect(self.on_failed)
        runner.done.connect(self.on_done)

    def _current(self) -> bool:
        return self.controller.current is self.runner

    def _call(self, name: str, value) -> None:
        callback = self.callbacks.get(name)
        if callback is not None and self._current():
            callback(value)

    @Slot(object)
    def on_progress(self, event) -> None:
        self._call("progress", event)

    @Slot(object)
    def on_event(self, event) -> None:
        self._call("event", event)

    @Slot(object)
    def on_image(self, picture) -> None:
        self._call("image", picture)

    @Slot(str)
    def on_failed(self, message: str) -> None:
        if self._current():
            self.controller._failed(message, self.callbacks.get("error"))

    @Slot(bool)
    def on_done(self, stopped: bool) -> None:
        if self._current():
            self.controller._finished(stopped, self.callbacks.get("done"))
        self.deleteLater()


class JobController(QObject):
    """Runs one job at a time for a page, with its Stop button, progress bar and status line.

    ``with_controls=False`` makes a controller for quiet background work (a memory estimate):
    no widgets, and closing the window does not ask before stopping it.
    """

    def __init__(self, page: QWidget, name: str = "job", with_controls: bool = True,
                 stopping_text: str = "Stopping…"):
        super().__init__(page)
        self.page = page
        self.name = name
        self.with_controls = with_controls
        self.stopping_text = stopping_text
        self.current: JobRunner | None = None
        self.stop_button: QPushButton | None = None
        self.progress_bar: QProgressBar | None = None
        self.status_label: QLabel | None = None
        self.status_box: StatusBox | None = None
        self.idle_format = ""  # the progress bar's text between jobs and after a failure
        self.changed: Callable[[], None] = lambda: None  # the page's "update what is enabled", after every change
        if with_controls:
            self.stop_button = QPushButton("Stop")
            self.stop_button.setMinimumHeight(ACTION_BUTTON_HEIGHT)
            self.stop_button.setEnabled(False)
            self.stop_button.clicked.connect(self.stop)
            self.progress_bar = QProgressBar()
            self.reset_progress()
            self.status_label = StatusLabel()
            self.status_label.setWordWrap(True)
            self.status_box = StatusBox(self.status_label)  # what the page lays out

    # --- running ----------------------------------------------------------------------------------
    def run(
        self,
        make_iterator: Callable[[], Iterator],
        *,
        name: str | None = None,
        status: str | None = None,
        progress_format: str | None = None,
        progress_types: tuple[type, ...] = (),
        merge: MergeRule = keep_newest,
        image_from: Callable[[object], object | None] | None = None,
        on_progress: Callback | None = None,
        on_event: Callback | None = None,
        on_image: Callback | None = None,
        on_error: Callable[[str], None] | None = None,
        on_done: Callable[[bool], None] | None = None,
    ) -> JobRunner:
        """Start ``make_iterator()`` in a worker thread; a job still running is stopped and no longer heard.

        Events of ``progress_types`` go to ``on_progress`` (20 Hz at most, folded by ``merge``),
        every other event to ``on_event``; ``image_from(event)`` is made in the worker thread and
        its result goes to ``on_image`` (4 Hz at most). A failure shows on the status line in red
        unless ``on_error`` takes it; ``on_done(stopped_by_user)`` comes last. ``status`` is the
        status line while the job starts; ``progress_format`` the bar's text (None: a busy bar
        until the page reports progress).
        """
        if self.current is not None:
            self.current.stop()  # it ends in its own time; its signals are dropped from now on
        worker = JobWorker(make_iterator, progress_types=progress_types, image_from=image_from, merge=merge)
        runner = JobRunner(worker, name or self.name, parent=self, ask_before_close=self.with_controls)
        _Relay(self, runner, {"progress": on_progress, "event": on_event, "image": on_image, "error": on_error,
                              "done": on_done})
        self.current = runner
        if self.progress_bar is not None:
            if progress_format is None:
                self.progress_bar.setRange(0, 0)
            else:
                self.reset_progress(progress_format)
        if status is not None:
            self.set_status(status)
        runner.start()
        self._update_controls()
        return runner

    def stop(self) -> None:
        """Ask the current job to stop after its current step."""
        if self.current is not None and not self.current.worker.stop_requested:
            self.current.stop()
            self.set_status(self.stopping_text)
            self._update_controls()

    def is_running(self) -> bool:
        """True from the start of a job until the page has taken in its end."""
        return self.current is not None

    def stop_requested(self) -> bool:
        return self.current is not None and self.current.worker.stop_requested

    # --- the controls -----------------------------------------------------------------------------
    def set_status(self, text: str, error: bool = False) -> None:
        if self.status_label is not None:
            style = ERROR_TEXT_STYLE if error else ""
            if self.status_label.styleSheet() != style:  # a new style sheet re-polishes the label: only on a change
                self.status_label.setStyleSheet(style)
            self.status_label.setText(text)

    def show_progress(self, done: int, total: int) -> None:
        if self.progress_bar is not None:
            self.progress_bar.setRange(0, max(1, total))
            self.progress_bar.setValue(done)

    def finish_progress(self) -> None:
        """Fill the bar: the job has delivered its result."""
        if self.progress_bar is not None:
            self.progress_bar.setValue(self.progress_bar.maximum())

    def reset_progress(self, text_format: str | None = None) -> None:
        """An empty bar, with ``text_format`` as its text (None: ``idle_format``)."""
        if self.progress_bar is not None:
            self.progress_bar.setRange(0, 1)
            self.progress_bar.setValue(0)
            self.progress_bar.setFormat(self.idle_format if text_format is None else text_format)

    def _update_controls(self) -> None:
        if self.stop_button is not None:
            self.stop_button.setEnabled(self.current is not None and not self.current.worker.stop_requested)
        self.changed()

    # --- the current job's end --------------------------------------------------------------------
    def _failed(self, message: str, on_error: Callable[[str], None] | None) -> None:
        self.reset_progress()
        if on_error is not None:
            on_error(message)
        else:
            self.set_status(message, error=True)

    def _finished(self, stopped: bool, on_done: Callable[[bool], None] | None) -> None:
        self.current = None
        if self.stop_button is not None:
            self.stop_button.setEnabled(False)
        if on_done is not None:
            on_done(stopped)
        self._update_controls()
