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
    from tlkit.train import image_dataset

    started = time.perf_counter()
    data = load_data(data_source, recipe.size, recipe.data, store)
    images = 0
    for split in data.splits.values():
        for batch, _ in image_dataset(split, recipe):
            images += len(batch)
    return images / (time.perf_counter() - started), images, data


def forward_rate(recipe, pixels, batch_size: int) -> float:
    """Images/s of the classifier's forward pass (inference mode) over ``pixels``, after one warm-up batch."""
    import tensorflow as tf

    from tlkit.model import build_classifier
    from tlkit.weights import ResolvedWeights

    model = build_classifier(recipe, 5, ResolvedWeights("none", None)).model  # speed does not depend on weights
    forward = tf.function(lambda x: model(x, training=False))
    batches = [tf.constant(pixels[i:i + batch_size], tf.float32) for i in range(0, len(pixels), batch_size)]
    forward(batches[0]).numpy()
    started = time.perf_counter()
    for batch in batches:
        forward(batch).numpy()
    return len(pixels) / (time.perf_counter() - started)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", nargs="?", default=str(DEFAULT_DATA), help="any --data source [flowers5]")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--forward-images", type=int, default=512, help="images timed through the model")
    args = parser.parse_args()

    from tlkit.cache import FeatureStore, memory_budget
    from tlkit.recipe import Recipe

    recipe = Recipe(description="pipeline benchmark", base="mobilenet_v2", alpha=0.35, image_size=args.size,
                    weights="none", batch_size=args.batch_size)
    with tempfile.TemporaryDirectory(prefix="tlkit-bench-") as cache:
        cold, images, data = pipeline_rate(args.data, recipe, FeatureStore(Path(cache), memory_budget()))
        warm, _, _ = pipeline_rate(args.data, recipe, FeatureStore(Path(cache), memory_budget()))
        mapped, _, _ = pipeline_rate(args.data, recipe, FeatureStore(Path(cache), budget_bytes=0))
        forward = forward_rate(recipe, data.splits["train"].images[:args.forward_images], args.batch_size)

    print(f"data {args.data}: {images} images, {len(data.class_names)} classes, {len(data.skipped)} skipped; "
          f"{args.size} px, batch {args.batch_size}, {os.cpu_count()} cores")
    rows = [("pipeline, cold (decode + resize + cache + batch)", cold),
            ("pipeline, warm (decoded cache in RAM + batch)", warm),
            ("pipeline, warm (decoded cache memory-mapped + batch)", mapped),
            (f"forward pass, MobileNetV2 0.35 at {args.size} px", forward)]
    for name, rate in rows:
        print(f"{name:<56} {rate:9.0f} images/s")
    for name, rate in rows[:3]:
        print(f"ratio {name.split(' (')[0].removeprefix('pipeline, ')} / forward {rate / forward:8.1f}x"
              f"{'   (target >= 3)' if rate is cold else ''}")


if __name__ == "__main__":
    main()
