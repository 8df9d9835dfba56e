"""TFLite conversion: the classifier on ``size`` x ``size`` pixels (0-255), in four variants.

float32    exact; float32 pixels in, probabilities out
float16    weights stored as float16 (half the size); float32 in and out
dynamic    weights int8, activations float at run time; float32 in and out
int8       full-integer: int8 weights and activations calibrated on training images; uint8 pixels in,
           uint8 probabilities out (scale 1/256); biases corrected for the mean error of int8 weights
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
_BATCH = 16


def convert(model, size: int, variant: str, representative: np.ndarray | None = None) -> bytes:
    """The TFLite flatbuffer of one variant; ``int8`` needs ``representative`` uint8 pixels (N, size, size, 3)."""
    if variant not in VARIANTS:
        raise TlkitError(f"unknown TFLite variant {variant!r}; choose from {', '.join(VARIANTS)}")
    if variant == "int8":
        if representative is None or not len(representative):
            raise TlkitError("int8 TFLite needs representative training images for calibration")
        model = bias_corrected(model, representative)
    predict = pixel_function(model, size)
    holder = tf.Module()  # only what the function reads, so every variable freezes into a constant
    holder.predict = predict
    converter = tf.lite.TFLiteConverter.from_concrete_functions([predict.get_concrete_function()], holder)
    if variant != "float32":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if variant == "float16":
        converter.target_spec.supported_types = [tf.float16]
    elif variant == "int8":
        converter.representative_dataset = lambda: ([p[None].astype(np.float32)] for p in representative)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.uint8
        converter.inference_output_type = tf.uint8
    with warnings.catch_warnings():  # int8: "Statistics for quantized inputs were expected" (calibration has them)
        warnings.simplefilter("ignore", UserWarning)
        return converter.convert()


def bias_corrected(model, pixels: np.ndarray):
    """A copy of ``model`` whose biases absorb the mean error that int8 kernels add to each convolution and
    dense output on ``pixels`` (bias correction, Nagel et al. 2019). Without it, the rounded kernel of
    MobileNetV2's first depthwise layer alone shifts whole channels and changes 1 answer in 10."""
    import keras

    copy = keras.models.clone_model(model)
    copy.set_weights(model.get_weights())
    x = pixels.astype(np.float32)
    for layer in copy.layers[1:]:  # the classifier is a chain: image, augment, preprocess, base, head
        if isinstance(layer, keras.Model):
            _correct_biases(layer, x)
        x = np.concatenate([np.asarray(layer(x[i:i + _BATCH], training=False)) for i in range(0, len(x), _BATCH)])
    return copy


def _correct_biases(model, inputs: np.ndarray) -> None:
    """Subtract from each kernel layer's bias (or add to the moving mean of the batch norm that follows a
    layer without bias) the mean change of its output on ``inputs`` that int8 rounding of its kernel makes."""
    import keras

    layers = [layer for layer in model.layers
              if isinstance(layer, (keras.layers.Conv2D, keras.layers.DepthwiseConv2D, keras.layers.Dense))]
    if not layers:
        return
    probe = keras.Model(model.inputs, {layer.name: layer.input for layer in layers})
    sums = dict.fromkeys(probe.output, 0.0)
    for i in range(0, len(inputs), _BATCH):
        for name, value in probe([inputs[i:i + _BATCH]], training=False).items():
            sums[name] = sums[name] + np.asarray(value, np.float64).sum(0)
    norms = {id(layer.input): layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)}
    for layer in layers:
        shift = _rounding_shift(layer, sums[layer.name] / len(inputs))
        if layer.use_bias:
            layer.bias.assign(layer.bias - shift)
        elif id(layer.output) in norms:
            norms[id(layer.output)].moving_mean.assign(norms[id(layer.output)].moving_mean + shift)


def _rounding_shift(layer, mean: np.ndarray) -> np.ndarray:
    """The mean change of ``layer``'s output on its mean input ``mean`` when its kernel is rounded to int8 per
    output channel, symmetric, as TFLite quantizes it (a batch norm after it scales each channel: same rounding)."""
    import keras

    kernel = np.asarray(layer.kernel, np.float64)
    depthwise = isinstance(layer, keras.layers.DepthwiseConv2D)  # kernel (h, w, channels, multiplier)
    outputs = 2 if depthwise else 1  # trailing axes that index output channels
    scale = np.abs(kernel).max(tuple(range(kernel.ndim - outputs)), keepdims=True) / 127
    error = (np.round(kernel / np.maximum(scale, np.finfo(np.float32).tiny)) * scale - kernel).astype(np.float32)
    if isinstance(layer, keras.layers.Dense):
        return mean @ error
    conv = keras.ops.depthwise_conv if depthwise else keras.ops.conv
    shifted = conv(mean[None].astype(np.float32), error, layer.strides, layer.padding, layer.data_format,
                   layer.dilation_rate)  # the convolution is linear: its error on the mean input, borders included
    return np.asarray(shifted).mean((0, 1, 2))


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
