"""The job worker: stop takes effect within one event, cleanup runs, signals are throttled, errors arrive as text."""

import threading

from ddpm_studio.core.errors import SettingError
from ddpm_studio.core.training.events import StepEvent, merge_step_events
from ddpm_studio.gui.jobs.workers import JobRunner, JobWorker


class CountingJob:
    """An endless iterator of training-like steps that records how far it got and whether it cleaned up."""

    def __init__(self, stop_after: int | None = None):
        self.produced = 0
        self.cleaned_up = False
        self.reached = threading.Event()  # the job is at step ``stop_after``...
        self.proceed = threading.Event()  # ...and waits here until the test has asked it to stop
        self.stop_after = stop_after

    def __call__(self):
        try:
            while True:
                self.produced += 1
                yield StepEvent(self.produced, 10**9, 1e-3, [1.0 / self.produced], None, None)
                if self.stop_after is not None and self.produced == self.stop_after:
                    self.reached.set()
                    self.proceed.wait(10)
        finally:
            self.cleaned_up = True


def test_stop_takes_effect_within_one_step_and_runs_the_jobs_cleanup(qtbot):
    job = CountingJob(stop_after=50)
    worker = JobWorker(job, progress_types=(StepEvent,), merge=merge_step_events)
    runner = JobRunner(worker, "counting")
    losses = []
    worker.progress.connect(lambda event: losses.extend(event.losses))
    with qtbot.waitSignal(runner.done, timeout=10_000) as finished:
        runner.start()
        assert job.reached.wait(10)
        runner.stop()
        job.proceed.set()
    assert finished.args == [True]  # stopped by the user
    assert job.produced == 51  # the step in flight when Stop was pressed finishes; no other starts
    assert job.cleaned_up
    qtbot.waitUntil(lambda: len(losses) == job.produced, timeout=5_000)
    assert losses == [1.0 / step for step in range(1, job.produced + 1)]  # throttling merged, dropped none


def test_an_error_in_the_job_arrives_as_a_sentence(qtbot):
    def failing():
        yield StepEvent(1, 2, 1e-3, [0.5], None, None)
        raise SettingError("The folder holds no usable images.")

    worker = JobWorker(failing, progress_types=(StepEvent,))
    runner = JobRunner(worker, "failing")
    messages = []
    worker.failed.connect(messages.append)
    with qtbot.waitSignal(runner.done, timeout=10_000) as finished:
        runner.start()
    assert finished.args == [False]
    qtbot.waitUntil(lambda: messages == ["The folder holds no usable images."], timeout=5_000)
    assert not runner.is_running()


def test_a_programming_error_is_reported_as_a_bug_with_its_traceback_in_the_log(qtbot, capfd):
    def buggy():
        yield StepEvent(1, 2, 1e-3, [0.5], None, None)
        raise ValueError("too many values to unpack")

    worker = JobWorker(buggy)
    runner = JobRunner(worker, "buggy")
    messages = []
    worker.failed.connect(messages.append)
    with qtbot.waitSignal(runner.done, timeout=10_000):
        runner.start()
    qtbot.waitUntil(lambda: len(messages) == 1, timeout=5_000)
    assert "bug" in messages[0] and "ValueError: too many values to unpack" in messages[0]
    log = capfd.readouterr().err
    assert "Traceback" in log and "in buggy" in log
