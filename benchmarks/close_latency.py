"""How the window behaves when it is closed while training: the longest stall of the GUI thread until it is gone.

    QT_QPA_PLATFORM=offscreen python benchmarks/close_latency.py [--preset small] [--batch 32] [--repeats 3]
                                                                 [--save-delay 1.5]

The Train page trains ``--preset`` on demo shapes; after a few steps the window is closed (the
"Stop running work?" question answered Yes). A 5 ms timer on the GUI thread records the gaps
between its ticks from the close until the window has gone: the largest gap is how long the
window stood frozen. Printed separately: the largest gap until the jobs had ended (the window
waits for them with its event loop, showing "Saving…"), before the last step of closing (the
settings, a last garbage collection). The time to close and the step saved on disk are printed
too. ``--save-delay S`` makes the last checkpoint take S seconds longer in the job's thread, as a big
model's does while it is written: the stall while saving should not grow with it (the window waits with its
event loop). The numbers are this machine's: this is a benchmark, never a test (tests/gui/test_threads.py
checks the same close by its behaviour).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

from gui_latency import REPO, StallProbe, wait_until  # noqa: E402  (this folder is the script's)


@contextlib.contextmanager
def slower_saves(seconds: float) -> Iterator[None]:
    """Every checkpoint written meanwhile takes ``seconds`` longer, in the thread that writes it."""
    from ddpm_studio.core.training.state import ModelFolderWriter

    real_save = ModelFolderWriter.save_checkpoint

    def slow_save(writer, state) -> None:
        time.sleep(seconds)
        real_save(writer, state)

    ModelFolderWriter.save_checkpoint = slow_save
    try:
        yield
    finally:
        ModelFolderWriter.save_checkpoint = real_save


def close_while_training(app, scratch: Path, preset: str, batch: int, run: int, save_delay: float = 0.0) -> dict:
    from PySide6.QtCore import QSettings

    from ddpm_studio.core.model import store as model_store
    from ddpm_studio.gui.main_window import MainWindow
    from ddpm_studio.gui.model_library import ModelLibrary

    settings = QSettings(str(scratch / f"settings-{run}.ini"), QSettings.Format.IniFormat)
    window = MainWindow(settings=settings, library=ModelLibrary([REPO / "models", scratch / "models"]))
    window.resize(1400, 900)
    window.show()
    window.dataset_page.scan([scratch / "shapes"])
    page = window.train_page
    wait_until(app, lambda: page.dataset is not None)
    window.tabs.setCurrentWidget(page)
    page.form.preset_combo.setCurrentIndex(page.form.preset_combo.findData(preset))
    page.form.batch_spin.setValue(batch)
    page.form.steps_spin.setValue(1_000_000)
    page.form.preview_count_spin.setValue(0)
    page.name_edit.setText(f"close-{run}")
    page.start_training()
    wait_until(app, lambda: page.current_step >= 3)
    window.confirm_close = False  # as if the question was answered Yes
    probe = StallProbe()
    probe.start()
    while_saving: list[float] = []  # the longest stall until the jobs have ended, before the last step of closing
    if hasattr(window, "closing"):  # a window that waits for its jobs with the event loop
        close_now = window.closing.on_finished

        def jobs_ended() -> None:
            while_saving.append(max(probe.gaps + [(time.perf_counter() - probe.last) * 1000]))
            close_now()
        window.closing.on_finished = jobs_ended
    started = probe.last = time.perf_counter()  # the first gap starts at the close
    window.close()
    wait_until(app, lambda: window.closed, timeout_s=120 + save_delay)
    seconds = time.perf_counter() - started
    app.processEvents()  # the probe's tick that ends the last gap
    probe.stop()
    gaps = probe.gaps + [(time.perf_counter() - probe.last) * 1000]
    step = model_store.read_model_info(page.run_path).step
    window.deleteLater()
    return {"max_gap_ms": max(gaps), "saving_gap_ms": while_saving[0] if while_saving else max(gaps),
            "close_s": seconds, "saved_step": step}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="small")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--save-delay", type=float, default=0.0, metavar="S",
                        help="seconds added to the checkpoint written while closing (default 0)")
    args = parser.parse_args()
    from PySide6.QtWidgets import QApplication

    from ddpm_studio.core.data.demo import write_demo_dataset

    app = QApplication.instance() or QApplication([])
    with tempfile.TemporaryDirectory(prefix="ddpm-close-") as folder:
        scratch = Path(folder)
        os.environ["DDPM_STUDIO_MODELS"] = str(scratch / "models")
        for _ in write_demo_dataset(scratch / "shapes", count=200, seed=3):
            pass
        slowed = f", its last checkpoint {args.save_delay:g} s slower" if args.save_delay else ""
        print(f"closing while training the {args.preset} preset at batch {args.batch}{slowed}:")
        for run in range(args.repeats):
            with slower_saves(args.save_delay):  # the one checkpoint of these short runs is the close's
                result = close_while_training(app, scratch, args.preset, args.batch, run, args.save_delay)
            print(f"  longest GUI-thread stall {result['max_gap_ms']:5.0f} ms (while stopping and saving "
                  f"{result['saving_gap_ms']:4.0f} ms) · closed after {result['close_s']:.2f} s · "
                  f"step {result['saved_step']} saved")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
