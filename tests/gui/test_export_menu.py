"""File > Export model…: the real action, its folder chooser and question answered as a user would, the export
made in a worker thread, and a message that says where it went."""

from __future__ import annotations

import json

from PySide6.QtWidgets import QFileDialog, QMessageBox

from ddpm_studio.core.model.importer import import_folder
from tests.helpers.class_models import CLASS_NAMES, write_class_model
from tests.helpers.windows import open_generate_page, when_shown


def choose(folder):
    """Close a folder chooser with ``folder`` chosen."""
    def close(dialog: QFileDialog) -> None:
        dialog.setDirectory(str(folder))  # a folder chooser accepts the folder it shows
        dialog.accept()
    return close


def test_export_model_writes_the_generate_pages_model(qtbot, window, tmp_path):
    model = write_class_model(tmp_path / "models" / "shapes")
    open_generate_page(window, model, count=1, seed=0)
    out = tmp_path / "exported"
    out.mkdir()
    chooser = when_shown(QFileDialog, lambda dialog: dialog.windowTitle(), choose(out))
    told = when_shown(QMessageBox, lambda box: (box.windowTitle(), box.text()), QMessageBox.accept)
    window.export_model_action.trigger()
    qtbot.waitUntil(lambda: bool(told), timeout=60_000)
    assert chooser == ["Export shapes to a new or empty folder"]
    assert told[0][0] == "Model exported" and str(out) in told[0][1] and "DDPMPipeline.from_pretrained" in told[0][1]
    assert json.loads((out / "studio.json").read_text())["classes"] == CLASS_NAMES
    assert import_folder(out, tmp_path / "back").info.unet.num_classes == len(CLASS_NAMES)
    assert window.export_model_action in window.menuBar().actions()[0].menu().actions()

    # Again into the same, now non-empty, folder: answered No, nothing changes.
    before = (out / "unet" / "config.json").stat().st_mtime_ns
    when_shown(QFileDialog, lambda dialog: None, choose(out))
    answer_no = lambda box: box.button(QMessageBox.StandardButton.No).click()  # noqa: E731
    asked = when_shown(QMessageBox, lambda box: box.text(), answer_no)
    window.export_model_action.trigger()
    qtbot.waitUntil(lambda: bool(asked), timeout=10_000)
    assert "is not empty" in asked[0]
    assert window.exports.current is None or not window.exports.is_running()
    assert (out / "unet" / "config.json").stat().st_mtime_ns == before


def test_export_without_a_model_says_what_to_do(qtbot, window):
    told = when_shown(QMessageBox, lambda box: box.text(), QMessageBox.accept)
    window.export_model_action.trigger()
    qtbot.waitUntil(lambda: bool(told), timeout=10_000)
    assert "Open or train a model first" in told[0]
