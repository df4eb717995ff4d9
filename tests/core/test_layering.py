"""The engine never imports Qt, so it runs headless and under torchrun without a GUI stack."""

import subprocess
import sys

CHECK = """
import importlib, pkgutil, sys
import ddpm_studio.core as core
for module in pkgutil.iter_modules(core.__path__):
    importlib.import_module(f"ddpm_studio.core.{module.name}")
import ddpm_studio.cli
print(sorted(name for name in sys.modules if name.split('.')[0] in ('PySide6', 'pyqtgraph', 'shiboken6')))
"""


def test_core_and_cli_import_no_qt():
    result = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
