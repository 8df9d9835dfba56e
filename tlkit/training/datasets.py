"""What the training loop reads: batches of full images or of cached features, in an order that is a function
of seed and epoch only (so a resumed run repeats it), inputs as float32, labels as the head expects them."""
from __future__ import annotations

import warnings

import numpy as np
import tensorflow as tf

from tlkit.recipe import Recipe

# TensorFlow warns, once per process, whenever a tf.function iterates over a dataset: that options() in graph mode
# "might not reflect the actual value". The loop sets no options there; the line is noise on the user's stderr.
warnings.filterwarnings("ignore", message="To make it possible to preserve tf.data options", category=UserWarning)


def labels_for(labels: np.ndarray, recipe: Recipe) -> np.ndarray:
    if recipe.head.activation == "sigmoid":
        return labels.astype(np.float32).reshape(-1, 1)
    return labels.astype(np.int32)


def _label_spec(recipe):
    if recipe.head.activation == "sigmoid":
        return tf.TensorSpec((None, 1), tf.float32)
    return tf.TensorSpec((None,), tf.int32)


def epoch_order(n: int, seed: int, epoch: int, passes: int = 1) -> np.ndarray:
    """The training order of an epoch, ``passes`` shuffled passes over ``n`` examples: a function of seed, epoch
    and passes only, so a resumed run repeats it."""
    return np.concatenate([np.random.default_rng([seed, epoch, *([k] if k else [])]).permutation(n)
                           for k in range(passes)])


def indexed_dataset(order: np.ndarray, gather, specs, batch_size: int, drop_remainder: bool = False):
    """Batches ``gather(indices)`` over ``order``, inputs as float32; cached features and full images share
    this order."""
    dtypes = [s.dtype for s in specs]

    def load(indices):
        values = tf.numpy_function(gather, [indices], dtypes, stateful=True)
        values = [tf.ensure_shape(v, s.shape) for v, s in zip(values, specs)]
        *inputs, labels = values
        inputs = [tf.cast(x, tf.float32) for x in inputs]  # uint8 pixels cross into the graph 4x smaller
        return (tuple(inputs) if len(inputs) > 1 else inputs[0]), labels

    ds = tf.data.Dataset.from_tensor_slices(order).batch(batch_size, drop_remainder=drop_remainder).map(load)
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return ds.with_options(options).prefetch(tf.data.AUTOTUNE)


def image_dataset(split, recipe: Recipe, order: np.ndarray | None = None, drop_remainder: bool = False):
    """Batches of a split's full images (float 0-255) and labels, in ``order`` (default: as stored)."""
    labels = labels_for(split.labels, recipe)
    spec = tf.TensorSpec((None, recipe.size, recipe.size, 3), tf.uint8)
    order = np.arange(len(split)) if order is None else order
    return indexed_dataset(order, lambda i: (split.images[i], labels[i]),
                           [spec, _label_spec(recipe)], recipe.batch_size, drop_remainder)


def feature_dataset(features, split, recipe: Recipe, order: np.ndarray | None = None, epoch: int = 0,
                    drop_remainder: bool = False):
    """Batches of a split's cached features (:class:`~tlkit.training.features.CutFeatures`); with ``order``
    (training) each image's replica is drawn per epoch."""
    labels = labels_for(split.labels, recipe)
    specs = [tf.TensorSpec((None, *a.shape[1:]), tf.float32) for a in features.shared] + [_label_spec(recipe)]
    rng = np.random.default_rng([recipe.seed, epoch, 1])
    training = order is not None

    def gather(indices):
        replica = rng.integers(features.replicas, size=len(indices)) if training else 0
        return (*features.take(replica, indices), labels[indices])
    order = np.arange(len(split)) if order is None else order
    return indexed_dataset(order, gather, specs, recipe.batch_size, drop_remainder)
