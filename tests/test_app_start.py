"""Launching the studio: without a display it explains itself in one line and exits non-zero."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers.fake_x_server import fake_x_display

DISPLAY_VARIABLES = ("DISPLAY", "WAYLAND_DISPLAY", "WAYLAND_SOCKET", "XDG_SESSION_TYPE", "QT_QPA_PLATFORM")


def run_studio(env_changes: dict, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in DISPLAY_VARIABLES}
    env.update(env_changes)
    return subprocess.run([sys.executable, "-m", "ddpm_studio"], env=env, capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


def test_without_a_display_the_window_explains_how_to_run_headless():
    result = run_studio({})
    assert result.returncode == 3
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "no display" in lines[0] and "ddpm-studio train" in lines[0] and "offscreen" in lines[0]
    assert "Traceback" not in result.stderr


def test_a_display_that_cannot_be_opened_is_one_line_not_an_abort():
    if Path("/tmp/.X11-unix/X99").exists():
        pytest.skip("an X server listens at :99 here")
    result = run_studio({"DISPLAY": ":99"})
    assert result.returncode == 3, result.stderr  # not 134 (SIGABRT in Qt's platform plugin)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "the display :99 (from DISPLAY) cannot be opened" in lines[0] and "ddpm-studio train" in lines[0]
    assert "Could not load the Qt platform plugin" not in result.stderr and "Traceback" not in result.stderr


def test_the_display_check_opens_a_display_as_qt_would(monkeypatch):
    from ddpm_studio.gui.display import display_problem, x_display_problem

    monkeypatch.setenv("XAUTHORITY", os.devnull)  # no cookie to send: the fake server takes any
    for name in DISPLAY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    with fake_x_display() as display:
        assert x_display_problem(display) is None
        monkeypatch.setenv("DISPLAY", display)
        assert display_problem() is None
    assert "no X server answers" in display_problem()  # the same name, now that nothing listens
    assert "not a display name" in x_display_problem("no-colon-here")
    monkeypatch.setenv("QT_QPA_PLATFORM", "offscreen")  # the user's choice of a platform without a display
    assert display_problem() is None
    monkeypatch.setenv("QT_QPA_PLATFORM", "xcb")
    monkeypatch.delenv("DISPLAY")
    assert "no display found" in display_problem()


def test_main_py_behaves_like_the_command():
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY", "QT_QPA_PLATFORM")}
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    result = subprocess.run([sys.executable, "main.py", "--help"], cwd=root, env=env, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0
    for command in ("train", "sample", "info", "bench", "demo-data"):
        assert command in result.stdout


def plugin_missing_a_library(tmp_path) -> tuple[str, str]:
    """A copy of PySide6's xcb plugin whose first X11 library is renamed to one that exists nowhere.

    The copy keeps PySide6's layout ($ORIGIN/../../lib finds the bundled Qt libraries), so the
    renamed library is the one that cannot resolve (besides any the machine really lacks).
    """
    import PySide6

    qt = Path(PySide6.__file__).parent / "Qt"
    plugin = (qt / "plugins" / "platforms" / "libqxcb.so").read_bytes()
    real, fake = b"libxcb-cursor.so.0\0", b"libnot-there.so.0\0\0"  # same length: the string table keeps its layout
    assert real in plugin
    platforms = tmp_path / "qt" / "plugins" / "platforms"
    platforms.mkdir(parents=True)
    (platforms / "libqxcb.so").write_bytes(plugin.replace(real, fake))
    (tmp_path / "qt" / "lib").symlink_to(qt / "lib")
    return str(platforms), "libnot-there.so.0"


def test_missing_x11_libraries_are_named_with_their_packages_before_qt_can_abort(tmp_path):
    plugin_dir, missing = plugin_missing_a_library(tmp_path)
    # A display that opens (a stand-in X server): the libraries are checked before Qt would load the plugin.
    with fake_x_display() as display:
        result = run_studio({"DISPLAY": display, "XAUTHORITY": os.devnull, "QT_QPA_PLATFORM_PLUGIN_PATH": plugin_dir})
    assert result.returncode == 3
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert missing in lines[0] and "sudo apt-get install" in lines[0] and "libnot-there0" in lines[0]
    assert "Could not load the Qt platform plugin" not in result.stderr and "Traceback" not in result.stderr


def test_library_names_map_to_debian_packages():
    from ddpm_studio.gui.system_libraries import README_PACKAGES, package_for

    assert package_for("libxcb-cursor.so.0") == "libxcb-cursor0"
    assert package_for("libxcb-icccm.so.4") == "libxcb-icccm4"
    assert package_for("libxkbcommon-x11.so.0") == "libxkbcommon-x11-0"
    assert package_for("libX11-xcb.so.1") == "libx11-xcb1"
    assert package_for("libEGL.so.1") == "libegl1"
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    assert f"sudo apt-get install {README_PACKAGES}" in readme  # the README's line is the one the code knows
