"""The SavedModel: both serving signatures, the class names and the image size, written with Keras 3's
ExportArchive (``tf.saved_model.save`` does not handle Keras 3 models, keras#19458)."""
from __future__ import annotations

from pathlib import Path

import tensorflow as tf

from tlkit.serving.signatures import Confidence, serving_functions, write_labels


def write_savedmodel(model, class_names: list[str], size: int, target: Path, confidence: Confidence) -> None:
    """Write a SavedModel with both signatures, the image size, and the class names and confidence record in
    ``assets/`` into ``target``."""
    import keras

    serve_images, serve_pixels = serving_functions(model, class_names, size, confidence)
    archive = keras.export.ExportArchive()
    archive.add_endpoint("serving_default", serve_images)
    archive.add_endpoint("serving_pixels", serve_pixels)
    archive.add_variable_collection("image_size", [tf.Variable(size, trainable=False, name="image_size")])
    archive.write_out(str(target), verbose=False)
    (target / "assets").mkdir(exist_ok=True)
    write_labels(target / "assets", class_names, confidence)
