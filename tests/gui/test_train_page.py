"""The Train page: settings, Start / Stop / Resume on a tiny model, the loss curve, previews and errors."""

import math
import re
from pathlib import Path

import numpy as np
import pytest
from PySide6.QtCore import Qt

from ddpm_studio.core.data.folders import load_dataset
from ddpm_studio.core.errors import SettingError
from ddpm_studio.core.model import store as model_store
from ddpm_studio.core.training import plan as run_plan
from ddpm_studio.core.training.events import FailedEvent, StartedEvent
from ddpm_studio.gui.widgets.memory_guard import check_run

RUN_TIMEOUT_MS = 60_000
# Stop takes effect after the current step; a tiny step takes milliseconds, but the machine may be busy.
STOP_TIMEOUT_MS = 5_000


@pytest.fixture
def loaded(window, demo_folder):
    """The window with a 16 px dataset loaded and the Train page set up for a tiny, short run."""
    result = load_dataset([demo_folder], 16)
    result.sources = [demo_folder]
    window.dataset_page.show_result(result)
    page = window.train_page
    window.tabs.setCurrentWidget(page)
    configure(page, steps=2000)
    return window


def configure(page, steps: int, preview_every: int = 1000, checkpoint_every: int = 1000) -> None:
    page.form.preset_combo.setCurrentIndex(page.form.preset_combo.findData("tiny"))
    page.form.steps_spin.setValue(steps)
    page.form.batch_spin.setValue(4)
    page.form.timesteps_spin.setValue(50)
    page.form.preview_every_spin.setValue(preview_every)
    page.form.preview_count_spin.setValue(4)
    page.form.checkpoint_every_spin.setValue(checkpoint_every)


def wait_idle(qtbot, page, timeout=RUN_TIMEOUT_MS) -> None:
    qtbot.waitUntil(lambda: not page.is_training() and not page.estimates.is_running(), timeout=timeout)


def test_start_is_disabled_until_a_dataset_is_loaded_and_says_why(window):
    page = window.train_page
    assert page.dataset is None
    assert not page.start_button.isEnabled()
    assert "needs a dataset" in page.start_hint.text()


def test_a_preset_brings_its_batch_size_and_learning_rate(window):
    page = window.train_page
    page.form.preset_combo.setCurrentIndex(page.form.preset_combo.findData("medium"))
    assert page.form.batch_spin.value() == 64
    assert page.form.learning_rate_spin.value() == pytest.approx(2e-4)
    assert "9 M parameters" in page.form.preset_combo.toolTip()
    tooltip = page.form.preset_combo.itemData(page.form.preset_combo.findData("tiny"), Qt.ItemDataRole.ToolTipRole)
    assert "tests" in tooltip
    page.form.preset_combo.setCurrentIndex(page.form.preset_combo.findData("tiny"))
    assert page.form.batch_spin.value() == 16
    assert page.form.learning_rate_spin.value() == pytest.approx(1e-3)


def test_the_name_comes_from_the_dataset_folder_and_is_unique(loaded, user_models_dir, demo_folder):
    page = loaded.train_page
    assert page.name_edit.text() == demo_folder.name
    assert page.start_button.isEnabled()
    (user_models_dir / demo_folder.name).mkdir()
    loaded.library.refresh()
    assert not page.start_button.isEnabled()
    assert "already exists" in page.start_hint.text()
    page.set_dataset(page.dataset)
    assert page.name_edit.text() == f"{demo_folder.name}-2"
    assert page.start_button.isEnabled()


def test_the_memory_estimate_shown_is_cores_for_the_settings_shown(loaded, qtbot):
    from ddpm_studio.core.system.devices import choose_device, use_bf16
    from ddpm_studio.core.training.memory import estimate_training_memory
    from ddpm_studio.gui.formatting import format_bytes

    page = loaded.train_page
    page.form.preset_combo.setCurrentIndex(page.form.preset_combo.findData("small"))
    page.form.batch_spin.setValue(8)
    config = page.config()
    expected = estimate_training_memory(config.unet_config(), 8, use_bf16(config.precision, choose_device("auto")),
                                        len(page.dataset.files))
    where = "GPU" if choose_device("auto").type == "cuda" else "CPU"
    text = f"≈ {format_bytes(expected.total_bytes)} on the {where} ({expected.parameters:,} parameters)"
    qtbot.waitUntil(lambda: text in page.memory_label.text(), timeout=RUN_TIMEOUT_MS)
    page.form.batch_spin.setValue(64)  # a new estimate follows the setting
    larger = estimate_training_memory(config.unet_config(), 64, use_bf16(config.precision, choose_device("auto")),
                                      len(page.dataset.files))
    assert larger.total_bytes > expected.total_bytes
    qtbot.waitUntil(lambda: f"≈ {format_bytes(larger.total_bytes)} on" in page.memory_label.text(),
                    timeout=RUN_TIMEOUT_MS)


def test_start_stop_and_resume(loaded, qtbot, user_models_dir):
    page = loaded.train_page
    qtbot.mouseClick(page.start_button, Qt.MouseButton.LeftButton)
    assert page.is_training() and not page.start_button.isEnabled()
    qtbot.waitUntil(lambda: page.loss_plot.point_count() >= 3, timeout=RUN_TIMEOUT_MS)
    assert page.device_value.text().startswith("CPU")

    qtbot.mouseClick(page.stop_button, Qt.MouseButton.LeftButton)
    wait_idle(qtbot, page, STOP_TIMEOUT_MS)
    stopped_at = page.current_step
    assert 3 <= stopped_at < 2000
    folder = user_models_dir / page.run_path.name
    model = model_store.load_model(folder)
    assert model.info.step == stopped_at
    history = model_store.load_loss_history(folder)
    assert len(history) == stopped_at
    assert "Stopped at step" in page.status_label.text()
    assert page.resume_picker.current_path() == folder  # ready to continue in one click
    assert page.name_edit.text() == folder.name  # the name is not changed behind the user's back,
    assert f"({folder.name}-2 is free)" in page.start_hint.text()  # and Start says which one is free
    assert not page.start_button.isEnabled()

    qtbot.mouseClick(page.resume_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: page.current_step >= stopped_at + 3, timeout=RUN_TIMEOUT_MS)
    np.testing.assert_allclose(page.loss_plot.losses()[:stopped_at], history)  # the old curve is kept
    page.stop_training()
    wait_idle(qtbot, page, STOP_TIMEOUT_MS)
    assert model_store.read_model_info(folder).step == page.current_step > stopped_at
    assert page.loss_plot.point_count() == page.current_step


def test_stop_clears_speed_and_time_left(loaded, qtbot):
    page = loaded.train_page
    configure(page, steps=100_000)  # it cannot end by itself before Stop
    monitor = page.monitor
    qtbot.mouseClick(page.start_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: "steps/s" in monitor.speed_value.text() and monitor.eta_value.text() != "–",
                    timeout=RUN_TIMEOUT_MS)
    qtbot.mouseClick(page.stop_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: not page.is_training(), timeout=RUN_TIMEOUT_MS)
    assert "Stopped at step" in page.status_label.text()
    assert monitor.speed_value.text() == "–" and monitor.eta_value.text() == "–"  # no longer true once stopped
    assert monitor.step_value.text().startswith(f"{page.current_step:,} /")  # what was reached stays


def test_a_finished_run_saves_shows_previews_and_refreshes_the_library(loaded, qtbot):
    page = loaded.train_page
    configure(page, steps=6, preview_every=3, checkpoint_every=4)
    saved = []
    page.modelSaved.connect(saved.append)
    page.start_training()
    wait_idle(qtbot, page)
    assert page.error_label.isHidden()
    assert "Finished 6 steps" in page.status_label.text()
    assert page.preview_view.image() is not None
    assert page.preview_view.image().shape[:2] == (2 * 16 + 3, 2 * 16 + 3)  # 4 previews in a 2x2 grid
    assert page.run_path in saved and saved.count(page.run_path) >= 2  # the checkpoint and the end
    assert page.run_path in [entry.path for entry in loaded.library.resumable()]
    assert page.progress_bar.value() == 6
    assert page.loss_plot.point_count() == 6


def test_picking_a_saved_model_shows_its_curve_and_settings(window, qtbot, tiny_model):
    window.library.open(tiny_model)
    page = window.train_page
    index = page.resume_picker.findData(str(tiny_model))
    assert index >= 0
    page.resume_picker.setCurrentIndex(index)
    page.resume_picker.activated.emit(index)
    assert page.loss_plot.point_count() == 12
    np.testing.assert_allclose(page.loss_plot.losses(), model_store.load_loss_history(tiny_model))
    assert page.form.preset_combo.currentData() == "tiny"
    assert page.form.steps_spin.value() > 12
    assert "12 steps trained" in page.resume_hint.text()


def test_resume_without_its_images_asks_for_a_dataset(window, qtbot, tiny_model):
    window.library.open(tiny_model)
    page = window.train_page
    window.tabs.setCurrentWidget(page)
    page.resume_picker.select(tiny_model)
    page.resume_training()
    assert not page.is_training()
    assert page.error_label.isVisible()
    assert "not found" in page.error_label.text()


def test_resume_keeps_the_models_own_settings_and_says_which_can_change(window, qtbot, tiny_model, demo_folder):
    window.library.open(tiny_model)
    page = window.train_page
    page.resume_picker.select(tiny_model)
    page.show_model(tiny_model)
    assert "only the steps, the learning rate" in page.resume_rule.text()
    page.form.batch_spin.setValue(page.form.batch_spin.value() * 2)
    page.resume_training()
    assert not page.is_training()
    assert "batch size cannot change when resuming tiny" in page.error_label.text()


@pytest.mark.parametrize("failure", ["event", "user error", "bug"])
def test_a_failed_run_shows_its_reason(loaded, qtbot, monkeypatch, failure):
    def failing_train(config, images, out_dir, *args, **kwargs):
        yield StartedEvent(0, config.steps, 1, "CPU", "float32", Path(out_dir), np.zeros(0, np.float32))
        if failure == "event":
            yield FailedEvent(0, "The loss became non-finite near step 1; try a lower learning rate.", Path(out_dir))
        elif failure == "user error":
            raise SettingError("Batch size 4 cannot be split evenly over 3 processes.")
        else:
            raise ValueError("Training images must be uint8.")

    monkeypatch.setattr(run_plan, "train", failing_train)
    page = loaded.train_page
    page.start_training()
    wait_idle(qtbot, page)
    assert page.error_label.isVisible()
    expected = {"event": "non-finite", "user error": "cannot be split evenly",
                "bug": "A bug in DDPM Studio stopped this job (ValueError: Training images must be uint8.)"}[failure]
    assert expected in page.error_label.text()
    assert page.start_button.isEnabled()  # nothing was saved, so the name is still free


def test_training_at_another_resolution_rescans_the_folder(loaded, qtbot):
    page = loaded.train_page
    configure(page, steps=2)
    page.form.resolution_combo.setCurrentIndex(page.form.resolution_combo.findData(32))
    page.form.preview_count_spin.setValue(0)
    page.start_training()
    wait_idle(qtbot, page)
    assert page.error_label.isHidden(), page.error_label.text()
    assert model_store.read_model_info(page.run_path).unet.image_size == 32


def test_the_settings_are_remembered(window, settings):
    from ddpm_studio.gui.pages.train import TrainPage

    page = window.train_page
    page.form.preset_combo.setCurrentIndex(page.form.preset_combo.findData("tiny"))
    page.form.batch_spin.setValue(24)
    page.form.learning_rate_spin.setValue(3e-4)
    page.form.steps_spin.setValue(777)
    page.form.ema_spin.setValue(0.995)
    page.save_settings()
    reopened = TrainPage(window.context)
    try:
        config = reopened.config()
        assert (config.preset, config.batch_size, config.steps) == ("tiny", 24, 777)
        assert config.learning_rate == pytest.approx(3e-4)
        assert config.ema_decay == pytest.approx(0.995)
    finally:
        reopened.shutdown()
        reopened.deleteLater()


def test_the_learning_rate_and_ema_step_by_factors(window):
    page = window.train_page
    page.form.learning_rate_spin.setValue(1e-3)
    page.form.learning_rate_spin.stepBy(1)
    assert page.form.learning_rate_spin.value() == pytest.approx(2e-3)
    page.form.ema_spin.setValue(0.99)
    page.form.ema_spin.stepBy(1)
    assert page.form.ema_spin.value() == pytest.approx(0.999)
    assert page.form.ema_spin.text() == "0.999"


def test_the_advanced_section_splits_the_batch_and_checkpoints_activations(loaded, qtbot):
    from ddpm_studio.core.training.config import TrainingConfig

    page = loaded.train_page
    form = page.form
    configure(page, steps=3)
    form.advanced_button.setChecked(True)
    form.accumulate_spin.setValue(2)
    form.checkpoint_check.setChecked(True)
    config = page.config()
    assert (config.accumulate, config.micro_batch, config.checkpoint_activations) == (2, None, True)
    form.auto_micro_batch_check.setChecked(True)
    assert not form.accumulate_spin.isEnabled()
    assert (page.config().accumulate, page.config().micro_batch) == (1, "auto")
    form.auto_micro_batch_check.setChecked(False)
    wait_idle(qtbot, page)

    page.start_training()
    wait_idle(qtbot, page)
    assert "Finished 3 steps" in page.status_label.text(), page.error_label.text()
    training = model_store.read_model_info(page.run_path).training
    assert (training["accumulate"], training["micro_batch"], training["checkpoint_activations"]) == (2, None, True)

    form.fill(TrainingConfig.from_dict({**training, "accumulate": 1, "micro_batch": 2}))  # --micro-batch 2 of 4
    assert form.accumulate_spin.value() == 2 and not form.auto_micro_batch_check.isChecked()
    form.fill(TrainingConfig.from_dict({**training, "accumulate": 1, "micro_batch": "auto"}))
    assert form.auto_micro_batch_check.isChecked() and not form.accumulate_spin.isEnabled()
    wait_idle(qtbot, page)


def answer_next_dialog(qtbot, button_text: str) -> list[str]:
    """Click the button labelled ``button_text`` of the next message box, as a user would; records its text.

    A box without such a button is closed (and the test fails on what it recorded), never left waiting."""
    from PySide6.QtCore import QTimer
    from PySide6.QtWidgets import QApplication, QMessageBox

    seen = []

    def click():
        box = QApplication.activeModalWidget()
        if not isinstance(box, QMessageBox):
            QTimer.singleShot(20, click)
            return
        seen.append(box.text())
        labels = {button.text().replace("&", ""): button for button in box.buttons()}
        if button_text not in labels:
            seen.append(f"no button {button_text!r} among {sorted(labels)}")
            box.reject()
            return
        qtbot.mouseClick(labels[button_text], Qt.MouseButton.LeftButton)

    QTimer.singleShot(0, click)
    return seen


def fake_memory_limit_mib(page, batch: int) -> int:
    """A memory limit, in whole MiB, that fits the page's run (in float32) at one image but not at ``batch`` images.

    Sized from the estimate, with the precision set: "auto" would mean bf16 on a CPU with native bf16, whose
    estimate is smaller, and a fixed limit would then fit the batch on some machines and not on others."""
    from ddpm_studio.core.training.memory import FIT_SHARE, estimate_training_memory

    page.form.precision_combo.setCurrentText("fp32")
    config = page.config()
    assert config.precision == "fp32"
    one, whole = (estimate_training_memory(config.unet_config(), size, False, len(page.dataset.files)).total_bytes
                  for size in (1, batch))
    return int((one + whole) / 2 / FIT_SHARE / 2**20)


def test_start_asks_first_when_the_run_cannot_fit_and_offers_the_largest_batch(loaded, qtbot, monkeypatch):
    """A fake, small memory limit, between what one image and a batch of 64 need, in float32."""
    page = loaded.train_page
    limit = fake_memory_limit_mib(page, 64)
    monkeypatch.setenv("DDPM_STUDIO_MEMORY_LIMIT", f"{limit}M")
    page.form.batch_spin.setValue(64)
    qtbot.waitUntil(lambda: "the largest batch size that fits is" in page.memory_label.text(), timeout=RUN_TIMEOUT_MS)
    assert page.start_button.isEnabled()  # the question comes on Start, with the way out

    seen = answer_next_dialog(qtbot, "Cancel")
    qtbot.mouseClick(page.start_button, Qt.MouseButton.LeftButton)
    assert len(seen) == 1 and f"at batch size 64, but the CPU has {limit} MiB available" in seen[0], seen
    assert "the largest batch size that fits is" in page.memory_label.text()
    assert not page.is_training() and page.form.batch_spin.value() == 64

    largest = int(re.search(r"the largest batch size that fits is (\d+)", seen[0]).group(1))
    assert 0 < largest < 64
    seen = answer_next_dialog(qtbot, f"Use batch size {largest}")
    qtbot.mouseClick(page.start_button, Qt.MouseButton.LeftButton)
    assert len(seen) == 1 and page.form.batch_spin.value() == largest, seen
    qtbot.waitUntil(lambda: page.current_step >= 1, timeout=RUN_TIMEOUT_MS)
    page.stop_training()
    wait_idle(qtbot, page)
    assert model_store.read_model_info(page.run_path).training["batch_size"] == largest



def test_a_run_that_cannot_fit_can_keep_its_batch_in_micro_batches(loaded, qtbot, monkeypatch):
    """The same fake limit: "Keep batch size 64 in K micro-batches" trains batch 64 in parts that fit."""
    page = loaded.train_page
    monkeypatch.setenv("DDPM_STUDIO_MEMORY_LIMIT", f"{fake_memory_limit_mib(page, 64)}M")
    page.form.batch_spin.setValue(64)
    page.form.steps_spin.setValue(2)
    qtbot.waitUntil(lambda: "the largest batch size that fits is" in page.memory_label.text(), timeout=RUN_TIMEOUT_MS)
    wait_idle(qtbot, page)
    largest = check_run(page.config())().largest_batch  # what the question will offer
    parts = math.ceil(64 / largest)
    assert parts > 1

    seen = answer_next_dialog(qtbot, f"Keep batch size 64 in {parts} micro-batches")
    qtbot.mouseClick(page.start_button, Qt.MouseButton.LeftButton)
    assert len(seen) == 1, seen
    assert page.form.batch_spin.value() == 64 and page.form.accumulate_spin.value() == parts
    wait_idle(qtbot, page)
    assert "Finished 2 steps" in page.status_label.text(), page.error_label.text()
    training = model_store.read_model_info(page.run_path).training
    assert (training["batch_size"], training["accumulate"]) == (64, parts)

    # "As large as fits" takes the largest micro-batch when the run starts: nothing to warn about or ask.
    page.form.advanced_button.setChecked(True)
    page.form.auto_micro_batch_check.setChecked(True)
    qtbot.waitUntil(lambda: "fits is" not in page.memory_label.text() and "≈" in page.memory_label.text(),
                    timeout=RUN_TIMEOUT_MS)
    assert page.memory_allows(page.config())  # returns at once: a question would wait for an answer here
    wait_idle(qtbot, page)


def test_resuming_a_run_that_cannot_fit_offers_micro_batches_never_another_batch_size(window, qtbot, tiny_model,
                                                                                      demo_folder, monkeypatch,
                                                                                      user_models_dir):
    import shutil

    from ddpm_studio.core.training.config import TrainingConfig

    model = user_models_dir / "big-batch"
    shutil.copytree(tiny_model, model)
    window.library.refresh()
    result = load_dataset([demo_folder], 16)
    result.sources = [demo_folder]
    window.dataset_page.show_result(result)
    page = window.train_page
    window.tabs.setCurrentWidget(page)
    assert page.resume_picker.select(model)
    page.show_model(model)
    stored = TrainingConfig.from_dict(model_store.read_model_info(model).training)
    page.form.steps_spin.setValue(stored.steps + 2)
    # A fake limit between what one image and the whole batch need: only a part of the batch fits.
    from ddpm_studio.core.system.devices import choose_device, use_bf16
    from ddpm_studio.core.training.memory import FIT_SHARE, estimate_training_memory

    unet, bf16 = stored.unet_config(), use_bf16(stored.precision, choose_device("auto"))
    one, whole = (estimate_training_memory(unet, batch, bf16).total_bytes for batch in (1, stored.batch_size))
    assert one < whole
    monkeypatch.setenv("DDPM_STUDIO_MEMORY_LIMIT", str(int((one + whole) / 2 / FIT_SHARE)))
    wait_idle(qtbot, page)

    seen = answer_next_dialog(qtbot, "Use batch size 1")  # a button a resumed run must not offer
    qtbot.mouseClick(page.resume_button, Qt.MouseButton.LeftButton)
    assert len(seen) == 2 and seen[1].startswith("no button 'Use batch size 1'"), (seen, page.error_label.text())
    assert f"at batch size {stored.batch_size}," in seen[0]
    assert not page.is_training()

    largest = int(re.search(r"the largest batch size that fits is (\d+)", seen[0]).group(1))
    parts = math.ceil(stored.batch_size / largest)
    assert 1 < parts < stored.batch_size
    seen = answer_next_dialog(qtbot, f"Keep batch size {stored.batch_size} in {parts} micro-batches")
    qtbot.mouseClick(page.resume_button, Qt.MouseButton.LeftButton)
    assert len(seen) == 1, seen
    wait_idle(qtbot, page)
    info = model_store.read_model_info(model)
    assert (info.training["batch_size"], info.training["accumulate"]) == (stored.batch_size, parts)
    assert info.step == stored.steps + 2


def test_start_before_any_estimate_measures_in_a_thread_while_the_window_keeps_drawing(loaded, qtbot):
    """A first measurement of an architecture takes a second or more; Start at once must not freeze the window."""
    from PySide6.QtCore import QTimer

    from ddpm_studio.core.training import memory

    page = loaded.train_page
    memory._measure.cache_clear()  # as in a fresh process: nothing measured yet
    page.form.preset_combo.setCurrentIndex(page.form.preset_combo.findData("small"))
    page.form.steps_spin.setValue(1)
    ticks_inside_start = []
    inside = []
    timer = QTimer()
    timer.setInterval(5)
    timer.timeout.connect(lambda: inside and ticks_inside_start.append(1))
    timer.start()
    original_start = page.start_training

    def start_watched():
        inside.append(True)
        try:
            original_start()
        finally:
            inside.clear()

    page.start_training = start_watched
    try:
        page.start_training()  # before the background estimate could end
    finally:
        timer.stop()
    assert page.is_training(), page.error_label.text()
    assert ticks_inside_start, "the GUI thread ran no event while the memory was measured"
    assert "≈" in page.memory_label.text()
    wait_idle(qtbot, page)
    assert "Finished 1 step" in page.status_label.text(), page.error_label.text()


def test_stop_says_which_step_the_preview_shows(loaded, qtbot):
    page = loaded.train_page
    configure(page, steps=100_000, preview_every=3)  # it cannot end by itself before Stop
    monitor = page.monitor
    qtbot.mouseClick(page.start_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: monitor.preview_step is not None and page.current_step > monitor.preview_step,
                    timeout=RUN_TIMEOUT_MS)
    qtbot.mouseClick(page.stop_button, Qt.MouseButton.LeftButton)
    wait_idle(qtbot, page, STOP_TIMEOUT_MS)
    stopped_at, preview_at = page.current_step, monitor.preview_step
    caption = page.preview_view.caption
    if preview_at < stopped_at:
        assert caption == f"Preview at step {preview_at:,} (fixed seed); the run stopped at step {stopped_at:,}"
    else:  # it stopped on a step that made a preview: that preview is the run's last state
        assert caption == f"Preview at step {stopped_at:,} (fixed seed)"


def test_after_a_restart_the_page_says_which_model_and_step_it_shows(qtbot, settings, models_dir, user_models_dir):
    """A run stopped between previews, then the window opened again: its step, progress and preview are named."""
    import torch

    from ddpm_studio.core.data.demo import make_demo_images
    from ddpm_studio.core.training.config import TrainingConfig
    from ddpm_studio.core.training.events import PreviewEvent, StepEvent
    from ddpm_studio.core.training.loop import train
    from ddpm_studio.gui.main_window import MainWindow
    from ddpm_studio.gui.model_library import ModelLibrary
    from ddpm_studio.gui.session_memory import RESUME_KEY
    from tests.helpers.windows import add_window

    folder = models_dir / "digits"
    config = TrainingConfig.for_preset("tiny", steps=100, num_timesteps=50, preview_every=3, preview_count=4,
                                       preview_steps=2, batch_size=4)
    images = torch.from_numpy(make_demo_images(8, size=16)).permute(0, 3, 1, 2).contiguous()
    events, preview_at = train(config, images, folder, {"count": 8, "paths": []}), None
    for event in events:
        if isinstance(event, PreviewEvent):
            preview_at = event.step
        if isinstance(event, StepEvent) and preview_at is not None and event.step > preview_at:
            break
    events.close()  # as Stop does: the run saves where it is
    stopped_at = model_store.read_model_info(folder).step
    assert preview_at < stopped_at < 100

    settings.setValue(RESUME_KEY, str(folder))
    window = MainWindow(settings=settings, library=ModelLibrary([models_dir, user_models_dir]))
    add_window(qtbot, window)
    window.show()
    page = window.train_page
    assert page.status_label.text().startswith(f"digits: {stopped_at:,} steps of 100 trained")
    assert "No run yet" not in page.status_label.text()
    assert (page.progress_bar.value(), page.progress_bar.maximum()) == (stopped_at, 100)
    assert page.preview_view.caption == f"Last preview of digits, at step {preview_at:,} of {stopped_at:,}"
    assert page.loss_plot.point_count() == stopped_at
