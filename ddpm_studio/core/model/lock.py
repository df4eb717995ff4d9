"""One writer per model folder: a run holds the folder's lock while it trains into it, and a second run is refused.

The lock is the operating system's lock on a file inside the folder (``flock`` on POSIX,
``msvcrt.locking`` on Windows), never the file's mere presence: the system drops it when its
process ends however it ends, so a crashed or killed run leaves nothing held. ``flock`` locks
belong to an open file, so two runs in one process (two jobs of the window) exclude each other
too. The lock file is removed on release, while still locked; a taker that locked a file that
was removed meanwhile sees that its file is no longer the folder's and tries again.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

from ddpm_studio.core.errors import UserError

LOCK_FILE = ".ddpm-studio.lock"
ATTEMPTS = 20  # a taker only retries when the holder removed the file between its open and its lock

if os.name == "nt":
    import msvcrt

    def _try_lock(descriptor: int) -> bool:
        os.lseek(descriptor, 0, os.SEEK_SET)
        try:
            msvcrt.locking(descriptor, msvcrt.LK_NBLCK, 1)
        except OSError:
            return False
        return True

    def _unlock(descriptor: int) -> None:
        os.lseek(descriptor, 0, os.SEEK_SET)
        msvcrt.locking(descriptor, msvcrt.LK_UNLCK, 1)

else:
    import fcntl

    def _try_lock(descriptor: int) -> bool:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True

    def _unlock(descriptor: int) -> None:
        fcntl.flock(descriptor, fcntl.LOCK_UN)


class ModelFolderInUse(UserError):
    """Another run trains into this model folder now; the message names the folder (and the run's process)."""


def _holder(path: Path) -> str:
    """Who holds the lock, as its file says ("process 4242 on host"), or "" when it cannot be read."""
    try:
        text = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError):  # on Windows the locked byte cannot be read by others
        return ""
    return f" (process {text})" if text else ""


class ModelFolderLock:
    """The lock of the model folder ``folder``: ``acquire`` takes it or raises ``ModelFolderInUse``; ``release``
    gives it back. Also a context manager. The folder is made when missing, and removed again on release when
    the lock made it and nothing else was written there."""

    def __init__(self, folder: Path | str):
        self.folder = Path(folder)
        self.path = self.folder / LOCK_FILE
        self._descriptor: int | None = None
        self._made_folder = False

    @property
    def held(self) -> bool:
        return self._descriptor is not None

    def acquire(self) -> ModelFolderLock:
        if self._descriptor is not None:
            raise RuntimeError(f"the lock of {self.folder} is already held by this object")
        if not self.folder.is_dir():
            self.folder.mkdir(parents=True, exist_ok=True)
            self._made_folder = True
        for _ in range(ATTEMPTS):
            descriptor = os.open(self.path, os.O_RDWR | os.O_CREAT | getattr(os, "O_BINARY", 0), 0o644)
            if not _try_lock(descriptor):
                os.close(descriptor)
                raise ModelFolderInUse(f"{self.folder} is in use by another run{_holder(self.path)}; wait for it "
                                       "to end, or train into another folder.")
            if self._is_the_folders_file(descriptor):
                self._descriptor = descriptor
                self._write_holder(descriptor)
                return self
            os.close(descriptor)  # locked a file its holder had just removed: take the new one
        raise ModelFolderInUse(f"{self.folder} is in use by other runs that keep taking and releasing it; "
                               "try again.")

    def _is_the_folders_file(self, descriptor: int) -> bool:
        if os.name == "nt":
            return True  # an open file cannot be removed there, so it is the folder's
        try:
            on_disk = os.stat(self.path)
        except FileNotFoundError:
            return False
        mine = os.fstat(descriptor)
        return (on_disk.st_dev, on_disk.st_ino) == (mine.st_dev, mine.st_ino)

    @staticmethod
    def _write_holder(descriptor: int) -> None:
        """Say who holds the lock, for the message a second run gets (after the locked first byte on Windows)."""
        text = f"{os.getpid()} on {socket.gethostname()}\n".encode()
        if os.name == "nt":
            text = b"\n" + text
        os.ftruncate(descriptor, 0)
        os.lseek(descriptor, 0, os.SEEK_SET)
        os.write(descriptor, text)

    def release(self) -> None:
        """Give the lock back (nothing happens when it is not held), removing the lock file, and the folder if the
        lock made it and it is still empty."""
        descriptor, self._descriptor = self._descriptor, None
        if descriptor is None:
            return
        if os.name != "nt":
            self.path.unlink(missing_ok=True)  # while still locked: a taker that opened it meanwhile tries again
        try:
            _unlock(descriptor)
        finally:
            os.close(descriptor)
        if os.name == "nt":
            try:
                self.path.unlink(missing_ok=True)
            except OSError:  # another run has it open, and holds it or is taking it
                pass
        if self._made_folder:
            try:
                self.folder.rmdir()  # only when empty: a run that failed before writing anything
            except OSError:
                pass
            self._made_folder = False

    def __enter__(self) -> ModelFolderLock:
        return self.acquire()

    def __exit__(self, *exc_info) -> None:
        self.release()


def lock_model_folder(folder: Path | str) -> ModelFolderLock:
    """Take the lock of the model folder ``folder`` for this run; raises ``ModelFolderInUse`` when another run holds
    it. Release it with ``.release()`` (or use ``ModelFolderLock`` in a ``with``)."""
    return ModelFolderLock(folder).acquire()
