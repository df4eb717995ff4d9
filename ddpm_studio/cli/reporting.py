"""How every command speaks to the user when it cannot go on: one line on stderr, and its exit status.

Only ``UserError`` and the system's ``OSError`` become that line; any other exception is a bug, and its
traceback is the report.
"""

from __future__ import annotations

import sys

from ddpm_studio.core.errors import UserError, describe_os_error

ERROR_PREFIX = "ddpm-studio: error: "
WARNING_PREFIX = "ddpm-studio: warning: "
EXIT_USER_ERROR = 2  # also argparse's status for a bad command line
EXIT_INTERRUPTED = 130


def fail(message: str) -> None:
    """Stop the command with one line for the user and exit status 2."""
    raise UserError(message)


def warn(message: str) -> None:
    print(WARNING_PREFIX + message, file=sys.stderr)


def error_line(error: UserError | OSError) -> str:
    """The one line that reports a user's error: its first line, or the system's sentence for a file."""
    if isinstance(error, OSError):
        message = describe_os_error(error)
    else:
        message = str(error)
    message = message.strip()
    return ERROR_PREFIX + (message.splitlines()[0] if message else type(error).__name__)
