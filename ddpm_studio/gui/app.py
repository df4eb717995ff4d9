"""Starts the studio window, or explains in one line why it cannot (no display, missing system libraries, no Qt)."""

from __future__ import annotations

import os
import sys

from ddpm_studio.gui.display import display_problem
from ddpm_studio.gui.system_libraries import missing_libraries_message

EXIT_NO_DISPLAY = 3  # the window cannot open here: no display, or not the libraries to draw on it


def run_app(argv: list[str] | None = None) -> int:
    problem = display_problem()  # before Qt's platform plugin tries the display, and aborts the process
    if problem:
        print(problem, file=sys.stderr)
        return EXIT_NO_DISPLAY
    missing = missing_libraries_message()  # before Qt loads its platform plugin, which would abort the process
    if missing:
        print(missing, file=sys.stderr)
        return EXIT_NO_DISPLAY
    try:
        from PySide6.QtWidgets import QApplication
    except ImportError as error:
        print(f"ddpm-studio: the Qt libraries could not be loaded ({error}); install PySide6-Essentials, "
              "or use the headless commands (ddpm-studio --help).", file=sys.stderr)
        return EXIT_NO_DISPLAY
    app = QApplication.instance() or QApplication(argv if argv is not None else sys.argv[:1])
    app.setApplicationName("DDPM Studio")
    app.setOrganizationName("DDPM Studio")
    from ddpm_studio.gui.main_window import MainWindow

    window = MainWindow()
    window.show()
    if os.environ.get("QT_QPA_PLATFORM") == "offscreen":
        print("ddpm-studio: the window started offscreen (QT_QPA_PLATFORM=offscreen), so nothing is shown; "
              "close it with Ctrl+C.", file=sys.stderr)
    return app.exec()
