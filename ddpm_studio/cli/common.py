"""What several commands do with the engine: check --device, find the model a MODEL argument names, turn
Ctrl-C into a stop between two steps, record the command line in the model folder, and show a job's phases
as progress bars."""

from __future__ import annotations

import shlex
import signal
import sys
from pathlib import Path

import torch
from tqdm import tqdm

from ddpm_studio.cli.reporting import fail
from ddpm_studio.core.model import store as model_store


def check_device(name: str) -> str:
    """Check a --device value, so that an unknown or absent device is one line, not a traceback."""
    if name == "auto":
        return name
    try:
        device = torch.device(name)
    except RuntimeError:
        fail(f"Unknown device '{name}'; use auto, cpu, cuda or cuda:N.")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            fail(f"--device {name} needs a CUDA GPU, and PyTorch finds none here; use --device cpu or auto.")
        if device.index is not None and device.index >= torch.cuda.device_count():
            fail(f"--device {name}: there is no such GPU; PyTorch finds {torch.cuda.device_count()}.")
    elif device.type == "mps":
        if not torch.backends.mps.is_available():
            fail(f"--device {name} needs Apple's Metal (MPS), and PyTorch finds none here; use --device cpu or auto.")
    elif device.type != "cpu":
        fail(f"Device '{name}' is not supported; use auto, cpu, cuda or cuda:N.")
    return name


def resolve_model_path(name: str) -> Path:
    """A model folder given by its path, or by its name in the library."""
    path = Path(name)
    if path.exists():
        return path
    for entry in model_store.list_models():
        if entry.path.name == name:
            return entry.path
    fail(f"No model folder at '{name}', and no model of that name in "
         f"{', '.join(map(str, model_store.model_search_dirs()))}.")


def command_line() -> str:
    """This process's command line as the model folder records it."""
    return shlex.join(["ddpm-studio", *sys.argv[1:]])


class StopRequest:
    """Turns the first Ctrl-C (or SIGTERM) into a flag the job checks between steps; a second one
    interrupts, unless ``interrupt_on_repeat`` is off."""

    def __init__(self, interrupt_on_repeat: bool = True):
        self.requested = False
        self.interrupt_on_repeat = interrupt_on_repeat
        self.previous: dict = {}

    def install(self) -> None:
        def handler(signum, frame):
            if self.requested and self.interrupt_on_repeat:
                raise KeyboardInterrupt
            self.requested = True

        for signum in (signal.SIGINT, signal.SIGTERM):
            self.previous[signum] = signal.signal(signum, handler)

    def uninstall(self) -> None:
        for signum, previous in self.previous.items():
            signal.signal(signum, previous)
        self.previous.clear()


class PhaseBars:
    """One tqdm bar a phase of a job ("reading dataset", "samples", ...): the first progress of a new phase closes
    the last phase's bar and opens its own. Reading files counts files; with ``quiet_reading`` a reading bar
    shows only when it is slow and is gone when done."""

    def __init__(self, quiet_reading: bool = False):
        self.bar: tqdm | None = None
        self.quiet_reading = quiet_reading

    def show(self, phase: str, done: int, total: int, detail: str = "") -> None:
        if self.bar is None or self.bar.desc != phase.capitalize():
            self.close()
            reading = phase.startswith("reading")
            quiet = reading and self.quiet_reading
            self.bar = tqdm(total=total, desc=phase.capitalize(), unit="file" if reading else "img",
                            dynamic_ncols=True, leave=not quiet, delay=1.0 if quiet else 0.0)
        self.bar.update(done - self.bar.n)
        if detail:
            self.bar.set_postfix_str(detail, refresh=False)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
