"""A folder of awkward image files, good and damaged, written by tests to check that scanning handles them all."""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

RED = (255, 0, 0)
GREEN = (0, 255, 0)
BLUE = (0, 0, 255)
YELLOW = (255, 255, 0)
MAGENTA = (255, 0, 255)
WHITE = (255, 255, 255)

EXIF_ORIENTATION_TAG = 0x0112
# EXIF orientation 6: the stored pixels must turn a quarter clockwise to be shown upright.
ROTATE_CLOCKWISE_ORIENTATION = 6

NON_ASCII_NAME = "café_ünïcode_图像.png"


@dataclass
class ImageCorpus:
    """The files of a corpus: usable ones by role, bad ones with the kind of reason each must get."""

    root: Path
    good: dict[str, Path] = field(default_factory=dict)
    bad: dict[Path, str] = field(default_factory=dict)
    ignored: list[Path] = field(default_factory=list)


def solid(colour: tuple[int, ...], size: tuple[int, int], mode: str = "RGB") -> Image.Image:
    return Image.new(mode, size, colour)


def left_right(left: tuple[int, ...], right: tuple[int, ...], size: tuple[int, int], mode: str = "RGB") -> Image.Image:
    """An image whose left half is one colour and right half another."""
    image = Image.new(mode, size, right)
    image.paste(Image.new(mode, (size[0] // 2, size[1]), left), (0, 0))
    return image


def noise_png_bytes(size: int = 48, seed: int = 0) -> bytes:
    """A PNG of random pixels, so that its compressed data is long enough to cut in half."""
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG")
    return buffer.getvalue()


def noise_jpeg_bytes(size: int = 64, seed: int = 0) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def write_bad_files(root: Path, corpus: ImageCorpus) -> None:
    """Files that must be skipped, each with the kind of reason it must get."""
    root.mkdir(parents=True, exist_ok=True)
    empty = root / "empty.png"
    empty.write_bytes(b"")
    corpus.bad[empty] = "empty file"

    png = noise_png_bytes()
    truncated_png = root / "truncated.png"
    truncated_png.write_bytes(png[: len(png) // 2])
    corpus.bad[truncated_png] = "damaged or truncated"

    jpeg = noise_jpeg_bytes()
    truncated_jpeg = root / "truncated.jpg"
    truncated_jpeg.write_bytes(jpeg[: len(jpeg) // 2])
    corpus.bad[truncated_jpeg] = "damaged or truncated"

    text = root / "notes_not_really.jpg"
    text.write_text("This is a text file with an image's name.\n", encoding="utf-8")
    corpus.bad[text] = "not an image"

    tiny = root / "tiny.png"
    solid(RED, (4, 4)).save(tiny)
    corpus.bad[tiny] = "too small"


def write_good_files(root: Path, corpus: ImageCorpus) -> None:
    """Usable files in every awkward mode, registered under a role name."""
    root.mkdir(parents=True, exist_ok=True)

    def keep(role: str, path: Path) -> None:
        corpus.good[role] = path

    keep("red", root / "red.png")
    solid(RED, (24, 24)).save(corpus.good["red"])

    # 16-bit grey at the middle of its range: 128 * 257 is 8-bit 128 exactly.
    keep("grey16", root / "grey16.png")
    Image.fromarray(np.full((20, 20), 128 * 257, dtype=np.uint16)).save(corpus.good["grey16"])

    keep("grey", root / "grey.png")
    solid(200, (20, 20), "L").save(corpus.good["grey"])

    keep("rgba", root / "rgba.png")
    left_right((255, 0, 0, 255), (0, 0, 0, 0), (32, 32), "RGBA").save(corpus.good["rgba"])

    # A palette GIF whose index 0 is transparent and index 1 blue.
    keep("palette", root / "palette.gif")
    palette_image = Image.new("P", (32, 32), 1)
    palette_image.putpalette([0, 0, 0, *BLUE] + [0] * (256 - 2) * 3)
    palette_image.paste(0, (0, 0, 16, 32))
    palette_image.save(corpus.good["palette"], transparency=0)

    keep("cmyk", root / "cmyk.jpg")
    solid((255, 0, 0, 0), (24, 24), "CMYK").save(corpus.good["cmyk"], quality=95)

    keep("la", root / "grey_alpha.png")
    left_right((100, 255), (0, 0), (32, 32), "LA").save(corpus.good["la"])

    keep("bilevel", root / "bilevel.png")
    left_right(255, 0, (32, 32), "1").save(corpus.good["bilevel"])

    keep("animated", root / "animated.gif")
    frames = [solid(RED, (20, 20)), solid(BLUE, (20, 20))]
    frames[0].save(corpus.good["animated"], save_all=True, append_images=frames[1:], duration=100, loop=0)

    # Wide pixels, red on the left, tagged to be turned a quarter clockwise: upright,
    # red is at the top.
    keep("exif_rotated", root / "exif_rotated.jpg")
    exif = Image.Exif()
    exif[EXIF_ORIENTATION_TAG] = ROTATE_CLOCKWISE_ORIENTATION
    left_right(RED, BLUE, (64, 32)).save(corpus.good["exif_rotated"], quality=95, exif=exif)

    # Large enough that the JPEG decoder shrinks it while decoding.
    keep("large_jpeg", root / "large.jpg")
    solid(MAGENTA, (200, 120)).save(corpus.good["large_jpeg"], quality=95)

    keep("minimum", root / "just_big_enough.webp")
    solid(YELLOW, (8, 12)).save(corpus.good["minimum"], lossless=True)

    keep("non_ascii", root / NON_ASCII_NAME)
    solid(GREEN, (24, 24)).save(corpus.good["non_ascii"])

    keep("nested", root / "nested" / "deeper" / "nested.bmp")
    corpus.good["nested"].parent.mkdir(parents=True)
    solid(YELLOW, (30, 20)).save(corpus.good["nested"])

    keep("tiff16", root / "nested" / "grey16.tif")
    Image.fromarray(np.full((20, 20), 64 * 257, dtype=np.uint16)).save(corpus.good["tiff16"])


def write_ignored_files(root: Path, corpus: ImageCorpus) -> None:
    """Files a folder scan must pass over without a word."""
    readme = root / "readme.txt"
    readme.write_text("not an image, and not named like one\n", encoding="utf-8")
    hidden_folder_image = root / ".thumbnails" / "hidden.png"
    hidden_folder_image.parent.mkdir()
    solid(RED, (24, 24)).save(hidden_folder_image)
    apple_double = root / "._red.png"  # what macOS leaves on shared drives
    apple_double.write_bytes(b"\x00\x05\x16\x07 not a png")
    corpus.ignored += [readme, hidden_folder_image, apple_double]


def build_corpus(root: Path) -> ImageCorpus:
    """Write the whole corpus under ``root`` and say what is in it."""
    corpus = ImageCorpus(root)
    write_good_files(root, corpus)
    write_bad_files(root, corpus)
    write_ignored_files(root, corpus)
    return corpus
