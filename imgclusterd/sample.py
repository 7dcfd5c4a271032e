"""A sample photo folder made on the spot, for the Quick start and for trying things out.

Nothing is downloaded: each "scene" is a smooth random colour field with a few shapes (photo-like
in what perceptual hashes see: large-scale structure), saved with the edits that make real
near-duplicates — re-encoded, resized, brightened, cropped — so the output has clusters to show.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance

__all__ = ["make_sample"]


def _scene(rng: np.random.Generator, width: int, height: int) -> Image.Image:
    y, x = np.mgrid[0:height, 0:width] / max(width, height)
    channels = []
    for _ in range(3):
        field = np.zeros_like(x)
        for _ in range(4):
            fx, fy = rng.uniform(0.5, 6, 2)
            phase = rng.uniform(0, 2 * np.pi)
            field += rng.uniform(0.3, 1) * np.sin(2 * np.pi * (fx * x + fy * y) + phase)
        channels.append(field)
    rgb = np.stack(channels, axis=-1)
    rgb = (rgb - rgb.min()) / (np.ptp(rgb) or 1) * 255
    image = Image.fromarray(rgb.astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(2, 6))):
        x0, y0 = rng.uniform(0, width * 0.8), rng.uniform(0, height * 0.8)
        size = rng.uniform(0.1, 0.35) * width
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        if rng.random() < 0.5:
            draw.ellipse((x0, y0, x0 + size, y0 + size), fill=colour)
        else:
            draw.rectangle((x0, y0, x0 + size, y0 + size * 0.6), fill=colour)
    return image


def make_sample(folder: Path, scenes: int = 8, seed: int = 7) -> list[Path]:
    """Write ``scenes`` scenes with 4 near-duplicate variants each, plus 4 singles, into
    ``folder`` (created; existing files are never overwritten). Returns the files written."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []

    def save(image: Image.Image, name: str, **options: Any) -> None:
        path = folder / name
        if path.exists():
            return
        image.save(path, **options)
        written.append(path)

    for number in range(scenes):
        base = _scene(rng, 960, 720)
        name = f"scene{number + 1:02d}"
        save(base, f"{name}.jpg", quality=92)
        save(base, f"{name}_copy_q60.jpg", quality=60)
        save(base.resize((640, 480), Image.Resampling.LANCZOS), f"{name}_small.png")
        save(ImageEnhance.Brightness(base).enhance(1.15), f"{name}_bright.jpg", quality=90)
        save(base.crop((24, 18, 936, 702)), f"{name}_crop.jpg", quality=90)
    (folder / "singles").mkdir(exist_ok=True)
    for number in range(4):
        save(_scene(rng, 800, 600), f"singles/single{number + 1}.jpg", quality=90)
    return written
