"""The training loop: one optimizer step under ``strategy.run`` (one device, MirroredStrategy and
MultiWorkerMirroredStrategy alike), the weighted loss, and evaluation; epochs run inside the graph."""
from __future__ import annotations

import math

import keras
import numpy as np
import tensorflow as tf

from tlkit.recipe import Recipe
from tlkit.training.datasets import HeldBatches, as_dataset
from tlkit.training.optim import SmoothedSparseCrossentropy


def loss_for(recipe: Recipe, label_smoothing: float = 0.0, reduction="sum_over_batch_size"):
    if recipe.head.activation == "sigmoid":
        return keras.losses.BinaryCrossentropy(label_smoothing=label_smoothing, reduction=reduction)
    if label_smoothing:
        return SmoothedSparseCrossentropy(label_smoothing, reduction=reduction)
    return keras.losses.SparseCategoricalCrossentropy(reduction=reduction)


def _one_cpu_replica(strategy: tf.distribute.Strategy) -> bool:
    """Whether the strategy trains one replica, on the CPU."""
    if strategy.num_replicas_in_sync > 1:
        return False
    try:
        device = strategy.extended.worker_devices[0]
    except RuntimeError:  # the default strategy, which passes datasets through as they are anyway
        return True
    return tf.DeviceSpec.from_string(device).device_type == "CPU"


class Loop:
    """Train and evaluate one model: the step runs under ``strategy.run``, its sums are reduced across
    replicas and workers (Keras 3 ``fit`` does not run under MultiWorkerMirroredStrategy, keras#20585)."""

    def __init__(self, strategy: tf.distribute.Strategy, model: keras.Model, optimizer, recipe: Recipe,
                 class_weight: dict[int, float] | None = None, label_smoothing: float = 0.0,
                 l2: float = 0.0, penalized=()):
        self.strategy, self.model, self.optimizer = strategy, model, optimizer
        self.l2, self.penalized = l2, list(penalized)  # l2 x their sum of squares joins the loss
        self.per_example_loss = loss_for(recipe, label_smoothing, reduction=None)
        self.class_weight = None if class_weight is None else tf.constant(
            [class_weight[i] for i in range(len(class_weight))], tf.float32)  # training loss weight per class
        self.sigmoid = recipe.head.activation == "sigmoid"
        self.distributes = not _one_cpu_replica(strategy)
        self._train_epoch = tf.function(self._epoch)
        self._train_held = None  # traced at the first HeldBatches, for tables of any length
        self._train_step = tf.function(self._step)
        self._evaluate_epoch = tf.function(self._evaluate)

    def _correct(self, y, out):
        if self.sigmoid:
            hits = tf.equal(tf.cast(out > 0.5, tf.float32), y)
        else:
            hits = tf.equal(tf.argmax(out, axis=-1, output_type=tf.int32), y)
        return tf.reduce_sum(tf.cast(hits, tf.float32))

    def _replica_step(self, x, y):
        with tf.GradientTape() as tape:
            out = tf.cast(self.model(x, training=True), tf.float32)
            losses = self.per_example_loss(y, out)
            if self.class_weight is not None:
                losses *= tf.gather(self.class_weight, tf.reshape(tf.cast(y, tf.int32), [-1]))
            loss = tf.nn.compute_average_loss(losses)
            if self.penalized:
                penalty = tf.add_n([tf.reduce_sum(tf.square(tf.cast(v, tf.float32))) for v in self.penalized])
                loss += tf.nn.scale_regularization_loss(self.l2 * penalty)
            scaled = self.optimizer.scale_loss(loss)  # loss scaling under mixed_float16, else unchanged
        variables = self.model.trainable_variables
        self.optimizer.apply(tape.gradient(scaled, variables), variables)
        return tf.reduce_sum(losses), self._correct(y, out), tf.cast(tf.shape(losses)[0], tf.float32)

    def _epoch(self, batches):
        """One pass over a (distributed) dataset, the loop inside the graph (no Python per step). It iterates an
        iterator, a while loop run by the function's own executor: a loop over the dataset itself becomes a
        tf.data reduction, whose function runtime runs convolutions several times slower."""
        totals = tf.zeros(3)
        for x, y in iter(batches):
            totals += tf.stack(self._step(x, y))
        return totals

    def _step(self, x, y):
        sums = self.strategy.run(self._replica_step, args=(x, y))
        return [self.strategy.reduce(tf.distribute.ReduceOp.SUM, s, axis=None) for s in sums]

    def train_step(self, x, y) -> float:
        """One optimizer step on one batch, exactly as an epoch takes it; returns the batch's mean loss."""
        loss, _, count = self._train_step(x, y)
        return float(loss / count)

    def _held_epoch(self, tables, index, replica, labels, batch_size):
        """One pass over :class:`HeldBatches`, each batch gathered from the tables in the loop (as ``_epoch``)."""
        totals = tf.zeros(3)
        for start in tf.range(0, tf.shape(index)[0], batch_size):
            keys = tf.stack([replica[start:start + batch_size], index[start:start + batch_size]], axis=1)
            inputs = [tf.cast(tf.gather_nd(table, keys), tf.float32) for table in tables]
            totals += tf.stack(self._step(tuple(inputs) if len(inputs) > 1 else inputs[0],
                                          labels[start:start + batch_size]))
        return totals

    def train_epoch(self, batches) -> dict:
        """One epoch over ``batches`` (a dataset or :class:`HeldBatches`), distributed by the strategy; one replica
        on the CPU that makes the batches reads them as they are (distributing would only add a prefetch to the
        device it is already on), and gathers held batches inside its loop."""
        if isinstance(batches, HeldBatches) and not self.distributes:
            args = ([table.value() for table in batches.tables], batches.index, batches.replica, batches.labels)
            if self._train_held is None:  # any number of rows: a refit's longer tables reuse the trace
                specs = [[tf.TensorSpec((None, None, *t.shape[2:]), t.dtype) for t in args[0]],
                         *[tf.TensorSpec((None, *np.shape(a)[1:]), tf.as_dtype(a.dtype)) for a in args[1:]]]
                self._train_held = tf.function(self._held_epoch, input_signature=[*specs, tf.TensorSpec((), tf.int64)])
            totals = self._train_held(*args, np.int64(batches.batch_size)).numpy()
        else:
            dataset = as_dataset(batches)
            batches = self.strategy.experimental_distribute_dataset(dataset) if self.distributes else dataset
            totals = self._train_epoch(batches).numpy()
        return {"loss": float(totals[0] / totals[2]), "accuracy": float(totals[1] / totals[2])}

    def _evaluate(self, batches):
        totals = tf.zeros(4)
        for x, y in iter(batches):  # an iterator, as in _epoch
            out = tf.cast(self.model(x, training=False), tf.float32)
            losses = self.per_example_loss(y, out)
            totals += tf.stack([tf.reduce_sum(losses), self._correct(y, out), tf.cast(tf.shape(y)[0], tf.float32),
                                tf.reduce_sum(tf.square(losses))])
        return totals

    def evaluate(self, dataset) -> dict:
        """Loss, its standard error (over examples) and accuracy over a dataset, computed locally (every worker
        gets the same figures)."""
        total, correct, count, squares = self._evaluate_epoch(dataset).numpy().tolist()
        loss = total / count
        return {"loss": loss, "accuracy": correct / count,
                "loss_se": math.sqrt(max(0.0, squares / count - loss ** 2) / count)}
