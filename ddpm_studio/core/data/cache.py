"""The decoded-dataset cache: a folder of images is decoded once into a memory-mapped uint8 file; later runs map it.

Each entry is a folder ``cache_dir()/datasets/<key>/`` holding

    images.u8    the decoded images: uint8 rows of shape (C, S, S), one after the other
    index.json   what the rows are: their count and shape, the files they came from, the files
                 that were skipped and why, the original sizes, and the fingerprint

The key hashes the files and folders the user gave (absolute paths), the file list found in
them (absolute paths, sizes and modification times), the resolution, the channels and
``DECODING_RULES_VERSION``. A changed, added or removed file, another resolution or new decoding
rules give another key, so a stale entry is never used; the new entry replaces the old ones of
the same folders, resolution and channels. The folders are part of the key because two folders
without an image file have the same (empty) file list, and each entry records its folders for
the messages about it.

An entry is written atomically: it is built in a folder whose name is no key
(``<key>.partial-<pid>``), ``index.json`` last, each file flushed to disk, and the folder is
then renamed into place. A killed writer leaves only a partial folder, which nothing opens and
the next build or ``ddpm-studio cache clear`` removes. An entry that fails its checks (an
unreadable index, a data file of the wrong size) is reported in a sentence and rebuilt.

Under torchrun every process computes the key; local rank 0 builds a missing entry, and the
others wait for it to appear, then map it. They decode nothing.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import mmap
import os
import shutil
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ddpm_studio.core.data.folders import (
    DECODING_RULES_VERSION,
    UNLABELLED,
    DatasetError,
    ScanProgress,
    ScanResult,
    SkippedFile,
    _as_path_list,
    find_image_paths,
    scan_images,
)

CACHE_FORMAT = 2  # 2: the class labels of labelled folders
DATA_FILE = "images.u8"
INDEX_FILE = "index.json"
PARTIAL_MARK = ".partial-"
WAIT_POLL_SECONDS = 0.25


def cache_dir() -> Path:
    """Where decoded datasets are cached: $DDPM_STUDIO_CACHE, else the platform's user cache folder."""
    override = os.environ.get("DDPM_STUDIO_CACHE")
    if override:
        return Path(override).expanduser()
    if os.name == "nt":
        base = Path(os.environ.get("LOCALAPPDATA", Path.home() / "AppData" / "Local")) / "ddpm-studio" / "cache"
        return base
    if os.uname().sysname == "Darwin":
        return Path.home() / "Library" / "Caches" / "ddpm-studio"
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "ddpm-studio"


def datasets_dir() -> Path:
    return cache_dir() / "datasets"


# --- events ---------------------------------------------------------------------------------------


@dataclass
class CacheMessage:
    """A sentence about the cache for the user: a hit, a rebuild and why, a wait for another process."""

    text: str


class CachedImages:
    """The images of one cache entry, mapped from disk: ``tensor`` is uint8 (N, C, S, S) over the file.

    The mapping is copy-on-write, so a stray write to the tensor never reaches the file. Rows
    are read from disk when first touched, and stay resident in this process while mapped:
    Linux maps a whole page-cache folio (up to 2 MiB) at each touch, so a few hundred random
    rows make the whole file resident. Training therefore gathers its batches with ``gather``,
    which reads the rows from the file into the caller's buffer: the file stays in the
    operating system's page cache, which is not this process's memory, and resident memory
    stays bounded however large the dataset is. ``release_pages`` drops what the map made resident.
    """

    def __init__(self, path: Path, count: int, row_shape: tuple[int, int, int]):
        self.path = path
        self.row_bytes = int(np.prod(row_shape))
        length = count * self.row_bytes
        self._map: mmap.mmap | None = None
        self._file = open(path, "rb")  # noqa: SIM115 (it lives as long as this object)
        if length:
            self._map = mmap.mmap(self._file.fileno(), length, access=mmap.ACCESS_COPY)
            array = np.frombuffer(self._map, dtype=np.uint8, count=length).reshape(count, *row_shape)
        else:
            array = np.empty((0, *row_shape), dtype=np.uint8)
        self.tensor = torch.from_numpy(array)

    def __len__(self) -> int:
        return len(self.tensor)

    @property
    def nbytes(self) -> int:
        return self.tensor.numel()

    def gather(self, indices: np.ndarray, out: torch.Tensor) -> None:
        """Copy rows ``indices`` into the contiguous uint8 tensor ``out`` (len(indices), C, S, S), reading the file."""
        if not hasattr(os, "preadv"):  # Windows: through the map
            torch.index_select(self.tensor, 0, torch.from_numpy(np.asarray(indices, dtype=np.int64)), out=out)
            return
        rows = out.numpy().reshape(len(indices), self.row_bytes)
        descriptor = self._file.fileno()
        for slot, index in enumerate(np.asarray(indices).tolist()):
            if not 0 <= index < len(self):
                raise IndexError(f"row {index} of {len(self)}")
            if os.preadv(descriptor, [rows[slot]], index * self.row_bytes) != self.row_bytes:
                raise DatasetError(f"{self.path} is shorter than its cache index says; clear the cache.")

    def release_pages(self) -> None:
        """Drop the pages the map made resident in this process (a no-op where the platform cannot)."""
        advice = getattr(mmap, "MADV_DONTNEED", None)
        if self._map is not None and advice is not None:
            self._map.madvise(advice)


@dataclass
class CachedScanResult(ScanResult):
    """A ``ScanResult`` whose images are mapped from a cache entry (``mapping``); ``decoded`` is False on a hit."""

    mapping: CachedImages | None = None
    entry: Path | None = None
    decoded: bool = False


@dataclass
class CacheEntry:
    """One entry of the cache folder, for ``ddpm-studio cache list`` and the window."""

    path: Path
    size_bytes: int
    description: str  # the sources, the image count and resolution; or why the entry is unusable
    usable: bool


# --- keys -----------------------------------------------------------------------------------------


def _absolute(path: Path) -> str:
    return os.path.normpath(os.path.abspath(path))


def _sources_key(sources: Sequence[Path], image_size: int, channels: int) -> str:
    """What a cache entry is for, independent of the files' contents: entries that share it replace each other."""
    text = json.dumps([sorted(_absolute(p) for p in sources), image_size, channels])
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def dataset_key(sources: Sequence[str | Path], files: Sequence[str | Path], image_size: int, channels: int) -> str:
    """The cache key of decoding ``files`` (absolute paths), found in ``sources`` (the files and folders
    given), at ``image_size`` and ``channels`` under the current decoding rules.

    A file that cannot be stat-ed (it vanished) enters the key as missing, so that its
    return makes another key.
    """
    digest = hashlib.sha256(f"{CACHE_FORMAT}:{DECODING_RULES_VERSION}:{image_size}:{channels}\n".encode())
    digest.update(json.dumps([_absolute(Path(source)) for source in sources]).encode("utf-8", "surrogateescape"))
    for path in files:
        try:
            status = os.stat(path)
            stamp = f"{status.st_size}:{status.st_mtime_ns}"
        except OSError:
            stamp = "missing"
        digest.update(f"{os.fspath(path)}\0{stamp}\n".encode("utf-8", "surrogateescape"))
    return digest.hexdigest()[:32]


# --- opening ----------------------------------------------------------------------------------------


class PathList(Sequence[Path]):
    """File names held as strings, handed out as ``Path`` objects: an entry of 100,000 files
    opens in a fraction of the time that making every ``Path`` up front would take."""

    def __init__(self, names: list[str]):
        self._names = names

    def __len__(self) -> int:
        return len(self._names)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [Path(name) for name in self._names[index]]
        return Path(self._names[index])

    def __eq__(self, other) -> bool:
        return list(self) == list(other) if isinstance(other, Sequence) else NotImplemented

    def __repr__(self) -> str:
        return f"PathList({len(self)} files)"


class DamagedEntry(Exception):
    """A cache entry that exists but cannot be trusted; the message says why, in a few words."""


def _read_entry(folder: Path, key: str, image_size: int, channels: int) -> dict:
    """The checked index of the entry in ``folder``; raises FileNotFoundError or DamagedEntry."""
    if not folder.is_dir():
        raise FileNotFoundError(folder)
    try:
        index = json.loads((folder / INDEX_FILE).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DamagedEntry("its index is missing") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise DamagedEntry(f"its index cannot be read ({type(error).__name__})") from None
    try:
        count, row_bytes, data_bytes = int(index["count"]), int(index["row_bytes"]), int(index["data_bytes"])
        consistent = (
            index["format"] == CACHE_FORMAT and index["key"] == key
            and index["decoding_rules"] == DECODING_RULES_VERSION
            and index["image_size"] == image_size and index["channels"] == channels
            and row_bytes == channels * image_size * image_size
            and len(index["files"]) == count == len(index["source_sizes"]) and count * row_bytes <= data_bytes
            and _labels_consistent(index["labels"], index["class_names"], count)
        )
    except (KeyError, TypeError, ValueError):
        consistent = False
    if not consistent:
        raise DamagedEntry("its index does not describe this dataset")
    try:
        actual = (folder / DATA_FILE).stat().st_size
    except OSError:
        raise DamagedEntry("its image file is missing") from None
    if actual != data_bytes:
        raise DamagedEntry(f"its image file holds {actual:,} bytes, not {data_bytes:,}")
    return index


def _labels_consistent(labels, class_names, count: int) -> bool:
    """Whether stored labels can be trusted: one per file, each a class index or UNLABELLED,
    for two or more distinct, sorted class names (or no labels and no names at all)."""
    if labels is None:
        return class_names == []
    names_ok = (len(class_names) >= 2 and all(isinstance(name, str) for name in class_names)
                and class_names == sorted(set(class_names)))
    return (names_ok and len(labels) == count
            and all(type(label) is int and UNLABELLED <= label < len(class_names) for label in labels))


def _result_from_entry(folder: Path, index: dict, decoded: bool, ignored: list[str]) -> CachedScanResult:
    image_size, channels, count = index["image_size"], index["channels"], index["count"]
    mapping = CachedImages(folder / DATA_FILE, count, (channels, image_size, image_size))
    return CachedScanResult(
        images=mapping.tensor,
        files=PathList(index["files"]),
        skipped=[SkippedFile(Path(name), reason) for name, reason in index["skipped"]],
        source_sizes=[(int(w), int(h)) for w, h in index["source_sizes"]],
        image_size=image_size,
        channels=channels,
        sources=[Path(name) for name in index["sources"]],
        ignored=[Path(name) for name in ignored],
        labels=None if index["labels"] is None else torch.tensor(index["labels"], dtype=torch.long),
        class_names=list(index["class_names"]),
        mapping=mapping,
        entry=folder,
        decoded=decoded,
    )


def open_cached_dataset(
    paths: Path | str | Sequence[Path | str],
    image_size: int,
    channels: int = 3,
    builder: bool = True,
    workers: int | None = None,
) -> Iterator[ScanProgress | CacheMessage | CachedScanResult]:
    """Like ``data.scan_images``, through the cache: open the entry of these files, or decode them into a new one.

    Yields ``CacheMessage`` sentences, ``ScanProgress`` while decoding, and last a
    ``CachedScanResult`` whose images are mapped from the entry. With ``builder`` False
    (every process under torchrun but local rank 0) a missing or damaged entry is waited
    for instead of built.
    """
    sources = _as_path_list(paths)
    ignored: list[str] = []  # found again at every opening: the entry depends on the images only
    files, _ = find_image_paths([_absolute(source) for source in sources], ignored)  # absolute, so the key is too
    key = dataset_key(sources, files, image_size, channels)
    folder = datasets_dir() / key
    announced_wait = False
    while True:
        try:
            index = _read_entry(folder, key, image_size, channels)
        except FileNotFoundError:
            damage = None
        except DamagedEntry as error:
            damage = str(error)
        else:
            if index["count"]:  # of nothing usable, the caller's sentence says why
                yield CacheMessage(f"Opened {index['count']:,} decoded images from the cache ({folder}); "
                                   "nothing to decode.")
            yield _result_from_entry(folder, index, decoded=False, ignored=ignored)
            return
        if builder:
            break
        if not announced_wait:
            yield CacheMessage("Waiting for local rank 0 to decode the images into the cache.")
            announced_wait = True
        time.sleep(WAIT_POLL_SECONDS)

    if damage is not None:
        yield CacheMessage(f"The cached images in {folder} are damaged ({damage}); decoding the images again.")
    yield from _build_entry(sources, files, key, image_size, channels, workers)
    index = _read_entry(folder, key, image_size, channels)
    if index["count"]:
        yield CacheMessage(f"Cached {index['count']:,} decoded images in {folder}; "
                           "the next start opens them without decoding.")
    yield _result_from_entry(folder, index, decoded=True, ignored=ignored)


def _fsync(path: Path) -> None:
    with open(path, "rb+") as stream:
        os.fsync(stream.fileno())


def _build_entry(
    sources: list[Path], files: list[str], key: str, image_size: int, channels: int, workers: int | None
) -> Iterator[ScanProgress]:
    """Decode ``sources`` into a partial folder, then move it into place as the entry ``key``."""
    root = datasets_dir()
    root.mkdir(parents=True, exist_ok=True)
    _remove_dead_partials(root, key)
    partial = root / f"{key}{PARTIAL_MARK}{os.getpid()}"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir()
    data_path = partial / DATA_FILE
    mapped: list[np.memmap] = []

    def allocate(shape: tuple[int, ...]) -> np.ndarray:
        if shape[0] == 0:  # an empty file cannot be mapped
            data_path.touch()
            return np.empty(shape, dtype=np.uint8)
        mapped.append(np.memmap(data_path, dtype=np.uint8, mode="w+", shape=shape))
        return mapped[0]

    try:
        result: ScanResult | None = None
        for event in scan_images(sources, image_size, channels, workers=workers, allocate=allocate):
            if isinstance(event, ScanResult):
                result = event
            else:
                yield event
        assert result is not None
        for array in mapped:
            array.flush()
        result.images = None  # unmap before the folder moves (Windows needs that)
        mapped.clear()
        _fsync(data_path)
        row_bytes = channels * image_size * image_size
        index = {
            "format": CACHE_FORMAT,
            "key": key,
            "sources_key": _sources_key(sources, image_size, channels),
            "decoding_rules": DECODING_RULES_VERSION,
            "image_size": image_size,
            "channels": channels,
            "count": len(result.files),
            "row_bytes": row_bytes,
            "data_bytes": data_path.stat().st_size,
            "sources": [_absolute(path) for path in sources],
            "files": [_absolute(path) for path in result.files],
            "source_sizes": [list(size) for size in result.source_sizes],
            "skipped": [[_absolute(item.path), item.reason] for item in result.skipped],
            "labels": None if result.labels is None else result.labels.tolist(),
            "class_names": list(result.class_names),
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        }
        (partial / INDEX_FILE).write_text(json.dumps(index), encoding="utf-8")
        _fsync(partial / INDEX_FILE)
        final = root / key
        if final.exists():  # a damaged entry: out of the way first (a folder cannot replace a folder)
            shutil.rmtree(final)
        os.replace(partial, final)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    _remove_replaced_entries(root, key, index["sources_key"])


def _remove_dead_partials(root: Path, key: str) -> None:
    """Remove partial folders of ``key`` whose writer is gone (killed mid-build)."""
    for partial in root.glob(f"{key}{PARTIAL_MARK}*"):
        pid_text = partial.name.rsplit(PARTIAL_MARK, 1)[-1]
        if not pid_text.isdigit() or not _process_alive(int(pid_text)):
            shutil.rmtree(partial, ignore_errors=True)


def _process_alive(pid: int) -> bool:
    if pid == os.getpid():
        return False  # our own leftover from an earlier, failed build
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


def _remove_replaced_entries(root: Path, key: str, sources_key: str) -> None:
    """Remove the older entries of the same folders, resolution and channels: their files have changed."""
    for folder in root.iterdir():
        if folder.name == key or PARTIAL_MARK in folder.name or not folder.is_dir():
            continue
        try:
            other = json.loads((folder / INDEX_FILE).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(other, dict) and other.get("sources_key") == sources_key:
            shutil.rmtree(folder, ignore_errors=True)  # a process still mapping it keeps its copy until it ends


# --- listing and clearing --------------------------------------------------------------------------


def _folder_bytes(folder: Path) -> int:
    total = 0
    for path in folder.rglob("*"):
        try:
            if path.is_file():
                total += path.stat().st_size
        except OSError:
            pass
    return total


def list_cache_entries() -> list[CacheEntry]:
    """Every entry in the cache folder, usable or not, newest first."""
    root = datasets_dir()
    if not root.is_dir():
        return []
    entries = []
    for folder in root.iterdir():
        if not folder.is_dir():
            continue
        size = _folder_bytes(folder)
        if PARTIAL_MARK in folder.name:
            entries.append(CacheEntry(folder, size, "unfinished (a decode was stopped or is running)", False))
            continue
        try:
            index = json.loads((folder / INDEX_FILE).read_text(encoding="utf-8"))
            _read_entry(folder, folder.name, index["image_size"], index["channels"])
        except (OSError, ValueError, KeyError, TypeError, DamagedEntry):
            entries.append(CacheEntry(folder, size, "damaged; it will be rebuilt when used", False))
            continue
        sources = ", ".join(index["sources"])
        description = (f"{index['count']:,} images at {index['image_size']}x{index['image_size']}x{index['channels']} "
                       f"from {sources}, {len(index['skipped'])} skipped, decoded {index['created']}")
        entries.append(CacheEntry(folder, size, description, True))
    return sorted(entries, key=lambda entry: entry.path.stat().st_mtime if entry.path.exists() else 0, reverse=True)


def clear_cache() -> tuple[int, int]:
    """Remove every entry (and unfinished one) from the cache folder; returns (entries, bytes) removed."""
    entries = list_cache_entries()
    for entry in entries:
        shutil.rmtree(entry.path, ignore_errors=True)
    return len(entries), sum(entry.size_bytes for entry in entries)
