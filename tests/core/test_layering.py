"""The engine never imports Qt, so it runs headless and under torchrun without a GUI stack."""

import json
import subprocess
import sys

# Every module of core and of the CLI, subpackages included, then which Qt modules that loaded.
CHECK = """
import importlib, json, pkgutil, sys
import ddpm_studio.cli as cli
import ddpm_studio.core as core
names = []
for package in (core, cli):
    for module in pkgutil.walk_packages(getattr(package, "__path__", []), prefix=package.__name__ + "."):
        importlib.import_module(module.name)
        names.append(module.name)
qt = sorted(name for name in sys.modules if name.split('.')[0] in ('PySide6', 'pyqtgraph', 'shiboken6'))
print(json.dumps({"imported": names, "qt": qt}))
"""


def test_core_and_cli_import_no_qt():
    result = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    # The walk reached the modules inside core's subpackages, not only their (empty) __init__ files.
    assert {"ddpm_studio.core.diffusion.process", "ddpm_studio.core.data.folders",
            "ddpm_studio.core.model.store", "ddpm_studio.cli.train",
           "ddpm_studio.cli.sample"} <= set(report["imported"])
    assert report["qt"] == []
