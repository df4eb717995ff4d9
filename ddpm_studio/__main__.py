"""``python -m ddpm_studio``: the same as the ``ddpm-studio`` command."""

import sys

from ddpm_studio.cli import main

sys.exit(main())
