"""Classifier-free guidance (Ho and Salimans 2022) as one eps-model wrapper that every sampler takes unchanged.

eps~ = (1 + w) eps(x_t, c) - w eps(x_t, null). The conditional and null passes run as ONE doubled batch, so a guided
step costs one model call of twice the batch; w = 0 is plain conditional sampling in a single pass. A learned
variance v comes from the conditional pass. Every sampler calls ``model(x_t, t)``; wrapping the model here, once,
is what gives DDPM, respaced DDPM, DDIM, DPM-Solver++, denoise-from-t and branching classes and guidance.
"""

from __future__ import annotations

import torch

from ddpm_studio.core.diffusion.process import EpsModel, split_model_output
from ddpm_studio.core.errors import SettingError

MAX_GUIDANCE = 10.0  # larger weights only saturate the images


def check_guidance(weight: float) -> None:
    if not 0.0 <= weight <= MAX_GUIDANCE:
        raise SettingError(f"The guidance weight must lie in [0, {MAX_GUIDANCE:g}], not {weight:g}.")


def guided_eps_model(model, classes: torch.Tensor | None, weight: float = 0.0) -> EpsModel:
    """An eps-model (x_t, t) -> output for ``model(x, t, classes)`` guided with weight ``weight``.

    ``classes``: one label per image (B,) or one label for all (1,); None, or the null label (``model.null_class``)
    everywhere, is the unconditional model in one pass whatever the weight.
    """
    check_guidance(weight)
    if classes is None:
        return model
    null_class = model.null_class
    is_null = classes == null_class
    if bool(is_null.all()):
        return lambda x_t, t: model(x_t, t, _per_image(classes, x_t))
    if weight == 0.0:
        return lambda x_t, t: model(x_t, t, _per_image(classes, x_t))

    def guided(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        labels = _per_image(classes, x_t)
        nulls = torch.full_like(labels, null_class)
        doubled = model(torch.cat([x_t, x_t]), torch.cat([t, t]), torch.cat([labels, nulls]))
        conditional, unconditional = doubled.chunk(2)
        eps_c, v = split_model_output(conditional, x_t.shape[1])
        eps_null, _ = split_model_output(unconditional, x_t.shape[1])
        eps = (1 + weight) * eps_c - weight * eps_null
        eps = torch.where((labels == null_class).reshape(-1, 1, 1, 1), eps_null, eps)  # null label: unguided
        return eps if v is None else torch.cat([eps, v], 1)

    return guided


def model_passes(classes, weight: float, null_class: int | None = None) -> int:
    """How many images' worth of model calls one image costs a step: 2 when guided (the doubled batch), else 1,
    as ``guided_eps_model`` decides; the forecasts multiply by it."""
    if classes is None or weight == 0.0:
        return 1
    labels = [int(label) for label in classes]
    return 1 if null_class is not None and all(label == null_class for label in labels) else 2


def _per_image(classes: torch.Tensor, x_t: torch.Tensor) -> torch.Tensor:
    labels = classes.to(x_t.device, torch.long)
    return labels.expand(x_t.shape[0]) if labels.numel() == 1 else labels


def class_names(info) -> list[str]:
    """A model's class names from model.json's "classes" (index order), or "0".."K-1" when it has none recorded."""
    recorded = info.extra.get("classes") if isinstance(info.extra.get("classes"), dict) else {}
    names = list(recorded.get("names") or [])
    count = info.unet.num_classes
    return names if len(names) == count else [str(index) for index in range(count)]


def parse_class(info, choice: str) -> int:
    """A class given by name or index as its index; one sentence listing the names when it is unknown."""
    names = class_names(info)
    if not names:
        raise SettingError(f"{info.name} is not class-conditional; sample it without --class or --all-classes.")
    if choice in names:
        return names.index(choice)
    if choice.isdigit() and int(choice) < len(names):
        return int(choice)
    raise SettingError(f"{info.name} has no class '{choice}'; its classes are {', '.join(names)}.")


def class_mix(info, count: int) -> list[int] | None:
    """``count`` labels in the proportions of the training set's class counts (model.json "classes"), largest
    remainders first, in class order; None for an unconditional model. FID/KID compare with the whole dataset, so
    the samples must follow its mix, not a uniform one."""
    names = class_names(info)
    if not names:
        return None
    recorded = info.extra.get("classes") if isinstance(info.extra.get("classes"), dict) else {}
    counts = list(recorded.get("counts") or [])
    if len(counts) != len(names) or sum(counts) <= 0:
        counts = [1] * len(names)
    total = sum(counts)
    shares = [count * share / total for share in counts]
    whole = [int(share) for share in shares]
    by_remainder = sorted(range(len(names)), key=lambda c: (whole[c] - shares[c], c))
    for label in by_remainder[: count - sum(whole)]:
        whole[label] += 1
    return [label for label, number in enumerate(whole) for _ in range(number)]


def describe_class_mix(info, count: int, guidance: float) -> str | None:
    """One line for a report: which classes the samples were drawn with, and w."""
    labels = class_mix(info, count)
    if labels is None:
        return None
    names = class_names(info)
    mix = ", ".join(f"{name} {labels.count(index)}" for index, name in enumerate(names))
    return f"Samples follow the dataset's class mix ({mix}), guidance w = {guidance:g}."
