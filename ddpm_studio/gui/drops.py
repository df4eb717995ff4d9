"""Files dragged onto the window: the local paths a drag carries, and accepting a drag only for the files wanted."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path


def paths_from_mime(mime) -> list[Path]:
    """Local file paths carried by a drag's QMimeData."""
    if not mime.hasUrls():
        return []
    return [Path(url.toLocalFile()) for url in mime.urls() if url.isLocalFile()]


def one_file(paths: list[Path]) -> bool:
    return len(paths) == 1 and paths[0].is_file()


def any_paths(paths: list[Path]) -> bool:
    return True


def accept_files(event, wanted: Callable[[list[Path]], bool]) -> list[Path]:
    """Accept a drag-enter or drop ``event`` when its paths are ``wanted`` and return them; otherwise ignore it (it
    goes on to the widget behind, finally the window, which opens models and datasets) and return []."""
    paths = paths_from_mime(event.mimeData())
    if paths and wanted(paths):
        event.acceptProposedAction()
        return paths
    event.ignore()
    return []
