"""Writing a file atomically: write a temporary file beside it, then ``os.replace``; a crash leaves the old file
whole."""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Callable
from pathlib import Path

# The names atomic_write gives its temporary files:
# "." + the file's name + "." + mkstemp's 8 random characters + ".tmp".
TEMPORARY_NAME = re.compile(r"\..+\.[a-z0-9_]{8}\.tmp")


def atomic_write(path: Path, write: Callable[[Path], object], durable: bool = True) -> None:
    """Call ``write(temporary_path)``, then move the result over ``path``.

    ``durable`` flushes the file to disk before the move (checkpoints); files that are cheap to
    make again (the demo dataset's thousands of PNGs) skip that cost.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(handle)
    try:
        write(Path(temporary))
        if durable:
            with open(temporary, "rb+") as stream:
                os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def write_bytes_atomic(path: Path, data: bytes, durable: bool = True) -> None:
    atomic_write(Path(path), lambda temporary: temporary.write_bytes(data), durable)
