"""Whether the display Qt will draw on can be opened, asked before Qt loads its platform plugin.

When Qt's plugin cannot connect (a stale ``DISPLAY=:99``, an X server gone or refusing us, a
Wayland socket that is not there), Qt prints several lines, one of them a false hint about
libxcb-cursor0, and aborts the process. So the studio connects first, the way the plugin
would, and says in one line what is wrong. It connects to an X server with libxcb, the library
Qt's plugin itself connects with, so the display name, the X authority file and the socket are
read exactly as Qt would read them. This module imports no Qt.
"""

from __future__ import annotations

import ctypes
import os
import socket
import sys

HEADLESS_ADVICE = (
    "On a desktop, run it there; over SSH use 'ssh -X' or a virtual display (xvfb-run ddpm-studio); headless, "
    "train with 'ddpm-studio train DATA_DIR' (see 'ddpm-studio --help'), or set QT_QPA_PLATFORM=offscreen to start "
    "the window without showing it."
)

NO_DISPLAY_MESSAGE = f"ddpm-studio: no display found, so the studio window cannot open. {HEADLESS_ADVICE}"

# libxcb's reasons for a failed connection (xcb.h: XCB_CONN_ERROR and on), in words.
XCB_CONNECTION_ERRORS = {
    1: "no X server answers there, or it refused this program",
    3: "the connection ran out of memory",
    5: "it is not a display name (those read like :0 or host:0)",
    6: "that X server has no such screen",
}


def qt_platforms() -> list[str]:
    """The platform plugins Qt will try, in order: QT_QPA_PLATFORM's list, else wayland then xcb in a
    Wayland session, else xcb (what Qt's own start-up decides on Linux)."""
    chosen = os.environ.get("QT_QPA_PLATFORM", "")
    if chosen:
        return [entry.split(":", 1)[0].strip() for entry in chosen.split(";") if entry.strip()]
    if os.environ.get("XDG_SESSION_TYPE") == "wayland":
        return ["wayland", "xcb"]
    return ["xcb"]


def x_display_problem(display: str) -> str | None:
    """Why the X display ``display`` cannot be opened, in a few words; None when it can (or libxcb is missing,
    which the check of the plugin's libraries reports)."""
    try:
        xcb = ctypes.CDLL("libxcb.so.1")
    except OSError:
        return None
    xcb.xcb_connect.restype = ctypes.c_void_p
    xcb.xcb_connect.argtypes = [ctypes.c_char_p, ctypes.POINTER(ctypes.c_int)]
    xcb.xcb_connection_has_error.restype = ctypes.c_int
    xcb.xcb_connection_has_error.argtypes = [ctypes.c_void_p]
    xcb.xcb_disconnect.restype = None
    xcb.xcb_disconnect.argtypes = [ctypes.c_void_p]
    screen = ctypes.c_int(0)
    connection = xcb.xcb_connect(os.fsencode(display), ctypes.byref(screen))  # never NULL, even on failure
    try:
        error = xcb.xcb_connection_has_error(connection)
    finally:
        xcb.xcb_disconnect(connection)
    if not error:
        return None
    return XCB_CONNECTION_ERRORS.get(error, f"libxcb's connection error {error}")


def wayland_socket_path() -> str | None:
    """The socket a Wayland client connects to (libwayland's rule: $WAYLAND_DISPLAY, default wayland-0, under
    $XDG_RUNTIME_DIR unless absolute); None when it cannot be named."""
    name = os.environ.get("WAYLAND_DISPLAY") or "wayland-0"
    if os.path.isabs(name):
        return name
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    return os.path.join(runtime, name) if runtime else None


def wayland_reachable() -> bool:
    if os.environ.get("WAYLAND_SOCKET"):  # a socket handed over by the compositor: nothing to find
        return True
    path = wayland_socket_path()
    if path is None:
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            probe.connect(path)
    except OSError:
        return False
    return True


def display_problem() -> str | None:
    """One line saying why the window cannot open on this display; None when one of the platforms Qt will try
    can open (or is not one this check knows, such as offscreen)."""
    if not sys.platform.startswith("linux"):
        return None
    x_reason = None
    for platform in qt_platforms():
        if platform == "xcb":
            display = os.environ.get("DISPLAY", "")
            if not display:
                continue
            x_reason = x_display_problem(display)
            if x_reason is None:
                return None
        elif platform.startswith("wayland"):
            if wayland_reachable():
                return None
        else:
            return None  # offscreen, minimal, vnc, eglfs...: the user chose it, and knows it
    if x_reason is None:
        return NO_DISPLAY_MESSAGE
    return (f"ddpm-studio: the display {os.environ['DISPLAY']} (from DISPLAY) cannot be opened: {x_reason}; "
            f"so the studio window cannot open. {HEADLESS_ADVICE}")
