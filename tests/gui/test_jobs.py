"""The job controller: one current job per page, stale jobs unheard, the controls follow the job, failures shown."""

import threading

from PySide6.QtWidgets import QWidget

from ddpm_studio.core.errors import SettingError
from ddpm_studio.gui.jobs.controller import JobController
from ddpm_studio.gui.jobs.workers import JobRunner, busy_job_names


def held_job(tag: str, gate: threading.Event, count: int = 3):
    """A job that yields ``count`` events tagged ``tag``, the first at once and the rest after ``gate`` opens."""

    def run():
        yield (tag, 0)
        gate.wait(10)
        for index in range(1, count):
            yield (tag, index)

    return run


def test_a_new_job_stops_the_old_one_whose_signals_no_longer_reach_the_page(qtbot):
    page = QWidget()
    qtbot.addWidget(page)
    jobs = JobController(page, "counting")
    seen, ended = [], []
    first_gate, second_gate = threading.Event(), threading.Event()
    first = jobs.run(held_job("first", first_gate), on_event=seen.append,
                     on_done=lambda stopped: ended.append(("first", stopped)))
    qtbot.waitUntil(lambda: seen == [("first", 0)], timeout=10_000)
    assert jobs.stop_button.isEnabled() and jobs.is_running()

    second = jobs.run(held_job("second", second_gate), on_event=seen.append,
                      on_done=lambda stopped: ended.append(("second", stopped)))
    assert first.worker.stop_requested and jobs.current is second
    first_gate.set()  # the first job sends what it still has, then ends: none of it may arrive
    with qtbot.waitSignal(first.done, timeout=10_000):
        pass
    second_gate.set()
    qtbot.waitUntil(lambda: ended == [("second", False)], timeout=10_000)
    assert [event for event in seen if event[0] == "first"] == [("first", 0)]
    assert [event for event in seen if event[0] == "second"] == [("second", 0), ("second", 1), ("second", 2)]
    assert not jobs.is_running() and not jobs.stop_button.isEnabled()


def test_stop_asks_the_job_to_stop_and_says_so(qtbot):
    page = QWidget()
    qtbot.addWidget(page)
    jobs = JobController(page, "counting", stopping_text="Stopping and saving…")
    gate = threading.Event()
    ended = []
    runner = jobs.run(held_job("only", gate, count=1000), on_done=ended.append)
    assert busy_job_names() == ["counting"] and runner in JobRunner.running
    jobs.stop_button.click()
    assert jobs.status_label.text() == "Stopping and saving…" and not jobs.stop_button.isEnabled()
    gate.set()
    qtbot.waitUntil(lambda: ended == [True], timeout=10_000)
    assert busy_job_names() == []


def test_a_failure_shows_on_the_status_line_in_red_unless_the_page_takes_it(qtbot):
    page = QWidget()
    qtbot.addWidget(page)
    jobs = JobController(page, "failing")

    def failing():
        yield 1
        raise SettingError("Batch size must be at least 1, not 0.")

    jobs.run(failing, progress_format="%v of %m steps")
    qtbot.waitUntil(lambda: not jobs.is_running(), timeout=10_000)
    assert jobs.status_label.text() == "Batch size must be at least 1, not 0."
    assert "color" in jobs.status_label.styleSheet()
    assert jobs.progress_bar.value() == 0 and jobs.progress_bar.format() == ""

    taken = []
    jobs.run(failing, on_error=taken.append)
    qtbot.waitUntil(lambda: not jobs.is_running(), timeout=10_000)
    assert taken == ["Batch size must be at least 1, not 0."]


def test_background_jobs_have_no_controls_and_do_not_hold_up_closing(qtbot):
    page = QWidget()
    qtbot.addWidget(page)
    estimates = JobController(page, "memory estimate", with_controls=False)
    gate = threading.Event()
    results = []
    estimates.run(held_job("estimate", gate, count=2), on_event=results.append)
    assert estimates.stop_button is None and busy_job_names() == []
    gate.set()
    qtbot.waitUntil(lambda: not estimates.is_running(), timeout=10_000)
    assert results == [("estimate", 0), ("estimate", 1)]


def test_a_new_status_repaints_the_line_alone_and_a_longer_one_makes_room(qtbot):
    """Status texts that change at every step ask the page for no layout; a text needing another line gets it."""
    from PySide6.QtCore import QEvent, QObject
    from PySide6.QtWidgets import QApplication, QLabel, QVBoxLayout

    page = QWidget()
    qtbot.addWidget(page)
    jobs = JobController(page, "sampling")
    layout = QVBoxLayout(page)
    layout.addWidget(QLabel("Settings above the status line"))
    layout.addWidget(jobs.status_box)
    layout.addWidget(jobs.progress_bar)
    page.resize(300, 300)
    page.show()
    qtbot.waitExposed(page)
    jobs.set_status("Sampling: step 1 of 1000.")
    qtbot.wait(100)
    height = jobs.status_box.height()
    assert height >= 2 * jobs.status_label.fontMetrics().lineSpacing()  # two lines kept from the start

    requests = []

    class Filter(QObject):
        def eventFilter(self, obj, event):
            if event.type() == QEvent.Type.LayoutRequest and obj is page:
                requests.append(obj)
            return False

    watcher = Filter()
    QApplication.instance().installEventFilter(watcher)
    try:
        for step in range(2, 60):
            jobs.set_status(f"Sampling: step {step} of 1000, t = {1001 - step} · "
                            f"4{step % 10}.1 steps/s · {step} s left.")
            QApplication.instance().processEvents()
    finally:
        QApplication.instance().removeEventFilter(watcher)
    assert requests == [] and jobs.status_box.height() == height
    assert jobs.status_label.geometry() == jobs.status_box.rect()  # the label fills its box

    long_text = " ".join(["A sentence that cannot fit on two lines of a narrow column."] * 3)
    jobs.set_status(long_text)
    qtbot.waitUntil(lambda: jobs.status_box.height() > height)
    assert jobs.status_box.height() >= jobs.status_label.heightForWidth(jobs.status_box.width())
    jobs.set_status("Done.")  # it never shrinks back, so the page below does not jump at each text
    qtbot.wait(50)
    assert jobs.status_box.height() > height and jobs.status_label.text() == "Done."
