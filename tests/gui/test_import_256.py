"""The paper's released models in the window: a diffusers folder dropped on the window is imported in a worker
thread and opened; a 256 px model generates, plays on the timeline, noises a picture at 256 px and denoises it
from t; on the CPU the page forecasts how slow that is."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ddpm_studio.core.model.unet import UNetConfig
from tests.helpers.diffusers_folders import reference_unet, write_diffusers_folder
from tests.helpers.drops import send_drop

NARROW_256 = UNetConfig(256, 3, 16, (1, 1, 2, 2, 4, 4), 1, (16,), 0.0, 8)  # the paper's 256 px layout, narrow


@pytest.fixture(scope="module")
def church(tmp_path_factory) -> Path:
    """A google/ddpm-church-256 style folder (narrow), written by diffusers itself."""
    folder = tmp_path_factory.mktemp("hub") / "ddpm-church-256"
    write_diffusers_folder(folder, reference_unet(NARROW_256), {"variance_type": "fixed_small"})
    return folder


@pytest.fixture
def imported(qtbot, window, church, user_models_dir) -> Path:
    """Drop the folder on the window: it is imported in a worker thread, then opened on the Generate page."""
    assert send_drop(window, [church])
    runner = window.imports.current
    assert runner is not None and runner.thread.objectName() == "ddpm-import ddpm-church-256"  # not the GUI thread
    out = user_models_dir / "ddpm-church-256"
    qtbot.waitUntil(lambda: window.generate_page.model_chooser.current_path() == out, timeout=60_000)
    assert window.tabs.currentWidget() is window.generate_page
    assert "Imported ddpm-church-256" in window.statusBar().currentMessage()
    return out


def test_a_dropped_diffusers_folder_is_imported_once_and_opened(qtbot, window, church, imported):
    page = window.generate_page
    assert page.sampling.variance() == "fixed_small"  # the scheduler's choice became the model's default
    # Opening the same folder again opens the earlier import instead of copying it twice.
    window.open_model(church)
    assert "imported before" in window.statusBar().currentMessage()
    assert sorted(p.name for p in imported.parent.iterdir()) == ["ddpm-church-256"]


def test_a_256px_model_generates_and_plays_on_the_timeline(qtbot, window, imported):
    page = window.generate_page
    page.count_spin.setValue(16)
    page.sampler_box.setCurrentIndex(page.sampler_box.findData("ddpm"))
    # On the CPU, 16 images x 1000 steps of a 256 px model is slow: the page says so before it starts.
    qtbot.waitUntil(lambda: page.sampling.cost_label.isVisibleTo(page), timeout=60_000)
    assert "On the CPU this takes about" in page.sampling.cost_label.text()
    page.count_spin.setValue(1)
    page.sampler_box.setCurrentIndex(page.sampler_box.findData("ddim"))
    page.steps_spin.setValue(2)
    assert page.generate() is not None
    qtbot.waitUntil(lambda: page.runner is None, timeout=120_000)
    assert page.result is not None and tuple(page.result.images.shape) == (1, 3, 256, 256)
    timeline = page.timeline
    assert timeline.frame_count() == 3
    timeline.set_frame(timeline.frame_count() - 1)
    assert timeline.x_t_view.image().shape == (256, 256, 3)


def test_noising_and_denoise_from_t_at_256px(qtbot, window, imported, tmp_path):
    picture = tmp_path / "photo.png"
    gradient = np.linspace(0, 255, 300 * 400 * 3).reshape(300, 400, 3).astype(np.uint8)
    Image.fromarray(gradient).save(picture)
    page = window.noising_page
    window.tabs.setCurrentWidget(page)
    assert page.model_chooser.select(imported)
    assert page.load_image(picture)
    assert page.model_image_view.image().shape == (256, 256, 3)  # the picture at the model's resolution
    page.set_t(10)
    page.sampler_box.setCurrentIndex(page.sampler_box.findData("ddim"))
    page.steps_spin.setValue(2)
    assert page.denoise() is not None
    qtbot.waitUntil(lambda: page.runner is None, timeout=120_000)
    assert page.result is not None and tuple(page.result.images.shape) == (1, 3, 256, 256)
    assert page.result.metadata["start_t"] == "10"


def test_the_train_page_fine_tunes_from_a_model(qtbot, window, tiny_model, demo_folder, user_models_dir):
    """Start from: a new run from the chosen model's EMA weights, with its architecture, in a folder of its own."""
    from ddpm_studio.core.data.folders import load_dataset
    from ddpm_studio.core.model import store as model_store

    window.library.open(tiny_model)
    result = load_dataset([demo_folder], 32)  # another resolution than the model's: rescanned at 16 px
    result.sources = [demo_folder]
    window.dataset_page.show_result(result)
    page = window.train_page
    window.tabs.setCurrentWidget(page)
    page.form.preset_combo.setCurrentIndex(page.form.preset_combo.findData("small"))
    page.init_check.setChecked(True)
    assert page.init_picker.select(tiny_model)
    assert not page.form.preset_combo.isEnabled() and not page.form.resolution_combo.isEnabled()
    assert "Fine-tune of tiny" in page.form.preset_description.text()
    assert page.form.resolution_combo.currentData() == 16  # the model's, shown though disabled
    source = model_store.read_model_info(tiny_model)
    config = page.config()
    assert config.init_from == str(tiny_model) and config.unet_config() == source.unet
    assert config.num_timesteps == source.schedule.num_timesteps
    page.form.steps_spin.setValue(2)
    page.form.batch_spin.setValue(4)
    page.form.preview_count_spin.setValue(0)
    page.name_edit.setText("tiny-tuned")
    assert page.start_button.isEnabled(), page.start_hint.text()
    page.start_training()
    qtbot.waitUntil(lambda: not page.is_training() and not page.estimates.is_running(), timeout=120_000)
    tuned = model_store.read_model_info(user_models_dir / "tiny-tuned")
    assert tuned.step == 2 and tuned.training["init_from"] == str(tiny_model) and tuned.unet == source.unet
    page.init_check.setChecked(False)
    assert page.form.preset_combo.isEnabled() and page.config().init_from is None
