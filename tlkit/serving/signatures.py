"""The leaf of serving: what every export computes and how it labels answers. The calibrated probabilities and the
confidence score (:class:`Confidence`, fitted at the end of a run), the pixel function the converters take, the
in-graph decoder that matches training pixel for pixel, the SavedModel signatures, and the files beside every
artefact (labels, confidence)."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import tensorflow as tf

from tlkit.errors import TlkitError
from tlkit.images import resize_tensor
from tlkit.model import feature_map, head_logits, pooled
from tlkit.runfolder import CONFIDENCE_FILE

TOP_K = 5
LABELS_FILE = "labels.txt"
SCORES = ("max_probability", "class_mean_similarity")
_EXIF_WINDOW = 1024  # bytes of the EXIF block searched for the orientation tag (IFD0 sits at its start)
_FLIPS = [[False, False], [False, True], [True, True], [True, False],  # orientation 1-8 after the transpose of 5-8
          [False, False], [False, True], [True, True], [True, False]]


@dataclass
class Confidence:
    """How answers are calibrated and when they are unknown: probabilities are ``softmax(logits / temperature)``;
    an image whose ``score`` is below ``threshold`` (None: never) is answered ``unknown_label``."""

    temperature: float = 1.0
    score: str = "max_probability"  # one of SCORES
    threshold: float | None = None
    unknown_label: str = "unknown"
    class_means: list | None = None  # (classes, channels) unit mean of the pooled base features of each class
    fit: dict = field(default_factory=dict)  # how it was chosen on validation (figures for the report and card)

    def answered(self, scores: np.ndarray, threshold: float | None = None) -> np.ndarray:
        """Which scores get an answer under ``threshold`` (default: this record's)."""
        threshold = self.threshold if threshold is None else threshold
        return np.ones(len(scores), bool) if threshold is None else np.asarray(scores) >= threshold

    def write(self, folder: Path, means: bool = True) -> Path:
        """``confidence.json`` in ``folder``; exports leave out the class means (their graph holds them)."""
        record = asdict(self)
        if not means:
            record.pop("class_means")
        path = Path(folder) / CONFIDENCE_FILE
        path.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
        return path

    @classmethod
    def read(cls, folder: Path) -> "Confidence":
        path = Path(folder) / CONFIDENCE_FILE
        if not path.is_file():
            raise TlkitError(f"{path} is missing; it holds the calibration and threshold (re-export the run, or "
                             "rerun it: runs before calibration have none)")
        return cls(**json.loads(path.read_text(encoding="utf-8")))


def scores(name: str, probabilities, features, class_means=None):
    """A confidence score per image (higher: more sure) from calibrated probabilities ``(N, classes)`` and pooled
    base features ``(N, channels)``; graph ops, so exports and evaluation share it."""
    if name == "max_probability":
        return tf.reduce_max(probabilities, axis=-1)
    if name == "class_mean_similarity":  # cosine similarity to the mean of the class answered
        unit = tf.math.l2_normalize(tf.cast(features, tf.float32), axis=-1)
        similarity = tf.matmul(unit, tf.constant(class_means, tf.float32), transpose_b=True)
        return tf.gather(similarity, tf.argmax(probabilities, axis=-1), batch_dims=1)
    raise TlkitError(f"unknown confidence score {name!r}; choose from {', '.join(SCORES)}")


def calibrated(logits, temperature: float):
    return tf.nn.softmax(tf.cast(logits, tf.float32) / temperature, axis=-1)


def outputs(model, pixels, confidence: Confidence) -> dict:
    """``{"probabilities": calibrated (N, classes), "score": (N,)}`` of the classifier on raw pixels."""
    features = feature_map(model, tf.cast(pixels, tf.float32))
    probs = calibrated(head_logits(model, features), confidence.temperature)
    return {"probabilities": probs,
            "score": scores(confidence.score, probs, pooled(features), confidence.class_means)}


def pixel_function(model, size: int, confidence: Confidence, dtype=tf.float32):
    """``pixels (N, size, size, 3) -> {"probabilities", "score"}``, inference mode: what TFLite and ONNX convert."""
    @tf.function(input_signature=[tf.TensorSpec([None, size, size, 3], dtype, name="pixels")])
    def predict(pixels):
        return outputs(model, pixels, confidence)
    return predict


def exif_orientation(data):
    """The EXIF orientation (1-8) of encoded image bytes, 1 when there is none; graph ops only, no branches."""
    tiff = tf.strings.reduce_join(tf.strings.split(data, sep="Exif\x00\x00", maxsplit=1)[1:])  # b"": no EXIF
    raw = tf.cast(tf.io.decode_raw(tf.strings.substr(tiff, 0, _EXIF_WINDOW), tf.uint8), tf.int32)
    b = tf.pad(raw, [[0, _EXIF_WINDOW + 16 - tf.size(raw)]])
    little = tf.equal(b[0], ord("I"))  # "II": little-endian TIFF, "MM": big-endian

    def u16(i):
        lo, hi = tf.gather(b, i), tf.gather(b, i + 1)
        return tf.where(little, lo + 256 * hi, 256 * lo + hi)

    def u32(i):
        return tf.where(little, u16(i) + 65536 * u16(i + 2), 65536 * u16(i) + u16(i + 2))

    ifd = tf.clip_by_value(u32(4), 0, _EXIF_WINDOW - 2)
    entries = tf.minimum(ifd + 2 + 12 * tf.range(64), _EXIF_WINDOW)  # 12-byte entries: tag, type, count, value
    hit = (tf.range(64) < u16(ifd)) & tf.equal(u16(entries), 0x0112)
    value = tf.reduce_max(tf.where(hit, u16(entries + 8), 0))
    return tf.where((value >= 1) & (value <= 8), value, 1)


def orient(image, orientation):
    """Turn decoded pixels upright for an EXIF orientation, as Pillow's ``ImageOps.exif_transpose``: orientations
    5-8 transpose, then rows and columns flip as the table says; one graph, no branches."""
    transpose = tf.where(orientation >= 5, [1, 0, 2], [0, 1, 2])
    flips = tf.gather(tf.constant(_FLIPS), orientation - 1)  # (flip rows, flip columns)
    upright = tf.reverse(tf.transpose(image, transpose), tf.boolean_mask([0, 1], flips))
    return tf.ensure_shape(upright, [None, None, image.shape[-1]])  # the channels survive the dynamic permutation


def decode_tensor(data, size: int):
    """Encoded JPEG/PNG/BMP/GIF/WebP bytes to uint8 ``(size, size, 3)``, pixel for pixel as
    :func:`tlkit.images.decode_image` (Pillow) does in training: accurate IDCT, EXIF orientation, same resize."""
    def jpeg():
        image = tf.io.decode_jpeg(data, channels=3, dct_method="INTEGER_ACCURATE")
        return orient(image, exif_orientation(data))

    def other():
        return tf.io.decode_image(data, channels=3, expand_animations=False, dtype=tf.uint8)

    image = tf.cond(tf.io.is_jpeg(data), jpeg, other)
    return resize_tensor(image, size)


def serving_functions(model, class_names: list[str], size: int, confidence: Confidence):
    """The two signatures as concrete functions: ``serving_default`` (encoded images) and ``serving_pixels`` (uint8
    pixels of any size), both calling one trace of the model on ``(N, size, size, 3)`` uint8 pixels. Below the
    threshold ``class_ids`` is -1 and ``class_names`` the unknown label; the top-k are always the raw ranking."""
    names = tf.constant(class_names)
    k = min(TOP_K, len(class_names))
    threshold = -np.inf if confidence.threshold is None else confidence.threshold

    @tf.function(input_signature=[tf.TensorSpec([None, size, size, 3], tf.uint8)], autograph=False)
    def answer(pixels):
        out = outputs(model, pixels, confidence)
        probs, score = out["probabilities"], out["score"]
        top = tf.math.top_k(probs, k)
        ids = tf.argmax(probs, axis=-1, output_type=tf.int32)
        known = score >= threshold
        return {"probabilities": probs, "score": score, "class_ids": tf.where(known, ids, -1),
                "class_names": tf.where(known, tf.gather(names, ids), confidence.unknown_label),
                "top_k_class_ids": top.indices, "top_k_probabilities": top.values,
                "top_k_class_names": tf.gather(names, top.indices)}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="images")], autograph=False)
    def serve_images(images):
        pixels = tf.map_fn(lambda data: decode_tensor(data, size), images,
                           fn_output_signature=tf.TensorSpec([size, size, 3], tf.uint8))
        return answer(pixels)

    @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3], tf.uint8, name="pixels")], autograph=False)
    def serve_pixels(pixels):
        return answer(resize_tensor(pixels, size))

    return serve_images.get_concrete_function(), serve_pixels.get_concrete_function()


def write_labels(folder: Path, class_names: list[str], confidence: Confidence | None = None) -> Path:
    """``labels.txt`` (and, given ``confidence``, ``confidence.json`` without the class means) in ``folder``."""
    path = folder / LABELS_FILE
    path.write_text("".join(f"{c}\n" for c in class_names), encoding="utf-8")
    if confidence is not None:
        confidence.write(folder, means=False)
    return path


def read_labels(path: Path) -> list[str]:
    if not path.is_file():
        raise TlkitError(f"{path} is missing; an exported model keeps its class names there (re-export the run)")
    return path.read_text(encoding="utf-8").splitlines()
