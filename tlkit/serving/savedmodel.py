"""The SavedModel: both serving signatures, the class names and the image size. Written with
``tf.saved_model.save`` of a plain ``tf.Module`` holding the signatures' concrete functions and the variables they
read: ``tf.saved_model.save`` does not take a Keras 3 model (keras#19458), and Keras' ExportArchive, which works
around it, traces every endpoint again while saving."""
from __future__ import annotations

from pathlib import Path

import tensorflow as tf

from tlkit.serving.signatures import Confidence, serving_functions, write_labels


def write_savedmodel(model, class_names: list[str], size: int, target: Path, confidence: Confidence) -> None:
    """Write a SavedModel with both signatures (also callable as attributes of the loaded object), the image size
    (``image_size[0]`` once loaded), and the class names and confidence record in ``assets/`` into ``target``."""
    module = tf.Module()
    module.serving_default, module.serving_pixels = serving_functions(model, class_names, size, confidence)
    signatures = {"serving_default": module.serving_default, "serving_pixels": module.serving_pixels}
    module.model_variables = list({v.ref(): v for fn in signatures.values() for v in fn.variables}.values())
    module.image_size = [tf.Variable(size, trainable=False, name="image_size")]
    tf.saved_model.save(module, str(target), signatures=signatures)
    (target / "assets").mkdir(exist_ok=True)
    write_labels(target / "assets", class_names, confidence)
