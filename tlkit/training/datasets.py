"""What the training loop reads: batches of full images or of cached features, in an order that is a function
of seed and epoch only (so a resumed run repeats it), inputs as float32, labels as the head expects them."""
from __future__ import annotations

import warnings
from dataclasses import dataclass

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


def epoch_order(n: int, seed: int, epoch: int, passes: int = 1) -> np.ndarray:
    """The training order of an epoch, ``passes`` shuffled passes over ``n`` examples: a function of seed, epoch
    and passes only, so a resumed run repeats it."""
    return np.concatenate([np.random.default_rng([seed, epoch, *([k] if k else [])]).permutation(n)
                           for k in range(passes)])


def indexed_dataset(keys: tuple, labels: np.ndarray, take, batch_size: int, drop_remainder: bool = False):
    """Batches of ``(take(*batch keys), batch labels)``, inputs as float32. ``keys`` (a tuple of arrays) and
    ``labels`` hold one row per example in reading order; ``take`` maps a batch's keys to its inputs (a list of
    tensors) inside the graph. Cached features and full images share this order."""
    def load(keys, labels):
        inputs = [tf.cast(x, tf.float32) for x in take(*keys)]  # uint8 pixels cross into the graph 4x smaller
        return (tuple(inputs) if len(inputs) > 1 else inputs[0]), labels

    ds = tf.data.Dataset.from_tensor_slices((keys, labels)).batch(batch_size, drop_remainder=drop_remainder)
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return ds.map(load).with_options(options).prefetch(tf.data.AUTOTUNE)


def numpy_take(gather, specs: list[tf.TensorSpec]):
    """A ``take`` that calls ``gather`` (NumPy keys in, a list of arrays out) through ``tf.numpy_function``, once
    per batch: for arrays the graph does not hold (memory-mapped from disk)."""
    def take(*keys):
        values = tf.numpy_function(gather, list(keys), [s.dtype for s in specs], stateful=True)
        return [tf.ensure_shape(v, s.shape) for v, s in zip(values, specs)]
    return take


def image_dataset(split, recipe: Recipe, order: np.ndarray | None = None, drop_remainder: bool = False):
    """Batches of a split's full images (float 0-255) and labels, in ``order`` (default: as stored). The images
    are read through NumPy: next to a step of the whole base, that costs nothing worth a second copy."""
    order = np.arange(len(split)) if order is None else order
    spec = tf.TensorSpec((None, recipe.size, recipe.size, 3), tf.uint8)
    return indexed_dataset((order,), labels_for(split.labels, recipe)[order],
                           numpy_take(lambda i: [split.images[i]], [spec]), recipe.batch_size, drop_remainder)


@dataclass(frozen=True)
class HeldBatches:
    """Batches of features held in the graph (``CutFeatures.tables``): rows ``(replica, index)`` of every table,
    ``batch_size`` at a time, with their labels. One CPU replica gathers them inside its training loop
    (:meth:`tlkit.training.loop.Loop.train_epoch`), since tf.data's hand-off per batch costs as much as a step of
    a head; :meth:`dataset` gives the same batches through tf.data."""

    tables: list[tf.Variable]
    index: np.ndarray
    replica: np.ndarray
    labels: np.ndarray
    batch_size: int
    drop_remainder: bool = False

    def dataset(self):
        def take(index, replica):
            return [tf.gather_nd(table, tf.stack([replica, index], axis=1)) for table in self.tables]
        return indexed_dataset((self.index, self.replica), self.labels, take, self.batch_size, self.drop_remainder)


def feature_batches(features, split, recipe: Recipe, order: np.ndarray | None = None, epoch: int = 0,
                    drop_remainder: bool = False):
    """Batches of a split's cached features (:class:`~tlkit.training.features.CutFeatures`): :class:`HeldBatches`
    when it has tables, else a dataset read through NumPy; with ``order`` (training) each image's replica is drawn
    per epoch, up front, from seed and epoch."""
    training = order is not None
    order = np.arange(len(split)) if order is None else order
    replica = (np.random.default_rng([recipe.seed, epoch, 1]).integers(features.replicas, size=len(order))
               if training else np.zeros(len(order), np.int64))
    labels = labels_for(split.labels, recipe)[order]
    if features.tables:
        return HeldBatches(features.tables, order, replica, labels, recipe.batch_size, drop_remainder)
    specs = [tf.TensorSpec((None, *a.shape[1:]), tf.float32) for a in features.shared]
    take = numpy_take(lambda index, replica: features.take(replica, index), specs)
    return indexed_dataset((order, replica), labels, take, recipe.batch_size, drop_remainder)


def as_dataset(batches):
    """:class:`HeldBatches` as a dataset; a dataset as it is."""
    return batches.dataset() if isinstance(batches, HeldBatches) else batches
