"""MODEL_CARD.md beside every export: what the model was trained on, how well it does per class, how its
probabilities are calibrated and when it answers unknown, what it is for and where it fails."""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from tlkit.runfolder import RunFolder
from tlkit.serving.signatures import Confidence

CARD_FILE = "MODEL_CARD.md"


def model_card(folder: RunFolder, fmt: str, confidence: Confidence) -> str:
    """The card's Markdown, from the run folder's recipe, split, evaluation and confidence record."""
    recipe, classes = folder.recipe(), folder.class_names()
    counts = Counter((row["split"], row["label"]) for row in folder.read_csv(folder.split_file))
    splits = [s for s in ("train", "val", "test") if any(split == s for split, _ in counts)]
    evaluation = json.loads(folder.evaluation_file.read_text()) if folder.evaluation_file.is_file() else {}
    per_class = evaluation.get("per_class", {})
    fit = confidence.fit
    totals = ", ".join(f"{sum(counts[(split, name)] for name in classes)} {split}" for split in splits)
    lines = [f"# Model card: {recipe.base} classifier of {len(classes)} classes ({fmt})", "",
             "## Data", "",
             f"Trained on `{recipe.data.path}`: {totals} images, {recipe.size}x{recipe.size} px, {recipe.base}"
             f"{f' (alpha {recipe.alpha})' if recipe.alpha else ''} with `{recipe.weights}` weights.", "",
             "## Classes and accuracy", ""]
    if evaluation:
        lines += [f"On the {evaluation['data']} ({evaluation['images']} images): accuracy "
                  f"{evaluation['accuracy']:.4f}.", ""]
    lines += ["| class | " + " | ".join(f"{s} images" for s in splits) + " | recall | precision |",
              "|---" * (len(splits) + 3) + "|"]
    for name in classes:
        row = per_class.get(name, {})
        figures = [f"{row[k]:.3f}" if k in row else "" for k in ("recall", "precision")]
        images = [str(counts[(split, name)]) for split in splits]
        lines.append(f"| {name} | {' | '.join(images + figures)} |")
    lines += ["", "## Calibration", "",
              f"Probabilities are `softmax(logits / {confidence.temperature:.4g})`: the temperature was fitted on the "
              "validation split (lowest log loss)."]
    if "ece_before" in fit:
        lines.append(f"Expected calibration error on validation: {fit['ece_before']:.4f} before, "
                     f"{fit['ece_after']:.4f} after.")
    lines += ["", "## Unknown answers", ""]
    if confidence.threshold is None:
        lines.append(f"Every image gets one of the classes (no threshold on {confidence.score}).")
    else:
        lines.append(f"An image whose `{confidence.score}` score is below {confidence.threshold:.6g} is answered "
                     f"`{confidence.unknown_label}` ({fit.get('target', '')}).")
        if "coverage" in fit:
            lines.append(f"On validation that answers {fit['coverage']:.1%} of the images, with accuracy "
                         f"{fit['accuracy_answered']:.4f} on them (all images: {fit['accuracy']:.4f}).")
    for name, value in fit.get("auroc", {}).items():
        lines.append(f"- AUROC of `{name}` ({fit.get('auroc_on', '')}): "
                     f"{'n/a' if value is None else f'{value:.3f}'}")
    lines += ["", "## Intended use", "",
              f"Sorting photos like the training images into: {', '.join(classes)}. Raw RGB pixels (0-255) in; the "
              "model resizes and normalises inside.", "",
              "## Limits", "",
              "- It knows only these classes; other subjects are answered unknown only as far as the threshold catches "
              "them (see the AUROC above), never reliably.",
              "- Accuracy and calibration were measured on images from the same source as the training data; photos "
              "from other cameras, crops or lighting may do worse.",
              "- Small classes (few training images) have the least reliable figures."]
    return "\n".join(lines) + "\n"


def write_model_card(folder: RunFolder, target: Path, fmt: str, confidence: Confidence) -> Path:
    path = Path(target) / CARD_FILE
    path.write_text(model_card(folder, fmt, confidence), encoding="utf-8")
    return path
