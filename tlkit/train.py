"""The stages: freeze or unfreeze, compile, fit on cached features or full images, keep the best weights."""
from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field

import keras
import numpy as np
import tensorflow as tf

from tlkit.cache import FeatureStore, Replicas, choose_replicas, frontier
from tlkit.data import ImageData
from tlkit.model import Classifier, cut_index, set_trainable
from tlkit.recipe import Recipe

log = logging.getLogger(__name__)

OPTIMIZERS = {
    "adam": lambda lr: keras.optimizers.Adam(lr),
    "adamw": lambda lr: keras.optimizers.AdamW(lr),
    "sgd": lambda lr: keras.optimizers.SGD(lr, momentum=0.9),
    "rmsprop": lambda lr: keras.optimizers.RMSprop(lr),
}


@dataclass
class StageReport:
    """What one stage did, for the console and the run folder."""

    name: str
    mode: str
    reason: str
    first_trainable_layer: str | None
    trainable_params: int
    total_params: int
    epochs_run: int = 0
    seconds: float = 0.0


@dataclass
class Training:
    """The outcome of all stages: per-epoch history rows, stage reports, where the best weights came from."""

    history: list[dict] = field(default_factory=list)
    stages: list[StageReport] = field(default_factory=list)
    best: dict | None = None
    feature_seconds: float = 0.0


class _BestWeights(keras.callbacks.Callback):
    """Remember the full model's weights at the lowest validation loss seen in any stage."""

    def __init__(self, full_model):
        super().__init__()
        self.full_model = full_model
        self.best_loss = math.inf
        self.weights = None
        self.where = None

    def on_epoch_end(self, epoch, logs=None):
        loss = (logs or {}).get("val_loss", math.inf)
        if loss < self.best_loss:
            self.best_loss, self.weights = loss, self.full_model.get_weights()
            self.where = {"stage": self.stage, "epoch": epoch + 1, "val_loss": float(loss)}

    def restore(self):
        if self.weights is not None:
            self.full_model.set_weights(self.weights)


class _EpochLog(keras.callbacks.Callback):
    """One history row and one log line per epoch."""

    def __init__(self, stage: str, total_epochs: int, rows: list):
        super().__init__()
        self.stage, self.total, self.rows = stage, total_epochs, rows

    def on_epoch_begin(self, epoch, logs=None):
        self.started = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        logs = dict(logs or {})
        seconds = time.perf_counter() - self.started
        row = {"stage": self.stage, "epoch": epoch + 1, **{k: float(v) for k, v in logs.items()},
               "seconds": round(seconds, 3)}
        self.rows.append(row)
        figures = "  ".join(f"{k} {v:.4f}" for k, v in logs.items() if k != "learning_rate")
        log.info("%s epoch %d/%d  %s  (%.1fs)", self.stage, epoch + 1, self.total, figures, seconds)


def _labels(labels: np.ndarray, recipe: Recipe) -> np.ndarray:
    if recipe.head.activation == "sigmoid":
        return labels.astype(np.float32).reshape(-1, 1)
    return labels.astype(np.int32)


def indexed_dataset(n: int, gather, specs, batch_size: int, shuffle_seed: int | None = None) -> tf.data.Dataset:
    """Batches built by ``gather(indices)`` over ``range(n)``, shuffled per epoch when a seed is given.

    The same index stream feeds cached features and full images, so both paths see the same order.
    """
    ds = tf.data.Dataset.range(n)
    if shuffle_seed is not None:
        ds = ds.shuffle(n, seed=shuffle_seed, reshuffle_each_iteration=True)
    ds = ds.batch(batch_size)
    dtypes = [s.dtype for s in specs]

    def load(indices):
        values = tf.numpy_function(gather, [indices], dtypes, stateful=True)
        values = [tf.ensure_shape(v, s.shape) for v, s in zip(values, specs)]
        *inputs, labels = values
        return (tuple(inputs) if len(inputs) > 1 else inputs[0]), labels

    return ds.map(load).prefetch(tf.data.AUTOTUNE)


def _label_spec(recipe):
    if recipe.head.activation == "sigmoid":
        return tf.TensorSpec((None, 1), tf.float32)
    return tf.TensorSpec((None,), tf.int32)


def image_dataset(split, recipe: Recipe, shuffle_seed: int | None = None) -> tf.data.Dataset:
    """Batches of a split's full images (float 0-255) and labels, for the plain path and evaluation."""
    labels = _labels(split.labels, recipe)
    spec = tf.TensorSpec((None, recipe.size, recipe.size, 3), tf.float32)
    return indexed_dataset(len(split), lambda i: (split.images[i].astype(np.float32), labels[i]),
                           [spec, _label_spec(recipe)], recipe.batch_size, shuffle_seed)


def loss_for(recipe: Recipe):
    if recipe.head.activation == "sigmoid":
        return keras.losses.BinaryCrossentropy()
    return keras.losses.SparseCategoricalCrossentropy()


def feature_datasets(train_arrays, val_arrays, data: ImageData, recipe: Recipe):
    """Train and validation datasets of cached features; each epoch draws one replica per training image."""
    rng = np.random.default_rng(recipe.seed)

    def make(arrays, split, seed):
        labels = _labels(split.labels, recipe)
        specs = [tf.TensorSpec((None, *a.shape[2:]), tf.float32) for a in arrays] + [_label_spec(recipe)]

        def gather(indices):
            replica = rng.integers(arrays[0].shape[0], size=len(indices)) if seed is not None else 0
            return (*[np.asarray(a[replica, indices]) for a in arrays], labels[indices])
        return indexed_dataset(len(split), gather, specs, recipe.batch_size, seed)
    return make(train_arrays, data.splits["train"], recipe.seed), make(val_arrays, data.splits["val"], None)


# === Models above and below the cut ===

def prefix_model(classifier: Classifier, tensors) -> keras.Model:
    """Raw pixels -> preprocessing -> the frozen part of the base, up to the cut tensors."""
    base = classifier.base
    frozen = keras.Model(base.input, tensors if len(tensors) > 1 else tensors[0])
    images = keras.Input(base.input.shape[1:], name="image")
    return keras.Model(images, frozen(classifier.preprocess(images), training=False))


def above_cut_model(classifier: Classifier, tensors) -> keras.Model:
    """Cut tensors -> the trainable top of the base -> head: what trains on cached features."""
    base = classifier.base
    inputs = [keras.Input(t.shape[1:], name=f"cut_{i}") for i, t in enumerate(tensors)]
    if len(tensors) == 1 and tensors[0] is base.output:
        x = inputs[0]
    else:
        top = keras.Model(tensors if len(tensors) > 1 else tensors[0], base.output)
        x = top(inputs if len(inputs) > 1 else inputs[0], training=False)
    return keras.Model(inputs if len(inputs) > 1 else inputs[0], classifier.head(x))


def count_params(weights) -> int:
    return int(sum(np.prod(w.shape) for w in weights))


class Trainer:
    """Runs a recipe's stages on a classifier, reusing the frozen part's output where that is exact."""

    def __init__(self, classifier: Classifier, recipe: Recipe, data: ImageData, store: FeatureStore,
                 fingerprint: dict):
        self.classifier, self.recipe, self.data, self.store = classifier, recipe, data, store
        self.fingerprint = fingerprint  # what the cached features depend on besides the cut
        self.replicas: Replicas | None = choose_replicas(recipe, classifier.augment)
        self.features: dict[int, tuple[list, list]] = {}  # cut index -> (train arrays, val arrays)
        self.feature_seconds = 0.0

    def run(self) -> Training:
        training = Training()
        keeper = _BestWeights(self.classifier.model)
        self._prepare_features()
        epoch = 0
        for index, stage in enumerate(self.recipe.stages):
            if stage.epochs == 0:
                continue
            report = self._run_stage(index, stage, epoch, keeper, training.history)
            training.stages.append(report)
            epoch += report.epochs_run
        training.best = keeper.where
        training.feature_seconds = self.feature_seconds
        return training

    def _stage_name(self, index, stage):
        return f"{index + 1}:{stage.kind}"

    def _prepare_features(self):
        """Compute features at every cut a cached stage needs: the lowest cut from images, the rest from it."""
        if self.replicas is None:
            return
        base = self.classifier.base
        cuts = sorted({cut_index(self.recipe, base, s) for s in self.recipe.stages if s.epochs})
        started = time.perf_counter()
        lower = None
        for cut in cuts:
            tensors = frontier(base, cut)
            if lower is None:
                model = prefix_model(self.classifier, tensors)
            else:
                model = keras.Model(frontier(base, lower), tensors if len(tensors) > 1 else tensors[0])
            self.features[cut] = tuple(self._features(model, cut, lower, split) for split in ("train", "val"))
            lower = cut
        self.feature_seconds = time.perf_counter() - started
        log.info("features for %d cut(s) ready in %.1fs", len(cuts), self.feature_seconds)

    def _features(self, model, cut, lower, split_name):
        split = self.data.splits[split_name]
        replicas = self.replicas if split_name == "train" else Replicas(self.replicas.transforms[:1], "x1", "")
        layer = self.classifier.base.layers[cut].name if cut < len(self.classifier.base.layers) else "(output)"
        parts = {**self.fingerprint, "split": split_name, "cut": layer, "replicas": replicas.name,
                 "files": self.fingerprint["files"][split_name]}
        if len(replicas) > 1 and not self.recipe.augment.only_flip:
            parts["augment"] = self.recipe.augment.model_dump()

        if lower is None:
            def batches(r, size):
                for start in range(0, len(split), size):
                    pixels = tf.convert_to_tensor(split.images[start:start + size], tf.float32)
                    yield start, replicas.transforms[r](pixels)
        else:
            source = self.features[lower][0 if split_name == "train" else 1]

            def batches(r, size):
                for start in range(0, len(split), size):
                    chunk = [tf.convert_to_tensor(a[r, start:start + size]) for a in source]
                    yield start, chunk if len(chunk) > 1 else chunk[0]
        return self.store.load_or_compute(parts, model, batches, len(split), len(replicas),
                                          f"{split_name} @ {layer}")

    def _run_stage(self, index, stage, epoch, keeper, rows) -> StageReport:
        classifier, recipe = self.classifier, self.recipe
        name = self._stage_name(index, stage)
        cut = set_trainable(classifier, recipe, stage)
        base = classifier.base
        first = None if cut >= len(base.layers) else base.layers[cut].name
        if self.replicas is not None:
            mode, reason = self.replicas.name, self.replicas.reason
            model = above_cut_model(classifier, frontier(base, cut))
            train, val = feature_datasets(*self.features[cut], self.data, recipe)
        else:
            mode = "full forward"
            reason = ("cache disabled (cache=false / --no-cache)" if not recipe.cache else
                      "augmentation other than flips; set augment_replicas=K to cache K augmented copies")
            model = classifier.model
            train = image_dataset(self.data.splits["train"], recipe, recipe.seed)
            val = image_dataset(self.data.splits["val"], recipe)
        full = classifier.model
        report = StageReport(name, mode, reason, first, count_params(full.trainable_weights), full.count_params())
        trainable_layers = sum(1 for layer in base.layers if layer.trainable and layer.weights)
        log.info("stage %s: %s (%s); base layers with trainable weights: %d, from %s; params trainable %s of %s; "
                 "BatchNorm in inference mode (%s)", name, mode, reason, trainable_layers, first or "none",
                 f"{report.trainable_params:,}", f"{report.total_params:,}", recipe.batchnorm)

        model.compile(OPTIMIZERS[stage.optimizer](stage.learning_rate), loss_for(recipe), metrics=["accuracy"])
        keeper.stage = name
        callbacks = [keeper, _EpochLog(name, epoch + stage.epochs, rows)]
        if stage.patience:
            callbacks.append(keras.callbacks.EarlyStopping("val_loss", patience=stage.patience))
        started = time.perf_counter()
        before = len(rows)
        model.fit(train, validation_data=val, epochs=epoch + stage.epochs, initial_epoch=epoch,
                  callbacks=callbacks, shuffle=False, verbose=0, class_weight=self.data.class_weight_by_id())
        keeper.restore()
        report.seconds = time.perf_counter() - started
        report.epochs_run = len(rows) - before
        return report
