"""Fine-tuning: a new run that starts from a model's EMA weights, with the model's architecture and schedule.

What a fine-tune takes from its model, keeps from the model's training and refuses to change is
read from each setting's declaration (``Setting.fine_tune``, config.py); the checks of a request
(the CLI's ``--init-from``) and of the weights a run starts from are here too.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from ddpm_studio.core.diffusion.schedule import ScheduleConfig
from ddpm_studio.core.errors import SettingError
from ddpm_studio.core.model.check import ModelError
from ddpm_studio.core.model.unet import PRESETS, UNetConfig, preset_config
from ddpm_studio.core.training.setting import Setting


def matching_preset(unet: UNetConfig) -> str | None:
    """The preset with this architecture (any dropout, either padding), if one has it."""
    def shape(config: UNetConfig) -> UNetConfig:
        return replace(config, dropout=0.0, downsample_padding="same")

    return next((name for name, preset in PRESETS.items()
                 if shape(replace(preset.config, image_size=unet.image_size, image_channels=unet.image_channels))
                 == shape(unet)), None)


def same_architecture(a: UNetConfig, b: UNetConfig) -> bool:
    """Whether weights of one network compute the same function in the other (dropout aside)."""
    return replace(a, dropout=0.0) == replace(b, dropout=0.0)


def describe_architecture(unet: UNetConfig) -> str:
    return (f"{unet.image_size} px, {unet.image_channels} channels, base {unet.base_channels}, "
            f"multipliers {list(unet.channel_multipliers)}, {unet.num_res_blocks} blocks per level, "
            f"attention at {list(unet.attention_resolutions)}, {unet.downsample_padding} padding")


def model_settings(source) -> dict[str, Any]:
    """The settings a fine-tune of ``source`` (a ``ModelInfo``) takes from the model itself."""
    training_preset = source.training.get("preset")
    preset = training_preset if training_preset in PRESETS else matching_preset(source.unet)
    return {
        "preset": preset or "custom", "image_size": source.unet.image_size,
        "image_channels": source.unet.image_channels, "unet": source.unet.to_dict(),
        "schedule": source.schedule.kind, "num_timesteps": source.schedule.num_timesteps,
        "variance": "learned" if source.unet.learned_variance else "fixed", "init_from": str(source.path),
        # A class-conditional model stays one: its fine-tune conditions on the same classes.
        **({"classes": True, "num_classes": source.unet.num_classes} if source.unet.num_classes else {}),
    }


def fine_tune_values(settings: Mapping[str, Setting], source, overrides: Mapping[str, Any]) -> dict[str, Any]:
    """A fine-tune's settings: its preset's suggestions, the settings ``source`` was trained with that a
    fine-tune keeps, the model's own architecture and schedule, then ``overrides`` (None: not given)."""
    own = model_settings(source)
    values = dict(PRESETS[own["preset"]].defaults) if own["preset"] in PRESETS else {}
    values.update({name: value for name, value in source.training.items()
                   if name in settings and settings[name].fine_tune == "keep"})
    values.update(own)
    values.update({name: value for name, value in overrides.items() if value is not None})
    if own.get("classes"):
        values["classes"] = True  # the model's embedding is trained on, whatever the form's box says
    return values


def check_fine_tune_request(settings: Mapping[str, Setting], source, given: Mapping[str, Any],
                            source_name: str) -> None:
    """Refuse, in one sentence, a given setting that would change the network or the schedule of a fine-tune of
    ``source`` (``given``: the CLI's options by field, None when not given; ``source_name`` names the model)."""
    unet, own = source.unet, model_settings(source)
    preset = given.get("preset")
    if preset is not None:
        wanted = preset_config(preset, given.get("image_size") or unet.image_size,
                               given.get("image_channels") or unet.image_channels)
        if not same_architecture(replace(wanted, downsample_padding=unet.downsample_padding,
                                         learned_variance=unet.learned_variance), unet):
            raise SettingError(f"{source_name} has another architecture than preset {preset} "
                               f"({describe_architecture(unet)}); leave out {settings['preset'].flag} to keep the "
                               "model's.")
    for name, declared in settings.items():
        value = given.get(name)
        if name == "preset" or declared.fine_tune != "model" or value is None or value == own.get(name):
            continue
        what = "architecture" if name in ("image_size", "image_channels") else (
            "variance" if name == "variance" else "schedule")
        raise SettingError(f"{declared.flag or name} {value} differs from the {own.get(name)} of {source_name}; a "
                           f"fine-tune keeps the model's {what}.")


def check_starting_weights(source_path, info, unet: UNetConfig, schedule: ScheduleConfig) -> None:
    """Raise ModelError unless the model ``info`` (read from ``source_path``) has the run's network and schedule."""
    # An unconditional model may gain classes: its network is the same but for the new class embedding.
    source_unet = replace(info.unet, num_classes=unet.num_classes) if info.unet.num_classes == 0 else info.unet
    if not same_architecture(source_unet, unet):
        raise ModelError(f"{source_path} has another architecture than this run ({describe_architecture(info.unet)}"
                         f" against {describe_architecture(unet)}); a fine-tune keeps the model's.")
    if info.schedule != schedule:
        raise ModelError(f"{source_path} was trained with another noise schedule ({info.schedule.kind}, "
                         f"T = {info.schedule.num_timesteps}); a fine-tune keeps the model's.")
