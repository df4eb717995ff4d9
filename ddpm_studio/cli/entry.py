"""The ``ddpm-studio`` command: no subcommand opens the studio window; train, sample, evaluate, info, bench,
doctor, demo-data, import, cache and explore run the same engine headless.

The command line is parsed without the engine; then only the module of the command that runs is imported,
so that ``--help`` and ``--version`` cost no torch.
"""

from __future__ import annotations

import importlib
import sys

from ddpm_studio.cli.arguments import COMMANDS_BY_NAME, parse_command_line
from ddpm_studio.cli.reporting import EXIT_INTERRUPTED, EXIT_USER_ERROR, error_line
from ddpm_studio.core.errors import UserError


def main(argv: list[str] | None = None) -> int:
    args = parse_command_line(argv)
    if args.command is None:
        window = importlib.import_module("ddpm_studio.cli.window")  # lazy: only the command that runs
        return window.run()
    module = COMMANDS_BY_NAME[args.command].module
    command = importlib.import_module(f"ddpm_studio.cli.{module}")  # lazy: only the command that runs
    try:
        return command.run(args)
    except (UserError, OSError) as error:  # a programming error is not caught: its traceback is the report
        print(error_line(error), file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("ddpm-studio: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    finally:
        leave_process_group()


def leave_process_group() -> None:
    """Under torchrun, end the process group a command joined; torch is looked at only if the command loaded it."""
    distributed = sys.modules.get("torch.distributed")
    if distributed is not None and distributed.is_available() and distributed.is_initialized():
        distributed.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
