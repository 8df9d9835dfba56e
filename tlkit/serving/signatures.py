"""The leaf of serving: what every export computes and how it labels answers. Probabilities from the model's
output, the pixel function the converters take, the in-graph decoder that matches training pixel for pixel,
the SavedModel signatures, and the labels file beside every artefact."""
from __future__ import annotations

from pathlib import Path

import tensorflow as tf

from tlkit.errors import TlkitError
from tlkit.images import resize_tensor

TOP_K = 5
LABELS_FILE = "labels.txt"
_EXIF_WINDOW = 1024  # bytes of the EXIF block searched for the orientation tag (IFD0 sits at its start)


def probabilities(outputs):
    """Class probabilities from the model's output (a single sigmoid unit becomes two columns)."""
    if outputs.shape[-1] == 1:
        return tf.concat([1.0 - outputs, outputs], axis=-1)
    return outputs


def pixel_function(model, size: int, dtype=tf.float32):
    """``pixels (N, size, size, 3) -> {"probabilities"}``, inference mode: what TFLite and ONNX convert."""
    @tf.function(input_signature=[tf.TensorSpec([None, size, size, 3], dtype, name="pixels")])
    def predict(pixels):
        return {"probabilities": probabilities(tf.cast(model(tf.cast(pixels, tf.float32), training=False),
                                                       tf.float32))}
    return predict


def exif_orientation(data):
    """The EXIF orientation (1-8) of encoded image bytes, 1 when there is none; graph ops only."""
    parts = tf.strings.split(data, sep="Exif\x00\x00", maxsplit=1)
    tiff = tf.cond(tf.size(parts) > 1, lambda: parts[-1], lambda: tf.constant(b""))
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
    """Turn decoded pixels upright for an EXIF orientation, as Pillow's ``ImageOps.exif_transpose``."""
    transposed = lambda: tf.transpose(image, [1, 0, 2])  # noqa: E731
    return tf.switch_case(orientation - 1, [
        lambda: image,
        lambda: tf.reverse(image, [1]),
        lambda: tf.reverse(image, [0, 1]),
        lambda: tf.reverse(image, [0]),
        transposed,
        lambda: tf.image.rot90(image, 3),
        lambda: tf.reverse(transposed(), [0, 1]),
        lambda: tf.image.rot90(image, 1),
    ])


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


def serving_functions(model, class_names: list[str], size: int):
    """The two signatures: ``serving_default`` (encoded images) and ``serving_pixels`` (uint8 pixels)."""
    names = tf.constant(class_names)
    k = min(TOP_K, len(class_names))

    def answer(pixels):
        probs = probabilities(tf.cast(model(tf.cast(pixels, tf.float32), training=False), tf.float32))
        top = tf.math.top_k(probs, k)
        ids = tf.argmax(probs, axis=-1, output_type=tf.int32)
        return {"probabilities": probs, "class_ids": ids, "class_names": tf.gather(names, ids),
                "top_k_class_ids": top.indices, "top_k_probabilities": top.values,
                "top_k_class_names": tf.gather(names, top.indices)}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="images")])
    def serve_images(images):
        pixels = tf.map_fn(lambda data: decode_tensor(data, size), images,
                           fn_output_signature=tf.TensorSpec([size, size, 3], tf.uint8))
        return answer(pixels)

    @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3], tf.uint8, name="pixels")])
    def serve_pixels(pixels):
        return answer(resize_tensor(pixels, size))

    return serve_images, serve_pixels


def write_labels(folder: Path, class_names: list[str]) -> Path:
    path = folder / LABELS_FILE
    path.write_text("".join(f"{c}\n" for c in class_names), encoding="utf-8")
    return path


def read_labels(path: Path) -> list[str]:
    if not path.is_file():
        raise TlkitError(f"{path} is missing; an exported model keeps its class names there (re-export the run)")
    return path.read_text(encoding="utf-8").splitlines()
