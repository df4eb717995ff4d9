"""Image folders for training: find the files, decode them in parallel into one uint8 tensor, report what was skipped.

A scan is an iterator of events, like every long job in core: ``ScanProgress`` after each
file, then one ``ScanResult``. The CLI drains it with ``load_dataset``; the GUI runs the
same iterator in a worker thread and stops it by no longer iterating.

Decoding rules, the same for every file:
- EXIF orientation is applied, so images are used the way a viewer shows them.
- Transparent pixels are composited over white (not dropped), because transparent
  areas often hold black or leftover colours that the viewer never showed.
- 16-bit and 32-bit integer images are scaled to 8 bits (65535 -> 255), not clipped.
- Animated and multi-page files contribute their first frame.
- The shorter side is resized to the training size (Lanczos), then the centre square
  is kept. A file whose shorter side is below ``minimum_side(image_size)`` is skipped.
- Embedded colour profiles are ignored; CMYK is converted with Pillow's plain formula.

A change to any of these rules must raise ``DECODING_RULES_VERSION``: the decoded-dataset
cache (``core/data/cache.py``) keys its files by it, so caches decoded by older rules are rebuilt.
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

from ddpm_studio.core.errors import SettingError, UserError

DECODING_RULES_VERSION = 1

IMAGE_EXTENSIONS: frozenset[str] = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"})

# Only the decoders of the formats above are tried. Pillow would otherwise also open
# formats such as EPS, which it renders by running Ghostscript. (The JPEG decoder also
# opens the multi-picture JPEGs that many cameras write.)
PILLOW_FORMATS = ("PNG", "JPEG", "BMP", "GIF", "WEBP", "TIFF")

# Pillow's advice: shrink by whole factors cheaply only while the image stays at least
# this many times larger than the target, then finish with the Lanczos filter.
REDUCING_GAP = 2.0

SUPPORTED_CHANNELS = (1, 3)
WHITE = (255, 255, 255, 255)

# EXIF orientations 5 to 8 turn the image by a quarter, so width and height swap.
QUARTER_TURN_ORIENTATIONS = frozenset({5, 6, 7, 8})
ALPHA_MODES = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})
GREY_MODES = frozenset({"1", "L"})
SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I"})

# How a reason's kind (the words before its colon) reads in a sentence about many files.
REASON_PHRASES = {
    "empty file": "empty",
    "not an image": "not an image",
    "damaged or truncated": "damaged",
    "unreadable": "unreadable",
    "too small": "too small",
    "too large": "too large",
    "unsupported colour mode": "in an unsupported colour mode",
}
MAX_DETAIL_LENGTH = 80
UNLABELLED = -1  # the label of an image outside the class folders
CLASSES_NAMED = 12  # describe_classes() names this many classes, so that a thousand still make one line


class DatasetError(UserError, ValueError):
    """A dataset the user chose cannot be used; the message is one sentence that says why."""


class SkipImage(Exception):
    """One file cannot be used; ``reason`` says why, in words for the user."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


@dataclass
class SkippedFile:
    """A file that was looked at and left out, and why."""

    path: Path
    reason: str


@dataclass
class ScanProgress:
    """An event after each file of a scan: ``done`` of ``total`` files are decoded; ``path`` is the latest."""

    done: int
    total: int
    path: Path


@dataclass
class ScanResult:
    """The last event of a scan: the usable images as one uint8 tensor, and what was skipped.

    ``images`` has shape (N, C, S, S), is contiguous, and row i comes from ``files[i]``,
    whose original size (width, height), as displayed, is ``source_sizes[i]``.
    ``sources`` are the files and folders the scan was given.

    Classes come from folders, as torchvision's ``ImageFolder`` reads them: an image's class is the
    first-level subfolder of its source folder it sits in (``pets/cat/a.png`` is a "cat"), and a
    dataset is labelled when its images sit in two or more such subfolders. ``labels[i]`` is then
    the index into ``class_names`` (sorted) of ``files[i]``, or ``UNLABELLED`` for an image at a
    source folder's top level or given as a file: those are kept, and train the null label only.
    An unlabelled dataset has ``labels`` None and no ``class_names``.
    """

    images: torch.Tensor
    files: list[Path]
    skipped: list[SkippedFile]
    source_sizes: list[tuple[int, int]]
    image_size: int
    channels: int
    sources: list[Path] = field(default_factory=list)
    ignored: list[Path] = field(default_factory=list)  # files in the folders without an image extension
    labels: torch.Tensor | None = None  # int64 (N,): an index into class_names, or UNLABELLED
    class_names: list[str] = field(default_factory=list)

    @property
    def labelled(self) -> bool:
        return self.labels is not None

    def class_counts(self) -> list[int]:
        """How many images each class has, in ``class_names``' order."""
        if self.labels is None:
            return []
        counts = torch.bincount(self.labels[self.labels >= 0], minlength=len(self.class_names))
        return [int(count) for count in counts]

    def unlabelled_count(self) -> int:
        return 0 if self.labels is None else int((self.labels == UNLABELLED).sum())

    def describe_classes(self) -> str:
        """One line about the classes: which there are, and what happens to the images outside them."""
        if self.labels is None:
            return "No classes: the images do not sit in two or more subfolders."
        named = list(zip(self.class_names, self.class_counts()))
        counts = ", ".join(f"{name} {count:,}" for name, count in named[:CLASSES_NAMED])
        more = len(named) - CLASSES_NAMED
        line = (f"{len(self.class_names):,} classes from the subfolders: {counts}"
                + (f" and {more:,} more." if more > 0 else "."))
        outside = self.unlabelled_count()
        if outside:
            line += (f" {_counted(outside, 'image')} outside the class folders "
                     f"{'is' if outside == 1 else 'are'} kept without a class: "
                     f"{'it trains' if outside == 1 else 'they train'} the null label only.")
        return line

    def summary(self) -> dict:
        """A JSON-able description of the dataset, small enough to store beside a trained model."""
        by_area = sorted(self.source_sizes, key=lambda size: (size[0] * size[1], size))

        def size_at(index: int) -> list[int] | None:
            return list(by_area[index]) if by_area else None

        skipped_by_reason: dict[str, int] = {}
        for skipped_file in self.skipped:
            kind = reason_kind(skipped_file.reason)
            skipped_by_reason[kind] = skipped_by_reason.get(kind, 0) + 1
        return {
            "source": describe_sources(self.sources),
            "paths": [str(Path(path).resolve()) for path in self.sources],  # what a resumed run rescans
            "count": len(self.files),
            "skipped": len(self.skipped),
            "skipped_by_reason": skipped_by_reason,
            "ignored": len(self.ignored),
            "image_size": self.image_size,
            "channels": self.channels,
            "source_size_min": size_at(0),
            "source_size_median": size_at(len(by_area) // 2),
            "source_size_max": size_at(-1),
            **({"classes": {"names": list(self.class_names), "counts": self.class_counts(),
                            "unlabelled": self.unlabelled_count()}} if self.labelled else {}),
        }


def minimum_side(image_size: int) -> int:
    """The shortest side, in pixels, that a file needs to be used for training at ``image_size``."""
    return max(8, image_size // 2)


def reason_kind(reason: str) -> str:
    """The kind of a skip reason: its words before the first colon, e.g. "too small"."""
    return reason.split(":", 1)[0]


def describe_sources(sources: Sequence[Path]) -> str:
    """The files and folders of a dataset in a few words, for messages and summaries."""
    if not sources:
        return "nothing"
    if len(sources) == 1:
        return str(sources[0])
    try:
        common = os.path.commonpath([str(path.absolute()) for path in sources])
    except ValueError:  # paths on different drives have no common folder
        return f"{len(sources)} files and folders"
    return f"{len(sources)} files and folders in {common}"


# --- finding files ---------------------------------------------------------------------


def _as_path_list(paths: Path | str | Sequence[Path | str]) -> list[Path]:
    if isinstance(paths, (str, os.PathLike)):
        return [Path(paths)]
    return [Path(path) for path in paths]


def _has_image_extension(path: str | Path) -> bool:
    return os.path.splitext(path)[1].lower() in IMAGE_EXTENSIONS


def _is_hidden(name: str) -> bool:
    # Also covers the "._photo.jpg" files that macOS leaves on shared drives, which
    # carry image names but hold no image.
    return name.startswith(".")


def _image_files_in_folder(folder: Path, skipped: list[SkippedFile], ignored: list[str] | None = None) -> list[str]:
    """Every file with an image extension under ``folder``, in a deterministic order, hidden ones left out;
    the other visible files go to ``ignored`` when it is given (a scan reports how many it did not read)."""
    found: list[str] = []

    def report_unreadable_folder(error: OSError) -> None:
        skipped.append(SkippedFile(Path(error.filename or folder), f"unreadable: {error.strerror or error}"))

    for directory, subdirectories, file_names in os.walk(folder, onerror=report_unreadable_folder):
        # Sorting in place makes os.walk visit subfolders in order; removing hidden
        # ones keeps it out of them.
        subdirectories[:] = sorted(name for name in subdirectories if not _is_hidden(name))
        for name in sorted(file_names):
            if _is_hidden(name):
                continue
            if _has_image_extension(name):
                found.append(os.path.join(directory, name))
            elif ignored is not None:
                ignored.append(os.path.join(directory, name))
    return found


def find_image_files(paths: Path | str | Sequence[Path | str]) -> tuple[list[Path], list[SkippedFile]]:
    """The files to decode, and the given files that are skipped already.

    Folders are walked recursively in sorted order, skipping hidden files and folders;
    their files without an image extension are ignored. Files given explicitly are
    taken as given, but one without an image extension is skipped as "not an image".
    A file reached twice is kept once.
    """
    names, skipped = find_image_paths(paths)
    return [Path(name) for name in names], skipped


def find_image_paths(
    paths: Path | str | Sequence[Path | str], ignored: list[str] | None = None
) -> tuple[list[str], list[SkippedFile]]:
    """``find_image_files`` with the files as strings: the dataset cache's check of 100,000 files
    would spend seconds making ``Path`` objects. Files in the folders without an image extension
    (a notes.txt) go to ``ignored`` when it is given."""
    sources = _as_path_list(paths)
    if not sources:
        raise DatasetError("No files or folders were given.")
    files: list[str] = []
    skipped: list[SkippedFile] = []
    for source in sources:
        if source.is_dir():
            files.extend(_image_files_in_folder(source, skipped, ignored))
        elif source.is_file():
            if _has_image_extension(source):
                files.append(str(source))
            else:
                supported = ", ".join(sorted(IMAGE_EXTENSIONS))
                skipped.append(SkippedFile(source, f"not an image: only {supported} files are read"))
        elif source.exists():
            skipped.append(SkippedFile(source, "not an image: it is not a regular file"))
        else:
            raise DatasetError(f"No such file or folder: {source}")
    # One folder walked without following links cannot list a file twice; only several
    # sources can overlap.
    return (_without_repeats(files) if len(sources) > 1 else files), skipped


def _without_repeats(files: list[str]) -> list[str]:
    seen: set[str] = set()
    unique: list[str] = []
    for path in files:
        key = os.path.normpath(os.path.abspath(path))
        if key not in seen:
            seen.add(key)
            unique.append(path)
    return unique


# --- decoding one file -------------------------------------------------------------------


def _short(detail: object) -> str:
    text = " ".join(str(detail).split()) or type(detail).__name__
    return text if len(text) <= MAX_DETAIL_LENGTH else text[: MAX_DETAIL_LENGTH - 3] + "..."


def _exif_orientation(image: Image.Image) -> int:
    try:
        return int(image.getexif().get(ExifTags.Base.Orientation, 1))
    except Exception:  # a damaged EXIF block must not cost a good image
        return 1


def _upright(image: Image.Image) -> Image.Image:
    try:
        return ImageOps.exif_transpose(image)
    except Exception:  # a damaged EXIF block must not cost a good image
        return image


def _sixteen_bit_to_grey(image: Image.Image) -> Image.Image:
    """An integer image (16-bit, or 32-bit holding 16-bit values) as 8-bit grey, scaled 65535 -> 255."""
    values = np.asarray(image).astype(np.float32)
    grey = np.clip(values, 0, 65535) / 257.0
    return Image.fromarray(np.round(grey).astype(np.uint8), mode="L")


def _float_to_grey(image: Image.Image) -> Image.Image:
    """A floating-point image as 8-bit grey: values in [0, 1] are scaled, anything else is read as 0..255."""
    values = np.nan_to_num(np.asarray(image, dtype=np.float32))
    if values.size and values.min() >= 0.0 and values.max() <= 1.0:
        values = values * 255.0
    return Image.fromarray(np.round(np.clip(values, 0, 255)).astype(np.uint8), mode="L")


def _flattened(image: Image.Image) -> Image.Image:
    """Any decoded image as "RGB" or "L", with transparency composited over white."""
    if image.mode in SIXTEEN_BIT_MODES:
        return _sixteen_bit_to_grey(image)
    if image.mode == "F":
        return _float_to_grey(image)
    if image.mode in ALPHA_MODES or "transparency" in image.info:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, WHITE)
        return Image.alpha_composite(background, rgba).convert("RGB")
    if image.mode in GREY_MODES:
        return image.convert("L")
    if image.mode != "RGB":
        try:
            return image.convert("RGB")
        except ValueError as error:
            raise SkipImage(f"unsupported colour mode: {image.mode}") from error
    return image


def _centre_square(size: tuple[int, int]) -> tuple[float, float, float, float]:
    width, height = size
    side = min(width, height)
    left, top = (width - side) / 2, (height - side) / 2
    return (left, top, left + side, top + side)


def _decode(data: bytes, image_size: int, channels: int) -> tuple[Image.Image, tuple[int, int]]:
    """Decode, orient, flatten and resize one file's bytes; Pillow's errors become ``SkipImage``."""
    try:
        with Image.open(io.BytesIO(data), formats=PILLOW_FORMATS) as image:
            width, height = image.size
            if _exif_orientation(image) in QUARTER_TURN_ORIENTATIONS:
                width, height = height, width
            shortest = minimum_side(image_size)
            if min(width, height) < shortest:
                raise SkipImage(
                    f"too small: {width}x{height}, the shorter side must be at least {shortest} px"
                    f" for {image_size} px training"
                )
            # JPEGs can decode at 1/2, 1/4 or 1/8 scale for almost nothing.
            target = round(image_size * REDUCING_GAP)
            image.draft(None, (target, target))
            image.load()
            picture = _flattened(_upright(image))
            if channels == 1 and picture.mode != "L":
                picture = picture.convert("L")
            elif channels == 3 and picture.mode != "RGB":
                picture = picture.convert("RGB")
            box = _centre_square(picture.size)
            picture = picture.resize(
                (image_size, image_size), Image.Resampling.LANCZOS, box=box, reducing_gap=REDUCING_GAP
            )
            return picture, (width, height)
    except SkipImage:
        raise
    except UnidentifiedImageError as error:
        raise SkipImage("not an image") from error
    except Image.DecompressionBombError as error:
        limit = 2 * (Image.MAX_IMAGE_PIXELS or 0)
        raise SkipImage(f"too large: more than {limit:,} pixels, Pillow's safety limit") from error
    except OSError as error:
        if error.errno is not None:
            raise SkipImage(f"unreadable: {error.strerror or error}") from error
        raise SkipImage(f"damaged or truncated: {_short(error)}") from error
    except Exception as error:
        # Pillow's decoders report broken data in many ways (SyntaxError, ValueError,
        # EOFError, struct.error, zlib.error, ...), and one bad file must not end a scan.
        raise SkipImage(f"damaged or truncated: {_short(error)}") from error


def load_image(path: Path, image_size: int, channels: int) -> tuple[np.ndarray, tuple[int, int]]:
    """One file as a uint8 array (C, S, S) with S = ``image_size``, and its original (width, height).

    Raises ``SkipImage`` with a reason for a file that cannot be used. Safe to call
    from several threads at once.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as error:
        raise SkipImage(f"unreadable: {error.strerror or _short(error)}") from error
    if not data:
        raise SkipImage("empty file")
    picture, source_size = _decode(data, image_size, channels)
    array = np.asarray(picture, dtype=np.uint8)
    if array.ndim == 2:
        array = array[None]
    else:
        array = array.transpose(2, 0, 1)
    return np.ascontiguousarray(array), source_size


# --- scanning many files -------------------------------------------------------------------


def _check_settings(image_size: int, channels: int) -> None:
    if image_size < 1:
        raise SettingError(f"The image size must be at least 1 pixel, not {image_size}.")
    if channels not in SUPPORTED_CHANNELS:
        raise SettingError(f"Images can have 1 channel (grey) or 3 (colour), not {channels}.")


def default_workers() -> int:
    """Decoding threads to use: one per CPU core, at most 8."""
    return max(1, min(8, os.cpu_count() or 1))


def scan_images(
    paths: Path | str | Sequence[Path | str],
    image_size: int,
    channels: int = 3,
    workers: int | None = None,
    allocate: Callable[[tuple[int, ...]], np.ndarray] | None = None,
) -> Iterator[ScanProgress | ScanResult]:
    """Find and decode every image under ``paths``: a ``ScanProgress`` after each file, then one ``ScanResult``.

    All work, the folder walk included, happens while iterating, so a worker thread
    can own it. Files are decoded by a thread pool, a few at a time, and the result
    keeps the order of ``find_image_files`` whatever order they finish in. Closing the
    iterator cancels what has not started and waits only for the few files in flight.
    A ``ScanResult`` comes even when no image is usable; ``load_dataset`` turns that into
    an error. ``allocate(shape)`` gives the uint8 array the images are decoded into (default:
    memory; the dataset cache passes a memory-mapped file, so a scan never holds the dataset in RAM).
    """
    _check_settings(image_size, channels)
    sources = _as_path_list(paths)
    ignored: list[str] = []
    names, skipped_at_search = find_image_paths(sources, ignored)
    files = [Path(name) for name in names]
    total = len(files)
    workers = workers or default_workers()
    Image.init()  # register every decoder once, here, rather than from several of the pool's threads at once
    # Preallocated and filled in place: a dataset is decoded once and can be large.
    shape = (total, channels, image_size, image_size)
    images = allocate(shape) if allocate is not None else np.empty(shape, dtype=np.uint8)
    source_sizes: list[tuple[int, int] | None] = [None] * total
    reasons: list[str | None] = [None] * total

    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="ddpm-scan")
    in_flight: dict[Future, int] = {}
    next_index = 0
    done = 0
    try:
        while done < total:
            # A small window of submitted files keeps cancelling cheap on a huge folder.
            while next_index < total and len(in_flight) < 2 * workers:
                future = pool.submit(load_image, files[next_index], image_size, channels)
                in_flight[future] = next_index
                next_index += 1
            finished, _ = wait(in_flight, return_when=FIRST_COMPLETED)
            for future in finished:
                index = in_flight.pop(future)
                try:
                    images[index], source_sizes[index] = future.result()
                except SkipImage as skip:
                    reasons[index] = skip.reason
                done += 1
                yield ScanProgress(done=done, total=total, path=files[index])
    finally:
        pool.shutdown(wait=True, cancel_futures=True)

    result = _assemble(images, files, source_sizes, reasons, skipped_at_search, image_size, channels, sources)
    result.ignored = [Path(name) for name in ignored]
    yield result


def _assemble(
    images: np.ndarray,
    files: list[Path],
    source_sizes: list[tuple[int, int] | None],
    reasons: list[str | None],
    skipped_at_search: list[SkippedFile],
    image_size: int,
    channels: int,
    sources: list[Path],
) -> ScanResult:
    """Close the gaps left by skipped files, in place, and wrap the rest as a ``ScanResult``."""
    usable = [index for index, reason in enumerate(reasons) if reason is None]
    # Usable rows only move towards the front, so copying in increasing order is safe
    # and needs no second buffer.
    for position, index in enumerate(usable):
        if position != index:
            images[position] = images[index]
    skipped = skipped_at_search + [
        SkippedFile(files[index], reason) for index, reason in enumerate(reasons) if reason is not None
    ]
    kept = [files[index] for index in usable]
    labels, class_names = folder_labels(kept, sources)
    return ScanResult(
        images=torch.from_numpy(images[: len(usable)]),
        files=kept,
        labels=labels,
        class_names=class_names,
        skipped=skipped,
        source_sizes=[source_sizes[index] for index in usable],  # type: ignore[misc]
        image_size=image_size,
        channels=channels,
        sources=sources,
    )


def folder_labels(files: Sequence[str | Path], sources: Sequence[Path]) -> tuple[torch.Tensor | None, list[str]]:
    """The labels of ``files`` found in ``sources`` by their first-level subfolders (see ``ScanResult``):
    ``(labels, class_names)``, or ``(None, [])`` when fewer than two subfolders hold images."""
    folders = [_absolute_text(source) for source in sources if source.is_dir()]
    named: list[str | None] = []
    for path in files:
        text = _absolute_text(path)
        name = None
        for folder in folders:
            relative = os.path.relpath(text, folder)
            parts = Path(relative).parts
            if len(parts) >= 2 and parts[0] != os.pardir:
                name = parts[0]
                break
            if parts and parts[0] != os.pardir:
                break  # at this folder's top level
        named.append(name)
    class_names = sorted({name for name in named if name is not None})
    if len(class_names) < 2:
        return None, []
    index = {name: position for position, name in enumerate(class_names)}
    labels = torch.tensor([UNLABELLED if name is None else index[name] for name in named], dtype=torch.long)
    return labels, class_names


def _absolute_text(path: str | Path) -> str:
    return os.path.normpath(os.path.abspath(path))


def _counted(count: int, noun: str) -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def _has_any_file(sources: Sequence[Path]) -> bool:
    for source in sources:
        if source.is_file():
            return True
        for _, subdirectories, file_names in os.walk(source):
            subdirectories[:] = [name for name in subdirectories if not _is_hidden(name)]
            if any(not _is_hidden(name) for name in file_names):
                return True
    return False


def explain_no_usable_images(result: ScanResult) -> str:
    """One sentence that says why a scan found nothing to train on."""
    where = describe_sources(result.sources)
    if not result.skipped:
        if not _has_any_file(result.sources):
            emptiness = "the folder is empty" if len(result.sources) == 1 else "the folders are empty"
            return f"No usable images in {where}: {emptiness}."
        supported = ", ".join(sorted(IMAGE_EXTENSIONS))
        found = f"{_counted(len(result.ignored), 'file')} found, but " if result.ignored else ""
        return f"No usable images in {where}: {found}no file has an image extension ({supported})."
    counts = {phrase: 0 for phrase in REASON_PHRASES.values()}
    for skipped_file in result.skipped:
        kind = reason_kind(skipped_file.reason)
        phrase = REASON_PHRASES.get(kind, kind)
        counts[phrase] = counts.get(phrase, 0) + 1
    # The commonest reasons first; sorted() is stable, so ties keep REASON_PHRASES' order.
    commonest_first = sorted(((count, phrase) for phrase, count in counts.items() if count), key=lambda item: -item[0])
    details = ", ".join(f"{count} {phrase}" for count, phrase in commonest_first)
    ignored = f"; {_counted(len(result.ignored), 'other file')} ignored, not images" if result.ignored else ""
    return f"No usable images in {where}: {_counted(len(result.skipped), 'file')} looked at, {details}{ignored}."


def usable_scan(events: Iterable[ScanProgress | ScanResult]) -> Generator[ScanProgress, None, ScanResult]:
    """Pass a scan's progress events on and return its result: ``result = yield from usable_scan(scan)``.

    Raises ``DatasetError`` in one sentence when the scan found no usable image.
    """
    result = None
    for event in events:
        if isinstance(event, ScanResult):
            result = event
        else:
            yield event
    if result is None or len(result.images) == 0:
        raise DatasetError(explain_no_usable_images(result))
    return result


def load_dataset(paths: Path | str | Sequence[Path | str], image_size: int, channels: int = 3) -> ScanResult:
    """Scan ``paths`` to the end and return the result; ``DatasetError`` if no image is usable."""
    result: ScanResult | None = None
    for event in scan_images(paths, image_size, channels):
        if isinstance(event, ScanResult):
            result = event
    assert result is not None
    if not result.files:
        raise DatasetError(explain_no_usable_images(result))
    return result


# --- tensors for the model -------------------------------------------------------------------


def to_model_range(images_uint8: torch.Tensor) -> torch.Tensor:
    """uint8 images (0..255) as float32 in [-1, 1], the range the model trains on."""
    if images_uint8.dtype != torch.uint8:
        raise TypeError(f"expected uint8 images, got {images_uint8.dtype}")
    return images_uint8.to(torch.float32) / 127.5 - 1.0


def from_model_range(images: torch.Tensor) -> torch.Tensor:
    """Model-range images as uint8: clamped to [-1, 1], scaled and rounded; NaN becomes mid grey."""
    scaled = (torch.nan_to_num(images.detach().float(), nan=0.0).clamp(-1.0, 1.0) + 1.0) * 127.5
    return scaled.round().to(torch.uint8)


def flip_coins(count: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """``count`` fair coins (bool), one per image: True mirrors it. Drawn on the generator's device."""
    device = generator.device if generator is not None else None
    return torch.rand(count, generator=generator, device=device) < 0.5


def random_horizontal_flip(batch: torch.Tensor, generator: torch.Generator | None = None,
                           coins: torch.Tensor | None = None) -> torch.Tensor:
    """Mirror each image of a batch (N, C, H, W) left to right with probability 1/2, as the paper's training does.

    ``coins`` are the draws (see ``flip_coins``) when the caller has made them, one per image;
    otherwise they are drawn from ``generator``, which may live on another device than the batch.
    """
    if coins is None:
        coins = flip_coins(batch.shape[0], generator)
    flip = coins.to(batch.device).view(-1, *([1] * (batch.dim() - 1)))
    return torch.where(flip, batch.flip(-1), batch)
