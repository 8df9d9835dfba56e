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
from tlkit.recipe import Data, is_from_scratch
from tlkit.sources import Listing, list_source, list_tfds
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
    random_init: str | None = None  # the model was trained without pretrained weights: how (None: it was not)

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
        return {"model": self.model, "data": self.data, "random_init": self.random_init, **self.figures,
                "misclassified": self.mistakes(), "skipped": [{"path": str(p), "reason": r} for p, r in self.skipped]}


def random_init(run: RunFolder) -> str | None:
    """How a run's model trained when it had no pretrained weights (its recipe.json says weights none)."""
    recipe = run.recipe()
    if recipe.weights != "none":
        return None
    how = "the whole network trained from scratch" if is_from_scratch(recipe) else "the recipe's stages trained on a " \
        "random base"
    return f"no pretrained weights: {how}"


def default_split(split_names) -> str:
    """The split a run is judged on: ``test`` when the run held one out, else ``val`` (never ``train``)."""
    return "test" if "test" in split_names else "val"


def predict(model, pixels: np.ndarray, batch_size: int = 32) -> np.ndarray:
    """Class probabilities ``(N, classes)`` of a Keras classifier on uint8 pixels ``(N, size, size, 3)``."""
    forward = inference(model)
    batches = [forward(pixels[i:i + batch_size].astype(np.float32)).numpy()
               for i in progress(range(0, len(pixels), batch_size), desc="predict", unit="batch")]
    return np.asarray(probabilities(np.concatenate(batches)))


def evaluate_split(model, data: ImageData, run: RunFolder, batch_size: int = 32, name: str | None = None) -> Evaluation:
    """A split of the run (default: the one it is judged on), already decoded in memory, as ``tlkit run`` does."""
    name = name or default_split(data.splits)
    split = data.splits[name]
    return Evaluation(str(run.path), f"{name} split", data.class_names, split.paths, split.labels,
                      predict(model, split.images, batch_size), list(data.skipped), run=run, report_dir=run.path,
                      images=split.images, random_init=random_init(run))


def evaluate(model: str | Path, data: str | Path | None = None, *, spec: Data | None = None, top_k: int = 5,
             batch_size: int = 32) -> Evaluation:
    """Evaluate a run folder or an exported model on a split of the run (``val``, ``test``, ``train``) or on
    every labelled image of a data source (class folders, split folders, a CSV read as ``spec`` says, TFDS); by
    default the run's test split if it has one, else its val split.

    The report goes in the run folder for its default split, in ``RUN/evaluations/DATA`` for other data.
    """
    path = Path(model)
    run = RunFolder(path)
    if not run.model_file.is_file():
        export = find_savedmodel(path)
        if export is not None:
            return _evaluate_export(export, data, spec, top_k)
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
        listing = list_source(name, spec)
        paths, labels, skipped = labelled(listing, class_names)
        description = listing.source
    pixels, failures, ok = decode_all(paths, recipe.size, description, listing and listing.payloads(paths))
    _require_images(ok, description)
    probabilities = predict(run.load_model(), pixels, batch_size)
    report_dir = run.path if name == default else run.path / "evaluations" / Path(name).name
    return _evaluation(str(path), description, class_names, paths, labels, ok, probabilities, skipped + failures,
                       top_k, run, report_dir, pixels)


def labelled(listing: Listing, class_names: list[str]) -> tuple[list, np.ndarray, list]:
    """Every image a source lists, labelled with the model's class indices, and what the source skipped; a
    class the model does not know is an error."""
    unknown = [name for name in listing.class_names if name not in class_names]
    if unknown:
        raise TlkitError(f"{listing.source} has class(es) the model does not know: {', '.join(unknown)} "
                         f"(model classes: {', '.join(class_names)}); rename or remove them")
    index = [class_names.index(name) for name in listing.class_names]
    for warning in listing.warnings:
        log.warning(warning)
    return ([item.origin for item in listing.items], np.array([index[item.label] for item in listing.items], np.int64),
            list(listing.skipped))


def _require_images(ok: np.ndarray, description: str) -> None:
    if not ok.any():
        raise TlkitError(f"no image of {description} could be decoded ({len(ok)} file(s) tried); "
                         "check the files or pass another --data")


def _evaluation(model, description, class_names, paths, labels, ok, probabilities, skipped, top_k,
                run=None, report_dir=None, images=None) -> Evaluation:
    """An Evaluation of the files that decoded (``ok``); the rest are logged and listed as skipped."""
    skipped = sorted(skipped, key=lambda s: str(s[0]))
    for path, reason in skipped:
        log.warning("skipped %s: %s", path, reason)
    return Evaluation(model, description, class_names, [p for p, good in zip(paths, ok) if good], labels[ok],
                      probabilities, skipped, top_k, run, report_dir, images, random_init(run) if run else None)


def _evaluate_export(export: Path, data, spec: Data | None, top_k: int) -> Evaluation:
    """An exported model on every labelled image of a data source, through its predictor (the
    ``serving_pixels`` signature, fed pixels decoded and resized as training decodes them)."""
    if data is None or str(data) in SPLITS:
        raise TlkitError(f"{export} is an exported model and has no splits; "
                         "pass --data with a folder of class sub-folders, a CSV or tfds:NAME[:SPLIT]")
    predictor = load_predictor(export)
    listing = list_source(data, spec)
    paths, labels, skipped = labelled(listing, predictor.class_names)
    pixels, failures, ok = decode_all(paths, predictor.size, listing.source, listing.payloads(paths))
    _require_images(ok, listing.source)
    return _evaluation(str(export), listing.source, predictor.class_names, paths, labels, ok,
                       predictor.probabilities(pixels), skipped + failures, top_k)
