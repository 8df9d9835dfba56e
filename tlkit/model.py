"""The classifier: raw 0-255 pixels -> augmentation -> the base's preprocessing -> base (normalisation layers
frozen, BatchNorm in inference mode) -> head. Also which layers train in each stage."""
from __future__ import annotations

import re
from dataclasses import dataclass

import keras
from keras import layers, ops

from tlkit.backbones import PREPROCESSING, Backbone
from tlkit.errors import TlkitError
from tlkit.recipe import Augment, FeatureExtraction, FineTune, FromScratch, Head, Recipe
from tlkit.weights import ResolvedWeights, load_into

_CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)
_TORCH_MEAN, _TORCH_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@keras.saving.register_keras_serializable(package="tlkit")
class Preprocess(layers.Layer):
    """A base's input normalisation as a layer, so saved and exported models take raw pixels: "tf" [-1, 1],
    "caffe" BGR minus the ImageNet mean, "torch" ImageNet mean/std on [0, 1], "raw" unchanged (the base
    normalises inside), "affine" ``x * scale + offset`` per channel (a KerasHub preset's image converter)."""

    def __init__(self, mode: str, scale=None, offset=None, **kwargs):
        super().__init__(**kwargs)
        if mode not in PREPROCESSING:
            raise ValueError(f"Preprocess mode must be one of {', '.join(PREPROCESSING)}; received: {mode!r}")
        if (mode == "affine") != (scale is not None and offset is not None):
            raise ValueError("Preprocess takes scale and offset with mode='affine' only")
        self.mode, self.scale, self.offset = mode, scale, offset

    def call(self, images):
        x = ops.cast(images, self.compute_dtype)
        if self.mode == "tf":
            return x / 127.5 - 1.0
        if self.mode == "caffe":
            return ops.flip(x, axis=-1) - ops.convert_to_tensor(_CAFFE_MEAN_BGR, self.compute_dtype)
        if self.mode == "torch":
            mean, std = (ops.convert_to_tensor(v, self.compute_dtype) for v in (_TORCH_MEAN, _TORCH_STD))
            return (x / 255.0 - mean) / std
        if self.mode == "affine":
            return x * ops.convert_to_tensor(self.scale, self.compute_dtype) + \
                ops.convert_to_tensor(self.offset, self.compute_dtype)
        return x

    def get_config(self):
        config = {**super().get_config(), "mode": self.mode}
        return {**config, "scale": list(self.scale), "offset": list(self.offset)} if self.mode == "affine" else config

    @classmethod
    def for_base(cls, backbone: Backbone) -> "Preprocess":
        """The layer a base's record asks for."""
        affine = backbone.preprocessing == "affine"
        return cls(backbone.preprocessing, backbone.scale if affine else None, backbone.offset if affine else None,
                   name="preprocess")


@dataclass
class Classifier:
    """The full model and handles on its parts (layers are shared, so training a part trains the whole)."""

    model: keras.Model
    base: keras.Model
    preprocess: Preprocess
    augment: keras.Sequential | None
    head: keras.Sequential


def augmentation(spec: Augment, seed: int) -> keras.Sequential | None:
    """Keras preprocessing layers for the declared augmentation (active only in training)."""
    steps = []
    if spec.flip:
        steps.append(layers.RandomFlip(spec.flip, seed=seed))
    if spec.rotation:
        steps.append(layers.RandomRotation(spec.rotation, seed=seed))
    if spec.zoom:
        steps.append(layers.RandomZoom(spec.zoom, seed=seed))
    if spec.translation:
        steps.append(layers.RandomTranslation(spec.translation, spec.translation, seed=seed))
    if spec.contrast:
        steps.append(layers.RandomContrast(spec.contrast, seed=seed))
    if spec.brightness:
        steps.append(layers.RandomBrightness(spec.brightness, value_range=(0, 255), seed=seed))
    return keras.Sequential(steps, name="augment") if steps else None


def head_layers(spec: Head, num_classes: int, tokens: bool = False) -> keras.Sequential:
    """Pooling or flatten, optional hidden dense layers, dropout, and the output layer (float32); ``tokens``:
    the base outputs a sequence (a KerasHub transformer), pooled over its tokens."""
    if spec.activation == "sigmoid" and num_classes != 2:
        raise TlkitError(f"head.activation=sigmoid needs exactly two classes; the data has {num_classes} "
                         "(use head.activation=softmax)")
    pool = {"avg": layers.GlobalAveragePooling1D if tokens else layers.GlobalAveragePooling2D,
            "max": layers.GlobalMaxPooling1D if tokens else layers.GlobalMaxPooling2D,
            "flatten": layers.Flatten}[spec.pooling]
    steps = [pool(name="pool")]
    for i, units in enumerate(spec.hidden):
        steps.append(layers.Dense(units, activation="relu", name=f"hidden_{i}"))
    if spec.dropout:
        steps.append(layers.Dropout(spec.dropout, name="dropout"))
    units = 1 if spec.activation == "sigmoid" else num_classes
    steps.append(layers.Dense(units, activation=spec.activation, dtype="float32", name="predictions"))
    return keras.Sequential(steps, name="head")


def build_classifier(recipe: Recipe, num_classes: int, weights: ResolvedWeights) -> Classifier:
    """Build the whole model, seeded, with the resolved weights loaded into the base."""
    keras.utils.set_random_seed(recipe.seed)
    backbone = recipe.backbone
    base = backbone.build(recipe.size, recipe.alpha)
    load_into(base, weights, backbone)
    base.trainable = False
    augment = augmentation(recipe.augment, recipe.seed)
    preprocess = Preprocess.for_base(backbone)
    head = head_layers(recipe.head, num_classes, tokens=len(base.output.shape) == 3)

    inputs = keras.Input((recipe.size, recipe.size, 3), name="image")
    x = augment(inputs) if augment else inputs
    x = preprocess(x)
    x = base(x, training=False)  # as the Keras guide; BN inference mode is enforced by set_trainable
    outputs = head(x)
    model = keras.Model(inputs, outputs, name=f"tlkit_{re.sub(r'[^A-Za-z0-9_]', '_', recipe.base)}")
    return Classifier(model, base, preprocess, augment, head)


def unfreeze_index(recipe: Recipe, base: keras.Model, stage: FineTune) -> int:
    """Index in ``base.layers`` of the first layer a fine-tuning stage unfreezes."""
    names = [layer.name for layer in base.layers]
    if stage.unfreeze_from is not None:
        if stage.unfreeze_from not in names:
            starts = [layers_[0] for _, layers_ in recipe.backbone.blocks(base)]
            raise TlkitError(f"unfreeze_from={stage.unfreeze_from!r} is not a layer of {recipe.base}; "
                             f"block starts: {', '.join(starts)}")
        return names.index(stage.unfreeze_from)
    if stage.unfreeze_blocks is not None:
        blocks = recipe.backbone.blocks(base)
        if stage.unfreeze_blocks > len(blocks):
            raise TlkitError(f"unfreeze_blocks={stage.unfreeze_blocks} but {recipe.base} has {len(blocks)} "
                             f"blocks: {', '.join(b for b, _ in blocks)}")
        return names.index(blocks[-stage.unfreeze_blocks][1][0])
    body = len(names) - 1  # without the InputLayer
    return len(names) - max(1, round(body * stage.unfreeze_fraction))


def inference(model: keras.Model):
    """``model(x, training=False)`` on float32 batches ``x`` (a list for a model of several inputs) of any size
    (Keras casts them to the model's compute dtype), usable outside a strategy's replica context (Keras' predict
    splits batches across replicas under MirroredStrategy). Traced once: the batch dimension is left open, so a
    short last batch does not retrace."""
    import tensorflow as tf
    specs = [tf.TensorSpec((None, *tensor.shape[1:]), tf.float32) for tensor in model.inputs]
    if len(specs) == 1:
        return tf.function(lambda x: model(x, training=False), input_signature=specs)
    return tf.function(lambda x: model(list(x), training=False), input_signature=[specs])  # a list of inputs


def cut_index(recipe: Recipe, base: keras.Model, stage) -> int:
    """Index in ``base.layers`` of the first layer a stage trains (``len(base.layers)``: none; 0: all)."""
    if isinstance(stage, FeatureExtraction):
        return len(base.layers)
    if isinstance(stage, FromScratch):
        return 0
    return unfreeze_index(recipe, base, stage)


SCRATCH_BN_MOMENTUM = 0.9  # from scratch, moving statistics must catch up within a short run (Keras: 0.99)


def set_trainable(classifier: Classifier, recipe: Recipe, stage) -> int:
    """Freeze and unfreeze for a stage; return the index of the first trainable base layer.

    ``batchnorm="frozen"`` also freezes every normalisation layer of the base's record, nested ones included
    (ConvNeXt's stem, KerasHub blocks): BatchNorm then runs in inference mode, so its moving statistics never
    move, and LayerNorm, which has no statistics, keeps its scale and offset. A FromScratch stage trains every
    layer, and BatchNorm's moving statistics follow the batches faster."""
    base = classifier.base
    cut = cut_index(recipe, base, stage)
    norms = recipe.backbone.norm_layers() if recipe.batchnorm == "frozen" else ()
    scratch = isinstance(stage, FromScratch)
    base.trainable = cut < len(base.layers)
    for i, layer in enumerate(base.layers):
        layer.trainable = i >= cut  # propagates to the layers it contains
        for inner in layer._flatten_layers():  # the layer itself and all it contains (Keras has no public walk)
            if isinstance(inner, norms):
                inner.trainable = False
            if scratch and isinstance(inner, layers.BatchNormalization):
                inner.momentum = SCRATCH_BN_MOMENTUM
    return cut


# === The chain split at the base's output (explanations and confidence scores start there) ===

def base_position(model: keras.Model) -> int:
    """Index in ``model.layers`` of the base, in the classifier's chain (image, augment, preprocess, base, head) and
    in the copies the converters make of it: its one functional layer that is not a Sequential."""
    found = [i for i, layer in enumerate(model.layers)
             if isinstance(layer, keras.Model) and not isinstance(layer, keras.Sequential)]
    if len(found) != 1:
        raise TlkitError(f"{model.name} is not a tlkit classifier (image, augment, preprocess, base, head); "
                         "pass a run folder's model.keras")
    return found[0]


def feature_map(model: keras.Model, pixels):
    """The base's output ``(N, h, w, channels)`` for raw 0-255 pixels, in inference mode."""
    x = pixels
    for layer in model.layers[1:base_position(model) + 1]:
        x = layer(x, training=False)
    return x


def head_logits(model: keras.Model, features):
    """The head's output before its activation, float32 ``(N, classes)``: the softmax of it is the model's output.
    A single sigmoid unit z becomes ``[-z/2, z/2]``, whose softmax is ``[1 - sigmoid(z), sigmoid(z)]``."""
    return logits_of(model.layers[-1], features)


def logits_of(head: keras.Sequential, x, pooled_input: bool = False):
    """:func:`head_logits` of a head on the base's output, or with ``pooled_input`` on the output of its pooling
    layer (its first)."""
    for layer in head.layers[1 if pooled_input else 0:-1]:
        x = layer(x, training=False)
    last = head.layers[-1]
    z = ops.matmul(ops.cast(x, "float32"), last.kernel) + last.bias
    return ops.concatenate([-z / 2, z / 2], axis=-1) if z.shape[-1] == 1 else z


def pooled(features):
    """Global average of a feature map, float32 ``(N, channels)``: what the feature-space score compares."""
    return ops.mean(ops.cast(features, "float32"), axis=(1, 2))


def logits_and_features(model: keras.Model):
    """``pixels -> (head logits, pooled base features)`` on float32 batches of any size, traced once."""
    import tensorflow as tf
    (inputs,) = model.inputs
    spec = tf.TensorSpec((None, *inputs.shape[1:]), tf.float32)

    def forward(x):
        features = feature_map(model, x)
        return head_logits(model, features), pooled(features)
    return tf.function(forward, input_signature=[spec])
