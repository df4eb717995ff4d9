"""Python's cycle collector, run only in the GUI thread while the window is open, and never over all objects at once.

Left automatic, the collector runs in whichever thread happens to allocate when a threshold
is crossed: often a training or scanning worker. Collecting there can free Qt objects (a
worker's wrapper, a pyqtgraph item caught in a reference cycle) from the wrong thread, and
Qt then crashes. So the window turns automatic collection off and collects from a timer in
its own thread instead, generation by generation as the thresholds say (pyqtgraph's
``util.garbage_collector`` does the same).

A full collection walks every object the process holds: with torch, sympy (which torch
imports for the memory estimate), Qt and the window that is over 200,000 objects, and the
walk stalled the window for 60 ms on a quiet machine and 250 ms on a busy one. Most cyclic
garbage dies young, in generations 0 and 1, which stay cheap. What survives into generation
2 is frozen instead (``gc.freeze``: no collection walks it), and one deep collection of
everything runs at most every ten minutes, at a moment when no job runs and no mouse button
is held, and when the window closes.

The timer looks often (a look costs nothing), so that a young generation is collected while it is
small. A burst of allocation between two looks (a worker importing a large module: torch's fake
tensors bring sympy, hundreds of thousands of objects) is long-lived by nature: it is frozen rather
than walked, which took 80 ms of the GUI thread.
"""

from __future__ import annotations

import gc
import time

from PySide6.QtCore import QObject, Qt, QTimer
from PySide6.QtGui import QGuiApplication

from ddpm_studio.gui.jobs.workers import JobRunner

COLLECT_INTERVAL_MS = 100
BURST = 20_000  # young objects beyond this at one look: a burst of long-lived ones, frozen, not walked
DEEP_INTERVAL_S = 600


class GuiThreadGarbageCollector(QObject):
    """``start()`` moves cycle collection into this object's thread; ``stop()`` gives it back."""

    def __init__(self, parent: QObject | None = None):
        super().__init__(parent)
        self.timer = QTimer(self)
        self.timer.setObjectName("gui-garbage-collector")
        self.timer.setInterval(COLLECT_INTERVAL_MS)
        self.timer.timeout.connect(self.collect)
        self._was_enabled = gc.isenabled()
        self.last_deep_collection = time.monotonic()

    def start(self) -> None:
        self._was_enabled = gc.isenabled()
        gc.disable()
        gc.freeze()  # the modules and libraries loaded so far live as long as the process
        self.last_deep_collection = time.monotonic()
        self.timer.start()

    def stop(self) -> None:
        self.timer.stop()
        gc.unfreeze()  # the window's objects may now be freed
        gc.collect()
        if self._was_enabled:
            gc.enable()

    def collect(self) -> None:
        """Collect the young generations whose allocation counts passed their thresholds; freeze the old one."""
        thresholds = gc.get_threshold()
        counts = gc.get_count()
        if counts[0] > BURST:
            gc.freeze()
            return
        for generation in range(3):
            if counts[generation] <= thresholds[generation]:
                break
            if generation < 2:
                gc.collect(generation)
            else:
                gc.freeze()  # survivors of two collections: long-lived, left to the deep collection
        if time.monotonic() - self.last_deep_collection > DEEP_INTERVAL_S and self.is_idle():
            self.collect_deeply()

    def collect_deeply(self) -> None:
        """Collect everything, frozen objects included (tens of milliseconds), then freeze what lives on."""
        gc.unfreeze()
        gc.collect()
        gc.freeze()
        self.last_deep_collection = time.monotonic()

    @staticmethod
    def is_idle() -> bool:
        """No job runs and no mouse button is held: a pause now interrupts nobody."""
        busy = any(runner.is_running() for runner in list(JobRunner.running))
        return not busy and QGuiApplication.mouseButtons() == Qt.MouseButton.NoButton
