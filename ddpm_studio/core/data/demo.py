"""A demo dataset the project draws itself: one coloured shape on a plain or gradient background.

Nothing is downloaded. Every image comes from a seeded ``numpy.random.Generator``, so a seed
and a count always give the same images, and the first ``k`` images of a larger run equal a
run of ``k``. The shapes are drawn at 4x the final resolution and each 4x4 block is averaged,
which gives clean antialiased edges.

The data is meant to be learnable by a small DDPM on a CPU in minutes: a handful of
saturated colours, shapes that cover 30-70% of the width, backgrounds that are plain about
half the time and otherwise a soft gradient between two neighbouring tones.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from ddpm_studio.core.atomic import atomic_write
from ddpm_studio.core.errors import SettingError

SHAPES = ("circle", "square", "triangle")
BACKGROUND_KINDS = ("plain", "gradient")
GRADIENT_DIRECTIONS = ("vertical", "horizontal", "diagonal")
DEFAULT_DEMO_COUNT = 2000
DEFAULT_DEMO_SIZE = 32

RGB = tuple[int, int, int]

# Saturated colours far apart in hue, so that a small model learns them as distinct modes.
SHAPE_COLOURS: dict[str, RGB] = {
    "red": (220, 38, 38),
    "orange": (247, 134, 22),
    "yellow": (246, 208, 30),
    "green": (46, 170, 72),
    "cyan": (22, 182, 204),
    "blue": (42, 82, 214),
    "purple": (134, 62, 196),
    "magenta": (222, 52, 160),
}

# Background tones in two groups; a gradient blends two tones of one group so that it stays soft.
LIGHT_BACKGROUNDS: tuple[RGB, ...] = ((242, 240, 232), (206, 211, 217), (202, 226, 242), (242, 226, 200))
DARK_BACKGROUNDS: tuple[RGB, ...] = ((28, 32, 50), (58, 58, 66), (30, 58, 54), (62, 40, 60))

# A shape colour and a background tone closer than this (Euclidean, 0..255 units) are not paired.
MIN_SHAPE_BACKGROUND_DISTANCE = 140.0
SHAPE_WIDTH_FRACTION_RANGE = (0.30, 0.70)
SUPERSAMPLING = 4
# A box filter averages each block of SUPERSAMPLING x SUPERSAMPLING subpixels: exact coverage
# antialiasing. LANCZOS rings at these hard edges, up to about 20 levels, drawing halos round shapes.
DOWNSAMPLING_FILTER = Image.Resampling.BOX
# Keep every shape at least this far (in final pixels) from the image border.
BORDER_MARGIN = 1.0

DEMO_FILE_PATTERN = re.compile(r"shape_\d{5,}\.png")
# Left behind only if a write was interrupted; ours to overwrite or remove.
DEMO_TEMP_PATTERN = re.compile(r"\.(shape_\d{5,}\.png|README\.txt)\.[a-z0-9_]{8}\.tmp")  # atomic_write's names
README_NAME = "README.txt"
README_FIRST_LINE = "DDPM Studio demo dataset"


@dataclass(frozen=True)
class DemoBackground:
    """The background of a demo image: one tone, or a gradient between two tones in a direction."""

    kind: str  # one of BACKGROUND_KINDS
    colours: tuple[RGB, ...]  # one colour when plain, two (start, end) for a gradient
    direction: str | None = None  # one of GRADIENT_DIRECTIONS for a gradient, else None


@dataclass(frozen=True)
class DemoImageSpec:
    """What was drawn in one demo image; sizes and positions are in pixels of the final image."""

    shape: str  # one of SHAPES
    colour_name: str  # a key of SHAPE_COLOURS
    colour: RGB
    size: float  # width of the shape's bounding box
    centre: tuple[float, float]  # (x, y) of the bounding box's centre
    background: DemoBackground


def _colour_distance(first: RGB, second: RGB) -> float:
    return float(np.linalg.norm(np.subtract(first, second, dtype=np.float64)))


def _contrasting_tones(tones: tuple[RGB, ...], shape_colour: RGB) -> list[RGB]:
    return [tone for tone in tones if _colour_distance(tone, shape_colour) >= MIN_SHAPE_BACKGROUND_DISTANCE]


def _choose_background(rng: np.random.Generator, shape_colour: RGB) -> DemoBackground:
    """A plain tone or a soft two-tone gradient, every tone far enough from the shape's colour."""
    tone_group = LIGHT_BACKGROUNDS if rng.random() < 0.5 else DARK_BACKGROUNDS
    tones = _contrasting_tones(tone_group, shape_colour)
    if len(tones) < 2:  # no palette colour is that close to a whole group, but stay safe if the palette changes
        other_group = DARK_BACKGROUNDS if tone_group is LIGHT_BACKGROUNDS else LIGHT_BACKGROUNDS
        tones = _contrasting_tones(other_group, shape_colour)
    if rng.random() < 0.5:
        return DemoBackground("plain", (tones[rng.integers(len(tones))],))
    first, second = rng.choice(len(tones), size=2, replace=False)
    direction = GRADIENT_DIRECTIONS[rng.integers(len(GRADIENT_DIRECTIONS))]
    return DemoBackground("gradient", (tones[first], tones[second]), direction)


def _choose_spec(rng: np.random.Generator, size: int) -> DemoImageSpec:
    shape = SHAPES[rng.integers(len(SHAPES))]
    colour_name = list(SHAPE_COLOURS)[rng.integers(len(SHAPE_COLOURS))]
    colour = SHAPE_COLOURS[colour_name]
    shape_size = float(rng.uniform(*SHAPE_WIDTH_FRACTION_RANGE)) * size
    half_width = shape_size / 2
    half_height = half_width * (np.sqrt(3) / 2 if shape == "triangle" else 1.0)
    centre_x = float(rng.uniform(half_width + BORDER_MARGIN, size - half_width - BORDER_MARGIN))
    centre_y = float(rng.uniform(half_height + BORDER_MARGIN, size - half_height - BORDER_MARGIN))
    background = _choose_background(rng, colour)
    return DemoImageSpec(shape, colour_name, colour, shape_size, (centre_x, centre_y), background)


@functools.lru_cache(maxsize=256)
def _render_background(background: DemoBackground, canvas_size: int) -> Image.Image:
    """The background at canvas size; cached, since the palette allows only a few dozen. Copy before drawing."""
    if background.kind == "plain":
        return Image.new("RGB", (canvas_size, canvas_size), background.colours[0])
    ramp = np.linspace(0.0, 1.0, canvas_size)
    if background.direction == "vertical":
        weight = np.broadcast_to(ramp[:, None], (canvas_size, canvas_size))
    elif background.direction == "horizontal":
        weight = np.broadcast_to(ramp[None, :], (canvas_size, canvas_size))
    else:
        weight = (ramp[:, None] + ramp[None, :]) / 2
    start, end = (np.asarray(colour, dtype=np.float64) for colour in background.colours)
    pixels = start + weight[..., None] * (end - start)
    return Image.fromarray(np.rint(pixels).astype(np.uint8), "RGB")


def _draw_shape(canvas: Image.Image, spec: DemoImageSpec, scale: int) -> None:
    draw = ImageDraw.Draw(canvas)
    centre_x, centre_y = spec.centre[0] * scale, spec.centre[1] * scale
    half_width = spec.size * scale / 2
    bounding_square = (centre_x - half_width, centre_y - half_width, centre_x + half_width, centre_y + half_width)
    if spec.shape == "circle":
        draw.ellipse(bounding_square, fill=spec.colour)
    elif spec.shape == "square":
        draw.rectangle(bounding_square, fill=spec.colour)
    elif spec.shape == "triangle":
        half_height = half_width * np.sqrt(3) / 2
        apex = (centre_x, centre_y - half_height)
        base_right = (centre_x + half_width, centre_y + half_height)
        base_left = (centre_x - half_width, centre_y + half_height)
        draw.polygon([apex, base_right, base_left], fill=spec.colour)
    else:
        raise ValueError(f"unknown shape {spec.shape!r}")


def render_demo_image(spec: DemoImageSpec, size: int = DEFAULT_DEMO_SIZE) -> Image.Image:
    """Draw a spec at ``SUPERSAMPLING`` times ``size`` and average it down to ``size`` x ``size``."""
    canvas_size = size * SUPERSAMPLING
    canvas = _render_background(spec.background, canvas_size).copy()
    _draw_shape(canvas, spec, SUPERSAMPLING)
    return canvas.resize((size, size), DOWNSAMPLING_FILTER)


def make_demo_image(rng: np.random.Generator, size: int = DEFAULT_DEMO_SIZE) -> tuple[Image.Image, DemoImageSpec]:
    """One random demo image (RGB, ``size`` x ``size``) and the spec of what it shows."""
    spec = _choose_spec(rng, size)
    return render_demo_image(spec, size), spec


def iter_demo_images(
    count: int, size: int = DEFAULT_DEMO_SIZE, seed: int = 0
) -> Iterator[tuple[Image.Image, DemoImageSpec]]:
    """The demo images of a seed, in order; the one sequence both the arrays and the files come from."""
    rng = np.random.default_rng(seed)
    for _ in range(count):
        yield make_demo_image(rng, size)


def make_demo_images(count: int, size: int = DEFAULT_DEMO_SIZE, seed: int = 0) -> np.ndarray:
    """``count`` demo images as uint8 (N, size, size, 3), the same for the same seed."""
    images = np.empty((count, size, size, 3), dtype=np.uint8)
    for index, (image, _spec) in enumerate(iter_demo_images(count, size, seed)):
        images[index] = np.asarray(image)
    return images


def demo_file_name(index: int) -> str:
    return f"shape_{index:05d}.png"


def _is_own_entry(path: Path) -> bool:
    """A file ``write_demo_dataset`` wrote, or a shape subfolder of a labelled demo dataset holding only those."""
    if path.is_dir() and path.name in SHAPES:
        return all(_is_own_file(entry) and entry.name != README_NAME for entry in path.iterdir())
    return _is_own_file(path)


def _is_own_file(path: Path) -> bool:
    """Whether ``path`` is something ``write_demo_dataset`` wrote (and may therefore replace)."""
    if not path.is_file():
        return False
    if DEMO_FILE_PATTERN.fullmatch(path.name) or DEMO_TEMP_PATTERN.fullmatch(path.name):
        return True
    if path.name == README_NAME:
        with open(path, encoding="utf-8", errors="replace") as readme:
            return readme.readline().strip() == README_FIRST_LINE
    return False


def _readme_text(count: int, size: int, seed: int, by_shape: bool = False) -> str:
    return (
        f"{README_FIRST_LINE}\n\n"
        f"{count} images of {size}x{size} pixels, seed {seed}.\n"
        "Each shows one coloured circle, square or triangle on a plain or gradient background.\n"
        + ("They sit in one subfolder per shape, so the folder is labelled: train on it with --classes.\n"
           if by_shape else "") +
        "They were drawn by DDPM Studio's own code (ddpm_studio/core/data/demo.py); nothing was downloaded.\n"
        "The same seed and count always give the same images, so this folder can be deleted and made again.\n"
    )


@dataclass
class DemoProgress:
    """While the demo dataset is drawn: ``done`` of ``total`` images written."""

    done: int
    total: int


@dataclass
class DemoDataset:
    """The last event of ``write_demo_dataset``: the folder and its images, in order."""

    folder: Path
    paths: list[Path]


def is_complete_demo_dataset(folder: Path | str) -> bool:
    """Whether ``folder`` holds a whole demo dataset: its README is written last, so one that is there means so."""
    readme = Path(folder) / README_NAME
    return readme.is_file() and _is_own_file(readme)


def write_demo_dataset(
    out_dir: Path | str,
    count: int = DEFAULT_DEMO_COUNT,
    size: int = DEFAULT_DEMO_SIZE,
    seed: int = 0,
    by_shape: bool = False,
) -> Iterator[DemoProgress | DemoDataset]:
    """Write the demo images as ``out_dir/shape_00000.png`` ... plus a README.txt, yielding progress.
    With ``by_shape`` each image goes to the subfolder of its shape (``out_dir/circle/shape_00003.png``): the same
    images, labelled by their shape, a dataset for training with classes.

    Yields a ``DemoProgress`` after each image, then one ``DemoDataset``. The folder is
    created if needed. A folder that holds anything besides an earlier demo dataset is
    refused with a ``SettingError``, so the demo never mixes into a user's images. An earlier
    demo dataset there is replaced, including any of its images beyond ``count``. Each file
    is written to a temporary name and moved into place; the README comes last, so a run
    stopped part-way (the consumer closes the iterator) leaves a folder that is not complete.
    """
    if count < 1:
        raise SettingError(f"The demo dataset needs at least 1 image, not {count}.")
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise SettingError(f"Cannot write the demo dataset to {out_dir}: it is a file, not a folder.")
    out_dir.mkdir(parents=True, exist_ok=True)
    existing = list(out_dir.iterdir())
    foreign = [entry for entry in existing if not _is_own_entry(entry)]
    if foreign:
        raise SettingError(
            f"Cannot write the demo dataset to {out_dir}: the folder already holds other files "
            f"(such as {foreign[0].name}); choose an empty folder."
        )

    paths: list[Path] = []
    for index, (image, spec) in enumerate(iter_demo_images(count, size, seed)):
        path = (out_dir / spec.shape if by_shape else out_dir) / demo_file_name(index)
        path.parent.mkdir(exist_ok=True)
        atomic_write(path, lambda temporary, image=image: image.save(temporary, format="PNG"), durable=False)
        paths.append(path)
        yield DemoProgress(index + 1, count)
    readme_text = _readme_text(count, size, seed, by_shape)
    atomic_write(out_dir / README_NAME, lambda temporary: temporary.write_text(readme_text, encoding="utf-8"),
                 durable=False)

    written = set(paths) | {out_dir / README_NAME}
    for entry in existing:  # an earlier, larger (or differently laid out) demo run, or an interrupted write
        if entry.is_dir():
            for inner in list(entry.iterdir()):
                if inner not in written:
                    inner.unlink()
            if not any(entry.iterdir()):
                entry.rmdir()
        elif entry not in written and entry.exists():
            entry.unlink()
    yield DemoDataset(out_dir, paths)


def create_demo_dataset(
    out_dir: Path | str, count: int = DEFAULT_DEMO_COUNT, size: int = DEFAULT_DEMO_SIZE, seed: int = 0,
    by_shape: bool = False,
) -> list[Path]:
    """Run ``write_demo_dataset`` to the end; return the PNG paths."""
    result = None
    for event in write_demo_dataset(out_dir, count, size, seed, by_shape):
        result = event
    return result.paths
