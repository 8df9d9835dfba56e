"""What each base costs to train here: wall seconds of computing its cached features once (the frozen part, one
pass over the images), of one head epoch on them and of one fine-tuning epoch (the top 2 blocks, on the features
cached below them); each stage runs two epochs and the second is reported (the first also traces the step). Also
the CPU seconds of the whole training (features and the four epochs), which other work on the machine inflates
less than wall time. On a flowers5 subset at one image size for all (or each base's default): the training of
`tlkit run` without its checkpoints, evaluation and saving, an empty feature cache per base. Weights do not
change the time: random init, training the recipe's stages as written (random_init=as_recipe).

    PYTHONPATH=. python benchmarks/bases.py [DATA] [--per-class 5] [--image-size 224] [--bases a,b,...]
        [--results FILE.jsonl]

Prints a markdown table; with --results, appends one JSON line per base (with the machine's load average) and
skips bases already there.
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "flowers5"


def subset(root: Path, dest: Path, per_class: int) -> Path:
    """The first ``per_class`` files (sorted) of each class, linked into ``dest``."""
    for class_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        (dest / class_dir.name).mkdir(parents=True)
        for f in sorted(class_dir.iterdir())[:per_class]:
            (dest / class_dir.name / f.name).symlink_to(f.resolve())
    return dest


def measure(base: str, data: Path, cache: Path, size: int | None) -> dict:
    """One head epoch and one fine-tuning epoch of ``base``, both on cached features; seconds of each part."""
    import keras

    from tlkit import FeatureExtraction, FineTune, Recipe
    from tlkit.recipe import get_backbone
    from tlkit.session import prepare

    record = get_backbone(base)
    recipe = Recipe(description=f"timing {base}", base=base, alpha=1.0 if record.alphas else None, weights="none",
                    random_init="as_recipe", image_size=size,
                    stages=(FeatureExtraction(epochs=2, patience=None),
                            FineTune(epochs=2, patience=None, unfreeze_blocks=2)))
    session = prepare(recipe, data, cache_dir=cache, group_duplicates=False)  # features computed by training
    cpu = time.process_time()
    training = session.trainer().run()
    cpu = time.process_time() - cpu
    keras.backend.clear_session()
    head, fine = ([r["seconds"] for r in training.history if r["stage"] == s.name] for s in training.stages)
    return {"base": base, "size": recipe.size, "images": session.data.counts(),
            "build_s": round(session.timings["model"], 1), "features_s": round(training.feature_seconds, 1),
            "training_cpu_s": round(cpu, 1),
            "head_epochs_s": head, "fine_tune_epochs_s": fine, "head_epoch_s": head[1], "fine_tune_epoch_s": fine[1],
            "first_trainable_layer": training.stages[1].first_trainable_layer,
            "trainable_params": training.stages[1].trainable_params, "load_average": os.getloadavg()}


def main():
    from tlkit.backbones import BACKBONES

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", nargs="?", default=str(DEFAULT_DATA))
    parser.add_argument("--per-class", type=int, default=5)
    parser.add_argument("--image-size", type=int, default=224, help="0: each base's default size")
    parser.add_argument("--bases", help="comma-separated; default: every built-in base")
    parser.add_argument("--results", type=Path, help="JSON lines file to append to (and resume from)")
    args = parser.parse_args()
    bases = args.bases.split(",") if args.bases else sorted(BACKBONES)
    done = {}
    if args.results and args.results.is_file():
        done = {r["base"]: r for r in map(json.loads, args.results.read_text().splitlines())}
    with tempfile.TemporaryDirectory() as tmp:
        data = subset(Path(args.data), Path(tmp) / "data", args.per_class)
        for base in bases:
            if base not in done:
                done[base] = measure(base, data, Path(tmp) / "cache", args.image_size or None)
                if args.results:
                    with open(args.results, "a") as f:
                        f.write(json.dumps(done[base]) + "\n")
    print("| base | size | features, once (s) | head epoch (s) | fine-tuning epoch (s) | training CPU (s) |")
    print("|---|---|---|---|---|---|")
    for base in bases:
        r = done[base]
        print(f"| {base} | {r['size']} | {r['features_s']:.1f} | {r['head_epoch_s']:.2f} | "
              f"{r['fine_tune_epoch_s']:.2f} | {r['training_cpu_s']:.0f} |")


if __name__ == "__main__":
    main()
