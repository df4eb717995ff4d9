"""Starts the studio window, or explains in one line why it cannot (no display, missing system libraries, no Qt)."""

from __future__ import annotations

import os
import sys

EXIT_NO_DISPLAY = 3  # the window cannot open here: no display, or not the libraries to draw on it

NO_DISPLAY_MESSAGE = (
    "ddpm-studio: no display found, so the studio window cannot open. On a desktop, run it there; over SSH use "
    "'ssh -X' or a virtual display (xvfb-run ddpm-studio); headless, train with 'ddpm-studio train DATA_DIR' "
    "(see 'ddpm-studio --help'), or set QT_QPA_PLATFORM=offscreen to start the window without showing it."
)


def display_available() -> bool:
    """False on Linux when neither X11 nor Wayland is reachable and no headless Qt platform was chosen."""
    if os.environ.get("QT_QPA_PLATFORM"):
        return True
    if sys.platform.startswith("linux"):
        return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))
    return True


def run_app(argv: list[str] | None = None) -> int:
    if not display_available():
        print(NO_DISPLAY_MESSAGE, file=sys.stderr)
        return EXIT_NO_DISPLAY
    from ddpm_studio.gui.system_libraries import missing_libraries_message

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
