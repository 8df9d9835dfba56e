"""`tlkit run`: resolve weights, load data, train the stages, evaluate, save and export a run folder."""
from __future__ import annotations

import json
import logging
import os
import platform
import resource
import shutil
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from tlkit.data import ImageData
from tlkit.errors import RunInterrupted, TlkitError
from tlkit.evaluation.confidence import fit_confidence, refit_class_means, split_outputs
from tlkit.evaluation.evaluate import default_split, evaluate_split
from tlkit.evaluation.report import write_report
from tlkit.overrides import differences
from tlkit.recipe import Recipe, is_from_scratch
from tlkit.runfolder import RunFolder
from tlkit.serving.export import export_run
from tlkit.session import Session, for_weights, prepare, with_data
from tlkit.storage import write_json_atomic
from tlkit.training.checkpoint import CHECKPOINT_SECONDS, Checkpoints
from tlkit.training.distribute import place
from tlkit.training.state import Training
from tlkit.training.trainer import Trainer
from tlkit.ui import ensure_logging
from tlkit.weights import resolve_weights

log = logging.getLogger(__name__)

REFIT_CAVEAT = ("the validated model, before the refit on train + val: model.keras and the exports hold the refit "
                "model, which trained on these images")


@dataclass
class RunResult:
    """Where the run went and how well it did."""

    folder: Path
    metrics: dict
    export: Path | None
    random_init: str | None = None  # without pretrained weights: what trained (run.json "random_init"); else None


def default_out(recipe_name: str) -> Path:
    return Path("runs") / f"{recipe_name}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"


def run(recipe: Recipe, out: str | Path, *, data: str | None = None, weights_dir: str | None = None,
        cache_dir: str | None = None, cache_memory: float = 0.5, export: bool = True,
        export_formats: tuple[str, ...] = ("savedmodel",), strategy: str = "auto",
        precision: str = "auto", force: bool = False, checkpoint_every: float = CHECKPOINT_SECONDS) -> RunResult:
    """Train a recipe end to end and write its run folder; the library entry point behind `tlkit run`.

    The folder has one writer: the run holds its lock throughout (a second run into it stops at once). If
    ``out`` holds an unfinished run with a checkpoint, it continues from there, provided this recipe is the one
    it saved (any difference is an error that lists them); ``force`` replaces whatever run ``out`` holds
    instead. With ``export``, the run ends with :func:`tlkit.serving.export.export_run` in ``export_formats``.
    A checkpoint ends every stage and any epoch ``checkpoint_every`` seconds or more after the last (0: every
    epoch).
    """
    started = time.perf_counter()
    ensure_logging()
    placement = place(strategy, precision)
    out = Path(out) if placement.is_chief else Path(out) / f"worker-{placement.worker_index}"
    folder = RunFolder(out)
    recipe = with_data(recipe, data)
    weights = resolve_weights(recipe.base, recipe.alpha, recipe.size, recipe.weights, weights_dir)
    recipe = for_weights(recipe, weights)
    with folder.lock():
        if force:
            log.info("--force: replacing the run in %s", folder.path)
            folder.clear()
        if folder.run_file.exists():
            raise TlkitError(f"{folder.path} already holds a finished run; pass another --out (or --force to "
                             "replace it)")
        checkpoints = Checkpoints(folder.path, checkpoint_every)
        resume = checkpoints.load()
        if resume:
            _check_same_recipe(folder, recipe)
            _record_interruption(folder, resume["state"])
            log.info("resuming the unfinished run in %s (its recipe.json is this recipe)", folder.path)
        else:
            check_writable(folder.path)
            folder.recipe_file.write_text(recipe.to_json() + "\n")
        session = prepare(recipe, weights=weights, cache_dir=cache_dir, cache_memory=cache_memory,
                          placement=placement)
        return _finish(session, folder, checkpoints, resume, started, export and placement.is_chief, export_formats)


def _check_same_recipe(folder: RunFolder, recipe: Recipe) -> None:
    """A resumed run trains what it started with: this command's recipe must be the one saved."""
    saved = folder.recipe()
    if saved.weights != "none" and recipe.weights == "none":
        raise TlkitError(f"{folder.path} started with pretrained weights (weights={saved.weights}), and this time "
                         "they were not found; resume with the --weights-dir (or TLKIT_WEIGHTS_DIR) it started with")
    changed = differences(saved, recipe)
    if changed:
        raise TlkitError(f"{folder.path} holds an unfinished run, and this command differs from its recipe.json: "
                         f"{'; '.join(changed)}. Resume it as it was with `tlkit run --resume {folder.path}` (no "
                         "other flags), start it over with these settings with --force, or pass another --out")


def _finish(session: Session, folder: RunFolder, checkpoints: Checkpoints, resume: dict | None, started: float,
            export: bool, export_formats: tuple[str, ...]) -> RunResult:
    """Train, evaluate, save, report and export a prepared run; run.json last (it marks the run finished)."""
    recipe, timings = session.recipe, dict(session.timings)
    _write_data_record(folder, session.data)
    check_disk_space(folder.path, session.classifier.model.count_params())
    trainer = session.trainer(checkpoints=checkpoints, log_dir=folder.stages_dir)
    with _timed(timings, "train"):
        training = _train(trainer, folder, checkpoints, resume)
    folder.write_csv(folder.history_file, training.history)

    model, judged = session.classifier.model, default_split(session.data.splits)
    with _timed(timings, "predict"):  # every split once, from the cached features when the stages trained on them
        outputs = trainer.outputs() or split_outputs(model, session.data, recipe.batch_size)
    with _timed(timings, "calibrate"):
        fit_confidence(model, session.data, recipe.trust, folder, outputs, recipe.batch_size)
    with _timed(timings, "evaluate"):
        caveat = REFIT_CAVEAT if trainer.refits else None
        evaluations = {"val": evaluate_split(model, session.data, folder, outputs, "val", caveat)}
    if judged == "val":  # of the model whose figures it shows
        with _timed(timings, "report"):
            write_report(evaluations["val"], folder.path)
    refit = {"done": False, "why": trainer.refit_reason}
    if trainer.refits:
        with _timed(timings, "refit"):
            refit = trainer.refit(training)
        with _timed(timings, "predict"):
            outputs = trainer.outputs() or split_outputs(model, session.data, recipe.batch_size)
        with _timed(timings, "calibrate"):
            refit_class_means(session.data, folder, outputs)
    if judged == "test":
        with _timed(timings, "evaluate"):
            evaluations["test"] = evaluate_split(model, session.data, folder, outputs, "test")
        with _timed(timings, "report"):
            write_report(evaluations["test"], folder.path)
    metrics = _metrics(evaluations, refit["done"])
    folder.write_json(folder.metrics_file, metrics)
    with _timed(timings, "save"):
        model.save(folder.model_file)
    log.info("validation accuracy %.4f (loss %.4f%s); model saved to %s", metrics["val"]["accuracy"],
             metrics["val"]["loss"], ", before the refit" if refit["done"] else "", folder.model_file)
    with _timed(timings, "export"):
        exports = export_run(folder, export_formats, model=model) if export else []
    exported = next((folder.path / e.path for e in exports if e.format == "savedmodel"), None)
    folder.write_json(folder.run_file, _run_record(session, training, refit, timings, started, folder, exported))
    checkpoints.remove()
    random_init = _random_init_record(session)
    return RunResult(folder.path, metrics, exported, random_init and random_init["trained"])


def _write_data_record(folder: RunFolder, images: ImageData) -> None:
    """classes.json, split.csv (which file went where), skipped.csv (what was not used, and why) and
    duplicates.csv (each duplicate group's members and the split they share)."""
    folder.write_json(folder.classes_file, images.class_names)
    folder.write_csv(folder.split_file, [
        {"path": str(p), "label": images.class_names[lab], "split": name}
        for name, split in images.splits.items() for p, lab in zip(split.paths, split.labels)])
    folder.write_csv(folder.skipped_file, [{"path": str(p), "reason": r} for p, r in images.skipped],
                     ["path", "reason"])
    if images.duplicates:
        folder.write_csv(folder.duplicates_file, images.duplicates.rows(),
                         ["group", "path", "label", "split", "moved_from"])


def _train(trainer: Trainer, folder: RunFolder, checkpoints: Checkpoints, resume: dict | None) -> Training:
    """Every stage, checkpointed; Ctrl-C is recorded and turned into the resume command."""
    try:
        return trainer.run(resume)
    except KeyboardInterrupt:
        state = (checkpoints.load() or {"state": {"global_epoch": 0}})["state"]
        _append_json(folder.interruptions_file, {
            "time": _now(), "event": "interrupted (Ctrl-C)", "epochs_done": state["global_epoch"]})
        raise RunInterrupted(f"interrupted; the last checkpoint holds {state['global_epoch']} finished epoch(s); "
                             f"resume with: tlkit run --resume {folder.path}") from None


def _metrics(evaluations: dict, refit: bool) -> dict:
    """Accuracy, loss and image count of each evaluated split; ``accuracy`` is the test split's, else val's;
    ``refit``: whether the model was refit on train + val (the val figures are then those from before)."""
    metrics = {}
    for name, evaluation in evaluations.items():
        probs, labels = evaluation.probabilities, evaluation.labels
        chosen = np.clip(probs[np.arange(len(labels)), labels], 1e-7, 1.0)
        metrics[name] = {"accuracy": float(np.mean(probs.argmax(axis=1) == labels)),
                         "loss": float(-np.mean(np.log(chosen))), "images": len(labels)}
    metrics["accuracy"] = metrics.get("test", metrics["val"])["accuracy"]
    metrics["refit"] = refit
    return metrics


def _run_record(session: Session, training: Training, refit: dict, timings: dict, started: float,
                folder: RunFolder, exported: Path | None) -> dict:
    """run.json: what the run used and did, and on what."""
    import keras
    import tensorflow as tf

    recipe, weights, placement = session.recipe, session.weights, session.placement
    return {
        "finished": _now(),
        "seconds": round(time.perf_counter() - started, 2),
        "timings": {k: round(v, 2) for k, v in timings.items()},
        "peak_memory_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "weights": {"requested": weights.requested, "loaded": weights.describe(), "warning": weights.warning},
        "random_init": _random_init_record(session),
        "warnings": [w for w in [weights.warning] if w] + session.data.warnings,
        "data": session.data.summary(),
        "placement": {**placement.describe(), "global_batch_size": recipe.batch_size * placement.replicas,
                      "learning_rate_rule": "the recipe's rates, unscaled: batch_size is per replica"},
        "feature_seconds": round(training.feature_seconds, 2),
        "stages": [asdict(s) for s in training.stages],
        "best": training.best,
        "choices": _choices(recipe, session.data, training, refit),
        "cache": session.features.events,
        "interruptions": _read_json(folder.interruptions_file, []),
        "export": str(exported) if exported else None,
        "seed": recipe.seed,
        "versions": {"python": platform.python_version(), "tensorflow": tf.__version__,
                     "keras": keras.__version__, "numpy": np.__version__, "tlkit": _version()},
        "machine": machine(),
    }


def _random_init_record(session: Session) -> dict | None:
    """How a run without pretrained weights trained (None: it had them)."""
    recipe = session.recipe
    if session.weights.path is not None:
        return None
    if not is_from_scratch(recipe):
        return {"trained": "the recipe's stages on a random base (random_init=as_recipe)"}
    return {"trained": "the whole network from scratch", "batchnorm": recipe.batchnorm,
            "stages": [stage.model_dump() for stage in recipe.stages]}


def _choices(recipe: Recipe, data: ImageData, training: Training, refit: dict) -> dict:
    """The data-size-aware choices the run made, with the figures they rest on."""
    return {
        "split": {"rule": "exact per-class quotas of the files ranked by a hash of their path",
                  "split_seed": recipe.data.split_seed, "val_fraction": recipe.data.val_fraction,
                  "test_fraction": recipe.data.test_fraction, "class_counts": data.class_counts()},
        "stages": [{"stage": s.name, "train_images": len(data.splits["train"]), "epochs_run": s.epochs_run,
                    "steps_per_epoch": s.steps_per_epoch, "passes_per_epoch": s.passes_per_epoch,
                    "head_l2": s.l2} for s in training.stages],
        "head_l2": training.head_l2,
        "kept": training.best,
        "kept_rule": "the latest epoch whose val_loss is within one standard error of the lowest",
        "refit": refit,
    }


def check_writable(path: Path) -> None:
    """Fail before any work if the run folder cannot be created or written."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".tlkit-write-test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as error:
        raise TlkitError(f"cannot write the run folder {path}: {error.strerror or error}; "
                         "pass --out with a writable folder") from None


def check_disk_space(path: Path, params: int) -> None:
    """Fail before training if the disk cannot hold the model files (.keras, SavedModel, checkpoints)."""
    needed = params * 4 * 6 + 64 * 2**20
    free = shutil.disk_usage(path).free
    if free < needed:
        raise TlkitError(f"not enough disk space for the run folder {path}: about {needed / 2**20:.0f} MB "
                         f"needed, {free / 2**20:.0f} MB free; free space or pass --out on another disk")


def _record_interruption(folder: RunFolder, state: dict) -> None:
    events = _read_json(folder.interruptions_file, [])
    if not events or events[-1]["event"] == "resumed":  # nothing recorded the stop: killed or crashed
        events.append({"time": _now(), "event": "stopped without finishing (killed or crashed)",
                       "epochs_done": state["global_epoch"]})
    events.append({"time": _now(), "event": "resumed", "epochs_done": state["global_epoch"]})
    folder.write_json(folder.interruptions_file, events)


def _append_json(path: Path, item: dict) -> None:
    write_json_atomic(path, _read_json(path, []) + [item])


def _read_json(path: Path, default):
    return json.loads(path.read_text()) if path.is_file() else default


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def machine() -> dict:
    """The hardware a run used: platform, CPU model and cores, memory, TensorFlow's devices and GPU names."""
    import tensorflow as tf
    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") if hasattr(os, "sysconf") else None
    return {"platform": platform.platform(), "processor": platform.machine(), "cpu": cpu or "unknown",
            "cpu_cores": os.cpu_count(), "memory_gb": round(memory / 2**30, 1) if memory else None,
            "devices": [d.name for d in tf.config.list_logical_devices()],
            "gpus": [tf.config.experimental.get_device_details(g).get("device_name", g.name)
                     for g in tf.config.list_physical_devices("GPU")]}


@contextmanager
def _timed(timings: dict, phase: str):
    """Add the wall seconds of a block to ``timings[phase]``."""
    started = time.perf_counter()
    try:
        yield
    finally:
        timings[phase] = timings.get(phase, 0.0) + time.perf_counter() - started


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version("tlkit")
    except PackageNotFoundError:
        return "unknown"
