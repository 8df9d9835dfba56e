#!/usr/bin/env python3
"""Test accuracy and wall seconds of tlkit's defaults, the Keras-guide recipe and a linear probe, per dataset
and training-set size, over several splits.

    python benchmarks/accuracy.py [--datasets flowers5,catsdogs] [--sizes 20,50,125,500] [--reps 3]
                                  [--tools tlkit,baseline,probe] [--results FILE] [--set KEY=VALUE ...]

For each dataset, size (images per class) and repetition it draws a stratified subset of the dataset's
training pool and links it into a folder ``train/CLASS/PREFIX_NAME`` beside ``test/CLASS/NAME``. The
prefix is a hash of the repetition, so the repetition also draws another train/validation split for
both tools without changing either: tlkit's split is a hash of the file name, the baseline shuffles the
sorted names with its fixed seed. Then, on the same subset:

- tlkit: ``tlkit run mobilenet_v2 --set alpha=0.35 --image-size SIZE --seed 1337+REP`` on the folder
  (its defaults otherwise; ``--set`` adds overrides), which also scores ``test/``;
- baseline: ``../shared/bench/keras_guide_baseline.py TRAIN --base mobilenet_v2 --alpha 0.35 --size SIZE
  --head-epochs 10 --finetune-epochs 10 --test TEST``;
- probe: scikit-learn's LogisticRegression on the frozen base's average-pooled features of every image of
  the subset, scored on the same test images.

Wall seconds are the whole process (start-up to exported SavedModel for tlkit, to the test score for the
baseline); the probe's are in this process (decoding, features, fit) and shown for reference. Test sets:
catsdogs' own ``test/`` (500 photos); for flowers5 the last 200 photos of each class by name (1,000), which
no training subset uses. ``--results FILE`` keeps every result as a JSON line and reuses those already
there, so an interrupted run continues and a table can be printed again without training.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("TLKIT_SHARED", REPO.parent / "shared"))
WEIGHTS = "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.35_224_no_top.h5"
TOOLS = ("tlkit", "baseline", "probe")


@dataclass(frozen=True)
class Dataset:
    """A training pool and a fixed test set, each as sorted files per class."""

    name: str
    size: int  # image side in pixels
    pool: dict[str, list[Path]]
    test: dict[str, list[Path]]


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))


def dataset(name: str) -> Dataset:
    """flowers5 (128 px): test = the last 200 files of each class by name, pool = the rest; catsdogs (160 px):
    pool = train/, test = test/."""
    root = SHARED / "data" / name
    if name == "flowers5":
        classes = {c.name: _files(c) for c in sorted(root.iterdir()) if c.is_dir()}
        return Dataset(name, 128, {c: f[:-200] for c, f in classes.items()}, {c: f[-200:] for c, f in classes.items()})
    if name == "catsdogs":
        def split(s):
            return {c.name: _files(c) for c in sorted((root / s).iterdir()) if c.is_dir()}
        return Dataset(name, 160, split("train"), split("test"))
    raise SystemExit(f"unknown dataset {name!r}; choices: flowers5, catsdogs")


def prefix(rep: int) -> str:
    """The file-name prefix of a repetition: another hash split for tlkit, another order for the baseline."""
    return hashlib.sha1(f"rep{rep}".encode()).hexdigest()[:8]


def subset(data: Dataset, per_class: int, rep: int) -> dict[str, list[Path]]:
    """``per_class`` files of each class of the pool, drawn at random per repetition (all when the pool has no more)."""
    chosen = {}
    for k, (name, files) in enumerate(data.pool.items()):
        rng = np.random.default_rng([rep, per_class, k])
        take = min(per_class, len(files))
        chosen[name] = [files[i] for i in sorted(rng.choice(len(files), take, replace=False))]
    return chosen


def link_folder(data: Dataset, chosen: dict[str, list[Path]], rep: int, dest: Path) -> Path:
    """``dest/train/CLASS/PREFIX_NAME`` -> the chosen files, ``dest/test/CLASS/NAME`` -> the test files."""
    for split, files_by_class, tag in (("train", chosen, prefix(rep) + "_"), ("test", data.test, "")):
        for name, files in files_by_class.items():
            folder = dest / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for f in files:
                (folder / f"{tag}{f.name}").symlink_to(f.resolve())
    return dest


def _last_json(text: str) -> dict:
    return json.loads([line for line in text.splitlines() if line.startswith("{")][-1])


def run_tlkit(folder: Path, size: int, rep: int, sets: list[str], work: Path) -> dict:
    out = work / "tlkit-run"
    command = [sys.executable, "-m", "tlkit.cli", "run", "mobilenet_v2", "--data", str(folder),
               "--out", str(out), "--set", "alpha=0.35", "--image-size", str(size), "--seed", str(1337 + rep),
               "--weights-dir", str(SHARED / "weights"), "--cache-dir", str(work / "tlkit-cache"),
               *[x for s in sets for x in ("--set", s)]]
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "TLKIT_PROGRESS": "0"})
    wall = time.perf_counter() - started
    if done.returncode:
        raise SystemExit(f"tlkit failed ({' '.join(command)}):\n{done.stderr[-3000:]}")
    metrics = json.loads((out / "metrics.json").read_text())
    info = json.loads((out / "run.json").read_text())
    return {"accuracy": metrics["test"]["accuracy"], "val_accuracy": metrics["val"]["accuracy"], "seconds": wall,
            "timings": info["timings"], "val_images": metrics["val"]["images"],
            "choices": info.get("choices")}


def run_baseline(folder: Path, size: int) -> dict:
    command = [sys.executable, str(SHARED / "bench" / "keras_guide_baseline.py"), str(folder / "train"),
               "--base", "mobilenet_v2", "--alpha", "0.35", "--size", str(size), "--head-epochs", "10",
               "--finetune-epochs", "10", "--weights-dir", str(SHARED / "weights"), "--test", str(folder / "test")]
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if done.returncode:
        raise SystemExit(f"baseline failed ({' '.join(command)}):\n{done.stderr[-3000:]}")
    result = _last_json(done.stdout)
    return {"accuracy": result["test_accuracy"], "val_accuracy": result["val_accuracy"], "seconds": wall}


class Probe:
    """Logistic regression on the frozen MobileNetV2 0.35's average-pooled features (tlkit's decoding and
    preprocessing); test features are computed once per dataset."""

    def __init__(self):
        self._models, self._test = {}, {}

    def features(self, files: dict[str, list[Path]], size: int) -> tuple[np.ndarray, np.ndarray]:
        import keras
        from tlkit.images import decode_all
        if size not in self._models:
            base = keras.applications.MobileNetV2(include_top=False, alpha=0.35, weights=None, pooling="avg",
                                                  input_shape=(size, size, 3))
            base.load_weights(SHARED / "weights" / WEIGHTS)
            self._models[size] = base
        paths = [p for names in files.values() for p in names]
        labels = np.concatenate([np.full(len(names), k) for k, names in enumerate(files.values())])
        pixels, failures, ok = decode_all(paths, size, "probe")
        x = pixels.astype(np.float32) / 127.5 - 1.0
        return self._models[size].predict(x, batch_size=64, verbose=0), labels[ok]

    def run(self, data: Dataset, chosen: dict[str, list[Path]]) -> dict:
        from sklearn.linear_model import LogisticRegression
        if data.name not in self._test:
            self._test[data.name] = self.features(data.test, data.size)
        started = time.perf_counter()
        x, y = self.features(chosen, data.size)
        model = LogisticRegression(max_iter=5000).fit(x, y)
        seconds = time.perf_counter() - started
        test_x, test_y = self._test[data.name]
        return {"accuracy": float(model.score(test_x, test_y)), "seconds": seconds}


def load_results(path: Path | None) -> dict[tuple, dict]:
    if not path or not path.is_file():
        return {}
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return {(r["dataset"], r["per_class"], r["rep"], r["tool"], r["sets"]): r for r in rows}


def summary(values: list[float], digits: int) -> str:
    if not values:
        return "-"
    return f"{np.mean(values):.{digits}f} ({np.min(values):.{digits}f}-{np.max(values):.{digits}f})"


def print_tables(results: dict, datasets, sizes, reps, sets_key: str, tools) -> None:
    ratios = {"acc_baseline": [], "acc_probe": [], "time": []}
    for data in datasets:
        print(f"\n{data.name}: MobileNetV2 0.35 at {data.size} px, test on {sum(map(len, data.test.values()))} "
              f"photos; mean (min-max) over {reps} splits; tlkit {sets_key or 'defaults'}")
        header = f"{'per class':>9} | " + " | ".join(f"{t + ' acc':<21}" for t in tools) + " | " + \
            " | ".join(f"{t + ' s':<19}" for t in tools if t != "probe")
        print(header)
        print("-" * len(header))
        for size in sizes:
            got = {t: [results[k] for rep in range(reps)
                       if (k := (data.name, size, rep, t, sets_key if t == "tlkit" else "")) in results] for t in tools}
            accs = {t: [r["accuracy"] for r in got[t]] for t in tools}
            secs = {t: [r["seconds"] for r in got[t]] for t in tools}
            print(f"{size:>9} | " + " | ".join(f"{summary(accs[t], 3):<21}" for t in tools) + " | " +
                  " | ".join(f"{summary(secs[t], 0):<19}" for t in tools if t != "probe"))
            if accs.get("tlkit") and accs.get("baseline"):
                ratios["acc_baseline"].append(np.mean(accs["tlkit"]) / np.mean(accs["baseline"]))
                ratios["time"].append(np.mean(secs["baseline"]) / np.mean(secs["tlkit"]))
            if accs.get("tlkit") and accs.get("probe"):
                ratios["acc_probe"].append(np.mean(accs["tlkit"]) / np.mean(accs["probe"]))
    print()
    for key, label in (("acc_baseline", "test accuracy, tlkit / baseline"),
                       ("acc_probe", "test accuracy, tlkit / probe"), ("time", "wall seconds, baseline / tlkit")):
        if ratios[key]:
            print(f"{label}: mean {np.mean(ratios[key]):.3f}, worst row {np.min(ratios[key]):.3f}, "
                  f"best row {np.max(ratios[key]):.3f} over {len(ratios[key])} rows")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", default="flowers5,catsdogs")
    parser.add_argument("--sizes", default="20,50,125,500", help="images per class, comma-separated")
    parser.add_argument("--reps", type=int, default=3, help="splits (and seeds) per size")
    parser.add_argument("--tools", default=",".join(TOOLS))
    parser.add_argument("--results", type=Path, help="JSON-lines file: results are appended and reused")
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                        help="an override for tlkit's recipe (repeatable)")
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    datasets = [dataset(name) for name in args.datasets.split(",")]
    sizes = [int(s) for s in args.sizes.split(",")]
    tools = [t for t in TOOLS if t in args.tools.split(",")]
    sets_key = " ".join(args.sets)
    results = load_results(args.results)
    probe = Probe() if "probe" in tools else None
    for data in datasets:
        for size in sizes:
            for rep in range(args.reps):
                chosen = subset(data, size, rep)
                with tempfile.TemporaryDirectory(prefix="tlkit-accuracy-") as tmp:
                    folder = link_folder(data, chosen, rep, Path(tmp) / "data")
                    for tool in tools:
                        key = (data.name, size, rep, tool, sets_key if tool == "tlkit" else "")
                        if key in results:
                            continue
                        if tool == "tlkit":
                            result = run_tlkit(folder, data.size, rep, args.sets, Path(tmp))
                        elif tool == "baseline":
                            result = run_baseline(folder, data.size)
                        else:
                            result = probe.run(data, chosen)
                        row = {"dataset": data.name, "per_class": size, "rep": rep, "tool": tool,
                               "sets": key[-1], **result}
                        results[key] = row
                        print(json.dumps(row), flush=True)
                        if args.results:
                            with open(args.results, "a") as f:
                                f.write(json.dumps(row) + "\n")
    print_tables(results, datasets, sizes, args.reps, sets_key, tools)


if __name__ == "__main__":
    main()
