"""The one family of errors meant for the user: each carries a sentence that says what to do.

The CLI and the window's job worker catch ``UserError`` and show its message. Anything else
that escapes a job (a plain ``ValueError`` included) is a bug and is reported with its traceback.
"""

from __future__ import annotations


class UserError(Exception):
    """Something the user can fix (a bad folder, a damaged file, an impossible setting); ``str()`` is one sentence."""


class SettingError(UserError, ValueError):
    """An impossible setting (a value out of range, an unknown choice). Also a ``ValueError``, as before."""
