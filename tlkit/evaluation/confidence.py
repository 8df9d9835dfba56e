"""Calibration and rejection, fitted on the validation split at the end of `tlkit run`: a temperature on the head's
logits (lowest log loss; the trained model is kept as it is), class means of the pooled base features of the
training images, each confidence score's AUROC, and the threshold the recipe's ``trust`` target asks for.
The record (:class:`tlkit.serving.signatures.Confidence`) goes to the run folder; every export applies it."""
from __future__ import annotations

import logging
import math

import numpy as np

from tlkit.data import ImageData
from tlkit.files import files_in
from tlkit.images import decode_all
from tlkit.model import logits_and_features
from tlkit.recipe import Trust
from tlkit.runfolder import RunFolder
from tlkit.serving.signatures import SCORES, Confidence, calibrated, scores
from tlkit.ui import progress

log = logging.getLogger(__name__)

ECE_BINS = 15
CURVE_POINTS = 50


def model_outputs(model, pixels: np.ndarray, batch_size: int = 64, forward=None) -> tuple[np.ndarray, np.ndarray]:
    """Head logits ``(N, classes)`` and pooled base features ``(N, channels)`` of uint8 pixels; ``forward``:
    ``logits_and_features(model)`` traced before (it reads the model's variables, so it serves any weights)."""
    forward = forward or logits_and_features(model)
    parts = [forward(pixels[i:i + batch_size].astype(np.float32))
             for i in progress(range(0, len(pixels), batch_size), desc="predict", unit="batch")]
    if not parts:
        return np.zeros((0, model.outputs[0].shape[-1])), np.zeros((0, 0))
    return np.concatenate([p[0].numpy() for p in parts]), np.concatenate([p[1].numpy() for p in parts])


def split_outputs(model, data: ImageData, batch_size: int = 64) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """:func:`model_outputs` of every split of ``data``, by one traced forward pass of the whole model."""
    forward = logits_and_features(model)
    return {name: model_outputs(model, split.images, batch_size, forward) for name, split in data.splits.items()}


def all_scores(probabilities: np.ndarray, features: np.ndarray, confidence: Confidence) -> dict[str, np.ndarray]:
    """Every confidence score of each image (the ones this record can compute)."""
    names = [n for n in SCORES if n != "class_mean_similarity" or confidence.class_means is not None]
    return {n: scores(n, probabilities, features, confidence.class_means).numpy() for n in names}


# === Figures ===

def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The temperature T minimising the log loss of ``softmax(logits / T)`` (searched on log T in [-3, 3])."""
    from scipy.optimize import minimize_scalar

    def loss(log_t):
        z = logits / math.exp(log_t)
        z = z - z.max(axis=1, keepdims=True)
        return float(np.mean(np.log(np.exp(z).sum(axis=1)) - z[np.arange(len(labels)), labels]))
    return float(math.exp(minimize_scalar(loss, bounds=(-3, 3), method="bounded").x))


def reliability(probabilities: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS) -> list[dict]:
    """Equal-width bins of top probability: images, mean confidence and accuracy of each non-empty bin."""
    confidence = probabilities.max(axis=1)
    correct = probabilities.argmax(axis=1) == labels
    index = np.minimum((confidence * bins).astype(int), bins - 1)
    return [{"low": b / bins, "high": (b + 1) / bins, "images": int(np.sum(index == b)),
             "confidence": float(confidence[index == b].mean()), "accuracy": float(correct[index == b].mean())}
            for b in range(bins) if np.any(index == b)]


def expected_calibration_error(probabilities: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS) -> float:
    """ECE: the image-weighted mean gap between accuracy and confidence over :func:`reliability`'s bins."""
    table = reliability(probabilities, labels, bins)
    return float(sum(b["images"] * abs(b["accuracy"] - b["confidence"]) for b in table) / max(len(labels), 1))


def auroc(positive: np.ndarray, negative: np.ndarray) -> float | None:
    """Area under the ROC curve of telling ``positive`` scores (should be high) from ``negative``; None when
    either side is empty."""
    from sklearn.metrics import roc_auc_score

    if not len(positive) or not len(negative):
        return None
    return float(roc_auc_score(np.r_[np.ones(len(positive)), np.zeros(len(negative))], np.r_[positive, negative]))


def threshold_for(score: np.ndarray, correct: np.ndarray, spec: Trust) -> float | None:
    """The threshold the target asks for: with ``coverage``, the score that answers that fraction of the images;
    otherwise the highest one whose accuracy (unknown counted wrong) stays within ``max_accuracy_drop`` of always
    answering. None when nothing can be answered. It lies halfway to the next lower score, so that no image sits
    on it and float differences between artefacts (TFLite, ONNX) cannot flip an answer the validation counted."""
    if spec.coverage is not None:
        if not len(score):
            return None
        ranked = np.sort(score)[::-1]
        return _halfway_below(score, ranked[max(0, math.ceil(spec.coverage * len(ranked)) - 1)])
    kept = np.sort(score[correct])
    allowed = int(math.floor(spec.max_accuracy_drop * len(score) + 1e-9))  # correct answers it may turn unknown
    return _halfway_below(score, kept[allowed]) if allowed < len(kept) else None


def _halfway_below(score: np.ndarray, lowest_answered: float) -> float:
    lower = score[score < lowest_answered]
    return float((lowest_answered + lower.max()) / 2 if len(lower) else lowest_answered)


def coverage_curve(score: np.ndarray, correct: np.ndarray, points: int = CURVE_POINTS) -> list[dict]:
    """Coverage and accuracy of the answered images at thresholds from the lowest score up."""
    thresholds = np.unique(np.quantile(score, np.linspace(0, 1, points, endpoint=False))) if len(score) else []
    rows = []
    for t in thresholds:
        answered = score >= t
        rows.append({"threshold": float(t), "coverage": float(answered.mean()),
                     "accuracy": float(correct[answered].mean())})
    return rows


def selective(score: np.ndarray, correct: np.ndarray, threshold: float | None) -> dict:
    """What a threshold does to labelled images: coverage and accuracy of the answered, accuracy of all."""
    answered = np.ones(len(score), bool) if threshold is None else score >= threshold
    return {"coverage": float(answered.mean()), "accuracy_answered": float(correct[answered].mean())
            if answered.any() else None, "accuracy": float((correct & answered).mean())}


# === The fit ===

def class_means(features: np.ndarray, labels: np.ndarray, classes: int) -> np.ndarray:
    """Per class, the unit-length mean of the unit-length ``features`` of its images (zeros when it has none)."""
    unit = features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)
    means = np.stack([unit[labels == c].mean(axis=0) if np.any(labels == c) else np.zeros(unit.shape[1])
                      for c in range(classes)])
    return means / np.maximum(np.linalg.norm(means, axis=1, keepdims=True), 1e-12)


def refit_class_means(data: ImageData, folder: RunFolder, outputs: dict) -> None:
    """After a refit: the record's class means from the refit model's pooled features of the train and val
    images (``outputs``, as :func:`split_outputs` gives them); temperature, score and threshold stay those fitted
    on the validated model's held-out predictions."""
    confidence = Confidence.read(folder.path)
    features = np.concatenate([outputs["train"][1], outputs["val"][1]])
    labels = np.concatenate([data.splits["train"].labels, data.splits["val"].labels])
    confidence.class_means = class_means(features, labels, len(data.class_names)).tolist()
    confidence.fit["class_means"] = "the refit model's, of the train and val images"
    confidence.fit["fitted_on"] = "the validated model's predictions of the val images, before the refit"
    confidence.write(folder.path)


def fit_confidence(model, data: ImageData, spec: Trust, folder: RunFolder, outputs: dict, batch_size: int = 64
                   ) -> Confidence:
    """Fit the record on ``data``'s val split (class means on its train split, AUROC against ``spec.ood`` images
    when given, else correct against misclassified validation images), write it to the run folder, return it.
    ``outputs``: the model's logits and pooled features of the train and val splits (as :func:`split_outputs`
    gives them); ``model`` answers the ood images."""
    val = data.splits["val"]
    means = class_means(outputs["train"][1], data.splits["train"].labels, len(data.class_names))
    logits, features = outputs["val"]
    temperature = fit_temperature(logits, val.labels)
    confidence = Confidence(temperature=temperature, unknown_label=spec.unknown_label, class_means=means.tolist())
    probs = calibrated(logits, temperature).numpy()
    correct = probs.argmax(axis=1) == val.labels
    val_scores = all_scores(probs, features, confidence)

    ood_scores, ood_note = None, "correct vs misclassified validation images"
    if spec.ood:
        files, failures = files_in([spec.ood])
        pixels, unreadable, _ = decode_all(files, model.inputs[0].shape[1], "ood images")
        for path, reason in failures + unreadable:
            log.warning("trust.ood: skipped %s: %s", path, reason)
        ood_logits, ood_features = model_outputs(model, pixels, batch_size)
        ood_scores = all_scores(calibrated(ood_logits, temperature).numpy(), ood_features, confidence)
        ood_note = f"validation images vs {len(pixels)} out-of-distribution images of {spec.ood}"
    aurocs = {name: auroc(s, ood_scores[name]) if ood_scores else auroc(s[correct], s[~correct])
              for name, s in val_scores.items()}
    measured = {n: a for n, a in aurocs.items() if a is not None}
    better = max(measured, key=measured.get) if measured else "max_probability"
    confidence.score = better if spec.score == "auto" else spec.score
    confidence.threshold = threshold_for(val_scores[confidence.score], correct, spec)
    target = (f"answer {spec.coverage:.0%} of the validation images" if spec.coverage is not None else
              f"lose at most {spec.max_accuracy_drop:.0%} validation accuracy to unknown answers")
    confidence.fit = {
        "images": len(val), "temperature": temperature,
        "ece_before": expected_calibration_error(calibrated(logits, 1.0).numpy(), val.labels),
        "ece_after": expected_calibration_error(probs, val.labels),
        "reliability_before": reliability(calibrated(logits, 1.0).numpy(), val.labels),
        "reliability_after": reliability(probs, val.labels),
        "auroc": aurocs, "auroc_on": ood_note, "better": better,
        "chosen": "the better one (trust.score=auto)" if spec.score == "auto" else f"trust.score={spec.score}",
        "target": target, **selective(val_scores[confidence.score], correct, confidence.threshold)}
    if ood_scores:
        confidence.fit["ood_unknown"] = float(np.mean(~confidence.answered(ood_scores[confidence.score])))
    confidence.write(folder.path)
    log.info("calibration: temperature %.3f, validation ECE %.4f -> %.4f; unknown below %s %s (%s); AUROC %s",
             temperature, confidence.fit["ece_before"], confidence.fit["ece_after"], confidence.score,
             "never" if confidence.threshold is None else f"{confidence.threshold:.4g}", target,
             ", ".join(f"{n} {'n/a' if a is None else f'{a:.3f}'}" for n, a in aurocs.items()))
    return confidence
