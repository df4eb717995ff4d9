"""What a training run is: ``TrainingConfig``, each of its settings declared once, and what derives from that.

A field's ``Setting`` (setting.py) says whether a resumed run may change it, what a fine-tune
does with it, which ``ddpm-studio train`` option sets it and which control of the Train page
shows it. ``RESUMABLE_SETTINGS`` and its sentence, the CLI's options and overrides, a
fine-tune's kept settings and the form's controls are read from those declarations.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import asdict, dataclass, fields
from typing import Any

from ddpm_studio.core.data.folders import SUPPORTED_CHANNELS
from ddpm_studio.core.diffusion.schedule import SCHEDULE_KINDS, ScheduleConfig
from ddpm_studio.core.errors import SettingError
from ddpm_studio.core.model import check as model_check
from ddpm_studio.core.model.unet import PRESETS, UNetConfig, preset_config
from ddpm_studio.core.system.devices import PRECISIONS
from ddpm_studio.core.training.fine_tune import fine_tune_values
from ddpm_studio.core.training.setting import Setting, declared_settings, in_words, micro_batch_value, setting

# "fixed": L_simple, sigma_t^2 chosen when sampling; "learned": L_hybrid and the learned range of sigma_t^2.
TRAINING_VARIANCES = ("fixed", "learned")


@dataclass
class TrainingConfig:
    """Everything that defines a training run. Defaults are the paper's where it gives one."""

    preset: str = setting("small", fine_tune="model", flag="--preset", choices=tuple(PRESETS), overrides=False,
                          help="architecture preset (default: {default})", control="preset_combo")
    image_size: int = setting(32, fine_tune="model", flag="--image-size", flag_type=int,
                              help="training resolution (default: the preset's)", control="resolution_combo")
    image_channels: int = setting(3, fine_tune="model", flag="--channels", flag_type=int, choices=SUPPORTED_CHANNELS,
                                  overrides=False, help="3 for colour, 1 for grayscale (default {default})",
                                  control="channels_combo")
    batch_size: int = setting(32, fine_tune="keep", flag="--batch-size", flag_type=int,
                              help="global batch size (default: the preset's)", control="batch_spin")
    # steps before the learning rate: the order in which the resume rule names them
    steps: int = setting(10_000, resume_words="the steps", flag="--steps", flag_type=int,
                         help="total training steps (default {default})", control="steps_spin")
    learning_rate: float = setting(2e-4, fine_tune="keep", resume_words="the learning rate", flag="--lr",
                                   flag_type=float, help="Adam learning rate (default: the preset's)",
                                   control="learning_rate_spin")
    warmup_steps: int = setting(500, fine_tune="keep", flag="--warmup", flag_type=int,
                                help="learning-rate warm-up steps")
    grad_clip: float = setting(1.0, fine_tune="keep")
    ema_decay: float = setting(0.9999, fine_tune="keep", flag="--ema", flag_type=float,
                               help="EMA decay (default {default}, with warm-up)", control="ema_spin")
    # decay = min(ema_decay, (1 + step) / (10 + step)), so short runs sample well
    ema_warmup: bool = setting(True, fine_tune="keep")
    random_flip: bool = setting(True, fine_tune="keep", flag="--no-flip", flag_value=False,
                                help="turn off random horizontal flips")
    dropout: float | None = setting(None, flag="--dropout", flag_type=float,  # None: the preset's dropout
                                    help="dropout (default: the preset's)")
    variance: str = setting("fixed", fine_tune="model", flag="--variance", choices=TRAINING_VARIANCES,
                            help="fixed: L_simple (default); learned: also learn sigma_t^2 with L_hybrid "
                                 "(Nichol & Dhariwal)", control="variance_combo")
    schedule: str = setting("linear", fine_tune="model", flag="--schedule", choices=SCHEDULE_KINDS,
                            help="noise schedule (default {default})", control="schedule_combo")
    num_timesteps: int = setting(1000, fine_tune="model", flag="--timesteps", flag_type=int,
                                 help="diffusion steps T (default {default})", control="timesteps_spin")
    checkpoint_every: int = setting(1000, fine_tune="keep", resume_words="how often it saves",
                                    flag="--checkpoint-every", flag_type=int,
                                    help="steps between checkpoints (default {default})",
                                    control="checkpoint_every_spin")
    checkpoint_minutes: float = setting(10.0, fine_tune="keep")
    preview_every: int = setting(500, fine_tune="keep", resume_words="its previews", flag="--preview-every",
                                 flag_type=int, help="steps between preview grids (default {default})",
                                 control="preview_every_spin")
    preview_count: int = setting(16, fine_tune="keep", resume_words="its previews", flag="--preview-count",
                                 flag_type=int, help="images in a preview grid (default {default}; 0 for none)",
                                 control="preview_count_spin")
    preview_steps: int = setting(50, fine_tune="keep")  # DDIM steps for previews
    preview_seed: int = setting(1234, fine_tune="keep")
    # steps between loss read-backs; 0: every step on the CPU, 20 on a GPU
    log_every: int = setting(0, fine_tune="keep", resume_words="how often it logs", flag="--log-every", flag_type=int,
                             help="steps between loss read-backs (default: 1 on CPU, 20 on GPU)")
    seed: int = setting(0, flag="--seed", flag_type=int, help="random seed (default {default})")
    precision: str = setting("auto", fine_tune="keep", resume_words="the precision", flag="--precision",
                             choices=PRECISIONS, control="precision_combo",
                             help="default {default}: bf16 where the GPU or CPU has it natively, else fp32")
    compile: bool = setting(False, flag="--compile", flag_value=True, help="torch.compile the model (CUDA)")
    # steps between KID measurements of the EMA weights; 0: none
    eval_every: int = setting(0, resume_words="how often it measures KID", flag="--eval-every", flag_type=int,
                              help="steps between KID measurements of the EMA weights (default 0: none)",
                              control="eval_every_spin")
    # EMA samples per KID measurement (DPM-Solver++, 20 calls)
    eval_num: int = setting(1000, resume_words="how often it measures KID", flag="--eval-num", flag_type=int,
                            help="EMA samples (DDIM 50) per KID measurement (default {default})")
    # the architecture, when it is not the preset's (a fine-tune of an imported model)
    unet: dict | None = setting(None, fine_tune="model")
    # a model folder whose EMA weights start this new run (a fine-tune); the CLI's --init-from resolves it
    init_from: str | None = setting(None, fine_tune="model")
    # micro-batches per step: each process's share of the batch is split this many ways
    accumulate: int = setting(1, resume_words="its micro-batches", flag="--accumulate", flag_type=int, metavar="N",
                              help="reach the batch in N micro-batches per step (gradient accumulation; default 1)",
                              control="accumulate_spin")
    # or the largest micro-batch size; "auto": what the memory estimate fits
    micro_batch: int | str | None = setting(None, resume_words="its micro-batches", flag="--micro-batch",
                                            flag_type=micro_batch_value, metavar="M|auto",
                                            help="largest micro-batch in images per process; auto: the largest the "
                                                 "memory estimate fits on the device",
                                            control="auto_micro_batch_check")
    # one network both conditional and unconditional (Ho & Salimans 2022): a folder of class subfolders
    classes: bool = setting(False, flag="--classes", flag_value=True,
                            help="condition on the dataset's class subfolders (a class-conditional model that "
                                 "is also unconditional, for guided sampling)", control="classes_check")
    # the share of labels replaced by the null label, so that the same network learns eps(x_t, null)
    label_dropout: float = setting(0.1, fine_tune="keep", flag="--label-dropout", flag_type=float, metavar="P",
                                   help="with --classes: the share of labels dropped to the null label "
                                        "(default {default})", control="label_dropout_spin")
    # with classes: how many the dataset has (set from the dataset when the run starts; 0: unconditional)
    num_classes: int = setting(0)
    # residual blocks recompute activations in the backward pass
    checkpoint_activations: bool = setting(False, resume_words="activation checkpointing",
                                           flag="--checkpoint-activations", flag_value=True,
                                           help="recompute the residual blocks' activations in the backward pass: "
                                                "less memory, more compute", control="checkpoint_check")

    def validate(self) -> None:
        """Raise SettingError, in one sentence, for an impossible setting."""
        self._check_types()
        positive = ("batch_size", "steps", "num_timesteps", "checkpoint_every", "preview_every", "preview_steps")
        for name in positive:
            if getattr(self, name) < 1:
                raise SettingError(f"{name.replace('_', ' ').capitalize()} must be at least 1, "
                                   f"not {getattr(self, name)}.")
        if not (0 < self.learning_rate < 1):
            raise SettingError(f"The learning rate must lie in (0, 1), not {self.learning_rate}.")
        if not 0 <= self.ema_decay < 1:
            raise SettingError(f"The EMA decay must lie in [0, 1), not {self.ema_decay}.")
        if self.warmup_steps < 0 or self.grad_clip <= 0 or self.preview_count < 0 or self.log_every < 0:
            raise SettingError("Warm-up steps, preview count and log interval cannot be negative, and clipping must "
                               "be positive.")
        if self.eval_every < 0 or (self.eval_every and self.eval_num < 2):
            raise SettingError("KID during training needs --eval-every of 0 or more and --eval-num of at least 2.")
        if self.precision not in PRECISIONS:
            raise SettingError(f"Precision must be one of {', '.join(PRECISIONS)}, not '{self.precision}'.")
        if self.variance not in TRAINING_VARIANCES:
            raise SettingError(f"The variance must be one of {', '.join(TRAINING_VARIANCES)}, not '{self.variance}'.")
        if not 0 <= self.label_dropout < 1:
            raise SettingError(f"The label dropout must lie in [0, 1), not {self.label_dropout}.")
        self._check_batch_split()
        self.unet_config()  # raises for a bad preset, size or channels
        ScheduleConfig(self.schedule, self.num_timesteps).validate()

    def _check_types(self) -> None:
        for setting_field in fields(self):  # settings read back from a model.json can be anything JSON holds
            value, kind = getattr(self, setting_field.name), setting_field.type
            number = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
            kinds = {"bool": isinstance(value, bool), "str": isinstance(value, str), "None": value is None,
                     "int": number and isinstance(value, int), "dict": isinstance(value, dict)}
            fits = any(kinds.get(part.strip(), number) for part in kind.split("|"))  # "float | None": either
            if not fits:
                words = {"bool": "true or false", "str": "text", "int": "a whole number", "str | None": "text",
                         "dict | None": "a table of settings",
                         "int | str | None": "a number of images or auto"}.get(kind, "a number")
                raise SettingError(f"The training setting {setting_field.name} must be {words}, not {value!r}.")

    def _check_batch_split(self) -> None:
        if not isinstance(self.accumulate, int) or self.accumulate < 1:
            raise SettingError(f"Accumulation must be at least 1 micro-batch per step, not {self.accumulate}.")
        if self.micro_batch is not None and self.micro_batch != "auto" and (
            not isinstance(self.micro_batch, int) or self.micro_batch < 1
        ):
            raise SettingError("The micro-batch must be a number of images of at least 1, or auto, "
                               f"not '{self.micro_batch}'.")
        if self.micro_batch is not None and self.accumulate > 1:
            raise SettingError("Give either the number of micro-batches to accumulate or the micro-batch size, "
                               "not both.")
        if self.accumulate > self.batch_size:
            raise SettingError(f"A batch of {self.batch_size} cannot be split into {self.accumulate} micro-batches.")

    def unet_config(self) -> UNetConfig:
        if self.unet is not None:
            try:
                config = UNetConfig.from_dict(self.unet)
                model_check.check_unet_config(config)
            except TypeError:
                raise SettingError(f"The training setting unet is not a U-Net architecture "
                                   f"({self.unet!r:.80}).") from None
            if (config.image_size, config.image_channels) != (self.image_size, self.image_channels):
                raise SettingError(f"This architecture works at {config.image_size}x{config.image_size}x"
                                   f"{config.image_channels}, not {self.image_size}x{self.image_size}x"
                                   f"{self.image_channels}.")
        else:
            config = preset_config(self.preset, self.image_size, self.image_channels)
        changes = {}
        if self.unet is not None and config.learned_variance != (self.variance == "learned"):
            changes["learned_variance"] = self.variance == "learned"  # the run's loss decides the output channels
        if self.dropout is not None:
            changes["dropout"] = self.dropout
        if self.variance == "learned":
            changes["learned_variance"] = True
        if self.classes and self.num_classes and config.num_classes != self.num_classes:
            changes["num_classes"] = self.num_classes  # a fine-tune of an unconditional model adds them
        if changes:
            config = type(config)(**{**asdict(config), **changes})
            config.validate()
        return config

    def schedule_config(self) -> ScheduleConfig:
        return ScheduleConfig(self.schedule, self.num_timesteps)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> TrainingConfig:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})

    @classmethod
    def for_preset(cls, preset: str, **overrides) -> TrainingConfig:
        """A config with the preset's suggested batch size, learning rate and warm-up, then ``overrides``."""
        if preset not in PRESETS:
            raise SettingError(f"Unknown preset '{preset}'; choose one of {', '.join(PRESETS)}.")
        base = PRESETS[preset]
        values = {"preset": preset, "image_size": base.config.image_size, **base.defaults}
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    @classmethod
    def for_fine_tune(cls, source, **overrides) -> TrainingConfig:
        """A new run that starts from the EMA weights of the model ``source`` (a ``ModelInfo``): its architecture
        and schedule, the training settings it was trained with that a fine-tune keeps (or those of the preset
        it matches), then ``overrides`` (fine_tune.py)."""
        return cls(**fine_tune_values(declared_settings(cls), source, overrides))


# --- what the declarations give -----------------------------------------------------------------

TRAINING_SETTINGS: dict[str, Setting] = declared_settings(TrainingConfig)

# What a resumed run may change: how long it goes on, how it reports and how it saves memory. Everything
# else (the architecture, the schedule, the batch size, the EMA decay, the seed...) is the model's own, so
# that a resumed run continues the same optimisation instead of quietly starting a different one.
RESUMABLE_SETTINGS = tuple(name for name, declared in TRAINING_SETTINGS.items() if declared.resumable)
RESUMABLE_IN_WORDS = in_words(list(dict.fromkeys(TRAINING_SETTINGS[name].resume_words for name in RESUMABLE_SETTINGS)))

# The TrainingForm attribute of each setting the Train page shows.
FORM_CONTROLS = {name: declared.control for name, declared in TRAINING_SETTINGS.items() if declared.control}


def training_arguments() -> list[tuple[str, dict[str, Any]]]:
    """The ``ddpm-studio train`` options of the declared settings: ``(flag, add_argument's keywords)``, each
    stored under its field's name (None when not given)."""
    default = TrainingConfig()
    arguments = []
    for name, declared in TRAINING_SETTINGS.items():
        if declared.flag is None:
            continue
        options: dict[str, Any] = {"dest": name, "help": declared.help.format(default=getattr(default, name))}
        if declared.flag_value is not None:
            options.update(action="store_const", const=declared.flag_value)
        else:
            options.update({key: value for key, value in (("type", declared.flag_type), ("metavar", declared.metavar),
                                                          ("choices", declared.choices)) if value is not None})
            if declared.choices is not None and declared.flag_type is None:
                options["choices"] = list(declared.choices)
        arguments.append((declared.flag, options))
    return arguments


def chosen_settings(arguments: argparse.Namespace) -> dict[str, Any]:
    """The settings given on the command line (parsed with ``training_arguments``), by field."""
    return {name: getattr(arguments, name) for name, declared in TRAINING_SETTINGS.items()
            if declared.flag is not None and getattr(arguments, name, None) is not None}


def overrides_from_arguments(arguments: argparse.Namespace) -> dict[str, Any]:
    """What the command line changes in the run's settings (not --preset and --channels, which choose where a new
    run starts)."""
    return {name: value for name, value in chosen_settings(arguments).items() if TRAINING_SETTINGS[name].overrides}
