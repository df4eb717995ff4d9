"""Checks, before Qt starts, that the system libraries of its X11 platform plugin (xcb) are installed.

When one is missing, Qt prints its own advice, then aborts the process ("Could not load the Qt
platform plugin 'xcb'"), and after installing the package it names another one is often
still missing. So the studio asks the dynamic linker about the plugin first (``ldd`` lists
every unresolved library, also those of the plugin's own dependencies), and names every
Debian/Ubuntu package to install in one line. This module imports no Qt: it has to run
before Qt loads the plugin.
"""

from __future__ import annotations

import ctypes
import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

# Debian and Ubuntu package names of the libraries that Qt's xcb plugin loads, by soname. Others
# are guessed by Debian's naming rule (libfoo.so.1 is in libfoo1, libfoo-bar.so.0 in libfoo-bar0).
PACKAGES = {
    "libEGL.so.1": "libegl1",
    "libGL.so.1": "libgl1",
    "libOpenGL.so.0": "libopengl0",
    "libGLX.so.0": "libglx0",
    "libX11.so.6": "libx11-6",
    "libX11-xcb.so.1": "libx11-xcb1",
    "libxkbcommon.so.0": "libxkbcommon0",
    "libxkbcommon-x11.so.0": "libxkbcommon-x11-0",
    "libfontconfig.so.1": "libfontconfig1",
    "libfreetype.so.6": "libfreetype6",
    "libdbus-1.so.3": "libdbus-1-3",
    "libglib-2.0.so.0": "libglib2.0-0",
    "libgthread-2.0.so.0": "libglib2.0-0",
}

# Everything the plugin needs beyond a minimal Debian or Ubuntu system; the README's one line.
README_PACKAGES = (
    "libxcb-cursor0 libxcb-icccm4 libxcb-image0 libxcb-keysyms1 libxcb-randr0 libxcb-render-util0 "
    "libxcb-shape0 libxcb-xinerama0 libxcb-xkb1 libxkbcommon-x11-0 libegl1 libgl1 libfontconfig1 libdbus-1-3"
)


def package_for(soname: str) -> str:
    """The Debian/Ubuntu package that ships the library ``soname`` (for example libxcb-icccm.so.4)."""
    if soname in PACKAGES:
        return PACKAGES[soname]
    match = re.fullmatch(r"(lib.+?)\.so\.(\d+)(?:\.\d+)*", soname)
    if not match:
        return soname
    name, version = match.group(1).lower(), match.group(2)
    return f"{name}-{version}" if name[-1].isdigit() else f"{name}{version}"


def xcb_plugin_path() -> Path | None:
    """The xcb platform plugin Qt would load: from QT_QPA_PLATFORM_PLUGIN_PATH, else PySide6's own."""
    override = os.environ.get("QT_QPA_PLATFORM_PLUGIN_PATH")
    folders = [Path(folder) for folder in override.split(os.pathsep) if folder] if override else []
    spec = importlib.util.find_spec("PySide6")
    if spec is not None and spec.origin:
        folders.append(Path(spec.origin).parent / "Qt" / "plugins" / "platforms")
    for folder in folders:
        plugin = folder / "libqxcb.so"
        if plugin.is_file():
            return plugin
    return None


def uses_xcb() -> bool:
    """Whether Qt would load the xcb plugin: on Linux, unless another platform is chosen or it is a Wayland session."""
    if not sys.platform.startswith("linux"):
        return False
    chosen = os.environ.get("QT_QPA_PLATFORM", "")
    if chosen:
        return chosen.split(":")[0].split(";")[0] == "xcb"
    wayland_session = os.environ.get("WAYLAND_DISPLAY") and os.environ.get("XDG_SESSION_TYPE") == "wayland"
    return not wayland_session


def unresolved_libraries(library: Path) -> list[str]:
    """The sonames that the dynamic linker cannot find for ``library`` and everything it loads, in order."""
    ldd = shutil.which("ldd")
    if ldd is not None:
        try:
            listing = subprocess.run([ldd, str(library)], capture_output=True, text=True, timeout=30).stdout
        except (OSError, subprocess.TimeoutExpired):
            listing = None
        if listing is not None:
            missing = re.findall(r"^\s*(\S+)\s+=>\s+not found", listing, flags=re.MULTILINE)
            return list(dict.fromkeys(missing))
    # Without ldd, loading the plugin names the first library missing (and loads nothing else on failure).
    try:
        ctypes.CDLL(str(library))
    except OSError as error:
        match = re.search(r"(lib[^\s:]+\.so[.\d]*): cannot open shared object file", str(error))
        return [match.group(1)] if match else []
    return []


def missing_libraries_message() -> str | None:
    """One line naming the packages to install when the xcb plugin's libraries do not all resolve; else None."""
    if not uses_xcb():
        return None
    plugin = xcb_plugin_path()
    if plugin is None:
        return None  # a Qt without the plugin, or another build of it: Qt explains itself
    missing = unresolved_libraries(plugin)
    if not missing:
        return None
    bundled = [name for name in missing if name.startswith("libQt6")]
    if bundled:
        return (f"ddpm-studio: the window cannot open: the Qt installation is incomplete ({', '.join(bundled)} "
                f"not found beside {plugin}); reinstall PySide6-Essentials, or use the headless commands "
                "(ddpm-studio --help).")
    packages = " ".join(dict.fromkeys(package_for(name) for name in missing))
    return (f"ddpm-studio: the window cannot open: Qt's X11 plugin needs libraries that are not installed "
            f"({', '.join(missing)}); on Debian or Ubuntu run 'sudo apt-get install {packages}', "
            "or use the headless commands (ddpm-studio --help).")
