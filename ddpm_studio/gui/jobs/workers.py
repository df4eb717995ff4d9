"""Runs core iterators (a scan, training, sampling) in a QThread and turns their events into Qt signals.

The worker checks a stop flag between events and, when it is set, closes the iterator so
the job's own cleanup runs (training saves a checkpoint). Signals are throttled: progress at
20 Hz at most (progress events not yet shown are folded together by the job's own merge rule,
so that, say, no loss value is dropped) and images at 4 Hz at most. A ``UserError`` arrives as
its sentence; anything else is a bug, reported as one with its traceback in the log.

Pages do not use these classes directly: ``jobs.JobController`` starts and follows them.
"""

from __future__ import annotations

import threading
import time
import traceback
import weakref
from collections.abc import Callable, Iterator

from PySide6.QtCore import QObject, QThread, Signal, Slot

from ddpm_studio.core.errors import UserError, describe_os_error

PROGRESS_INTERVAL = 1 / 20
IMAGE_INTERVAL = 1 / 4


def readable_error(error: BaseException) -> str:
    """One sentence for the user: a user error's own, the system's for a file, else a bug named as one."""
    if isinstance(error, UserError):
        return str(error)
    if isinstance(error, OSError):
        return describe_os_error(error)
    return f"A bug in DDPM Studio stopped this job ({type(error).__name__}: {error}); the log has the details."


def report(error: BaseException) -> str:
    """Print a bug's traceback to the log (not a user's mistake's) and return the sentence to show."""
    if not isinstance(error, (UserError, OSError)):
        traceback.print_exception(error)
    return readable_error(error)


class Throttle:
    """True at most once per ``interval`` seconds."""

    def __init__(self, interval: float):
        self.interval = interval
        self.last = float("-inf")

    def ready(self) -> bool:
        now = time.monotonic()
        if now - self.last >= self.interval:
            self.last = now
            return True
        return False


def keep_newest(pending: object | None, event: object) -> object:
    """The default merge rule: a newer progress event replaces one not yet shown."""
    return event


MergeRule = Callable[[object | None, object], object]


class JobWorker(QObject):
    """Drives one iterator in its thread. Construct it, then hand it to ``JobRunner``."""

    event = Signal(object)  # every event not throttled (starts, results, checkpoints, previews)
    progress = Signal(object)  # events of ``progress_types``, 20 Hz at most
    image = Signal(object)  # whatever ``image_from`` makes of an event, 4 Hz at most
    failed = Signal(str)
    finished = Signal(bool)  # True when the user stopped it

    def __init__(
        self,
        make_iterator: Callable[[], Iterator],
        progress_types: tuple[type, ...] = (),
        image_from: Callable[[object], object | None] | None = None,
        merge: MergeRule = keep_newest,
    ):
        """``merge(pending, event)`` folds a progress event into the one not yet emitted (None if none)."""
        super().__init__()
        self._make_iterator = make_iterator
        self._progress_types = progress_types
        self._merge = merge
        self._image_from = image_from
        self._stop_requested = threading.Event()

    def request_stop(self) -> None:
        self._stop_requested.set()

    @property
    def stop_requested(self) -> bool:
        return self._stop_requested.is_set()

    @Slot()
    def run(self) -> None:
        progress_throttle, image_throttle = Throttle(PROGRESS_INTERVAL), Throttle(IMAGE_INTERVAL)
        pending_progress = None
        iterator = None
        try:
            iterator = self._make_iterator()
            for event in iterator:
                if isinstance(event, self._progress_types):
                    pending_progress = self._merge(pending_progress, event)
                    if progress_throttle.ready():
                        self.progress.emit(pending_progress)
                        pending_progress = None
                else:
                    if pending_progress is not None:
                        self.progress.emit(pending_progress)
                        pending_progress = None
                    self.event.emit(event)
                if self._image_from is not None and image_throttle.ready():
                    picture = self._image_from(event)
                    if picture is not None:
                        self.image.emit(picture)
                    else:
                        image_throttle.last = float("-inf")  # nothing shown: try again at the next event
                if self._stop_requested.is_set():
                    break
        except Exception as error:  # reported to the window, never a crash
            self.failed.emit(report(error))
        finally:
            if iterator is not None and hasattr(iterator, "close"):
                try:
                    iterator.close()  # the job's cleanup: training saves its checkpoint here
                except Exception as error:
                    self.failed.emit(report(error))
            if pending_progress is not None:
                self.progress.emit(pending_progress)
            self.finished.emit(self._stop_requested.is_set())
            # Quit from inside the thread, so a main thread blocked in wait() is not needed to deliver it.
            self.thread().quit()


class JobRunner(QObject):
    """Owns a worker and its QThread: start, stop, wait.

    ``running`` is the one registry of jobs: every runner started and not yet joined. Closing the
    window drains it. ``ask_before_close`` says whether stopping the job is worth a question
    (a training run is; a memory estimate is not).
    """

    running: weakref.WeakSet[JobRunner] = weakref.WeakSet()
    done = Signal(bool)

    def __init__(self, worker: JobWorker, name: str = "job", parent: QObject | None = None,
                 ask_before_close: bool = True):
        super().__init__(parent)
        self.worker = worker
        self.name = name
        self.ask_before_close = ask_before_close
        self.thread = QThread()
        self.thread.setObjectName(f"ddpm-{name}")
        worker.moveToThread(self.thread)
        self.thread.started.connect(worker.run)
        self.thread.finished.connect(self._on_thread_finished)
        self._stopped_by_user = False
        worker.finished.connect(self._remember_stop)

    def start(self) -> None:
        JobRunner.running.add(self)
        self.thread.start()

    def stop(self) -> None:
        """Ask the job to stop after its current step; returns at once."""
        self.worker.request_stop()

    def wait(self, timeout_ms: int = 30_000) -> bool:
        """Block until the thread has ended (the job's cleanup included)."""
        finished = self.thread.wait(timeout_ms)
        if finished:
            JobRunner.running.discard(self)
        return finished

    def is_running(self) -> bool:
        return self.thread.isRunning()

    @Slot(bool)
    def _remember_stop(self, stopped: bool) -> None:
        self._stopped_by_user = stopped

    @Slot()
    def _on_thread_finished(self) -> None:
        JobRunner.running.discard(self)
        self.done.emit(self._stopped_by_user)


def busy_job_names() -> list[str]:
    """The names of the running jobs that closing the window would interrupt."""
    return [runner.name for runner in list(JobRunner.running) if runner.ask_before_close and runner.is_running()]


def stop_all_jobs(timeout_ms: int = 60_000) -> bool:
    """Stop every running job and wait for its thread; True when all have ended."""
    runners = list(JobRunner.running)
    for runner in runners:
        runner.stop()
    return all(runner.wait(timeout_ms) for runner in runners)
