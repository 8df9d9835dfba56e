"""Predictions through an exported artefact (SavedModel, TFLite or ONNX), never the training code; and the
check that every export answers as the Keras model does."""
from __future__ import annotations

import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tlkit.data import decode_all
from tlkit.errors import TlkitError
from tlkit.export import LABELS_FILE, Export, probabilities, read_manifest
from tlkit.runfolder import RunFolder

log = logging.getLogger(__name__)

BATCH = 32
LOW_AGREEMENT = 0.95  # below this top-1 agreement with Keras, `export --check` warns


def read_labels(path: Path) -> list[str]:
    if not path.is_file():
        raise TlkitError(f"{path} is missing; an exported model keeps its class names there (re-export the run)")
    return path.read_text(encoding="utf-8").splitlines()


class Predictor:
    """An exported classifier: its class names, its input side, and probabilities for uint8 pixels."""

    kind = ""

    def __init__(self, path: Path, class_names: list[str], size: int):
        self.path, self.class_names, self.size = path, class_names, size

    def probabilities(self, pixels: np.ndarray) -> np.ndarray:
        """``(N, size, size, 3)`` uint8 pixels -> ``(N, classes)`` float32 probabilities."""
        batches = [self._batch(pixels[i:i + BATCH]) for i in range(0, len(pixels), BATCH)]
        return np.concatenate(batches) if batches else np.zeros((0, len(self.class_names)), np.float32)

    def _batch(self, pixels: np.ndarray) -> np.ndarray:
        raise NotImplementedError


class SavedModelPredictor(Predictor):
    """The ``serving_pixels`` signature of a tlkit SavedModel (loaded with TensorFlow alone)."""

    kind = "savedmodel"

    def __init__(self, path: Path):
        import tensorflow as tf

        loaded = tf.saved_model.load(str(path))
        if not hasattr(loaded, "image_size") or "serving_pixels" not in loaded.signatures:
            raise TlkitError(f"{path} is not a tlkit SavedModel export (no serving_pixels signature or image "
                             "size); re-export the run with `tlkit export`")
        self.loaded, self._serve = loaded, loaded.signatures["serving_pixels"]
        super().__init__(path, read_labels(path / "assets" / LABELS_FILE), int(loaded.image_size[0].numpy()))

    def _batch(self, pixels):
        import tensorflow as tf
        return self._serve(pixels=tf.constant(pixels, tf.uint8))["probabilities"].numpy()


class TFLitePredictor(Predictor):
    """A ``.tflite`` file with ``labels.txt`` beside it; integer inputs and outputs are (de)quantized."""

    kind = "tflite"

    def __init__(self, path: Path):
        import tensorflow as tf

        with warnings.catch_warnings():  # tf.lite.Interpreter announces its move to ai-edge-litert
            warnings.simplefilter("ignore")
            self._interpreter = tf.lite.Interpreter(model_path=str(path), num_threads=os.cpu_count() or 1)
        self._input = self._interpreter.get_input_details()[0]
        self._output = self._interpreter.get_output_details()[0]
        self._shape = None
        super().__init__(path, read_labels(path.parent / LABELS_FILE), int(self._input["shape"][1]))

    def _batch(self, pixels):
        if self._shape != pixels.shape:
            self._interpreter.resize_tensor_input(self._input["index"], pixels.shape)
            self._interpreter.allocate_tensors()
            self._shape = pixels.shape
        dtype = self._input["dtype"]
        x = pixels.astype(np.float32)
        if np.issubdtype(dtype, np.integer):
            scale, zero = self._input["quantization"]
            info = np.iinfo(dtype)
            x = np.clip(np.round(x / scale + zero), info.min, info.max)
        self._interpreter.set_tensor(self._input["index"], x.astype(dtype))
        self._interpreter.invoke()
        y = self._interpreter.get_tensor(self._output["index"])
        if np.issubdtype(y.dtype, np.integer):
            scale, zero = self._output["quantization"]
            y = (y.astype(np.float32) - zero) * scale
        return y


class OnnxPredictor(Predictor):
    """A ``.onnx`` file with ``labels.txt`` beside it, run by onnxruntime."""

    kind = "onnx"

    def __init__(self, path: Path):
        from tlkit.onnx_export import require_onnx
        require_onnx()
        import onnxruntime

        self._session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        self._input = self._session.get_inputs()[0]
        super().__init__(path, read_labels(path.parent / LABELS_FILE), int(self._input.shape[1]))

    def _batch(self, pixels):
        return self._session.run(None, {self._input.name: pixels.astype(np.float32)})[0]


def latest_savedmodel(run: Path) -> Path:
    """The run's most recent SavedModel export, from its manifest."""
    folder = RunFolder.open(run)
    entries = [e for e in read_manifest(folder) if e["format"] == "savedmodel" and (run / e["path"]).is_dir()]
    if not entries:
        raise TlkitError(f"{run} has no SavedModel export; create one with: tlkit export {run}")
    return run / max(entries, key=lambda e: (e["created"], e["version"]))["path"]


def load_predictor(model: str | Path) -> Predictor:
    """A run folder (its latest SavedModel), a SavedModel folder, a TF Serving model folder (its highest
    version), or a ``.tflite`` / ``.onnx`` file."""
    path = Path(model)
    if path.is_file() and path.suffix in (".tflite", ".onnx"):
        return (TFLitePredictor if path.suffix == ".tflite" else OnnxPredictor)(path)
    if (path / "saved_model.pb").is_file():
        return SavedModelPredictor(path)
    if (path / "model.keras").is_file():
        return SavedModelPredictor(latest_savedmodel(path))
    versions = [p for p in path.glob("[0-9]*") if p.name.isdigit() and (p / "saved_model.pb").is_file()]
    if versions:
        return SavedModelPredictor(max(versions, key=lambda p: int(p.name)))
    raise TlkitError(f"{path} is not a run folder, a SavedModel folder, a .tflite or an .onnx file")


@dataclass
class Prediction:
    """One image's answer: the top classes with their probabilities, best first."""

    path: Path
    top: list[tuple[str, float]]


def image_files(inputs: list[str | Path]) -> tuple[list[Path], list[tuple[Path, str]]]:
    """Files named and files found (sorted) in folders named, skipping hidden ones; missing inputs as failures."""
    files, missing = [], []
    for item in map(Path, inputs):
        if item.is_dir():
            for dirpath, dirnames, filenames in os.walk(item, followlinks=True):
                dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
                files += [Path(dirpath) / f for f in sorted(filenames) if not f.startswith(".")]
        elif item.is_file():
            files.append(item)
        else:
            missing.append((item, "file not found"))
    return files, missing


def predict_files(predictor: Predictor, inputs: list[str | Path], top_k: int = 3
                  ) -> tuple[list[Prediction], list[tuple[Path, str]]]:
    """Predict every image file given or found in given folders; also return each unreadable file and why."""
    files, failures = image_files(inputs)
    pixels, unreadable, ok = decode_all(files, predictor.size, "predict")
    probs = predictor.probabilities(pixels)
    k = min(top_k, len(predictor.class_names))
    order = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    readable = [f for f, good in zip(files, ok) if good]
    predictions = [Prediction(path, [(predictor.class_names[i], float(p[i])) for i in top])
                   for path, p, top in zip(readable, probs, order)]
    return predictions, failures + unreadable


def validation_pixels(folder: RunFolder, size: int) -> np.ndarray:
    """The run's validation images (split.csv) as uint8 pixels; unreadable ones are logged and left out."""
    paths = [Path(r["path"]) for r in folder.read_csv(folder.split_file) if r["split"] == "val"]
    pixels, failures, _ = decode_all(paths, size, "check")
    for path, reason in failures:
        log.warning("check skips %s: %s", path, reason)
    if not len(pixels):
        raise TlkitError(f"no readable validation images in {folder.split_file}; the check needs them")
    return pixels


def agreement(reference: np.ndarray, probs: np.ndarray) -> dict:
    """Top-1 agreement and the largest probability difference between two sets of answers."""
    return {"images": len(reference), "top1_agreement": float(np.mean(reference.argmax(1) == probs.argmax(1))),
            "max_probability_difference": float(np.abs(reference - probs).max())}


def check_exports(folder: RunFolder, exports: list[Export], model) -> None:
    """Fill each export's ``check`` with its agreement with the Keras model on the validation split."""
    pixels = validation_pixels(folder, folder.recipe().size)
    reference = np.asarray(probabilities(model.predict(pixels.astype(np.float32), batch_size=BATCH, verbose=0)))
    for export in exports:
        for variant, entry in export.files.items():
            result = export.check[variant] = agreement(reference, load_predictor(folder.path / entry["path"])
                                                       .probabilities(pixels))
            log.info("check %s %s: top-1 agreement %.4f, max probability difference %.2g on %d validation "
                     "images", export.format, variant, result["top1_agreement"],
                     result["max_probability_difference"], len(pixels))
            if result["top1_agreement"] < LOW_AGREEMENT:
                log.warning("%s %s changes %.1f %% of the Keras answers on the validation images; serve a float "
                            "variant where answers must match the trained model", export.format, variant,
                            100 * (1 - result["top1_agreement"]))
