"""A benchmark corpus of camera-sized JPEGs with known near-duplicate groups.

Sources are the real photographs scikit-image ships (``skimage.data``; nothing is downloaded),
upscaled with Lanczos to camera size (~12 MP, 4:3) with a little sensor-like noise so that the
JPEGs are as large and as slow to decode as real photos. Each source yields five variants that a
user would call duplicates: the original, a re-encode at lower quality, a ~8 MP resize, a 5 %
crop and a 10 % brighter copy. All variants of one source form one group; the groups are
written to ``groups.json`` beside the images, and the corpus is reused when it is present.

    python -m benchmarks.corpus /tmp/corpus --sources 15
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance
from skimage import data

__all__ = ["SOURCES", "Corpus", "build_corpus"]

#: Photographs (not drawings) among skimage.data, all shipped with the package.
SOURCES = (
    "astronaut", "coffee", "chelsea", "camera", "rocket", "immunohistochemistry",
    "hubble_deep_field", "moon", "coins", "grass", "gravel", "brick", "retina", "clock",
    "motorcycle", "cell", "page", "text",
)
_VARIANTS = ("original", "quality70", "resized8mp", "crop5", "bright10")
_FORMAT_VERSION = 1


@dataclass
class Corpus:
    """The images of a corpus and which of them are near-duplicates of each other."""

    root: Path
    groups: dict[str, list[str]]  # source name -> file names of its variants

    @property
    def images(self) -> list[Path]:
        return [self.root / name for names in self.groups.values() for name in names]

    def group_of(self) -> dict[str, str]:
        """File name -> group (source) name."""
        return {name: group for group, names in self.groups.items() for name in names}


def build_corpus(dest: Path, n_sources: int = 15, megapixels: float = 12) -> Corpus:
    """Build (or reuse) the corpus in ``dest``; ``n_sources`` x 5 JPEGs."""
    dest.mkdir(parents=True, exist_ok=True)
    manifest = dest / "groups.json"
    params = {"version": _FORMAT_VERSION, "sources": n_sources, "megapixels": megapixels}
    if manifest.exists():
        saved = json.loads(manifest.read_text())
        if saved.get("params") == params and all(
            (dest / n).exists() for names in saved["groups"].values() for n in names
        ):
            return Corpus(dest, saved["groups"])
    if not 1 <= n_sources <= len(SOURCES):
        raise ValueError(f"n_sources must be 1..{len(SOURCES)}")
    width = round(math.sqrt(megapixels * 1e6 * 4 / 3))
    height = width * 3 // 4
    groups: dict[str, list[str]] = {}
    rng = np.random.default_rng(20240601)
    for name in SOURCES[:n_sources]:
        big = _camera_photo(_source(name), (width, height), rng)
        groups[name] = []
        for variant in _VARIANTS:
            file_name = f"{name}_{variant}.jpg"
            image, quality = _variant(big, variant)
            image.save(dest / file_name, "JPEG", quality=quality)
            groups[name].append(file_name)
    manifest.write_text(json.dumps({"params": params, "groups": groups}, indent=1))
    return Corpus(dest, groups)


def _source(name: str) -> Image.Image:
    # Of the stereo pair only the left view: the right one is a near-duplicate of it.
    array = data.stereo_motorcycle()[0] if name == "motorcycle" else getattr(data, name)()
    return Image.fromarray(np.asarray(array)).convert("RGB")


def _camera_photo(image: Image.Image, size: tuple[int, int], rng: np.random.Generator
                  ) -> Image.Image:
    """Crop to 4:3 around the centre, upscale, add mild noise (real JPEG sizes and speeds)."""
    w, h = image.size
    if w * 3 > h * 4:
        cw, ch = h * 4 // 3, h
    else:
        cw, ch = w, w * 3 // 4
    left, top = (w - cw) // 2, (h - ch) // 2
    big = image.crop((left, top, left + cw, top + ch)).resize(size, Image.Resampling.LANCZOS)
    pixels = np.asarray(big, dtype=np.int16)
    noise = rng.normal(0, 3, pixels.shape[:2])[..., None]  # luminance-like grain
    return Image.fromarray(np.clip(pixels + noise, 0, 255).astype(np.uint8))


def _variant(image: Image.Image, variant: str) -> tuple[Image.Image, int]:
    w, h = image.size
    if variant == "original":
        return image, 92
    if variant == "quality70":
        return image, 70
    if variant == "resized8mp":
        scale = math.sqrt(8 / 12)
        return image.resize((round(w * scale), round(h * scale)), Image.Resampling.LANCZOS), 90
    if variant == "crop5":
        dx, dy = round(w * 0.025), round(h * 0.025)
        return image.crop((dx, dy, w - dx, h - dy)), 90
    if variant == "bright10":
        return ImageEnhance.Brightness(image).enhance(1.1), 90
    raise ValueError(variant)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dest", type=Path)
    parser.add_argument("--sources", type=int, default=15, help="number of source photos")
    parser.add_argument("--megapixels", type=float, default=12)
    args = parser.parse_args()
    corpus = build_corpus(args.dest, args.sources, args.megapixels)
    print(f"{len(corpus.images)} images in {len(corpus.groups)} groups at {corpus.root}")


if __name__ == "__main__":
    main()
