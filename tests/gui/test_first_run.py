"""A fresh install: the window opens with the demo model chosen, the sample picture shown, and the demo dataset
offered."""

import sys
from pathlib import Path

import pytest

from ddpm_studio.core.model import store as model_store
from ddpm_studio.paths import BUNDLED_MODELS_DIR, SAMPLE_PICTURE
from tests.helpers.windows import add_window


@pytest.fixture
def fresh_window(qtbot, settings, user_models_dir):
    """The window as a new user sees it: default model folders, no saved settings."""
    from ddpm_studio.gui.main_window import MainWindow
    from ddpm_studio.gui.model_library import ModelLibrary

    assert ModelLibrary().folders == [BUNDLED_MODELS_DIR, user_models_dir]
    window = MainWindow(settings=settings, library=ModelLibrary())
    add_window(qtbot, window)
    window.show()
    yield window
    window.confirm_close = False
    window.close()


def test_first_launch_selects_the_demo_model_and_generates_from_it(qtbot, fresh_window):
    page = fresh_window.generate_page
    assert page.model_chooser.current_path().resolve() == (BUNDLED_MODELS_DIR / "demo").resolve()
    fresh_window.tabs.setCurrentWidget(page)
    page.sampler_box.setCurrentIndex(page.sampler_box.findData("ddim"))
    page.steps_spin.setValue(10)
    page.count_spin.setValue(2)
    assert page.generate_button.isEnabled()
    page.generate()
    qtbot.waitUntil(lambda: page.runner is None, timeout=60_000)
    assert page.result is not None and page.grid.count() == 2
    assert page.result.images.shape == (2, 3, 32, 32)
    assert page.timeline.frame_count() == 11


def test_first_launch_shows_the_sample_picture_and_offers_the_demo_dataset(fresh_window):
    fresh_window.tabs.setCurrentWidget(fresh_window.noising_page)
    assert fresh_window.noising_page.source_path == SAMPLE_PICTURE
    dataset_page = fresh_window.dataset_page
    fresh_window.tabs.setCurrentWidget(dataset_page)
    assert dataset_page.stack.currentWidget() is dataset_page.drop_zone
    assert dataset_page.drop_zone.demo_button.isVisible() and dataset_page.drop_zone.demo_button.isEnabled()


def test_new_models_are_saved_in_the_users_data_folder_not_the_package(monkeypatch, tmp_path):
    monkeypatch.delenv("DDPM_STUDIO_MODELS", raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    folder = model_store.default_user_models_dir()
    if sys.platform.startswith("linux"):
        assert folder == tmp_path / "data" / "ddpm-studio" / "models"
    assert folder != BUNDLED_MODELS_DIR and BUNDLED_MODELS_DIR not in folder.parents
    monkeypatch.setenv("DDPM_STUDIO_MODELS", "~/my-models")  # the override, with a home folder in it
    assert model_store.default_user_models_dir() == Path.home() / "my-models"
