"""Evaluation: a model's predictions on labelled images (:mod:`tlkit.evaluation.metrics` turns them into
figures). ``evaluate()`` gets the predictions from a run folder's Keras model on one of its splits or a folder,
or from an exported model through its predictor, so the artefact that ships is the one measured.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np

from tlkit.data import SPLITS, ImageData
from tlkit.errors import TlkitError
from tlkit.evaluation.metrics import figures
from tlkit.images import decode_all
from tlkit.model import inference
from tlkit.runfolder import RunFolder
from tlkit.serving.layout import find_savedmodel
from tlkit.serving.predictors import load_predictor
from tlkit.serving.signatures import probabilities
from tlkit.sources import list_tfds, scan_folder
from tlkit.ui import progress

log = logging.getLogger(__name__)


@dataclass
class Evaluation:
    """Predictions of one model on labelled images, and every file that could not be used."""

    model: str
    data: str
    class_names: list[str]
    paths: list[Path]
    labels: np.ndarray
    probabilities: np.ndarray
    skipped: list[tuple[Path, str]] = field(default_factory=list)
    top_k: int = 5
    run: RunFolder | None = None  # the run the model came from: its training history goes in the report
    report_dir: Path | None = None  # where `tlkit evaluate` writes the report unless told otherwise
    images: np.ndarray | None = None  # decoded pixels in the order of paths, when at hand (TFDS has no files)

    @cached_property
    def figures(self) -> dict:
        return figures(self.labels, self.probabilities, self.class_names, self.top_k)

    def mistakes(self) -> list[dict]:
        """Misclassified images, worst first (lowest probability given to the true class)."""
        predicted = self.probabilities.argmax(axis=1)
        true_probability = self.probabilities[np.arange(len(self.labels)), self.labels]
        wrong = np.flatnonzero(predicted != self.labels)
        return [{"path": str(self.paths[i]), "true": self.class_names[self.labels[i]],
                 "predicted": self.class_names[predicted[i]],
                 "confidence": float(self.probabilities[i, predicted[i]]),
                 "true_probability": float(true_probability[i])}
                for i in wrong[np.argsort(true_probability[wrong], kind="stable")]]

    def to_dict(self) -> dict:
        """Everything as one JSON-ready object: what was evaluated, the figures, mistakes and skipped files."""
        return {"model": self.model, "data": self.data, **self.figures, "misclassified": self.mistakes(),
                "skipped": [{"path": str(p), "reason": r} for p, r in self.skipped]}


def default_split(split_names) -> str:
    """The split a run is judged on: ``test`` when the run held one out, else ``val`` (never ``train``)."""
    return "test" if "test" in split_names else "val"


def predict(model, pixels: np.ndarray, batch_size: int = 32, forward=None) -> np.ndarray:
    """Class probabilities ``(N, classes)`` of a Keras classifier on uint8 pixels ``(N, size, size, 3)``;
    ``forward``: ``inference(model)`` traced before, to share it between calls."""
    forward = forward or inference(model)
    batches = [forward(pixels[i:i + batch_size].astype(np.float32)).numpy()
               for i in progress(range(0, len(pixels), batch_size), desc="predict", unit="batch")]
    return np.asarray(probabilities(np.concatenate(batches)))


def evaluate_split(model, data: ImageData, run: RunFolder, batch_size: int = 32, name: str | None = None,
                   forward=None) -> Evaluation:
    """A split of the run (default: the one it is judged on), already decoded in memory, as ``tlkit run`` does;
    ``forward`` as for :func:`predict`."""
    name = name or default_split(data.splits)
    split = data.splits[name]
    return Evaluation(str(run.path), f"{name} split", data.class_names, split.paths, split.labels,
                      predict(model, split.images, batch_size, forward), list(data.skipped), run=run,
                      report_dir=run.path, images=split.images)


def evaluate(model: str | Path, data: str | Path | None = None, *, top_k: int = 5,
             batch_size: int = 32) -> Evaluation:
    """Evaluate a run folder or an exported model on a split of the run (``val``, ``test``, ``train``) or
    on a folder of class sub-folders; by default the run's test split if it has one, else its val split.

    The report goes in the run folder for its default split, in ``RUN/evaluations/DATA`` for other data.
    """
    path = Path(model)
    run = RunFolder(path)
    if not run.model_file.is_file():
        export = find_savedmodel(path)
        if export is not None:
            return _evaluate_export(export, data, top_k)
        raise TlkitError(f"{path} is neither a run folder (with model.keras) nor an exported model (with "
                         "saved_model.pb); pass the --out folder of `tlkit run` or its export/NAME/VERSION folder")
    recipe, class_names = run.recipe(), run.class_names()
    rows = run.read_csv(run.split_file)
    default = default_split({row["split"] for row in rows})
    name = str(data) if data is not None else default
    if name in SPLITS:
        chosen = [row for row in rows if row["split"] == name]
        if not chosen:
            raise TlkitError(f"run {path} has no {name} split; pass --data with one of "
                             f"{', '.join(sorted({row['split'] for row in rows}))} or a folder of class sub-folders")
        tfds = chosen[0]["path"].startswith("tfds:")  # examples, re-read from the run's dataset
        listing = list_tfds(recipe.data.path) if tfds else None
        paths = [row["path"] if tfds else Path(row["path"]) for row in chosen]
        labels = np.array([class_names.index(row["label"]) for row in chosen], np.int64)
        skipped, description = [], f"{name} split"
    else:
        paths, labels, skipped = labelled_folder(name, class_names)
        listing, description = None, str(Path(name).expanduser())
    pixels, failures, ok = decode_all(paths, recipe.size, description, listing.payloads(paths) if listing else None)
    _require_images(ok, description)
    probabilities = predict(run.load_model(), pixels, batch_size)
    report_dir = run.path if name == default else run.path / "evaluations" / Path(name).name
    return _evaluation(str(path), description, class_names, paths, labels, ok, probabilities, skipped + failures,
                       top_k, run, report_dir, pixels)


def labelled_folder(root: str | Path, class_names: list[str]) -> tuple[list[Path], np.ndarray, list]:
    """Image files of a folder of class sub-folders, labelled with the model's class indices."""
    root = Path(root).expanduser()
    found, files, skipped = scan_folder(root)
    unknown = [name for name in found if name not in class_names]
    if unknown:
        raise TlkitError(f"{root} has class folder(s) the model does not know: {', '.join(unknown)} "
                         f"(model classes: {', '.join(class_names)}); rename or remove them")
    index = [class_names.index(name) for name in found]
    return [p for p, _ in files], np.array([index[label] for _, label in files], np.int64), skipped


def _require_images(ok: np.ndarray, description: str) -> None:
    if not ok.any():
        raise TlkitError(f"no image of {description} could be decoded ({len(ok)} file(s) tried); "
                         "check the files or pass another --data")


def _evaluation(model, description, class_names, paths, labels, ok, probabilities, skipped, top_k,
                run=None, report_dir=None, images=None) -> Evaluation:
    """An Evaluation of the files that decoded (``ok``); the rest are logged and listed as skipped."""
    for path, reason in sorted(skipped):
        log.warning("skipped %s: %s", path, reason)
    return Evaluation(model, description, class_names, [p for p, good in zip(paths, ok) if good], labels[ok],
                      probabilities, sorted(skipped), top_k, run, report_dir, images)


def _evaluate_export(export: Path, data, top_k: int) -> Evaluation:
    """An exported model on a folder of class sub-folders, through its predictor (the ``serving_pixels``
    signature, fed pixels decoded and resized as training decodes them)."""
    if data is None or str(data) in SPLITS:
        raise TlkitError(f"{export} is an exported model and has no splits; "
                         "pass --data FOLDER (a folder of class sub-folders)")
    predictor = load_predictor(export)
    paths, labels, skipped = labelled_folder(data, predictor.class_names)
    description = str(Path(data).expanduser())
    pixels, failures, ok = decode_all(paths, predictor.size, description)
    _require_images(ok, description)
    return _evaluation(str(export), description, predictor.class_names, paths, labels, ok,
                       predictor.probabilities(pixels), skipped + failures, top_k)
