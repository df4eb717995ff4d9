"""The Likelihood page (NLL in a worker, progress, Stop, the per-t plot, the record and the library tooltip), and the
learned-variance choices of the Train and Generate pages."""

import json
import shutil

import numpy as np
import pytest
import torch

from ddpm_studio.core.data.demo import make_demo_images
from ddpm_studio.core.model import store as model_store
from ddpm_studio.core.training.config import TrainingConfig
from ddpm_studio.core.training.loop import train


@pytest.fixture
def fixed_model(models_dir, tiny_model):
    folder = models_dir / "fixed"
    shutil.copytree(tiny_model, folder)  # the shared model stays read-only: evaluating writes model.json
    return folder


@pytest.fixture
def learned_model(models_dir):
    config = TrainingConfig.for_preset("tiny", steps=2, num_timesteps=50, preview_count=0, variance="learned")
    images = torch.from_numpy(make_demo_images(8, size=16)).permute(0, 3, 1, 2).contiguous()
    list(train(config, images, models_dir / "learned", {"count": 8, "paths": []}))
    return models_dir / "learned"


@pytest.fixture
def panel(window, fixed_model, demo_folder):
    window.library.refresh()
    panel = window.likelihood_page
    window.tabs.setCurrentWidget(panel)
    assert panel.model_chooser.select(fixed_model)
    panel.data_edit.setText(str(demo_folder))
    return panel


def test_evaluate_shows_bits_per_dim_plots_the_terms_and_records_them(qtbot, panel, window, fixed_model):
    panel.count_spin.setValue(4)
    panel.timesteps_combo.setCurrentIndex(panel.timesteps_combo.findData("sampled"))
    panel.k_spin.setValue(5)
    axis = panel.plot.getPlotItem().getAxis("left")
    assert panel.plot.is_empty() and panel.plot.empty_text.isVisible() and not axis.isVisible()  # no meaningless ticks
    progress = []
    assert panel.evaluate() is not None
    assert not panel.evaluate_button.isEnabled() and panel.jobs.stop_button.isEnabled()
    qtbot.waitUntil(lambda: panel.jobs.progress_bar.value() > 0 or panel.runner is None, timeout=60_000)
    progress.append(panel.jobs.progress_bar.value())
    qtbot.waitUntil(lambda: panel.runner is None, timeout=60_000)
    result = panel.result
    assert result is not None and result.num_images == 4 and result.timesteps == 5
    assert "bits/dim" in panel.result_label.text() and f"{result.bits_per_dim:.3f}" in panel.result_label.text()
    assert not panel.plot.is_empty() and axis.isVisible()
    t_decoder, l0 = panel.plot.decoder.getOriginalDataset()
    assert list(t_decoder) == [1.0] and l0[0] == pytest.approx(result.per_timestep_bpd[0])
    t_sampled, _ = panel.plot.samples.getOriginalDataset()
    assert 0 < len(t_sampled) <= 4 * 5 and t_sampled.min() >= 2  # only the drawn t > 1
    record, curve = json.loads((fixed_model / model_store.CONFIG_FILE).read_text())["evaluations"][-2:]
    assert record["metric"] == "nll_bpd" and record["n"] == 4 and record["timesteps"] == 5
    # the same pass's rate-distortion curve, as evaluate --nll --rate-distortion records it
    assert curve["metric"] == "rate_distortion" and curve["n"] == 4 and curve["timesteps"] == 5
    picker = panel.model_chooser.picker
    assert "NLL" in picker.itemData(picker.currentIndex(), 3)  # the library's tooltip
    assert "NLL" in panel.history_label.text() and panel.evaluate_button.isEnabled()


def test_every_timestep_draws_a_line_and_stop_records_nothing(qtbot, panel, fixed_model):
    panel.count_spin.setValue(24)  # 24 images x 50 terms: long enough to stop midway
    assert panel.evaluate() is not None
    qtbot.waitUntil(lambda: panel.plot.terms.getOriginalDataset()[0] is not None, timeout=60_000)
    panel.jobs.stop()
    qtbot.waitUntil(lambda: panel.runner is None, timeout=60_000)
    assert panel.result is None and "Stopped" in panel.jobs.status_label.text()
    assert "evaluations" not in json.loads((fixed_model / model_store.CONFIG_FILE).read_text())
    t, values = panel.plot.terms.getOriginalDataset()
    assert len(t) == 50 and np.isnan(values[0])  # L_0 is drawn apart, not on the line


def test_a_missing_data_folder_is_one_sentence(panel, tmp_path):
    panel.data_edit.setText(str(tmp_path / "nowhere"))
    assert panel.evaluate() is None and "No folder of images" in panel.jobs.status_label.text()


def test_generate_offers_learned_only_for_a_learned_model_and_respaces_ddpm(qtbot, window, fixed_model, learned_model):
    window.library.refresh()
    page = window.generate_page
    variances = lambda: [page.variance_box.itemData(i) for i in range(page.variance_box.count())]  # noqa: E731
    assert page.select_model(fixed_model)
    assert "learned" not in variances()
    assert page.select_model(learned_model)
    assert "learned" in variances() and page.sampling.variance() == "learned"
    assert page.sampling.ddpm_steps_spin.maximum() == 50 and page.request().ddpm_steps is None  # every step
    page.sampler_box.setCurrentIndex(page.sampler_box.findData("ddpm"))
    page.sampling.ddpm_steps_spin.setValue(5)
    page.count_spin.setValue(2)
    request = page.request()
    assert (request.ddpm_steps, request.variance) == (5, "learned")
    assert page.generate() is not None
    qtbot.waitUntil(lambda: page.runner is None, timeout=60_000)
    assert page.result is not None and page.result.metadata["steps"] == "5"
    assert page.result.metadata["variance"] == "learned"
    assert page.select_model(fixed_model) and "learned" not in variances()


def test_train_form_offers_the_learned_variance(window):
    form = window.train_page.form
    combo = form.variance_combo
    combo.setCurrentIndex(combo.findData("learned"))
    assert form.config().variance == "learned" and form.config().unet_config().learned_variance
    form.fill(TrainingConfig.for_preset("tiny"))
    assert form.config().variance == "fixed"


def test_the_plot_names_every_mark_one_notation_and_the_header_agrees_with_the_record(qtbot, panel):
    import re

    panel.count_spin.setValue(2)
    panel.timesteps_combo.setCurrentIndex(panel.timesteps_combo.findData("sampled"))
    panel.k_spin.setValue(3)
    assert panel.evaluate() is not None
    qtbot.waitUntil(lambda: panel.runner is None, timeout=60_000)
    labels = [label.text for _sample, label in panel.plot.legend.items]
    assert any("L_(t-1)" in text for text in labels) and any("L_0" in text for text in labels)

    axis = panel.plot.getPlotItem().getAxis("left")
    ticks = axis.tickStrings([-3.0, -4.0, -5.0, np.log10(2e-5)], 1.0, 1.0)
    assert ticks == ["10⁻³", "10⁻⁴", "10⁻⁵", "2·10⁻⁵"]  # never 0.0001 beside 10⁻⁵

    header_l_t = re.search(r"L_T (\S+)", panel.result_label.text()).group(1)
    record_l_t = re.search(r"L_T (\S+?)\)", panel.history_label.text()).group(1)
    assert header_l_t == record_l_t
