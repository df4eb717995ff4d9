"""What the user was doing, remembered across restarts: the last dataset, the Noising picture, the model to resume.

Each page writes its part in its ``save_settings`` and gets it back at start through these functions. What
cannot come back (a folder or file that is gone, a folder with no usable images any more) is said in one quiet
line on its page; the memory itself stays, so a drive plugged in again brings it back at the next start.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from ddpm_studio.core.data.folders import ScanResult, describe_sources
from ddpm_studio.core.model import store as model_store
from ddpm_studio.core.model.store import ModelError
from ddpm_studio.paths import SAMPLE_PICTURE

if TYPE_CHECKING:
    from PySide6.QtCore import QSettings

    from ddpm_studio.gui.pages.dataset import DatasetPage
    from ddpm_studio.gui.pages.noising import NoisingPage
    from ddpm_studio.gui.pages.train import TrainPage

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


def reopen_dataset(page: DatasetPage) -> None:
    """Scan the last dataset again in the background, at the resolution and channels it was scanned at.

    The scan opens it from the dataset cache when its files have not changed. A folder that is gone gets
    one quiet sentence instead of a scan; one with nothing usable left, the quiet scan's own sentence.
    """
    remembered = remembered_dataset(page.context.settings)
    if remembered is None:
        return
    sources, image_size, channels = remembered
    if not all(path.exists() for path in sources):
        page.show_note(f"The last dataset, {describe_sources(sources)}, is no longer there. "
                       "Choose or drop a folder to train on.")
        return
    page.set_scan_settings(image_size, channels)
    page.scan(sources, quiet=True)


# --- the Noising picture ---------------------------------------------------------------------------
def remember_picture(settings: QSettings, path: Path | None) -> None:
    """Remember a picture the user opened or dropped; the sample picture (also shown when theirs is gone) is not."""
    if path is not None and path != SAMPLE_PICTURE:
        settings.setValue(PICTURE_KEY, str(Path(path).absolute()))


def reopen_picture(page: NoisingPage) -> None:
    """Show the user's last picture; else the sample picture, with a line saying why theirs is not shown."""
    last = str(page.context.settings.value(PICTURE_KEY, "") or "")
    if last:
        path = Path(last)
        if path.is_file() and page.load_image(path):
            return
        why = "cannot be read any more" if path.is_file() else "is no longer there"
    if SAMPLE_PICTURE.is_file():
        page.load_image(SAMPLE_PICTURE)
    if last:
        page.source_label.setText(f"{path.name}, the picture from last time, {why}: this is the sample picture. "
                                  "Open or drop another to change it.")


# --- the model to resume ------------------------------------------------------------------------------
def remember_resume_model(settings: QSettings, path: Path | None) -> None:
    """Remember the model whose curve the Train page shows (one picked to resume, or the run just trained)."""
    if path is not None:
        settings.setValue(RESUME_KEY, str(Path(path).absolute()))


def reopen_resume_model(page: TrainPage) -> None:
    """Choose the remembered model under "Continue a saved model" and show its curve and preview at once.

    The form keeps the settings the user left in it. A model opened from another folder is opened again;
    one that is gone or can no longer be resumed leaves the list's own choice, as on a first start.
    """
    last = str(page.context.settings.value(RESUME_KEY, "") or "")
    if not last:
        return
    picker = page.resume_picker
    if not picker.select(last):
        if not (Path(last) / model_store.CONFIG_FILE).is_file():
            return
        try:
            page.context.library.open(last)
        except ModelError:
            return
        if not picker.select(last):
            return
    page.show_model(picker.current_path(), fill_form=False)
