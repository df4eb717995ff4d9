"""Python's cycle collector, run only in the GUI thread while the window is open.

Left automatic, the collector runs in whichever thread happens to allocate when a threshold
is crossed: often a training or scanning worker. Collecting there can free Qt objects (a
worker's wrapper, a pyqtgraph item caught in a reference cycle) from the wrong thread, and
Qt then crashes. So the window turns automatic collection off and collects from a timer in
its own thread instead, generation by generation as the thresholds say (pyqtgraph's
``util.garbage_collector`` does the same).
"""

from __future__ import annotations

import gc

from PySide6.QtCore import QObject, QTimer

COLLECT_INTERVAL_MS = 500


class GuiThreadGarbageCollector(QObject):
    """``start()`` moves cycle collection into this object's thread; ``stop()`` gives it back."""

    def __init__(self, parent: QObject | None = None):
        super().__init__(parent)
        self.timer = QTimer(self)
        self.timer.setObjectName("gui-garbage-collector")
        self.timer.setInterval(COLLECT_INTERVAL_MS)
        self.timer.timeout.connect(self.collect)
        self._was_enabled = gc.isenabled()

    def start(self) -> None:
        self._was_enabled = gc.isenabled()
        gc.disable()
        self.timer.start()

    def stop(self) -> None:
        self.timer.stop()
        gc.collect()
        if self._was_enabled:
            gc.enable()

    def collect(self) -> None:
        """Collect the generations whose allocation counts passed their thresholds, youngest first."""
        thresholds = gc.get_threshold()
        counts = gc.get_count()
        for generation in range(3):
            if counts[generation] <= thresholds[generation]:
                break
            gc.collect(generation)
