"""How one training setting is declared: what a resumed run, a fine-tune, the CLI and the window do with it.

Each ``TrainingConfig`` field carries one ``Setting`` in its metadata (``setting(default, ...)``);
the resume rule, a fine-tune's kept settings, the CLI's flags and the Train page's controls
are all read from those declarations, never listed again by hand.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

# What a fine-tune does with a setting: "model": it is the source model's own (architecture,
# schedule), and a different value is refused; "keep": the source's training setting, unless
# given; "new": the preset's or the default, unless given.
FineTune = Literal["model", "keep", "new"]


@dataclass(frozen=True)
class Setting:
    """The declaration of one training setting."""

    fine_tune: FineTune = "new"
    resume_words: str | None = None  # how the resume rule names it; None: a resumed run keeps the model's value
    flag: str | None = None  # the ``ddpm-studio train`` option that sets it
    flag_type: Callable[[str], Any] | None = None  # how argparse reads the option's value
    flag_value: Any = None  # for an option without a value (``--no-flip``): the value it sets
    choices: Sequence[Any] | None = None
    metavar: str | None = None
    help: str = ""  # the option's help; "{default}" is the field's default
    overrides: bool = True  # False: the option chooses where a new run starts (--preset, --channels)
    control: str | None = None  # the TrainingForm attribute that shows it

    @property
    def resumable(self) -> bool:
        """Whether a resumed run may change it."""
        return self.resume_words is not None


def setting(default: Any = dataclasses.MISSING, **declaration: Any) -> Any:
    """A dataclass field with ``default`` and its ``Setting`` declaration."""
    return dataclasses.field(default=default, metadata={"setting": Setting(**declaration)})


def declared_settings(config_class: type) -> dict[str, Setting]:
    """Every field of ``config_class`` with its declaration, in field order."""
    return {field.name: field.metadata.get("setting", Setting()) for field in dataclasses.fields(config_class)}


def in_words(parts: Sequence[str]) -> str:
    """``["a", "b", "c"]`` as "a, b and c"."""
    return parts[0] if len(parts) == 1 else f"{', '.join(parts[:-1])} and {parts[-1]}"


def micro_batch_value(text: str) -> int | str:
    """The value of ``--micro-batch``: a number of images, or auto."""
    if text == "auto":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of images or auto, not '{text}'") from None
