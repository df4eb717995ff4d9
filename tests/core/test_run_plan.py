"""Run planning, shared by the CLI and the window: what a run trains on, its name, and what a resume may change."""

from pathlib import Path

import pytest

from ddpm_studio.core.data.demo import create_demo_dataset
from ddpm_studio.core.data.folders import load_dataset
from ddpm_studio.core.errors import SettingError, UserError
from ddpm_studio.core.training.config import TrainingConfig
from ddpm_studio.core.training.plan import (
    RESUMABLE_SETTINGS,
    TrainingImagesMissing,
    check_model_name,
    model_name_for,
    plan_new_run,
    plan_resume,
    unique_name,
)


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("data") / "my shapes!"
    create_demo_dataset(folder, count=6, size=16)
    return folder


def test_a_new_run_trains_on_the_scanned_images_when_they_fit_and_rescans_when_they_do_not(shapes, tmp_path):
    scanned = load_dataset([shapes], 16)
    scanned.sources = [shapes]
    config = TrainingConfig.for_preset("tiny", image_size=16)
    plan = plan_new_run(config, tmp_path / "a", scanned=scanned)
    assert plan.images is scanned.images and not plan.resume
    assert plan.dataset_summary["count"] == 6 and plan.dataset_summary["paths"] == [str(shapes.resolve())]

    plan = plan_new_run(TrainingConfig.for_preset("tiny", image_size=32), tmp_path / "b", scanned=scanned)
    assert plan.images is None and plan.data_paths == [shapes]  # scanned again at 32 px when it runs


def test_a_new_run_refuses_a_folder_that_holds_a_model_and_an_impossible_setting(tiny_model, tmp_path, shapes):
    with pytest.raises(SettingError, match="already holds a model"):
        plan_new_run(TrainingConfig.for_preset("tiny", image_size=16), tiny_model, [shapes])
    with pytest.raises(SettingError, match="Batch size must be at least 1"):
        plan_new_run(TrainingConfig.for_preset("tiny", batch_size=0), tmp_path / "c", [shapes])


def test_resume_may_change_only_the_resumable_settings(tiny_model, shapes):
    plan = plan_resume(tiny_model, {"steps": 20, "learning_rate": 5e-4, "preview_count": 0}, [shapes])
    assert plan.resume and plan.start_step == 12
    assert (plan.config.steps, plan.config.learning_rate, plan.config.preview_count) == (20, 5e-4, 0)
    assert plan.config.batch_size == 16 and plan.config.preset == "tiny"  # the model's own
    # The same value as the model's is no change, so a form showing every setting may pass them all.
    plan_resume(tiny_model, {"steps": 20, "batch_size": 16, "ema_decay": 0.9999, "preset": "tiny"}, [shapes])
    for name, value in (("batch_size", 8), ("ema_decay", 0.99), ("image_size", 32), ("num_timesteps", 1000)):
        assert name not in RESUMABLE_SETTINGS
        with pytest.raises(SettingError, match=f"{name.replace('_', ' ')} cannot change when resuming tiny"):
            plan_resume(tiny_model, {"steps": 20, name: value}, [shapes])


def test_resume_needs_more_steps_and_its_images(tiny_model, shapes):
    with pytest.raises(SettingError, match="already trained 12 steps"):
        plan_resume(tiny_model, {"steps": 12}, [shapes])
    with pytest.raises(TrainingImagesMissing, match="not found"):
        plan_resume(tiny_model, {"steps": 20})  # the fixture records no paths
    with pytest.raises(TrainingImagesMissing, match="not found"):
        plan_resume(tiny_model, {"steps": 20}, [shapes / "gone"])
    scanned = load_dataset([shapes], 16)
    assert plan_resume(tiny_model, {"steps": 20}, scanned=scanned).images is scanned.images
    assert issubclass(TrainingImagesMissing, UserError)


def test_the_model_name_comes_from_the_data_folder_made_safe_and_unique(shapes, tmp_path):
    assert model_name_for([shapes]) == "my-shapes"
    assert model_name_for([shapes / "shape_00000.png"]) == "my-shapes"
    assert model_name_for([]) == "model"
    (tmp_path / "my-shapes").mkdir()
    (tmp_path / "my-shapes-2").mkdir()
    assert unique_name("my-shapes", tmp_path) == "my-shapes-3"
    for bad in ("", "a/b", ".hidden", "two words"):
        with pytest.raises(SettingError):
            check_model_name(bad)
    check_model_name("shapes-32px_v1.0")
