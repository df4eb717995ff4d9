"""``python main.py`` does what ``ddpm-studio`` does: with no arguments it opens the studio window."""

import sys

from ddpm_studio.cli import main

if __name__ == "__main__":
    sys.exit(main())
