"""How responsive the studio window stays while it works: stalls of the GUI thread, and frame times when scrubbing.

    QT_QPA_PLATFORM=offscreen python benchmarks/gui_latency.py [--seconds 8] [--burners 1,2] [--json out.json]

A 5 ms timer runs on the GUI thread. Whenever the thread is busy (a slot, a layout, a paint,
a garbage collection, the GIL held by a worker), the timer's next tick comes late: the gaps
between ticks are the stalls a user feels. Four scenarios run in the real window:

- training: the Train page trains the small preset on demo shapes (previews included);
- DDPM Generate: the Generate page samples the demo model with every step;
- timeline scrubbing: the timeline's slider is moved to a new frame every 16 ms;
- Noising scrubbing: the Noising page's t slider is moved every 16 ms.

Each runs on a quiet machine and again beside each count of ``--burners`` processes that spin the CPU
(on a 2-core machine, 2 burners keep every core busy, as other work on the machine can). For
the scrubbing scenarios a frame is timed from the slider's change to the end of the paint it
causes. The numbers are this machine's: this is a benchmark, never a test.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ddpm_studio.gui.event_loop import wait_until  # Qt-free: the platform below is still chosen before Qt loads

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

REPO = Path(__file__).resolve().parents[1]
PROBE_MS = 5
DRAG_MS = 16  # a slider dragged by a mouse moves at the screen's rate, 60 Hz
SCENARIOS = ("training", "generate", "timeline", "noising")
TITLES = {"training": "training", "generate": "DDPM Generate", "timeline": "timeline scrubbing",
          "noising": "Noising scrubbing"}


def percentile(values: list[float], share: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


class StallProbe:
    """A 5 ms timer on the GUI thread; ``gaps`` holds the milliseconds between its ticks."""

    def __init__(self):
        from PySide6.QtCore import Qt, QTimer

        self.timer = QTimer()
        self.timer.setTimerType(Qt.TimerType.PreciseTimer)
        self.timer.setInterval(PROBE_MS)
        self.timer.timeout.connect(self._tick)
        self.gaps: list[float] = []
        self.last: float | None = None

    def _tick(self) -> None:
        now = time.perf_counter()
        if self.last is not None:
            self.gaps.append((now - self.last) * 1000)
        self.last = now

    def start(self) -> None:
        self.gaps, self.last = [], None
        self.timer.start()

    def stop(self) -> None:
        self.timer.stop()


class Burners:
    """Processes that keep CPU cores busy, as other work on the machine would."""

    def __init__(self, count: int):
        self.count = count
        self.processes: list[subprocess.Popen] = []

    def __enter__(self):
        code = "while True:\n    pass\n"
        self.processes = [subprocess.Popen([sys.executable, "-c", code]) for _ in range(self.count)]
        return self

    def __exit__(self, *exc):
        for process in self.processes:
            process.kill()
            process.wait()


def run_for(app, seconds: float, until=None) -> None:
    """Run the event loop for ``seconds`` (or until ``until()`` is true), as the real application would."""
    from PySide6.QtCore import QEventLoop, QTimer

    loop = QEventLoop()
    QTimer.singleShot(int(seconds * 1000), loop.quit)
    if until is not None:
        check = QTimer()
        check.setInterval(50)
        check.timeout.connect(lambda: until() and loop.quit())
        check.start()
    loop.exec()


class Studio:
    """The real window over a scratch folder, with the demo model and a small demo dataset."""

    def __init__(self, app, scratch: Path):
        from PySide6.QtCore import QSettings

        from ddpm_studio.core.data.demo import write_demo_dataset
        from ddpm_studio.gui.main_window import MainWindow
        from ddpm_studio.gui.model_library import ModelLibrary

        self.app = app
        os.environ["DDPM_STUDIO_MODELS"] = str(scratch / "models")
        settings = QSettings(str(scratch / "settings.ini"), QSettings.Format.IniFormat)
        self.window = MainWindow(settings=settings, library=ModelLibrary([REPO / "models", scratch / "models"]))
        self.window.resize(1400, 900)
        self.window.show()
        self.data = scratch / "shapes"
        for _ in write_demo_dataset(self.data, count=200, seed=3):  # an iterator of progress events
            pass
        self.run_number = 0

    def close(self) -> None:
        self.window.confirm_close = False
        self.window.close()

    # --- scenarios: each starts its work and returns a function that stops it ------------------------
    def start_training(self):
        page = self.window.train_page
        if page.dataset is None:
            self.window.dataset_page.scan([self.data])
            wait_until(self.app, lambda: page.dataset is not None)
        self.window.tabs.setCurrentWidget(page)
        page.form.preset_combo.setCurrentIndex(page.form.preset_combo.findData("small"))
        page.form.batch_spin.setValue(32)
        page.form.steps_spin.setValue(1_000_000)
        page.form.preview_every_spin.setValue(50)
        self.run_number += 1
        page.name_edit.setText(f"latency-{self.run_number}")
        page.start_training()
        wait_until(self.app, lambda: page.current_step > 0)  # past the model's set-up

        def stop():
            page.stop_training()
            wait_until(self.app, lambda: not page.is_training())
        return stop

    def start_generate(self):
        page = self.window.generate_page
        self.window.tabs.setCurrentWidget(page)
        page.select_model(REPO / "models" / "demo")
        page.sampler_box.setCurrentIndex(page.sampler_box.findData("ddpm"))
        page.count_spin.setValue(16)
        page.generate()

        def stop():
            page.stop()
            wait_until(self.app, lambda: not page.jobs.is_running())
        return stop

    def timeline_slider(self):
        page = self.window.generate_page
        self.window.tabs.setCurrentWidget(page)
        if page.timeline.frame_count() < 2:
            page.select_model(REPO / "models" / "demo")
            page.sampler_box.setCurrentIndex(page.sampler_box.findData("ddim"))
            page.steps_spin.setValue(100)
            page.count_spin.setValue(16)
            page.generate()
            wait_until(self.app, lambda: not page.jobs.is_running())
            page.show_on_timeline(0)
        return page.timeline.slider

    def noising_slider(self):
        page = self.window.noising_page
        self.window.tabs.setCurrentWidget(page)
        wait_until(self.app, lambda: page.source_path is not None)
        return page.t_slider


class Scrubber:
    """Moves a slider to a new value every 16 ms, back and forth, and times each frame to the end of its paint."""

    def __init__(self, app, slider):
        from PySide6.QtCore import QTimer

        self.app, self.slider = app, slider
        self.frames: list[float] = []
        self.direction = 1
        self.step = max(1, (slider.maximum() - slider.minimum()) // 150)  # a drag across it in about 2.5 s
        self.timer = QTimer()
        self.timer.setInterval(DRAG_MS)
        self.timer.timeout.connect(self._move)

    def _move(self) -> None:
        slider = self.slider
        value = slider.value() + self.direction * self.step
        if not slider.minimum() <= value <= slider.maximum():
            self.direction = -self.direction
            value = slider.value() + self.direction * self.step
        start = time.perf_counter()
        slider.setValue(value)
        self.app.sendPostedEvents()  # the layout and paint requests the change caused, as the next loop pass would
        self.frames.append((time.perf_counter() - start) * 1000)

    def __enter__(self):
        self.timer.start()
        return self

    def __exit__(self, *exc):
        self.timer.stop()


def measure(app, studio: Studio, scenario: str, seconds: float) -> dict:
    probe = StallProbe()
    frames: list[float] = []
    if scenario in ("training", "generate"):
        stop = studio.start_training() if scenario == "training" else studio.start_generate()
        probe.start()
        run_for(app, seconds)
        probe.stop()
        stop()
    else:
        slider = studio.timeline_slider() if scenario == "timeline" else studio.noising_slider()
        run_for(app, 0.3)
        probe.start()
        with Scrubber(app, slider) as scrubber:
            run_for(app, seconds)
        probe.stop()
        frames = scrubber.frames
    result = {"max_stall_ms": max(probe.gaps, default=float("nan")), "p99_stall_ms": percentile(probe.gaps, 0.99),
              "ticks": len(probe.gaps)}
    if frames:
        result.update(frame_p99_ms=percentile(frames, 0.99), frame_max_ms=max(frames), frames=len(frames))
    return result


def table(results: list[dict]) -> str:
    lines = ["| scenario | load | max stall (ms) | p99 stall (ms) | frame p99 (ms) | frame max (ms) |",
             "| --- | --- | ---: | ---: | ---: | ---: |"]
    for row in results:
        frame_p99 = f"{row['frame_p99_ms']:.1f}" if "frame_p99_ms" in row else ""
        frame_max = f"{row['frame_max_ms']:.1f}" if "frame_max_ms" in row else ""
        lines.append(f"| {TITLES[row['scenario']]} | {row['load']} | {row['max_stall_ms']:.0f} | "
                     f"{row['p99_stall_ms']:.1f} | {frame_p99} | {frame_max} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=8.0, help="measured seconds per scenario and load")
    parser.add_argument("--burners", default="1,2",
                        help="comma-separated counts of CPU-burning processes, one loaded run for each")
    parser.add_argument("--scenarios", default=",".join(SCENARIOS), help=f"comma-separated, of {', '.join(SCENARIOS)}")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    scenarios = [name.strip() for name in args.scenarios.split(",") if name.strip()]
    try:
        burner_counts = [int(count) for count in args.burners.split(",") if count.strip()]
    except ValueError:
        parser.error(f"--burners takes counts like 1,2, not {args.burners}")
    unknown = set(scenarios) - set(SCENARIOS)
    if unknown:
        parser.error(f"unknown scenarios: {', '.join(sorted(unknown))}")

    from PySide6.QtWidgets import QApplication

    app = QApplication.instance() or QApplication([])
    scratch = Path(tempfile.mkdtemp(prefix="ddpm-latency-"))
    studio = Studio(app, scratch)
    run_for(app, 1.0)  # the window's start-up work settles first
    results = []
    try:
        for scenario in scenarios:
            for burners in (0, *burner_counts):
                with Burners(burners):
                    row = measure(app, studio, scenario, args.seconds)
                row.update(scenario=scenario, load="quiet" if burners == 0 else f"{burners} CPU burner"
                           + ("s" if burners > 1 else ""))
                results.append(row)
                print(f"{TITLES[scenario]:20s} {row['load']:14s} max stall {row['max_stall_ms']:6.0f} ms  "
                      f"p99 {row['p99_stall_ms']:6.1f} ms" + (f"  frame p99 {row['frame_p99_ms']:5.1f} ms  "
                                                              f"max {row['frame_max_ms']:5.1f} ms"
                                                              if "frame_p99_ms" in row else ""), flush=True)
    finally:
        studio.close()
    print()
    print(f"{os.cpu_count()} CPU cores; {args.seconds:g} s per row; a {PROBE_MS} ms timer on the GUI thread.")
    print(table(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
