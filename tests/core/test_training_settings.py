"""Each training setting is declared once (config.py): the resume rule, the CLI's options and a fine-tune's
kept settings are read from the declarations."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from ddpm_studio.core.errors import SettingError
from ddpm_studio.core.model.store import ModelInfo
from ddpm_studio.core.model.unet import preset_config
from ddpm_studio.core.training.config import (
    RESUMABLE_IN_WORDS,
    RESUMABLE_SETTINGS,
    TRAINING_SETTINGS,
    TrainingConfig,
    chosen_settings,
    overrides_from_arguments,
    training_arguments,
)
from ddpm_studio.core.training.fine_tune import check_fine_tune_request


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    for flag, options in training_arguments():
        parser.add_argument(flag, **options)
    return parser.parse_args(argv)


def source_model(**training) -> ModelInfo:
    config = TrainingConfig.for_preset("tiny", image_size=16, num_timesteps=50, **training)
    return ModelInfo(path=Path("/models/source"), unet=config.unet_config(), schedule=config.schedule_config(),
                     training=config.to_dict())


def test_the_resume_rule_lets_only_the_length_reporting_and_memory_settings_change():
    assert set(RESUMABLE_SETTINGS) == {"steps", "learning_rate", "precision", "checkpoint_every", "preview_every",
                                       "preview_count", "log_every", "eval_every", "eval_num", "accumulate",
                                       "micro_batch", "checkpoint_activations"}
    assert RESUMABLE_IN_WORDS.startswith("the steps, the learning rate, ")
    assert RESUMABLE_IN_WORDS.count("previews") == 1  # two settings, one phrase


def test_command_line_options_become_overrides_by_field_name():
    args = parse("--lr", "1e-3", "--no-flip", "--channels", "1", "--micro-batch", "auto", "--timesteps", "50",
                 "--compile")
    assert overrides_from_arguments(args) == {"learning_rate": 1e-3, "random_flip": False, "micro_batch": "auto",
                                              "num_timesteps": 50, "compile": True}
    assert chosen_settings(args)["image_channels"] == 1  # chooses where a new run starts: not an override
    assert overrides_from_arguments(parse()) == {}
    assert all(TRAINING_SETTINGS[name].flag for name in chosen_settings(args))


def test_a_fine_tune_keeps_the_declared_training_settings_and_takes_the_models_own():
    source = source_model(batch_size=4, ema_decay=0.99, seed=9, steps=77, warmup_steps=3)
    config = TrainingConfig.for_fine_tune(source, learning_rate=5e-4)
    assert (config.batch_size, config.ema_decay, config.warmup_steps) == (4, 0.99, 3)  # "keep"
    assert (config.seed, config.steps) == (TrainingConfig().seed, TrainingConfig().steps)  # "new"
    assert (config.num_timesteps, config.image_size, config.init_from) == (50, 16, str(source.path))  # "model"
    assert config.learning_rate == 5e-4


def test_a_fine_tune_request_that_changes_the_network_or_the_schedule_is_refused():
    source = source_model()
    check_fine_tune_request(TRAINING_SETTINGS, source, {"learning_rate": 1e-3, "num_timesteps": 50}, "it")
    with pytest.raises(SettingError, match="--timesteps 100 differs from the 50 of it"):
        check_fine_tune_request(TRAINING_SETTINGS, source, {"num_timesteps": 100}, "it")
    with pytest.raises(SettingError, match="--channels 1 differs"):
        check_fine_tune_request(TRAINING_SETTINGS, source, {"image_channels": 1}, "it")
    assert preset_config("small", 16, 3) != source.unet
    with pytest.raises(SettingError, match="another architecture than preset small"):
        check_fine_tune_request(TRAINING_SETTINGS, source, {"preset": "small"}, "it")
