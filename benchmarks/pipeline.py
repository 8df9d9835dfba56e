"""Is the input pipeline the bottleneck? Images/s of the pipeline alone (list + decode + resize + batch from
disk: cold, then warm from the decoded-image cache in RAM and memory-mapped) against images/s of the
MobileNetV2 0.35 forward pass at the same size, measured side by side in one run on this machine.

    PYTHONPATH=. python benchmarks/pipeline.py [DATA] [--size 224] [--batch-size 64] [--forward-images 512]

"Cold" means not yet in tlkit's decoded-image cache; the files themselves may sit in the OS page cache.
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "flowers5"


def pipeline_rate(data_source, recipe, store) -> tuple[float, int, object]:
    """Images/s of load_data (decoded-image cache in ``store``) plus one pass over every split's batches."""
    from tlkit.data import load_data
    from tlkit.training.datasets import image_dataset

    started = time.perf_counter()
    data = load_data(data_source, recipe.size, recipe.data, store)
    images = 0
    for split in data.splits.values():
        for batch, _ in image_dataset(split, recipe):
            images += len(batch)
    return images / (time.perf_counter() - started), images, data


def forward_pass(recipe, batch_size: int, images: int):
    """A function timing the classifier's forward pass (inference mode) in images/s; the weights and the
    pixels do not change its speed, so random ones are used."""
    import numpy as np
    import tensorflow as tf

    from tlkit.model import build_classifier
    from tlkit.weights import ResolvedWeights

    model = build_classifier(recipe, 5, ResolvedWeights("none", None)).model
    forward = tf.function(lambda x: model(x, training=False))
    pixels = np.random.default_rng(0).integers(0, 256, (batch_size, recipe.size, recipe.size, 3)).astype(np.float32)
    batch = tf.constant(pixels)
    forward(batch).numpy()

    def rate() -> float:
        started = time.perf_counter()
        for _ in range(max(1, images // batch_size)):
            forward(batch).numpy()
        return max(1, images // batch_size) * batch_size / (time.perf_counter() - started)
    return rate


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", nargs="?", default=str(DEFAULT_DATA), help="any --data source [flowers5]")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--forward-images", type=int, default=512, help="images timed through the model")
    parser.add_argument("--rounds", type=int, default=2, help="rounds measured; the best of each figure is shown")
    args = parser.parse_args()

    from tlkit.storage import ArrayStore, memory_budget
    from tlkit.recipe import Recipe

    recipe = Recipe(description="pipeline benchmark", base="mobilenet_v2", alpha=0.35, image_size=args.size,
                    weights="none", batch_size=args.batch_size)
    forward = forward_pass(recipe, args.batch_size, args.forward_images)
    names = {"cold": "pipeline, cold (decode + resize + cache + batch)",
             "warm, RAM": "pipeline, warm (decoded cache in RAM + batch)",
             "warm, memory-mapped": "pipeline, warm (decoded cache memory-mapped + batch)",
             "forward": f"forward pass, MobileNetV2 0.35 at {args.size} px"}
    budgets = {"cold": memory_budget(), "warm, RAM": memory_budget(), "warm, memory-mapped": 0}
    rates = {key: [] for key in names}
    for _ in range(args.rounds):  # the forward pass before and after the pipeline: both see the same load
        before = forward()
        with tempfile.TemporaryDirectory(prefix="tlkit-bench-") as cache:
            for key, budget in budgets.items():
                rate, images, data = pipeline_rate(args.data, recipe, ArrayStore(Path(cache), budget))
                rates[key].append(rate)
        rates["forward"].append((before + forward()) / 2)

    print(f"data {args.data}: {images} images, {len(data.class_names)} classes, {len(data.skipped)} skipped; "
          f"{args.size} px, batch {args.batch_size}, {os.cpu_count()} cores; best of {args.rounds} rounds")
    best = {key: max(values) for key, values in rates.items()}
    for key, name in names.items():
        print(f"{name:<56} {best[key]:7.0f} images/s")
    for key in budgets:
        print(f"ratio pipeline {key} / forward pass: {best[key] / best['forward']:5.1f}x  (target >= 3)")


if __name__ == "__main__":
    main()
