"""Small line plots drawn with Pillow, so that the CLI writes figures without Qt: axes, ticks, labels, a line."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

WIDTH, HEIGHT = 560, 400
MARGIN_LEFT, MARGIN_RIGHT, MARGIN_TOP, MARGIN_BOTTOM = 70, 20, 36, 56
TICKS = 5


def nice_ticks(low: float, high: float) -> np.ndarray:
    """About TICKS round values spanning [low, high]."""
    if high <= low:
        high = low + 1.0
    step = 10 ** np.floor(np.log10((high - low) / TICKS))
    for factor in (1, 2, 5, 10):
        if (high - low) / (step * factor) <= TICKS:
            step *= factor
            break
    return np.arange(np.ceil(low / step) * step, high + step * 1e-9, step)


def line_plot(x: np.ndarray, y: np.ndarray, title: str, x_label: str, y_label: str, path: Path) -> None:
    """Write a PNG of y against x (finite points only) with labelled axes."""
    keep = np.isfinite(x) & np.isfinite(y)
    x, y = np.asarray(x, float)[keep], np.asarray(y, float)[keep]
    image = Image.new("RGB", (WIDTH, HEIGHT), "white")
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default()
    left, right, top, bottom = MARGIN_LEFT, WIDTH - MARGIN_RIGHT, MARGIN_TOP, HEIGHT - MARGIN_BOTTOM
    x_low, x_high = (float(x.min()), float(x.max())) if len(x) else (0.0, 1.0)
    y_low, y_high = (min(0.0, float(y.min())), float(y.max())) if len(y) else (0.0, 1.0)  # rates and RMSEs from 0
    if y_high <= y_low:
        y_high = y_low + 1.0
    if x_high <= x_low:
        x_high = x_low + 1.0

    def to_pixel(px: np.ndarray, py: np.ndarray) -> list[tuple[float, float]]:
        u = left + (px - x_low) / (x_high - x_low) * (right - left)
        v = bottom - (py - y_low) / (y_high - y_low) * (bottom - top)
        return list(zip(u.tolist(), v.tolist()))

    draw.rectangle([left, top, right, bottom], outline="black")
    for value in nice_ticks(x_low, x_high):
        (u, _), = to_pixel(np.array([value]), np.array([y_low]))
        draw.line([u, bottom, u, bottom + 5], fill="black")
        draw.text((u, bottom + 8), f"{value:g}", fill="black", font=font, anchor="ma")
    for value in nice_ticks(y_low, y_high):
        (_, v), = to_pixel(np.array([x_low]), np.array([value]))
        draw.line([left - 5, v, left, v], fill="black")
        draw.text((left - 8, v), f"{value:.3g}", fill="black", font=font, anchor="rm")
    if len(x) > 1:
        draw.line(to_pixel(x, y), fill=(31, 119, 180), width=2)
    draw.text(((left + right) / 2, 12), title, fill="black", font=font, anchor="mm")
    draw.text(((left + right) / 2, HEIGHT - 16), x_label, fill="black", font=font, anchor="mm")
    label = Image.new("RGB", (bottom - top, 14), "white")
    ImageDraw.Draw(label).text(((bottom - top) / 2, 7), y_label, fill="black", font=font, anchor="mm")
    image.paste(label.rotate(90, expand=True), (6, top))
    temporary = path.with_name(path.name + ".tmp")
    image.save(temporary, format="PNG")
    temporary.replace(path)
