"""TFLite conversion: the classifier on ``size`` x ``size`` pixels (0-255), in four variants.

float32    exact; float32 pixels in, calibrated probabilities and the confidence score out
float16    weights stored as float16 (half the size); float32 in and out
dynamic    weights int8, activations float at run time; float32 in and out
int8       full-integer: int8 weights and activations calibrated on training images; uint8 pixels in,
           uint8 probabilities (scale 1/256) and score out; biases corrected for the mean error of int8 weights,
           and activation ranges clipped where that lowers the rounding error

Every file carries TFLite metadata (:mod:`tlkit.serving.metadata`): labels, normalisation, threshold.
"""
from __future__ import annotations

import logging
import warnings
from pathlib import Path

import numpy as np
import tensorflow as tf

from tlkit.errors import TlkitError
from tlkit.serving.metadata import metadata_buffer, output_names, with_metadata
from tlkit.serving.signatures import LABELS_FILE, Confidence, pixel_function, write_labels

log = logging.getLogger(__name__)

VARIANTS = ("float32", "float16", "dynamic", "int8")
_BATCH = 16


def convert(model, size: int, variant: str, confidence: Confidence,
            representative: np.ndarray | None = None) -> bytes:
    """The TFLite flatbuffer of one variant (no metadata); ``int8`` needs ``representative`` uint8 pixels
    (N, size, size, 3)."""
    if variant not in VARIANTS:
        raise TlkitError(f"unknown TFLite variant {variant!r}; choose from {', '.join(VARIANTS)}")
    if variant == "int8":
        if representative is None or not len(representative):
            raise TlkitError("int8 TFLite needs representative training images for calibration")
        model = with_clipped_ranges(bias_corrected(model, representative), representative)
    predict = pixel_function(model, size, confidence)
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
    dense output on ``pixels`` (bias correction, Nagel et al. 2019)."""
    import keras

    copy = keras.models.clone_model(model)
    copy.set_weights(model.get_weights())
    x = pixels.astype(np.float32)
    for layer in copy.layers[1:]:  # the classifier is a chain: image, augment, preprocess, base, head
        if isinstance(layer, keras.Model):
            _correct_biases(layer, x)
        x = _forward(layer, x)
    return copy


def _forward(layer, x: np.ndarray) -> np.ndarray:
    """``layer``'s inference output on ``x``, in batches."""
    return np.concatenate([np.asarray(layer(x[i:i + _BATCH], training=False)) for i in range(0, len(x), _BATCH)])


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


def with_clipped_ranges(model, pixels: np.ndarray):
    """A copy of ``model`` (same weights) that tells the int8 converter its activation ranges, where the
    converter's own min/max calibration wastes int8 levels:

    - the "tf" preprocessing: x / 127.5 gets [0, 2], which keeps every grey level (calibrated, it gets [-1, 2]
      and pixels are rounded to 1.5 grey levels);
    - every output int8 quantizes on its own gets the clipped range with the least mean squared rounding error
      on ``pixels`` (rare outliers, as in MobileNetV2's linear bottlenecks, otherwise stretch the range)."""
    import keras

    from tlkit.model import Preprocess

    x, inputs = pixels.astype(np.float32), keras.Input(model.inputs[0].shape[1:])
    outputs = inputs
    for layer in model.layers[1:]:  # the classifier is a chain: image, augment, preprocess, base, head
        if isinstance(layer, Preprocess) and layer.mode == "tf":
            outputs = keras.layers.Lambda(_grey_levels_kept)(outputs)
        elif isinstance(layer, keras.Model) and not isinstance(layer, keras.Sequential):
            outputs = _with_ranges(layer, _clipped_ranges(layer, x))(outputs)
        else:
            outputs = layer(outputs)
        x = _forward(layer, x)
    return keras.Model(inputs, outputs)


def _grey_levels_kept(pixels):
    """The "tf" preprocessing, x / 127.5 - 1, with x / 127.5 on the int8 grid of [0, 2]: one level per grey level."""
    return tf.quantization.fake_quant_with_min_max_args(tf.cast(pixels, tf.float32) / 127.5, 0.0, 2.0) - 1.0


def _clipped_ranges(model, inputs: np.ndarray, samples: int = 4000) -> dict[str, tuple[float, float]]:
    """Layer name -> clipped range, for the outputs of the functional ``model`` that int8 quantizes on their own
    and whose rounding error on ``inputs`` (``samples`` values drawn per image) clipping lowers."""
    import keras

    consumers = {}
    for layer in model.layers:
        for tensor in keras.tree.flatten(layer.input):
            consumers.setdefault(id(tensor), []).append(layer)
    layers = [layer for layer in model.layers if _quantized_alone(layer, consumers.get(id(layer.output), []))]
    if not layers:
        return {}
    probe = keras.Model(model.inputs, {layer.name: layer.output for layer in layers})
    rng = np.random.default_rng(0)
    values = {layer.name: [] for layer in layers}
    for i in range(0, len(inputs), _BATCH):
        for name, value in probe([inputs[i:i + _BATCH]], training=False).items():
            value = np.asarray(value).reshape(len(value), -1)
            values[name].append(np.take_along_axis(value, rng.integers(0, value.shape[1], (len(value), samples)), 1))
    ranges = {}
    for name, value in values.items():
        value = np.concatenate(value).astype(np.float64).ravel()
        low, high = min(value.min(), 0.0), max(value.max(), 0.0)
        errors = [_rounding_error(value, f * low, f * high) for f in _CLIP_FRACTIONS]
        best = _CLIP_FRACTIONS[int(np.argmin(errors))]
        if best < 1:
            ranges[name] = (best * low, best * high)
    return ranges


_CLIP_FRACTIONS = np.linspace(0.05, 1.0, 39, endpoint=False).tolist() + [1.0]


def _rounding_error(values: np.ndarray, low: float, high: float) -> float:
    """Mean squared error of rounding ``values`` to the 256-level grid on [low, high] (low <= 0 <= high)."""
    step = (high - low) / 255
    if step == 0:
        return 0.0
    zero = np.round(-128 - low / step)
    return float(np.mean(((np.clip(np.round(values / step) + zero, -128, 127) - zero) * step - values) ** 2))


def _quantized_alone(layer, consumers: list) -> bool:
    """Whether int8 conversion quantizes ``layer``'s output itself rather than fusing the layer into the next
    (a kernel into its batch norm, a batch norm into its ReLU)."""
    import keras

    L = keras.layers
    if isinstance(layer, (L.Conv2D, L.DepthwiseConv2D)):
        return not any(isinstance(c, L.BatchNormalization) for c in consumers)
    if isinstance(layer, L.BatchNormalization):
        return not any(isinstance(c, L.ReLU) for c in consumers)
    return isinstance(layer, (L.ReLU, L.Add))


def _with_ranges(model, ranges: dict[str, tuple[float, float]]):
    """A copy of the functional ``model`` (same weights) with a fake-quantization op on each output in ``ranges``,
    whose range the int8 converter then uses instead of calibrating one."""
    import keras

    def call(layer, *args, **kwargs):
        output = layer(*args, **kwargs)
        if layer.name not in ranges:
            return output
        low, high = ranges[layer.name]
        return keras.layers.Lambda(lambda t: tf.quantization.fake_quant_with_min_max_args(t, low, high))(output)

    copy = keras.models.clone_model(model, call_function=call)
    copy.set_weights(model.get_weights())
    return copy


def _rounding_shift(layer, mean: np.ndarray) -> np.ndarray:
    """The mean change of ``layer``'s output on its mean input ``mean`` when its kernel is rounded to int8 per
    output channel, symmetric, as TFLite quantizes it (a batch norm after it scales each channel: same rounding)."""
    import keras

    kernel = np.asarray(layer.kernel, np.float64)
    depthwise = isinstance(layer, keras.layers.DepthwiseConv2D)  # kernel (h, w, channels, multiplier)
    outputs = 2 if depthwise else 1  # trailing axes that index output channels
    scale = np.abs(kernel).max(tuple(range(kernel.ndim - outputs)), keepdims=True) / 127
    error = (np.round(kernel / np.maximum(scale, np.finfo(np.float32).tiny)) * scale - kernel).astype(np.float32)
    if isinstance(layer, keras.layers.Dense):  # on vectors, or on feature maps (ConvNeXt's pointwise layers)
        return (mean @ error).reshape(-1, error.shape[-1]).mean(0)
    conv = keras.ops.depthwise_conv if depthwise else keras.ops.conv
    shifted = conv(mean[None].astype(np.float32), error, layer.strides, layer.padding, layer.data_format,
                   layer.dilation_rate)  # the convolution is linear: its error on the mean input, borders included
    return np.asarray(shifted).mean((0, 1, 2))


def export_tflite(model, class_names: list[str], size: int, folder: Path, name: str, representative: np.ndarray,
                  confidence: Confidence, variants=VARIANTS, version: str = "1") -> dict[str, Path]:
    """Write ``NAME_VARIANT.tflite`` (with metadata) for each variant, ``labels.txt`` and ``confidence.json``
    into ``folder``."""
    files = {}
    labels = write_labels(folder, class_names, confidence)
    for variant in variants:
        path = folder / f"{name}_{variant}.tflite"
        flatbuffer = convert(model, size, variant, confidence, representative)
        metadata = metadata_buffer(f"{name} ({variant})", f"tlkit image classifier: {', '.join(class_names)}", size,
                                   output_names(flatbuffer), class_names, confidence, version)
        path.write_bytes(with_metadata(flatbuffer, metadata, {LABELS_FILE: labels.read_bytes()}))
        log.info("TFLite %s: %s (%.0f KB)", variant, path.name, path.stat().st_size / 1024)
        files[variant] = path
    return files
