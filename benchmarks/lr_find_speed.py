#!/usr/bin/env python3
"""`tlkit lr-find` on cached features against the same sweep with a full forward pass every step.

    python benchmarks/lr_find_speed.py [DATA] [--stage 1] [--image-size 128] [--steps 100]

Runs the same sweep of the same recipe (quickstart: MobileNetV2 0.35, flip, real ImageNet weights) three
times in one session, each in its own process: cached with an empty feature cache (feature extraction is
paid and counted), cached again with the features it left (as after a `tlkit run` of the recipe, which
reuses them too), and --no-cache. Prints the seconds of each part, the ratios and the suggestions.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("TLKIT_SHARED", REPO.parent / "shared"))
PARTS = ("feature_seconds", "pretrain_seconds", "sweep_seconds")


def sweep(args, work: Path, cache: str, *extra) -> dict:
    out = work / f"lr-{time.time_ns()}"
    command = [sys.executable, "-m", "tlkit.cli", "lr-find", "quickstart", "--data", args.data, "--out", str(out),
               "--weights", "imagenet", "--weights-dir", str(SHARED / "weights"), "--image-size",
               str(args.image_size), "--stage", str(args.stage), "--steps", str(args.steps),
               "--cache-dir", str(work / cache), "--set", "augment.flip=horizontal", *extra]
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    if done.returncode:
        sys.exit(f"lr-find failed:\n{done.stderr[-3000:]}")
    return {**json.loads((out / "lr_find.json").read_text()), "wall": time.perf_counter() - started}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", nargs="?", default=str(SHARED / "data" / "flowers5"))
    parser.add_argument("--stage", type=int, default=1)
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=100)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as work:
        runs = {"cached, cold": sweep(args, Path(work), "cache"), "cached, warm": sweep(args, Path(work), "cache"),
                "full forward": sweep(args, Path(work), "unused", "--no-cache")}
    print(f"lr-find stage {args.stage} on {args.data} at {args.image_size} px, {args.steps} steps")
    print(f"{'':14}{'features s':>11}{'pretrain s':>11}{'sweep s':>9}{'wall s':>8}  suggestion")
    for name, r in runs.items():
        print(f"{name:14}{r['feature_seconds']:11.1f}{r['pretrain_seconds']:11.1f}{r['sweep_seconds']:9.1f}"
              f"{r['wall']:8.1f}  {r['suggestion']:.2e} ({r['mode']}, {r['stopped']})")
    full = runs["full forward"]
    for name in ("cached, cold", "cached, warm"):
        r = runs[name]
        print(f"full forward / {name}: sweep {full['sweep_seconds'] / r['sweep_seconds']:.1f}x, "
              f"features + pretrain + sweep {sum(full[k] for k in PARTS) / sum(r[k] for k in PARTS):.1f}x, "
              f"wall {full['wall'] / r['wall']:.1f}x")


if __name__ == "__main__":
    main()
