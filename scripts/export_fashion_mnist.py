#!/usr/bin/env python
"""Export Fashion-MNIST images as PNG class folders: a real `data=imagefolder` dataset, offline.

    python scripts/export_fashion_mnist.py OUT_DIR [--per-class 40] [--seed 0]

Takes the first images of each class from the official train part (Debian's dataset-fashion-mnist
or data.root), upsampled to 64x64 RGB PNGs in OUT_DIR/<class>/.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--per-class", type=int, default=40)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    from PIL import Image

    from tlrun.data.sources import DataRequest, default_cache_dir, load_source
    from tlrun.errors import TlrunError

    try:
        source = load_source(DataRequest("fashion_mnist", None, default_cache_dir()))
    except TlrunError as exc:
        print(f"export_fashion_mnist: error: {exc}", file=sys.stderr)
        return 2
    train = source.parts["train"]
    rng = np.random.default_rng(args.seed)
    for label, name in enumerate(source.classes):
        folder = args.out_dir / name.replace("/", "-")
        folder.mkdir(parents=True, exist_ok=True)
        members = rng.permutation(np.flatnonzero(train.labels == label))[: args.per_class]
        for index in members:
            pixels = train.pixels[index, 0].numpy()
            Image.fromarray(pixels).convert("RGB").resize((args.size, args.size), Image.BICUBIC).save(
                folder / f"{index:05d}.png")
    print(f"wrote {args.per_class * len(source.classes)} images to {args.out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
