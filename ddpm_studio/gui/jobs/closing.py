"""Closing the window while work runs: every job is asked to stop, the window says so and keeps painting,
and it closes once every job's thread has ended (a training run has saved its checkpoint by then).

Waiting for the threads on the GUI thread froze the window for seconds while a big model was saved,
with the "Stop running work?" question still drawn on it. Here the wait is the event loop's.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

from PySide6.QtCore import QEvent, QObject, Qt, QTimer, Slot
from PySide6.QtGui import QColor, QPainter
from PySide6.QtWidgets import QFrame, QLabel, QProgressBar, QVBoxLayout, QWidget

from ddpm_studio.gui.jobs.workers import JobRunner
from ddpm_studio.gui.style import MUTED_TEXT_STYLE

CLOSE_TIMEOUT_MS = 60_000  # a job not ended by then is left behind (a training run keeps its last checkpoint)
NOTICE_MS = 3_000  # how long the window says so before it closes anyway


class ClosingOverlay(QWidget):
    """Covers the window's pages while its jobs stop: a title, a sentence and a busy bar.

    ``start(...)`` asks every registered job to stop and calls ``on_finished`` in the GUI thread once
    each one's thread has ended, or, when ``timeout_ms`` has passed, after saying so for a moment
    (``left_behind`` then names the jobs still running). ``waiting`` is True in between.
    """

    def __init__(self, window: QWidget, covered: QWidget, on_finished: Callable[[], None]):
        super().__init__(window)
        self.covered = covered
        self.on_finished = on_finished
        self.runners: list[JobRunner] = []
        self.waiting = False
        self.left_behind: list[str] = []
        self.timeout_ms = CLOSE_TIMEOUT_MS
        self.deadline = QTimer(self)
        self.deadline.setObjectName("closing-deadline")
        self.deadline.setSingleShot(True)
        self.deadline.timeout.connect(self._give_up)

        self.title = QLabel()
        font = self.title.font()
        font.setPointSizeF(font.pointSizeF() * 1.6)
        font.setBold(True)
        self.title.setFont(font)
        self.sentence = QLabel()
        self.sentence.setWordWrap(True)
        self.sentence.setStyleSheet(MUTED_TEXT_STYLE)
        busy = QProgressBar()
        busy.setRange(0, 0)  # moving: the window is alive
        busy.setTextVisible(False)
        card = QFrame()
        card.setObjectName("closingCard")
        card.setStyleSheet("#closingCard { background: white; border: 1px solid #b8c0ca; border-radius: 8px; }")
        card.setFixedWidth(460)
        card_layout = QVBoxLayout(card)
        card_layout.setContentsMargins(24, 20, 24, 20)
        card_layout.setSpacing(10)
        card_layout.addWidget(self.title)
        card_layout.addWidget(self.sentence)
        card_layout.addWidget(busy)
        layout = QVBoxLayout(self)
        layout.addWidget(card, 0, Qt.AlignmentFlag.AlignCenter)
        covered.installEventFilter(self)
        self.hide()

    def start(self, title: str, sentence: str) -> None:
        self.runners = list(JobRunner.running)
        self.waiting = True
        self.title.setText(title)
        self.sentence.setText(sentence)
        self.setGeometry(self.covered.geometry())
        self.show()
        self.raise_()
        for runner in self.runners:
            runner.done.connect(self._job_done)
            runner.stop()
        self.deadline.start(self.timeout_ms)
        self._job_done(True)  # every job may have ended already

    def still_running(self) -> list[JobRunner]:
        return [runner for runner in self.runners if runner in JobRunner.running]

    @Slot(bool)
    def _job_done(self, stopped: bool) -> None:
        if self.waiting and not self.left_behind and not self.still_running():
            self._finish()

    def _give_up(self) -> None:
        if not self.waiting or not self.still_running():
            return
        self.left_behind = [runner.name for runner in self.still_running()]
        message = (f"{'; '.join(self.left_behind)} did not stop within {self.timeout_ms / 1000:g} s; the window "
                   "closes without waiting for it. A training run keeps its last saved checkpoint.")
        print(f"ddpm-studio: {message}", file=sys.stderr)
        self.title.setText("Closing anyway")
        self.sentence.setText(message)
        QTimer.singleShot(NOTICE_MS, self._finish)

    def _finish(self) -> None:
        self.waiting = False
        self.deadline.stop()
        self.on_finished()

    # --- drawing --------------------------------------------------------------------------------------
    def eventFilter(self, watched: QObject, event: QEvent) -> bool:
        if watched is self.covered and event.type() in (QEvent.Type.Resize, QEvent.Type.Move):
            self.setGeometry(self.covered.geometry())
        return False

    def paintEvent(self, event) -> None:
        painter = QPainter(self)
        painter.fillRect(self.rect(), QColor(240, 242, 245, 190))  # the pages fade behind the card
