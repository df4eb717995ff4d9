"""The Train page's memory line and guard: a background estimate of a run's memory against what the device has,
and the question asked before starting a run that would not fit, offering the largest batch size that does."""

from __future__ import annotations

import math
import threading
from collections.abc import Callable

from PySide6.QtCore import QEventLoop, QTimer
from PySide6.QtWidgets import QLabel, QMessageBox, QWidget

from ddpm_studio.core.errors import UserError
from ddpm_studio.core.training.config import TrainingConfig
from ddpm_studio.core.training.memory import MemoryCheck
from ddpm_studio.core.training.run_memory import check_memory
from ddpm_studio.gui.formatting import format_bytes
from ddpm_studio.gui.jobs.controller import JobController
from ddpm_studio.gui.style import WARNING_TEXT_STYLE

MAX_MICRO_BATCHES = 1024  # the Train page's micro-batch field goes this far
QUICK_CHECK_SECONDS = 0.02  # a check that ends within this needs no event loop of its own


def check_run(config: TrainingConfig, dataset_images: int = 0) -> Callable[[], MemoryCheck]:
    """A function that checks ``config``'s training memory on the device "auto" picks, as ``train`` does
    (``training.check_memory``: the activations of one micro-batch, "As large as fits" at the micro-batch
    it will take); ``dataset_images`` counts only where the dataset is kept on the GPU."""
    config.unet_config()  # raises a UserError for impossible settings, on the caller's thread
    return lambda: check_memory(config, dataset_images=dataset_images)


class MemoryGuard(QLabel):
    """Shows "Memory: ≈ … on …" for the current settings, estimated off the GUI thread, and asks before a run
    that cannot fit."""

    def __init__(self, page: QWidget):
        super().__init__("Memory: estimating…")
        self.setWordWrap(True)
        self.estimates = JobController(page, "memory estimate", with_controls=False)
        self._wanted = False
        self._shut_down = False  # after shutdown() no new estimate starts
        self._checking = False  # a check before a start is running

    def request(self, config: Callable[[], TrainingConfig], dataset_images: int = 0) -> None:
        """Estimate in the background: the first estimate makes torch load its meta kernels (seconds)."""
        if self._shut_down:
            return
        if self.estimates.is_running():
            self._wanted = True  # estimated again when this one ends
            return
        self._wanted = False
        try:
            check = check_run(config(), dataset_images)
        except UserError as error:
            self._show(error)
            return

        def estimate():
            try:
                yield check()
            except UserError as error:  # settings that cannot run together (more micro-batches than images)
                yield error

        self.estimates.run(estimate, on_event=self._show,
                           on_done=lambda _stopped: self._wanted and self.request(config, dataset_images))

    def _show(self, check: MemoryCheck | UserError) -> None:
        if isinstance(check, UserError):
            self.setText(f"Memory: cannot estimate ({check})")
            self.setStyleSheet(WARNING_TEXT_STYLE)
            return
        estimate = check.estimate
        text = (f"Memory: ≈ {format_bytes(estimate.total_bytes)} on {check.device_name} "
                f"({estimate.parameters:,} parameters)")
        if not check.fits:
            text += f". {check.explain()}"
        self.setStyleSheet("" if check.fits else WARNING_TEXT_STYLE)
        self.setText(text)

    def allows(self, config: TrainingConfig, use_micro_batches: Callable[[int], None],
               use_batch_size: Callable[[int], None] | None = None) -> bool:
        """True when the run fits in the memory available; otherwise ask, offering what would fit.

        The offers: the same batch size in enough micro-batches (gradient accumulation: the same training in
        less memory), handed to ``use_micro_batches``; and, for a new run (``use_batch_size`` given), the
        largest batch size that fits in the run's micro-batches. A resumed run keeps its batch size. The
        estimate is measured once per architecture, most often by the background estimate already; when it is
        not (Start pressed at once), it is measured in a thread while the window keeps painting.
        """
        if self._checking:
            return False  # a second click while the first one's check runs
        try:
            check = self._check_painting(check_run(config))
        except UserError:
            return True  # an impossible setting: the run refuses it at its start, in its own sentence
        if check is None:
            return False  # the window closed meanwhile
        if check.fits:
            return True
        box = QMessageBox(QMessageBox.Icon.Warning, "Not enough memory for this run",
                          f"{check.explain()}\n\nStarting anyway would most likely fail part-way.", parent=self)
        split = smaller = None
        largest = check.largest_batch or 0
        micro_batches = math.ceil(config.batch_size / largest) if largest else 0
        if largest and micro_batches <= min(config.batch_size, MAX_MICRO_BATCHES):
            split = box.addButton(f"Keep batch size {config.batch_size} in {micro_batches} micro-batches",
                                  QMessageBox.ButtonRole.AcceptRole)
            split.setToolTip("Gradient accumulation: the same training, one part of the batch at a time")
        fitting_batch = largest * config.accumulate  # in the run's own number of micro-batches
        if largest and use_batch_size is not None:
            smaller = box.addButton(f"Use batch size {fitting_batch}", QMessageBox.ButtonRole.AcceptRole)
        anyway = box.addButton("Start anyway", QMessageBox.ButtonRole.DestructiveRole)
        cancel = box.addButton(QMessageBox.StandardButton.Cancel)
        box.setDefaultButton(split or smaller or cancel)
        box.exec()
        if split is not None and box.clickedButton() is split:
            use_micro_batches(micro_batches)
            return True
        if smaller is not None and box.clickedButton() is smaller:
            use_batch_size(fitting_batch)
            return True
        return box.clickedButton() is anyway

    def _check_painting(self, check: Callable[[], MemoryCheck]) -> MemoryCheck | None:
        """``check()`` in a thread, the event loop running meanwhile (the first estimate takes seconds: torch
        loads its meta kernels); None when the page shut down before it ended."""
        outcome: dict[str, object] = {}

        def run() -> None:
            try:
                outcome["check"] = check()
            except BaseException as error:  # handed to the GUI thread, raised there
                outcome["error"] = error

        self._checking = True
        worker = threading.Thread(target=run, name="ddpm-memory-check", daemon=True)
        worker.start()
        worker.join(QUICK_CHECK_SECONDS)  # a measured architecture answers at once: no loop needed
        if worker.is_alive():
            self.setText("Memory: measuring these settings before the run starts…")
            loop = QEventLoop()
            poll = QTimer()
            poll.setInterval(10)
            poll.timeout.connect(lambda: worker.is_alive() or loop.quit())
            poll.start()
            loop.exec()
            poll.stop()
        self._checking = False
        if "error" in outcome:
            raise outcome["error"]  # type: ignore[misc]
        if self._shut_down:
            return None
        self._show(outcome["check"])  # type: ignore[arg-type]
        return outcome["check"]  # type: ignore[return-value]

    def shutdown(self) -> None:
        self._shut_down = True
