"""TFLite conversion: the classifier on ``size`` x ``size`` pixels (0-255), in four variants.

float32    exact; float32 pixels in, probabilities out
float16    weights stored as float16 (half the size); float32 in and out
dynamic    weights int8, activations float at run time; float32 in and out
int8       full-integer: int8 weights and activations calibrated on training images; uint8 pixels in,
           uint8 probabilities out (scale 1/256)
"""
from __future__ import annotations

import logging
import warnings
from pathlib import Path

import numpy as np
import tensorflow as tf

from tlkit.errors import TlkitError
from tlkit.export import pixel_function, write_labels

log = logging.getLogger(__name__)

VARIANTS = ("float32", "float16", "dynamic", "int8")


def convert(model, size: int, variant: str, representative: np.ndarray | None = None) -> bytes:
    """The TFLite flatbuffer of one variant; ``int8`` needs ``representative`` uint8 pixels (N, size, size, 3)."""
    if variant not in VARIANTS:
        raise TlkitError(f"unknown TFLite variant {variant!r}; choose from {', '.join(VARIANTS)}")
    predict = pixel_function(model, size)
    holder = tf.Module()  # only what the function reads, so every variable freezes into a constant
    holder.predict = predict
    converter = tf.lite.TFLiteConverter.from_concrete_functions([predict.get_concrete_function()], holder)
    if variant != "float32":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if variant == "float16":
        converter.target_spec.supported_types = [tf.float16]
    elif variant == "int8":
        if representative is None or not len(representative):
            raise TlkitError("int8 TFLite needs representative training images for calibration")
        converter.representative_dataset = lambda: ([p[None].astype(np.float32)] for p in representative)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.uint8
        converter.inference_output_type = tf.uint8
    with warnings.catch_warnings():  # int8: "Statistics for quantized inputs were expected" (calibration has them)
        warnings.simplefilter("ignore", UserWarning)
        return converter.convert()


def export_tflite(model, class_names: list[str], size: int, folder: Path, name: str,
                  representative: np.ndarray, variants=VARIANTS) -> dict[str, Path]:
    """Write ``NAME_VARIANT.tflite`` for each variant and ``labels.txt`` into ``folder``."""
    files = {}
    for variant in variants:
        path = folder / f"{name}_{variant}.tflite"
        path.write_bytes(convert(model, size, variant, representative))
        log.info("TFLite %s: %s (%.0f KB)", variant, path.name, path.stat().st_size / 1024)
        files[variant] = path
    write_labels(folder, class_names)
    return files
