"""What every page of the window shares: settings, the model library and the status line."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from PySide6.QtCore import QSettings

from ddpm_studio.gui.model_library import ModelLibrary


@dataclass
class StudioContext:
    settings: QSettings
    library: ModelLibrary
    show_message: Callable[[str], None] = field(default=lambda message: None)
