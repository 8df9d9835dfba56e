"""Predictions through an exported artefact (SavedModel, TFLite or ONNX), never the training code."""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tlkit.errors import TlkitError
from tlkit.files import files_in
from tlkit.images import decode_all
from tlkit.serving.layout import find_savedmodel
from tlkit.serving.metadata import output_name
from tlkit.serving.signatures import LABELS_FILE, Confidence, read_labels

BATCH = 32


class Predictor:
    """An exported classifier: its class names, its input side, its confidence record (calibration, score,
    threshold), and its answers for uint8 pixels."""

    kind = ""

    def __init__(self, path: Path, class_names: list[str], size: int, confidence: Confidence):
        self.path, self.class_names, self.size, self.confidence = path, class_names, size, confidence

    def answers(self, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(N, size, size, 3)`` uint8 pixels -> calibrated probabilities ``(N, classes)`` and scores ``(N,)``."""
        batches = [self._batch(pixels[i:i + BATCH]) for i in range(0, len(pixels), BATCH)]
        if not batches:
            return np.zeros((0, len(self.class_names)), np.float32), np.zeros(0, np.float32)
        return (np.concatenate([b["probabilities"] for b in batches]),
                np.concatenate([np.reshape(b["score"], -1) for b in batches]))

    def probabilities(self, pixels: np.ndarray) -> np.ndarray:
        return self.answers(pixels)[0]

    def _batch(self, pixels: np.ndarray) -> dict[str, np.ndarray]:
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
        super().__init__(path, read_labels(path / "assets" / LABELS_FILE), int(loaded.image_size[0].numpy()),
                         Confidence.read(path / "assets"))

    def _batch(self, pixels):
        import tensorflow as tf
        out = self._serve(pixels=tf.constant(pixels, tf.uint8))
        return {name: out[name].numpy() for name in ("probabilities", "score")}


class TFLitePredictor(Predictor):
    """A ``.tflite`` file with ``labels.txt`` and ``confidence.json`` beside it; integer inputs and outputs are
    (de)quantized."""

    kind = "tflite"

    def __init__(self, path: Path):
        import tensorflow as tf

        with warnings.catch_warnings():  # tf.lite.Interpreter announces its move to ai-edge-litert
            warnings.simplefilter("ignore")
            self._interpreter = tf.lite.Interpreter(model_path=str(path), num_threads=os.cpu_count() or 1)
        self._input = self._interpreter.get_input_details()[0]
        self._outputs = {output_name(len(d["shape"])): d for d in self._interpreter.get_output_details()}
        self._shape = None
        super().__init__(path, read_labels(path.parent / LABELS_FILE), int(self._input["shape"][1]),
                         Confidence.read(path.parent))

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
        out = {}
        for name, details in self._outputs.items():
            y = self._interpreter.get_tensor(details["index"])
            if np.issubdtype(y.dtype, np.integer):
                scale, zero = details["quantization"]
                y = (y.astype(np.float32) - zero) * scale
            out[name] = y
        return out


class OnnxPredictor(Predictor):
    """A ``.onnx`` file with ``labels.txt`` beside it, run by onnxruntime."""

    kind = "onnx"

    def __init__(self, path: Path):
        from tlkit.serving.onnx import require_onnx
        require_onnx()
        import onnxruntime

        self._session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        self._input = self._session.get_inputs()[0]
        self._names = [o.name for o in self._session.get_outputs()]
        super().__init__(path, read_labels(path.parent / LABELS_FILE), int(self._input.shape[1]),
                         Confidence.read(path.parent))

    def _batch(self, pixels):
        return dict(zip(self._names, self._session.run(None, {self._input.name: pixels.astype(np.float32)})))


def load_predictor(model: str | Path) -> Predictor:
    """A run folder (its latest SavedModel), a SavedModel folder, a TF Serving model folder (its highest
    version), or a ``.tflite`` / ``.onnx`` file."""
    path = Path(model)
    if path.is_file() and path.suffix in (".tflite", ".onnx"):
        return (TFLitePredictor if path.suffix == ".tflite" else OnnxPredictor)(path)
    savedmodel = find_savedmodel(path)
    if savedmodel is None:
        raise TlkitError(f"{path} is not a run folder, a SavedModel folder, a .tflite or an .onnx file")
    return SavedModelPredictor(savedmodel)


@dataclass
class Prediction:
    """One image's answer (a class, or the unknown label below the threshold), its confidence score, and the top
    classes with their probabilities, best first (always the raw ranking)."""

    path: Path
    answer: str
    score: float
    top: list[tuple[str, float]]


def predict_files(predictor: Predictor, inputs: list[str | Path], top_k: int = 3, threshold: float | None = None
                  ) -> tuple[list[Prediction], list[tuple[Path, str]]]:
    """Predict every image file given or found in given folders, answering the unknown label below ``threshold``
    (default: the export's); also return each unreadable file and why."""
    files, failures = files_in(inputs)
    pixels, unreadable, ok = decode_all(files, predictor.size, "predict")
    probs, scores = predictor.answers(pixels)
    answered = predictor.confidence.answered(scores, threshold)
    k = min(top_k, len(predictor.class_names))
    order = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    readable = [f for f, good in zip(files, ok) if good]
    unknown = predictor.confidence.unknown_label
    predictions = [Prediction(path, predictor.class_names[top[0]] if known else unknown, float(score),
                              [(predictor.class_names[i], float(p[i])) for i in top])
                   for path, p, top, score, known in zip(readable, probs, order, scores, answered)]
    return predictions, failures + unreadable
