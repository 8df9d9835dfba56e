"""What the training loop reads: batches of full images or of cached features, in an order that is a function
of seed and epoch only (so a resumed run repeats it), inputs as float32, labels as the head expects them."""
from __future__ import annotations

import numpy as np
import tensorflow as tf

from tlkit.recipe import Recipe


def labels_for(labels: np.ndarray, recipe: Recipe) -> np.ndarray:
    if recipe.head.activation == "sigmoid":
        return labels.astype(np.float32).reshape(-1, 1)
    return labels.astype(np.int32)


def _label_spec(recipe):
    if recipe.head.activation == "sigmoid":
        return tf.TensorSpec((None, 1), tf.float32)
    return tf.TensorSpec((None,), tf.int32)


class Joined:
    """Arrays joined along ``axis`` (0: images, 1: cached features, after the replica axis) without copying
    them: indexing reads ``[index]`` or ``[replica, index]`` from the part each index falls in."""

    def __init__(self, parts: list, axis: int = 0):
        self.parts, self.axis = parts, axis
        self.bounds = np.cumsum([0] + [part.shape[axis] for part in parts])
        shape = list(parts[0].shape)
        shape[axis] = int(self.bounds[-1])
        self.shape, self.dtype = tuple(shape), parts[0].dtype

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key):
        *lead, index = key if isinstance(key, tuple) else (key,)
        index = np.asarray(index)
        lead = [np.broadcast_to(np.asarray(k), index.shape) for k in lead]
        out = None
        for part, low, high in zip(self.parts, self.bounds[:-1], self.bounds[1:]):
            mine = (index >= low) & (index < high)
            if mine.any():
                values = np.asarray(part[(*[k[mine] for k in lead], index[mine] - low)])
                if out is None:
                    out = np.empty((len(index), *values.shape[1:]), values.dtype)
                out[mine] = values
        return out


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


def feature_dataset(arrays, split, recipe: Recipe, order: np.ndarray | None = None, epoch: int = 0,
                    drop_remainder: bool = False):
    """Batches of cached features; with ``order`` (training) each image's replica is drawn per epoch."""
    labels = labels_for(split.labels, recipe)
    specs = [tf.TensorSpec((None, *a.shape[2:]), tf.float32) for a in arrays] + [_label_spec(recipe)]
    rng = np.random.default_rng([recipe.seed, epoch, 1])
    training = order is not None

    def gather(indices):
        replica = rng.integers(arrays[0].shape[0], size=len(indices)) if training else 0
        return (*[np.asarray(a[replica, indices]) for a in arrays], labels[indices])
    order = np.arange(len(split)) if order is None else order
    return indexed_dataset(order, gather, specs, recipe.batch_size, drop_remainder)
