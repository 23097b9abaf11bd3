"""Synthetic colour digits: a source domain for digit adaptation to cvdigits (OpenCV's handwritten digits).

Each image is one digit 0-9 typed in a random TrueType font (the DejaVu family when installed, else Pillow's
built-in font) at a random size, position and rotation, in a random foreground colour on a random background
colour of limited contrast, with Gaussian pixel noise. Colour, font, pose and noise carry no label, so a
network from scratch sits on a chance-level plateau for a while before it finds the glyph shapes; the target,
grey handwriting, shares only the shapes; ``--on-photos`` gives the MNIST-M-style target of the same kind of
digits (blended into photo patches), which shares the glyphs and not the colours. Written as an image folder ``<root>/<digit>/<digit>_<i>.png``
(``data=imagefolder data.root=<root>``).

    python benchmarks/da/colour_digits.py OUT [--per-class 300] [--size 32] [--seed 0]
"""

from __future__ import annotations

import argparse
import colorsys
import sys
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

FONT_DIRS = ("/usr/share/fonts/truetype/dejavu", "/usr/share/fonts/truetype", "/usr/share/fonts")


def find_fonts(dirs: Sequence[str] = FONT_DIRS) -> list[str]:
    """TrueType fonts that render the ten digits (math / symbol fonts excluded); empty if none is installed."""
    for folder in map(Path, dirs):
        fonts = sorted(str(p) for p in folder.rglob("*.ttf") if "Math" not in p.name) if folder.is_dir() else []
        if fonts:
            return fonts
    return []


def _font(path: Optional[str], size: int) -> ImageFont.ImageFont:
    return ImageFont.truetype(path, size) if path else ImageFont.load_default(size=size)


def _colour(rng: np.random.Generator, lightness: float) -> tuple[int, int, int]:
    r, g, b = colorsys.hls_to_rgb(rng.random(), lightness, rng.uniform(0.3, 1.0))
    return int(255 * r), int(255 * g), int(255 * b)


def render_digit(digit: int, rng: np.random.Generator, fonts: Sequence[Optional[str]], size: int = 32,
                 noise: float = 12.0, contrast: tuple[float, float] = (0.25, 0.6),
                 rotation: float = 25.0) -> Image.Image:
    """One ``size`` x ``size`` RGB image of ``digit``: foreground and background lightness (HLS) differ by
    ``contrast`` (either may be the lighter one), rotated by up to ``rotation`` degrees, Gaussian pixel noise of
    std ``noise`` (in 0-255 units)."""
    scale = 3  # drawn at 3x and downsampled: anti-aliased strokes at any size
    canvas = size * scale
    bg_light = rng.uniform(0.2, 0.8)
    gap = rng.uniform(*contrast) * (1 if bg_light < 0.5 else -1)
    background, foreground = _colour(rng, bg_light), _colour(rng, float(np.clip(bg_light + gap, 0.05, 0.95)))
    glyph = Image.new("L", (canvas, canvas), 0)
    font = _font(fonts[int(rng.integers(len(fonts)))], int(canvas * rng.uniform(0.5, 0.85)))
    draw = ImageDraw.Draw(glyph)
    left, top, right, bottom = draw.textbbox((0, 0), str(digit), font=font)
    x = (canvas - (right - left)) / 2 - left + rng.uniform(-0.12, 0.12) * canvas
    y = (canvas - (bottom - top)) / 2 - top + rng.uniform(-0.12, 0.12) * canvas
    draw.text((x, y), str(digit), fill=255, font=font)
    glyph = glyph.rotate(float(rng.uniform(-rotation, rotation)), resample=Image.BILINEAR)
    image = Image.composite(Image.new("RGB", glyph.size, foreground), Image.new("RGB", glyph.size, background), glyph)
    pixels = np.asarray(image.resize((size, size), Image.LANCZOS), dtype=np.float32)
    pixels += rng.normal(0.0, noise, pixels.shape)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


class PhotoBlend:
    """The MNIST-M construction (tlrun.data.domains, the DANN paper's Sec. 5.2.2) for rendered digits: the
    image's luma ``d`` blended with a random crop ``p`` of a real colour photo as ``|p - d|`` per channel."""

    def __init__(self, size: int, rng: np.random.Generator) -> None:
        from tlrun.data.domains import load_photos, photo_pool, photo_scale

        self.photos = load_photos(photo_pool(), photo_scale(size, size))
        self.size, self.rng = size, rng

    def __call__(self, image: Image.Image) -> Image.Image:
        from tlrun.data.domains import blend, sample_patches

        grey = np.asarray(image.convert("L"))[None]
        patch = sample_patches(self.rng, self.photos, 1, self.size, self.size)
        return Image.fromarray(blend(grey, patch)[0].transpose(1, 2, 0))


def make_colour_digits(root: Path | str, per_class: int = 300, size: int = 32, seed: int = 0,
                       fonts: Optional[Sequence[str]] = None, digits: Sequence[int] = tuple(range(10)),
                       noise: float = 12.0, contrast: tuple[float, float] = (0.25, 0.6),
                       rotation: float = 25.0, on_photos: bool = False) -> Path:
    """Write ``per_class`` images of each of ``digits`` to ``root/<digit>/`` (seeded: the same call, the same
    files). The defaults are the benchmark's source; see :func:`render_digit` for the difficulty knobs.
    ``on_photos`` blends each image into a photo patch (:class:`PhotoBlend`): the MNIST-M-style target of
    the same digits, whose shift from the source is texture and colour, not glyph shape."""
    root = Path(root)
    fonts = list(fonts) if fonts is not None else find_fonts()
    choices: list[Optional[str]] = fonts or [None]  # None: Pillow's built-in (scalable) font
    rng = np.random.default_rng(seed)
    # Its own stream, so the digits drawn are those of the same seed without photos.
    photo_blend = PhotoBlend(size, np.random.default_rng([seed, 1])) if on_photos else None
    for digit in digits:
        folder = root / str(digit)
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            image = render_digit(digit, rng, choices, size, noise, contrast, rotation)
            (photo_blend(image) if photo_blend else image).save(folder / f"{digit}_{i:04d}.png")
    return root


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="folder to write <digit>/*.png into")
    parser.add_argument("--per-class", type=int, default=300, help="images per digit (300: 3,000 in all)")
    parser.add_argument("--size", type=int, default=32, help="image side in pixels")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--on-photos", action="store_true", help="blend each digit into a photo patch (MNIST-M)")
    args = parser.parse_args(argv)
    make_colour_digits(args.out, args.per_class, args.size, args.seed, on_photos=args.on_photos)
    print(f"{10 * args.per_class} images of {args.size} px in {args.out} ({len(find_fonts()) or 'built-in'} fonts)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
