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
from tlkit.evaluation.confidence import (all_scores, auroc, coverage_curve, expected_calibration_error,
                                        model_outputs, reliability, selective)
from tlkit.evaluation.metrics import figures
from tlkit.images import decode_all
from tlkit.runfolder import RunFolder
from tlkit.serving.layout import find_savedmodel
from tlkit.serving.predictors import load_predictor
from tlkit.serving.signatures import Confidence, calibrated
from tlkit.recipe import Data, is_from_scratch
from tlkit.sources import Listing, list_source, list_tfds

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
    confidence: Confidence | None = None  # the calibration and threshold the probabilities and scores come with
    scores: dict[str, np.ndarray] = field(default_factory=dict)  # confidence scores by name (an export: its own)
    threshold: float | None = None  # the threshold applied (--threshold), else the confidence record's
    raw_probabilities: np.ndarray | None = None  # before calibration (a Keras model's, not an export's)
    keras: object | None = None  # the Keras model, when the predictions are its own (explanations need it)
    caveat: str | None = None  # what the figures do not say about the model (e.g. it trained on these images)

    @cached_property
    def figures(self) -> dict:
        return figures(self.labels, self.probabilities, self.class_names, self.top_k)

    @property
    def applied_threshold(self) -> float | None:
        return self.threshold if self.threshold is not None else (self.confidence and self.confidence.threshold)

    @cached_property
    def trust(self) -> dict | None:
        """Calibration (ECE, reliability) and unknown answers (coverage and accuracy at the threshold, AUROC of each
        score on correct vs misclassified images, each score's accuracy-coverage curve) on these images, and the fit on
        validation that chose them; None without a confidence record."""
        if self.confidence is None:
            return None
        c, threshold = self.confidence, self.applied_threshold
        correct = self.probabilities.argmax(axis=1) == self.labels
        score = self.scores[c.score]
        result = {"score": c.score, "threshold": threshold, "unknown_label": c.unknown_label,
                  "threshold_from": "--threshold" if self.threshold is not None else "the run (fitted on validation)",
                  "temperature": c.temperature, **selective(score, correct, threshold),
                  "unknown": int(np.sum(~c.answered(score, threshold))),
                  "auroc": {name: auroc(s[correct], s[~correct]) for name, s in self.scores.items()},
                  "auroc_on": "correct vs misclassified images of this data",
                  "curves": {name: coverage_curve(s, correct) for name, s in self.scores.items()},
                  "ece": expected_calibration_error(self.probabilities, self.labels),
                  "reliability": reliability(self.probabilities, self.labels), "fit": c.fit}
        if self.raw_probabilities is not None:
            result["ece_uncalibrated"] = expected_calibration_error(self.raw_probabilities, self.labels)
            result["reliability_uncalibrated"] = reliability(self.raw_probabilities, self.labels)
        return result

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
        return {"model": self.model, "data": self.data, "random_init": self.random_init, "caveat": self.caveat,
                **self.figures,
                "misclassified": self.mistakes(), "confidence": self.trust,
                "skipped": [{"path": str(p), "reason": r} for p, r in self.skipped]}


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


def keras_answers(model, pixels: np.ndarray, confidence: Confidence, batch_size: int = 32) -> dict:
    """A Keras classifier on uint8 pixels ``(N, size, size, 3)``, answered as its exports answer: raw and calibrated
    probabilities ``(N, classes)`` and every confidence score."""
    return answers_of(*model_outputs(model, pixels, batch_size), confidence)


def answers_of(logits: np.ndarray, features: np.ndarray, confidence: Confidence) -> dict:
    """:func:`keras_answers` from the head logits and pooled base features of the images."""
    probs = calibrated(logits, confidence.temperature).numpy()
    return {"raw_probabilities": calibrated(logits, 1.0).numpy(), "probabilities": probs,
            "scores": all_scores(probs, features, confidence)}


def evaluate_split(model, data: ImageData, run: RunFolder, outputs: dict, name: str | None = None,
                   caveat: str | None = None) -> Evaluation:
    """A split of the run (default: the one it is judged on), already decoded in memory, as ``tlkit run`` does,
    with the run's confidence record; ``outputs``: the model's logits and pooled features of the split (as
    :func:`~tlkit.evaluation.confidence.split_outputs` gives them)."""
    name = name or default_split(data.splits)
    split = data.splits[name]
    confidence = Confidence.read(run.path)
    answers = answers_of(*outputs[name], confidence)
    return Evaluation(str(run.path), f"{name} split", data.class_names, split.paths, split.labels,
                      answers.pop("probabilities"), list(data.skipped), run=run, report_dir=run.path,
                      images=split.images, random_init=random_init(run), confidence=confidence, keras=model,
                      caveat=caveat, **answers)


def evaluate(model: str | Path, data: str | Path | None = None, *, spec: Data | None = None, top_k: int = 5,
             batch_size: int = 32, threshold: float | None = None) -> Evaluation:
    """Evaluate a run folder or an exported model on a split of the run (``val``, ``test``, ``train``) or on
    every labelled image of a data source (class folders, split folders, a CSV read as ``spec`` says, TFDS); by
    default the run's test split if it has one, else its val split. ``threshold`` replaces the confidence
    record's threshold for the unknown answers.

    The report goes in the run folder for its default split, in ``RUN/evaluations/DATA`` for other data.
    """
    path = Path(model)
    run = RunFolder(path)
    if not run.model_file.is_file():
        export = find_savedmodel(path)
        if export is not None:
            evaluation = _evaluate_export(export, data, spec, top_k)
            evaluation.threshold = threshold
            return evaluation
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
    keras_model, confidence = run.load_model(), Confidence.read(run.path)
    answers = keras_answers(keras_model, pixels, confidence, batch_size)
    report_dir = run.path if name == default else run.path / "evaluations" / Path(name).name
    evaluation = _evaluation(str(path), description, class_names, paths, labels, ok, answers.pop("probabilities"),
                             skipped + failures, top_k, run, report_dir, pixels)
    evaluation.confidence, evaluation.keras, evaluation.threshold = confidence, keras_model, threshold
    if name == "val" and run.refitted():
        evaluation.caveat = ("model.keras was refit on train + val, so it trained on these images; metrics.json "
                             "holds the held-out val figures of the model before the refit")
    evaluation.scores, evaluation.raw_probabilities = answers["scores"], answers["raw_probabilities"]
    return evaluation


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
    probabilities, score = predictor.answers(pixels)
    evaluation = _evaluation(str(export), listing.source, predictor.class_names, paths, labels, ok, probabilities,
                             skipped + failures, top_k, images=pixels)
    evaluation.confidence, evaluation.scores = predictor.confidence, {predictor.confidence.score: score}
    return evaluation
