"""The run folder: one place that knows its file names, and reads and writes them."""
from __future__ import annotations

import csv
import json
import logging
from pathlib import Path

import numpy as np

from tlkit.errors import TlkitError
from tlkit.images import decode_all
from tlkit.recipe import Recipe
from tlkit.storage import write_json_atomic

log = logging.getLogger(__name__)

CONFIDENCE_FILE = "confidence.json"  # in a run folder and beside every export


class RunFolder:
    """Files of one run: recipe, classes, split, skipped files, history, metrics, model, exports, report."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.recipe_file = self.path / "recipe.json"
        self.classes_file = self.path / "classes.json"
        self.split_file = self.path / "split.csv"
        self.skipped_file = self.path / "skipped.csv"
        self.history_file = self.path / "history.csv"
        self.metrics_file = self.path / "metrics.json"
        self.run_file = self.path / "run.json"
        self.interruptions_file = self.path / "interruptions.json"
        self.model_file = self.path / "model.keras"
        self.stages_dir = self.path / "stages"  # per stage: parameters.txt and TensorBoard logs
        self.export_dir = self.path / "export"
        self.evaluation_file = self.path / "evaluation.json"
        self.report_file = self.path / "report.html"
        self.curves_file = self.path / "training_curves.png"
        self.confusion_file = self.path / "confusion_matrix.png"
        self.misclassified_file = self.path / "misclassified.png"
        self.confidence_file = self.path / CONFIDENCE_FILE  # calibration and threshold, fitted on validation
        self.reliability_file = self.path / "reliability.png"
        self.coverage_file = self.path / "accuracy_coverage.png"
        self.explanations_file = self.path / "explanations.png"  # Grad-CAM of the worst mistakes

    @classmethod
    def open(cls, path: str | Path) -> "RunFolder":
        folder = cls(path)
        if not folder.model_file.is_file():
            raise TlkitError(f"{folder.path} is not a finished tlkit run folder (no {folder.model_file.name}); "
                             "pass the --out folder of a completed `tlkit run`")
        return folder

    def recipe(self) -> Recipe:
        return Recipe.from_json(self.recipe_file.read_text())

    def class_names(self) -> list[str]:
        return json.loads(self.classes_file.read_text())

    def load_model(self):
        """The trained Keras model, uncompiled (what predictions and exports need)."""
        import keras
        import tlkit.model  # noqa: F401  registers tlkit's preprocessing layer
        return keras.saving.load_model(self.model_file, compile=False)

    def split_pixels(self, split: str, size: int, what: str, count: int | None = None, seed: int = 0) -> np.ndarray:
        """The images of one split (split.csv) as uint8 pixels, all or ``count`` drawn at random with ``seed``;
        unreadable ones are logged and left out."""
        paths = [Path(r["path"]) for r in self.read_csv(self.split_file) if r["split"] == split]
        if count is not None:
            paths = [paths[i] for i in np.random.default_rng(seed).permutation(len(paths))[:count]]
        pixels, failures, _ = decode_all(paths, size, what)
        for path, reason in failures:
            log.warning("%s skips %s: %s", what, path, reason)
        if not len(pixels):
            raise TlkitError(f"no readable {split} images in {self.split_file} ({len(paths)} listed); the {what} "
                             "needs them (restore the data folder the run was trained on)")
        return pixels

    def write_json(self, file: Path, value) -> None:
        write_json_atomic(file, value)

    @staticmethod
    def write_csv(file: Path, rows: list[dict], columns: list[str] | None = None) -> None:
        columns = columns or list(dict.fromkeys(k for row in rows for k in row))
        with open(file, "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, columns, restval="")
            writer.writeheader()
            writer.writerows(rows)

    @staticmethod
    def read_csv(file: Path) -> list[dict]:
        with open(file, newline="", encoding="utf-8") as f:
            return list(csv.DictReader(f))
