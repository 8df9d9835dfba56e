#!/usr/bin/env python3
"""tlkit against the Keras-guide recipe on the same data, base, size, epochs, unfreeze depth and flip.

    python benchmarks/vs_keras_guide.py [DATA] [--head-epochs 10] [--finetune-epochs 10] [--rounds 1]

Runs, alternately in one session: ../shared/bench/keras_guide_baseline.py, `tlkit run` with the
equivalent recipe (MobileNetV2 0.35, 128 px, 20% validation, horizontal flip, the baseline's last 30
base layers unfrozen, no early stopping; tlkit keeps BatchNorm frozen, its default), and one plain forward
pass of the base over all images (the physical floor of the head stage). Prints per-stage wall
seconds, baseline/tlkit ratios, validation accuracies and tlkit's peak memory.

"Whole run" is what the baseline's total_s covers: loading the data, building the model, both stages
(tlkit: run.json timings weights + data + model + train). tlkit's evaluation, report and export come on top and
are printed separately.
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

FORWARD_PASS = """
import json, os, sys, time
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"
import keras, tensorflow as tf
data, size, weights = sys.argv[1], int(sys.argv[2]), sys.argv[3]
base = keras.applications.MobileNetV2(include_top=False, alpha=0.35, input_shape=(size, size, 3), weights=None)
base.load_weights(weights)
inputs = keras.Input((size, size, 3))
model = keras.Model(inputs, base(keras.applications.mobilenet_v2.preprocess_input(inputs), training=False))
ds = keras.utils.image_dataset_from_directory(data, image_size=(size, size), batch_size=32, shuffle=False,
                                              verbose=False)
model.predict(ds.take(2), verbose=0)  # build and trace outside the timing
start = time.perf_counter()
model.predict(ds.prefetch(tf.data.AUTOTUNE), verbose=0)
print(json.dumps({"forward_s": round(time.perf_counter() - start, 2)}))
"""


def last_json(output: str) -> dict:
    return json.loads([line for line in output.splitlines() if line.startswith("{")][-1])


def run_baseline(args):
    out = subprocess.run([sys.executable, str(SHARED / "bench" / "keras_guide_baseline.py"), args.data,
                          "--base", "mobilenet_v2", "--alpha", "0.35", "--size", str(args.size),
                          "--head-epochs", str(args.head_epochs), "--finetune-epochs", str(args.finetune_epochs),
                          "--weights-dir", str(args.weights_dir)], capture_output=True, text=True, check=True)
    return last_json(out.stdout)


def run_tlkit(args, work: Path):
    run_dir = work / f"tlkit-{time.time_ns()}"
    sets = ["alpha=0.35", "augment.flip=horizontal", "head.dropout=0.2",
            "data.val_fraction=0.2", "batch_size=32", "stage1.learning_rate=1e-3", "stage2.learning_rate=1e-5",
            "stage2.unfreeze_from=block_13_project_BN", "stage1.patience=null", "stage2.patience=null"]
    command = [sys.executable, "-m", "tlkit.cli", "run", "mobilenet_v2", "--data", args.data, "--out", str(run_dir),
               "--image-size", str(args.size), "--epochs", f"{args.head_epochs},{args.finetune_epochs}",
               "--weights-dir", str(args.weights_dir),
               "--cache-dir", str(run_dir / "cache"),  # cold every round: no features or pixels from an earlier one
               *[x for s in sets for x in ("--set", s)]]
    started = time.perf_counter()
    subprocess.run(command, capture_output=True, text=True, check=True)
    wall = time.perf_counter() - started
    info = json.loads((run_dir / "run.json").read_text())
    metrics = json.loads((run_dir / "metrics.json").read_text())
    history = [line.split(",") for line in (run_dir / "history.csv").read_text().splitlines()]
    head_fit, tune_fit = (s["seconds"] for s in info["stages"])
    timings = info["timings"]
    return {"head_stage_s": info["feature_seconds"] + head_fit, "finetune_stage_s": tune_fit,
            "train_s": timings["weights"] + timings["data"] + timings["model"] + timings["train"],
            "after_training_s": sum(timings[k] for k in ("predict", "calibrate", "evaluate", "save", "report",
                                                           "export")),
            "process_s": wall, "val_accuracy": metrics["val"]["accuracy"],
            "head_val_accuracy": float(history[args.head_epochs][history[0].index("val_accuracy")]),
            "peak_memory_mb": info["peak_memory_mb"], "feature_s": info["feature_seconds"]}


def run_forward(args):
    weights = args.weights_dir / "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.35_224_no_top.h5"
    out = subprocess.run([sys.executable, "-c", FORWARD_PASS, args.data, str(args.size), str(weights)],
                         capture_output=True, text=True, check=True)
    return last_json(out.stdout)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", nargs="?", default=str(SHARED / "data" / "flowers5"))
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--head-epochs", type=int, default=10)
    parser.add_argument("--finetune-epochs", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=1, help="alternations of baseline and tlkit")
    parser.add_argument("--weights-dir", type=Path, default=SHARED / "weights")
    args = parser.parse_args()
    results = {"baseline": [], "tlkit": [], "forward": []}
    with tempfile.TemporaryDirectory(prefix="tlkit-bench-") as tmp:
        for round_ in range(args.rounds):
            for name, job in (("baseline", lambda: run_baseline(args)), ("tlkit", lambda: run_tlkit(args, Path(tmp))),
                              ("forward", lambda: run_forward(args))):
                results[name].append(job())
                print(f"round {round_ + 1} {name}: {json.dumps(results[name][-1])}", flush=True)

    def mean(name, key):
        return sum(r[key] for r in results[name]) / len(results[name])

    print(f"\n{args.data}: MobileNetV2 0.35, {args.size} px, {args.head_epochs} head + {args.finetune_epochs} "
          f"fine-tune epochs, {args.rounds} round(s), mean wall seconds")
    print(f"{'':<22}{'baseline':>10}{'tlkit':>10}{'ratio':>8}")
    for label, b, t in (("head stage", "head_stage_s", "head_stage_s"),
                        ("fine-tune stage", "finetune_stage_s", "finetune_stage_s"),
                        ("whole run", "total_s", "train_s")):
        print(f"{label:<22}{mean('baseline', b):>10.1f}{mean('tlkit', t):>10.1f}"
              f"{mean('baseline', b) / mean('tlkit', t):>7.1f}x")
    print(f"{'val accuracy (head)':<22}{mean('baseline', 'head_val_accuracy'):>10.4f}"
          f"{mean('tlkit', 'head_val_accuracy'):>10.4f}")
    print(f"{'val accuracy (final)':<22}{mean('baseline', 'val_accuracy'):>10.4f}"
          f"{mean('tlkit', 'val_accuracy'):>10.4f}")
    forward = mean("forward", "forward_s")
    print(f"one plain forward pass over all images: {forward:.1f}s; tlkit head stage / forward pass = "
          f"{mean('tlkit', 'head_stage_s') / forward:.2f} (target <= 2)")
    print(f"tlkit peak memory: {max(r['peak_memory_mb'] for r in results['tlkit']):.0f} MB")
    print(f"tlkit after training (calibration, evaluation, model file, report, SavedModel export; the baseline does "
          "none): "
          f"{mean('tlkit', 'after_training_s'):.1f}s; "
          f"whole tlkit process incl. imports: {mean('tlkit', 'process_s'):.1f}s")


if __name__ == "__main__":
    main()
