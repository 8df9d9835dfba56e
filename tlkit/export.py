"""Serving exports: a SavedModel laid out as TF Serving expects (``NAME/VERSION/``), taking encoded image
bytes or uint8 pixels of any size, with preprocessing and class names inside."""
from __future__ import annotations

import logging
import shutil
from pathlib import Path

import keras
import tensorflow as tf

from tlkit.data import resize_tensor
from tlkit.errors import TlkitError

log = logging.getLogger(__name__)

TOP_K = 5


def probabilities(outputs):
    """Class probabilities from the model's output (a single sigmoid unit becomes two columns)."""
    if outputs.shape[-1] == 1:
        return tf.concat([1.0 - outputs, outputs], axis=-1)
    return outputs


def serving_functions(model: keras.Model, class_names: list[str], size: int):
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

    def decode(data):
        image = tf.io.decode_image(data, channels=3, expand_animations=False, dtype=tf.uint8)
        return resize_tensor(image, size)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="images")])
    def serve_images(images):
        pixels = tf.map_fn(decode, images, fn_output_signature=tf.TensorSpec([size, size, 3], tf.uint8))
        return answer(pixels)

    @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3], tf.uint8, name="pixels")])
    def serve_pixels(pixels):
        return answer(resize_tensor(pixels, size))

    return serve_images, serve_pixels


def next_version(folder: Path) -> int:
    versions = [int(p.name) for p in folder.glob("*") if p.is_dir() and p.name.isdigit()]
    return max(versions, default=0) + 1


def export_savedmodel(model: keras.Model, class_names: list[str], size: int, export_root: Path, name: str,
                      version: int | None = None, force: bool = False) -> Path:
    """Write ``export_root/name/version`` atomically (temporary folder, then rename); return its path."""
    folder = Path(export_root) / name
    folder.mkdir(parents=True, exist_ok=True)
    version = version or next_version(folder)
    target = folder / str(version)
    if target.exists() and not force:
        raise TlkitError(f"{target} exists; choose another --version or pass --force to replace it")
    tmp = folder / f".tmp-{version}"
    shutil.rmtree(tmp, ignore_errors=True)
    serve_images, serve_pixels = serving_functions(model, class_names, size)
    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint("serving_default", serve_images)
    archive.add_endpoint("serving_pixels", serve_pixels)
    archive.write_out(str(tmp), verbose=False)
    (tmp / "assets").mkdir(exist_ok=True)
    (tmp / "assets" / "labels.txt").write_text("".join(f"{c}\n" for c in class_names), encoding="utf-8")
    if target.exists():
        shutil.rmtree(target)
    tmp.rename(target)
    log.info("exported SavedModel to %s", target)
    return target
