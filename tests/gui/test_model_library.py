"""The model library in the window: folders that cannot be used are listed, disabled, with the sentence that says
why; Open model… shows the same sentence; a decompression bomb named preview.png is refused, not decoded."""

from __future__ import annotations

import json
import shutil
import struct
import zlib
from pathlib import Path

import pytest
from PySide6.QtCore import Qt
from PySide6.QtWidgets import QMessageBox

from ddpm_studio.core.model import store as model_store


def png_claiming(path: Path, width: int, height: int) -> None:
    """A PNG whose header promises width x height pixels over a few bytes of data: a decompression bomb's front."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(b"\x00" * 1000)) + chunk(b"IEND", b""))


def edit_unet(folder: Path, **changes) -> None:
    path = folder / model_store.CONFIG_FILE
    data = json.loads(path.read_text(encoding="utf-8"))
    data["unet"].update(changes)
    path.write_text(json.dumps(data), encoding="utf-8")


@pytest.fixture
def library_folders(models_dir, tiny_model) -> dict[str, Path]:
    folders = {name: Path(shutil.copytree(tiny_model, models_dir / name)) for name in ("bomb", "huge", "cut")}
    # 13000 x 13000 is under Pillow's own refusal (2 x 89.5 million pixels): without a limit it would be decoded
    png_claiming(folders["bomb"] / model_store.PREVIEW_FILE, 13_000, 13_000)
    edit_unet(folders["huge"], base_channels=16384)
    weights = folders["cut"] / model_store.EMA_FILE
    weights.write_bytes(weights.read_bytes()[:5000])
    return folders


def items(picker) -> dict[str, int]:
    return {picker.itemText(index): index for index in range(picker.count())}


def test_unusable_folders_are_listed_disabled_with_the_reason_as_tooltip(window, library_folders):
    window.library.refresh()
    for picker in (window.generate_page.model_chooser.picker, window.train_page.resume_picker):
        listed = items(picker)
        for name, fragment in (("huge", "unet.base_channels is 16,384"),
                               ("cut", "is damaged or not a safetensors file")):
            index = listed[f"{name} (unusable)"]
            assert not picker.model().item(index).isEnabled()
            tooltip = picker.itemData(index, Qt.ItemDataRole.ToolTipRole)
            error = next(entry.error for entry in window.library.entries if entry.path.name == name)
            assert tooltip == error and fragment in error and "\n" not in error
        assert picker.current_path() == library_folders["bomb"]  # the usable one is chosen, never an unusable one
    chooser = window.generate_page.model_chooser
    assert "Unusable: cut, huge" in chooser.message.text()


def test_a_bomb_preview_is_refused_and_the_entry_says_why(window, library_folders):
    window.library.refresh()
    picker = window.train_page.resume_picker
    index = items(picker)[next(text for text in items(picker) if text.startswith("bomb"))]
    assert picker.model().item(index).isEnabled()  # the model itself is fine
    tooltip = picker.itemData(index, Qt.ItemDataRole.ToolTipRole)
    assert "No preview:" in tooltip and "is refused" in tooltip and "13,000x13,000" in tooltip

    page = window.train_page
    window.tabs.setCurrentWidget(page)
    picker.setCurrentIndex(index)
    picker.activated.emit(index)  # as a click does: shows the model's curve, settings and preview
    assert page.loss_plot.point_count() == 12  # the rest of the model is shown
    assert page.preview_view.image() is None and page.preview_view.caption == "No preview"
    assert "is refused" in page.preview_view.placeholder and "13,000x13,000" in page.preview_view.toolTip()


def test_open_model_lists_an_unusable_folder_and_shows_the_same_sentence(window, library_folders, tmp_path,
                                                                          monkeypatch):
    elsewhere = Path(shutil.move(str(library_folders["huge"]), tmp_path / "downloaded"))
    window.library.refresh()
    chooser = window.generate_page.model_chooser
    assert not chooser.open_folder(elsewhere)
    error = next(entry.error for entry in window.library.entries if entry.path == elsewhere)
    assert chooser.error_text() == error and "unet.base_channels is 16,384" in error
    assert "downloaded (unusable)" in items(chooser.picker)

    warnings = []
    monkeypatch.setattr(QMessageBox, "warning", staticmethod(lambda parent, title, text: warnings.append(text)))
    assert not window.open_model(elsewhere)  # the menu's Open model folder…
    assert warnings == [error]


def test_a_long_model_name_is_elided_in_the_box_with_its_description_whole_and_the_full_text_in_the_tooltip(
        qtbot, models_dir, tiny_model):
    from ddpm_studio.gui.model_library import ModelLibrary, ModelPicker, elide_model_text

    name = "a-model-with-a-rather-long-descriptive-name-trained-on-my-holiday-pictures"
    folder = Path(shutil.copytree(tiny_model, models_dir / name))
    library = ModelLibrary([models_dir])
    picker = ModelPicker(library)
    qtbot.addWidget(picker)
    picker.setFixedWidth(260)
    picker.show()
    qtbot.waitExposed(picker)
    assert picker.select(folder)
    full = picker.currentText()
    assert full.startswith(name) and full.endswith("16px, 12 steps")
    shown = picker.shown_text()
    assert shown != full and shown.endswith("… — 16px, 12 steps")  # the name gives way; "12 ste" never happens
    assert name.startswith(shown.split("…")[0])
    assert picker.fontMetrics().horizontalAdvance(shown) <= picker.width()
    assert full in picker.toolTip() and str(folder) in picker.toolTip()

    # A short text is drawn as it is; with no room even for the description, the whole text is elided.
    metrics = picker.fontMetrics()
    assert elide_model_text("demo — 32px, 8,000 steps", metrics, 1000) == "demo — 32px, 8,000 steps"
    tight = elide_model_text(full, metrics, 60)
    assert tight.endswith("…") and metrics.horizontalAdvance(tight) <= 60
    picker.grab().save(str(models_dir / "picker.png"))  # it paints without error


def test_a_model_of_one_step_says_step_not_steps(tiny_model):
    import dataclasses

    from ddpm_studio.gui.model_library import describe_entry

    entry = model_store.read_entry(tiny_model)
    one = dataclasses.replace(entry, info=dataclasses.replace(entry.info, step=1))
    assert describe_entry(one).endswith("16px, 1 step")
    assert describe_entry(entry).endswith("16px, 12 steps")
