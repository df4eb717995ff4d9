"""The sample picture of the Noising page: a little landscape the project draws itself.

A gradient sky, a sun, a cloud, rolling hills, a house and a tree, in bold shapes and clear colours, so
that noising and denoising are easy to follow at 256x256 and still recognisable at 32x32.
It is deterministic; ``resources/sample.png`` is ``make_sample_picture(256)``.
Run ``python -m ddpm_studio.core.data.sample_picture [PATH]`` to write it again.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

SUPERSAMPLING = 4

SKY_TOP = (66, 135, 222)
SKY_HORIZON = (178, 222, 246)
SUN = (255, 206, 38)
SUN_GLOW = (255, 232, 140)
CLOUD = (250, 252, 255)
FAR_HILL = (92, 178, 88)
NEAR_HILL = (46, 138, 58)
WALL = (244, 236, 214)
ROOF = (196, 48, 42)
DOOR = (120, 70, 40)
WINDOW = (90, 170, 230)
TRUNK = (112, 72, 40)
CROWN = (28, 104, 44)


def _sky(canvas_size: int) -> Image.Image:
    weight = np.linspace(0.0, 1.0, canvas_size)[:, None, None] ** 0.8
    top, horizon = np.asarray(SKY_TOP, dtype=np.float64), np.asarray(SKY_HORIZON, dtype=np.float64)
    rows = top + weight * (horizon - top)
    pixels = np.broadcast_to(rows, (canvas_size, canvas_size, 3))
    return Image.fromarray(np.rint(pixels).astype(np.uint8), "RGB")


def _box(scale: int, left: float, top: float, right: float, bottom: float) -> tuple[float, float, float, float]:
    """A rectangle given in fractions of the picture, in canvas pixels."""
    return (left * scale, top * scale, right * scale, bottom * scale)


def _hill(
    draw: ImageDraw.ImageDraw, scale: int, centre_x: float, crest_y: float, half_width: float,
    colour: tuple[int, int, int],
) -> None:
    """A hill as the top of a wide, flattened ellipse whose crest is at (centre_x, crest_y), in fractions of the
    picture."""
    half_height = half_width * 0.55
    draw.ellipse(_box(scale, centre_x - half_width, crest_y, centre_x + half_width, crest_y + 2 * half_height),
                 fill=colour)


def make_sample_picture(size: int = 256) -> Image.Image:
    """The sample landscape as an RGB ``size`` x ``size`` image, drawn at 4x and averaged down."""
    scale = size * SUPERSAMPLING
    canvas = _sky(scale)
    draw = ImageDraw.Draw(canvas)

    draw.ellipse(_box(scale, 0.66, 0.07, 0.92, 0.33), fill=SUN_GLOW)
    draw.ellipse(_box(scale, 0.69, 0.10, 0.89, 0.30), fill=SUN)

    for left, top, right, bottom in ((0.06, 0.17, 0.26, 0.29), (0.16, 0.11, 0.34, 0.27), (0.26, 0.17, 0.44, 0.29)):
        draw.ellipse(_box(scale, left, top, right, bottom), fill=CLOUD)

    _hill(draw, scale, 0.12, 0.46, 0.50, FAR_HILL)
    _hill(draw, scale, 0.92, 0.50, 0.55, FAR_HILL)
    _hill(draw, scale, 0.40, 0.66, 0.75, NEAR_HILL)

    # The house stands on the near hill, left of centre.
    draw.rectangle(_box(scale, 0.16, 0.55, 0.46, 0.80), fill=WALL)
    draw.polygon([(0.12 * scale, 0.56 * scale), (0.31 * scale, 0.36 * scale), (0.50 * scale, 0.56 * scale)], fill=ROOF)
    draw.rectangle(_box(scale, 0.27, 0.64, 0.35, 0.80), fill=DOOR)
    draw.rectangle(_box(scale, 0.19, 0.61, 0.25, 0.68), fill=WINDOW)
    draw.rectangle(_box(scale, 0.37, 0.61, 0.43, 0.68), fill=WINDOW)

    # The tree, to the right of the house.
    draw.rectangle(_box(scale, 0.665, 0.58, 0.715, 0.80), fill=TRUNK)
    draw.ellipse(_box(scale, 0.56, 0.36, 0.82, 0.62), fill=CROWN)

    return canvas.resize((size, size), Image.Resampling.BOX)


if __name__ == "__main__":
    out_path = Path(sys.argv[1]) if len(sys.argv) > 1 else Path("resources/sample.png")
    make_sample_picture(256).save(out_path, format="PNG")
    print(f"wrote {out_path}")
