"""The one family of errors meant for the user: each carries a sentence that says what to do.

The CLI and the window's job worker catch ``UserError`` and show its message. Anything else
that escapes a job (a plain ``ValueError`` included) is a bug and is reported with its traceback.
"""

from __future__ import annotations


class UserError(Exception):
    """Something the user can fix (a bad folder, a damaged file, an impossible setting); ``str()`` is one sentence."""


class SettingError(UserError, ValueError):
    """An impossible setting (a value out of range, an unknown choice). Also a ``ValueError``, as before."""


def check_choice(setting: str, value: object, choices: tuple[str, ...]) -> None:
    """Raise SettingError unless ``value`` is one of ``choices``: the one sentence for every named choice.

    ``setting`` names it as a user would ("sampler", "variance", "precision").
    """
    if value not in choices:
        raise SettingError(f"Unknown {setting} '{value}'; choose one of {', '.join(choices)}.")


def describe_os_error(error: OSError) -> str:
    """The system's sentence for a failed file operation, with the file it concerns when it names one."""
    if error.filename:
        return f"{error.strerror or error}: {error.filename}"
    return str(error)
