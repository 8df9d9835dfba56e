#!/usr/bin/env python3
"""Make data/shapes: a small, deterministic image folder (circles, squares, triangles) for the quickstart
and tests. Run again to regenerate; the output is committed so a fresh checkout needs no step.

Shapes stand upright (squares on an edge, triangles on their base, give or take 9 degrees), light on a dark
background, at varying size, place and colour: a network without pretrained weights can learn them from these
few images (the offline quickstart reaches validation accuracy >= 0.9 from scratch; a test checks it).

    python data/make_shapes.py [OUT_DIR] [--per-class N]
"""
import argparse
import math
import shutil
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

CLASSES = ("circle", "square", "triangle")


def draw(kind: str, rng: np.random.Generator) -> Image.Image:
    side = int(rng.integers(64, 97))
    background = tuple(int(v) for v in rng.integers(0, 90, 3))
    image = Image.new("RGB", (side, side), background)
    pen = ImageDraw.Draw(image)
    colour = tuple(int(v) for v in rng.integers(170, 256, 3))
    radius = side * rng.uniform(0.24, 0.34)
    cx, cy = side * rng.uniform(0.4, 0.6, 2)
    if kind == "circle":
        pen.ellipse([cx - radius, cy - radius, cx + radius, cy + radius], fill=colour)
    else:
        corners = 4 if kind == "square" else 3
        turn = (-math.pi / 2 if corners == 3 else math.pi / 4) + rng.uniform(-0.15, 0.15)
        pen.polygon([(cx + radius * 1.2 * math.cos(turn + 2 * math.pi * i / corners),
                      cy + radius * 1.2 * math.sin(turn + 2 * math.pi * i / corners)) for i in range(corners)],
                    fill=colour)
    noise = rng.normal(0, 12, (side, side, 3))
    pixels = np.clip(np.asarray(image, np.float32) + noise, 0, 255).astype(np.uint8)
    return Image.fromarray(pixels).filter(ImageFilter.GaussianBlur(0.6))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", nargs="?", default=str(Path(__file__).parent / "shapes"))
    parser.add_argument("--per-class", type=int, default=80)
    args = parser.parse_args()
    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    rng = np.random.default_rng(20261122)
    for kind in CLASSES:
        (out / kind).mkdir(parents=True)
        for i in range(args.per_class):
            image = draw(kind, rng)
            if i % 4 == 3:
                image.save(out / kind / f"{kind}_{i:03d}.png", optimize=True)
            else:
                image.save(out / kind / f"{kind}_{i:03d}.jpg", quality=85)
    print(f"wrote {len(CLASSES) * args.per_class} images to {out}")


if __name__ == "__main__":
    main()
