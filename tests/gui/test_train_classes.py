"""The Train page with classes: the check box and label dropout are on only for a labelled dataset (and say why
when off), and a clicked run trains a class-conditional model."""

import os
from pathlib import Path

import pytest
from PySide6.QtCore import QPoint, Qt

from ddpm_studio.core.data.folders import load_dataset
from ddpm_studio.core.model import store as model_store
from tests.core.test_class_training import write_class_folders
from tests.gui.test_train_page import RUN_TIMEOUT_MS, configure, wait_idle

SHOT = Path(os.environ.get("DDPM_STUDIO_SHOTS", "/tmp/work/shots")) / "train_classes.png"


def show_dataset(window, folder):
    result = load_dataset([folder], 16)
    result.sources = [folder]
    window.dataset_page.show_result(result)
    page = window.train_page
    window.tabs.setCurrentWidget(page)
    return page


def click(qtbot, check_box) -> None:
    """A real click on the box itself (a check box toggles on a click inside its indicator)."""
    qtbot.mouseClick(check_box, Qt.MouseButton.LeftButton, pos=QPoint(8, check_box.height() // 2))


def test_the_class_controls_are_off_without_classes_and_say_why(window, demo_folder, qtbot):
    page = show_dataset(window, demo_folder)
    form = page.form
    assert not form.classes_check.isEnabled() and not form.label_dropout_spin.isEnabled()
    assert "two or more class subfolders" in form.classes_hint.text()
    assert "two or more class subfolders" in form.classes_check.toolTip()
    click(qtbot, form.classes_check)
    assert not form.classes_check.isChecked() and page.config().classes is False


def test_a_clicked_run_with_classes_trains_a_class_conditional_model(window, tmp_path, qtbot, user_models_dir):
    folder = write_class_folders(tmp_path / "animals", per_class=3)
    page = show_dataset(window, folder)
    configure(page, steps=3)
    form = page.form
    assert form.classes_check.isEnabled() and not form.classes_check.isChecked()
    assert "3 classes from the subfolders: cat 3, dog 3, owl 3." in form.classes_hint.text()
    assert not form.label_dropout_spin.isEnabled()  # until the box is ticked
    click(qtbot, form.classes_check)
    assert form.classes_check.isChecked() and form.label_dropout_spin.isEnabled()
    assert form.label_dropout_spin.value() == pytest.approx(0.1)
    form.label_dropout_spin.setFocus()
    form.label_dropout_spin.selectAll()
    qtbot.keyClicks(form.label_dropout_spin, "0.25")
    qtbot.keyClick(form.label_dropout_spin, Qt.Key.Key_Enter)
    assert page.config().classes is True and page.config().label_dropout == pytest.approx(0.25)
    window.resize(1200, 900)
    qtbot.wait(50)
    SHOT.parent.mkdir(parents=True, exist_ok=True)
    assert page.grab().save(str(SHOT))

    qtbot.mouseClick(page.start_button, Qt.MouseButton.LeftButton)
    wait_idle(qtbot, page, RUN_TIMEOUT_MS)
    info = model_store.read_model_info(user_models_dir / page.run_path.name)
    assert info.step == 3 and info.unet.num_classes == 3
    assert info.extra["classes"] == {"names": ["cat", "dog", "owl"], "counts": [3, 3, 3]}
    assert info.training["label_dropout"] == pytest.approx(0.25)

    # Another dataset without classes turns the box off again: a new run there is unconditional.
    show_dataset(window, write_class_folders(tmp_path / "flat", names=("only",)) / "only")
    assert not form.classes_check.isEnabled() and not form.classes_check.isChecked()
