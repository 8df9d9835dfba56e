"""`tlkit run`: resolve weights, load data, train the stages, evaluate, save and export a run folder."""
from __future__ import annotations

import logging
import platform
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from tlkit.cache import FeatureStore, memory_budget
from tlkit.data import ImageData, load_data
from tlkit.errors import TlkitError
from tlkit.recipe import Recipe
from tlkit.runfolder import RunFolder
from tlkit.weights import ResolvedWeights, resolve_weights

log = logging.getLogger(__name__)


@dataclass
class RunResult:
    """Where the run went and how well it did."""

    folder: Path
    metrics: dict
    export: Path | None


def _fingerprint(recipe: Recipe, weights: ResolvedWeights, data: ImageData) -> dict:
    """What cached features depend on apart from the cut: files, base, weights, image size."""
    if weights.path:
        stat = weights.path.stat()
        weight_id = [str(weights.path.resolve()), stat.st_size, stat.st_mtime_ns]
    else:
        weight_id = f"random init, seed {recipe.seed}"
    return {**data.fingerprint(), "base": recipe.base, "alpha": recipe.alpha, "size": recipe.size,
            "weights": weight_id}


def default_out(recipe_name: str) -> Path:
    return Path("runs") / f"{recipe_name}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"


def run(recipe: Recipe, out: str | Path, *, data: str | None = None, weights_dir: str | None = None,
        cache_dir: str | None = None, cache_memory: float = 0.5, export: bool = True) -> RunResult:
    """Train a recipe end to end and write its run folder; the library entry point behind `tlkit run`."""
    import keras
    import tensorflow as tf

    from tlkit.export import export_savedmodel
    from tlkit.model import build_classifier
    from tlkit.train import Trainer, image_dataset, loss_for

    started = time.perf_counter()
    path = data or recipe.data.path
    if not path:
        raise TlkitError("no data: pass --data FOLDER (one sub-folder per class), a CSV of path,label, "
                         "or tfds:NAME[:SPLIT]")
    recipe = recipe.model_copy(update={"data": recipe.data.model_copy(update={"path": str(path)})})
    folder = RunFolder(out)
    if folder.run_file.exists():
        raise TlkitError(f"{folder.path} already holds a run; pass another --out")
    folder.path.mkdir(parents=True, exist_ok=True)
    folder.recipe_file.write_text(recipe.to_json() + "\n")

    weights = resolve_weights(recipe.base, recipe.alpha, recipe.size, recipe.weights, weights_dir)
    log.info("base %s%s at %d px, weights: %s", recipe.base, f" (alpha {recipe.alpha})" if recipe.alpha else "",
             recipe.size, weights.describe())

    store = FeatureStore(cache_dir, memory_budget(cache_memory))
    images = load_data(path, recipe.size, recipe.data, store)
    folder.write_json(folder.classes_file, images.class_names)
    folder.write_csv(folder.split_file, [
        {"path": str(p), "label": images.class_names[lab], "split": name}
        for name, split in images.splits.items() for p, lab in zip(split.paths, split.labels)])
    folder.write_csv(folder.skipped_file, [{"path": str(p), "reason": r} for p, r in images.skipped],
                     ["path", "reason"])

    classifier = build_classifier(recipe, len(images.class_names), weights)
    training = Trainer(classifier, recipe, images, store, _fingerprint(recipe, weights, images)).run()
    folder.write_csv(folder.history_file, training.history)

    model = classifier.model
    model.compile(loss=loss_for(recipe), metrics=["accuracy"])
    metrics = {}
    for name in ("val", "test"):
        if name in images.splits:
            loss, accuracy = model.evaluate(image_dataset(images.splits[name], recipe), verbose=0)
            metrics[name] = {"accuracy": float(accuracy), "loss": float(loss), "images": len(images.splits[name])}
    metrics["accuracy"] = metrics.get("test", metrics["val"])["accuracy"]
    folder.write_json(folder.metrics_file, metrics)
    model.save(folder.model_file)
    log.info("validation accuracy %.4f (loss %.4f); model saved to %s", metrics["val"]["accuracy"],
             metrics["val"]["loss"], folder.model_file)

    exported = export_savedmodel(model, images.class_names, recipe.size, folder.export_dir, "model") if export else None
    folder.write_json(folder.run_file, {
        "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "seconds": round(time.perf_counter() - started, 2),
        "weights": {"requested": weights.requested, "loaded": weights.describe(), "warning": weights.warning},
        "warnings": [w for w in [weights.warning] if w] + images.warnings,
        "data": images.summary(),
        "feature_seconds": round(training.feature_seconds, 2),
        "stages": [asdict(s) for s in training.stages],
        "best": training.best,
        "cache": store.events,
        "export": str(exported) if exported else None,
        "versions": {"python": platform.python_version(), "tensorflow": tf.__version__,
                     "keras": keras.__version__, "numpy": np.__version__, "tlkit": _version()},
        "machine": {"platform": platform.platform(), "processor": platform.machine(),
                    "devices": [d.name for d in tf.config.list_logical_devices()]},
    })
    return RunResult(folder.path, metrics, exported)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version("tlkit")
    except PackageNotFoundError:
        return "unknown"
