"""What the user was doing, remembered across restarts: the last dataset, the Noising picture, the model to resume.

Each page writes its part in its ``save_settings`` and gets it back at start through these functions, handing
them its settings and what to call (the pages know this module, not the other way round). What cannot come back
(a folder or file that is gone, a folder with no usable images any more) is said in one quiet line on its page;
the memory itself stays, so a drive plugged in again brings it back at the next start.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from PySide6.QtCore import QSettings

from ddpm_studio.core.data.folders import ScanResult, describe_sources
from ddpm_studio.core.model import store as model_store
from ddpm_studio.core.model.store import ModelError
from ddpm_studio.gui.model_library import ModelLibrary, ModelPicker
from ddpm_studio.paths import SAMPLE_PICTURE

DATASET_KEY = "dataset/last"  # JSON: the scanned files and folders, and the resolution and channels of the scan
PICTURE_KEY = "noising/picture"  # the picture the user opened or dropped last; never the sample picture
RESUME_KEY = "train/resume_model"  # the model shown under "Continue a saved model"


# --- the dataset ------------------------------------------------------------------------------------
def remember_dataset(settings: QSettings, result: ScanResult | None) -> None:
    """Remember the last scan with usable images; without one this session, what was remembered stays."""
    if result is None or not result.sources:
        return
    settings.setValue(DATASET_KEY, json.dumps({
        "sources": [str(Path(path).absolute()) for path in result.sources],
        "image_size": result.image_size,
        "channels": result.channels,
    }))


def remembered_dataset(settings: QSettings) -> tuple[list[Path], int, int] | None:
    """(sources, resolution, channels) of the last dataset; None when there is none (or the setting is damaged)."""
    try:
        stored = json.loads(str(settings.value(DATASET_KEY, "")))
        sources = [Path(path) for path in stored["sources"]]
        return (sources, int(stored["image_size"]), int(stored["channels"])) if sources else None
    except (ValueError, TypeError, KeyError):
        return None


def reopen_dataset(settings: QSettings, scan_again: Callable[[list[Path], int, int], None],
                   show_note: Callable[[str], None]) -> None:
    """Have the last dataset scanned again, ``scan_again(sources, image_size, channels)``, as it was scanned.

    The scan opens it from the dataset cache when its files have not changed. A folder that is gone gets
    one quiet sentence (``show_note``) instead of a scan; one with nothing usable left, the quiet scan's own.
    """
    remembered = remembered_dataset(settings)
    if remembered is None:
        return
    sources, image_size, channels = remembered
    if not all(path.exists() for path in sources):
        show_note(f"The last dataset, {describe_sources(sources)}, is no longer there. "
                  "Choose or drop a folder to train on.")
        return
    scan_again(sources, image_size, channels)


# --- the Noising picture ---------------------------------------------------------------------------
def remember_picture(settings: QSettings, path: Path | None) -> None:
    """Remember a picture the user opened or dropped; the sample picture (also shown when theirs is gone) is not."""
    if path is not None and path != SAMPLE_PICTURE:
        settings.setValue(PICTURE_KEY, str(Path(path).absolute()))


def reopen_picture(settings: QSettings, load_image: Callable[[Path], bool], say: Callable[[str], None]) -> None:
    """Show the user's last picture; else the sample picture, with a line (``say``) saying why theirs is not shown.

    ``load_image(path)`` shows a picture and says whether it could be read.
    """
    last = str(settings.value(PICTURE_KEY, "") or "")
    if last:
        path = Path(last)
        if path.is_file() and load_image(path):
            return
        why = "cannot be read any more" if path.is_file() else "is no longer there"
    if SAMPLE_PICTURE.is_file():
        load_image(SAMPLE_PICTURE)
    if last:
        say(f"{path.name}, the picture from last time, {why}: this is the sample picture. "
            "Open or drop another to change it.")


# --- the model to resume ------------------------------------------------------------------------------
def remember_resume_model(settings: QSettings, path: Path | None) -> None:
    """Remember the model whose curve the Train page shows (one picked to resume, or the run just trained)."""
    if path is not None:
        settings.setValue(RESUME_KEY, str(Path(path).absolute()))


def reopen_resume_model(settings: QSettings, library: ModelLibrary, picker: ModelPicker,
                        show_model: Callable[[Path], None]) -> None:
    """Choose the remembered model in ``picker`` ("Continue a saved model") and ``show_model`` it at once.

    A model opened from another folder is opened in ``library`` again; one that is gone or can no longer
    be resumed leaves the list's own choice, as on a first start.
    """
    last = str(settings.value(RESUME_KEY, "") or "")
    if not last:
        return
    if not picker.select(last):
        if not (Path(last) / model_store.CONFIG_FILE).is_file():
            return
        try:
            library.open(last)
        except ModelError:
            return
        if not picker.select(last):
            return
    show_model(picker.current_path())
