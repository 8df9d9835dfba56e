"""The stages: freeze or unfreeze, then train on cached features or full images in one custom loop that
runs its step under ``strategy.run`` (one device, MirroredStrategy and MultiWorkerMirroredStrategy alike),
keeps the best weights, checkpoints every epoch and resumes."""
from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from tlkit.cache import FeatureStore, Replicas, choose_replicas, feature_batch, frontier
from tlkit.checkpoint import Checkpoints
from tlkit.data import ImageData
from tlkit.distribute import Placement
from tlkit.model import Classifier, cut_index, set_trainable
from tlkit.optim import SmoothedSparseCrossentropy, batches_per_epoch, make_optimizer, stage_callbacks
from tlkit.recipe import Recipe
from tlkit.summary import parameter_summary

log = logging.getLogger(__name__)

@dataclass
class StageReport:
    """What one stage did, for the console and the run folder."""

    name: str
    mode: str
    reason: str
    first_trainable_layer: str | None
    trainable_params: int
    total_params: int
    parameters: dict = field(default_factory=dict)  # tlkit.summary.ParameterSummary
    epochs_run: int = 0
    seconds: float = 0.0


@dataclass
class Training:
    """The outcome of all stages: per-epoch history rows, stage reports, where the best weights came from."""

    history: list[dict] = field(default_factory=list)
    stages: list[StageReport] = field(default_factory=list)
    best: dict | None = None
    feature_seconds: float = 0.0


# === Data for the loop ===

def labels_for(labels: np.ndarray, recipe: Recipe) -> np.ndarray:
    if recipe.head.activation == "sigmoid":
        return labels.astype(np.float32).reshape(-1, 1)
    return labels.astype(np.int32)


def _label_spec(recipe):
    if recipe.head.activation == "sigmoid":
        return tf.TensorSpec((None, 1), tf.float32)
    return tf.TensorSpec((None,), tf.int32)


def epoch_order(n: int, seed: int, epoch: int) -> np.ndarray:
    """The training order of an epoch: a function of seed and epoch only, so a resumed run repeats it."""
    return np.random.default_rng([seed, epoch]).permutation(n)


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


def loss_for(recipe: Recipe, label_smoothing: float = 0.0, reduction="sum_over_batch_size"):
    if recipe.head.activation == "sigmoid":
        return keras.losses.BinaryCrossentropy(label_smoothing=label_smoothing, reduction=reduction)
    if label_smoothing:
        return SmoothedSparseCrossentropy(label_smoothing, reduction=reduction)
    return keras.losses.SparseCategoricalCrossentropy(reduction=reduction)


# === Models above and below the cut ===

def pools_at_output(classifier: Classifier, cut: int) -> bool:
    """True when the cut is the base's output and the head starts with global pooling: then the cache holds
    the pooled vectors (exact, and 16-49x smaller than the feature maps)."""
    return cut == len(classifier.base.layers) and isinstance(
        classifier.head.layers[0], (keras.layers.GlobalAveragePooling2D, keras.layers.GlobalMaxPooling2D))


def cached_tensors(classifier: Classifier, cut: int) -> list:
    """What the cache holds for a cut: the tensors crossing it, or the head's pooling of the base's output."""
    if pools_at_output(classifier, cut):
        return [classifier.head.layers[0](classifier.base.output)]
    return frontier(classifier.base, cut)


def _one_or_list(tensors):
    return tensors if len(tensors) > 1 else tensors[0]


def feature_model(classifier: Classifier, cut: int, lower: int | None = None) -> keras.Model:
    """What computes a cut's cached tensors: raw pixels -> preprocessing -> the frozen part of the base, or,
    given ``lower``, the cached tensors of that lower cut -> the frozen layers between the two cuts."""
    base, outputs = classifier.base, _one_or_list(cached_tensors(classifier, cut))
    if lower is not None:
        return keras.Model(_one_or_list(frontier(base, lower)), outputs)
    frozen = keras.Model(base.input, outputs)
    images = keras.Input(base.input.shape[1:], name="image")
    return keras.Model(images, frozen(classifier.preprocess(images), training=False))


def above_cut_model(classifier: Classifier, cut: int) -> keras.Model:
    """A cut's cached tensors -> the trainable top of the base -> head: what trains on cached features."""
    base, head, tensors = classifier.base, classifier.head, cached_tensors(classifier, cut)
    inputs = [keras.Input(t.shape[1:], name=f"cut_{i}") for i, t in enumerate(tensors)]
    if pools_at_output(classifier, cut):
        x = inputs[0]
        for layer in head.layers[1:]:
            x = layer(x)
        return keras.Model(inputs[0], x)
    if cut == len(base.layers):
        x = inputs[0]
    else:
        top = keras.Model(_one_or_list(tensors), base.output)
        x = top(_one_or_list(inputs), training=False)
    return keras.Model(_one_or_list(inputs), head(x))


# === The loop ===

class Loop:
    """Train and evaluate one model: the step runs under ``strategy.run``, its sums are reduced across
    replicas and workers (Keras 3 ``fit`` does not run under MultiWorkerMirroredStrategy, keras#20585)."""

    def __init__(self, strategy: tf.distribute.Strategy, model: keras.Model, optimizer, recipe: Recipe,
                 class_weight: dict[int, float] | None = None, label_smoothing: float = 0.0):
        self.strategy, self.model, self.optimizer = strategy, model, optimizer
        self.per_example_loss = loss_for(recipe, label_smoothing, reduction=None)
        self.class_weight = None if class_weight is None else tf.constant(
            [class_weight[i] for i in range(len(class_weight))], tf.float32)  # training loss weight per class
        self.sigmoid = recipe.head.activation == "sigmoid"
        self._train_epoch = tf.function(self._epoch)
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
            scaled = self.optimizer.scale_loss(loss)  # loss scaling under mixed_float16, else unchanged
        variables = self.model.trainable_variables
        self.optimizer.apply(tape.gradient(scaled, variables), variables)
        return tf.reduce_sum(losses), self._correct(y, out), tf.cast(tf.shape(losses)[0], tf.float32)

    def _epoch(self, batches):
        """One pass over a distributed dataset, the loop inside the graph (no Python per step)."""
        totals = tf.zeros(3)
        for x, y in batches:
            sums = self.strategy.run(self._replica_step, args=(x, y))
            totals += tf.stack([self.strategy.reduce(tf.distribute.ReduceOp.SUM, s, axis=None) for s in sums])
        return totals

    def train_epoch(self, dataset) -> dict:
        totals = self._train_epoch(self.strategy.experimental_distribute_dataset(dataset)).numpy()
        return {"loss": float(totals[0] / totals[2]), "accuracy": float(totals[1] / totals[2])}

    def _evaluate(self, batches):
        totals = tf.zeros(3)
        for x, y in batches:
            out = tf.cast(self.model(x, training=False), tf.float32)
            totals += tf.stack([tf.reduce_sum(self.per_example_loss(y, out)), self._correct(y, out),
                                tf.cast(tf.shape(y)[0], tf.float32)])
        return totals

    def evaluate(self, dataset) -> dict:
        """Loss and accuracy over a dataset, computed locally (every worker gets the same figures)."""
        totals = self._evaluate_epoch(dataset).numpy()
        return {"loss": float(totals[0] / totals[2]), "accuracy": float(totals[1] / totals[2])}


# === The stages ===

class Trainer:
    """Runs a recipe's stages on a classifier, reusing the frozen part's output where that is exact."""

    def __init__(self, classifier: Classifier, recipe: Recipe, data: ImageData, store: FeatureStore,
                 fingerprint: dict, placement: Placement, checkpoints: Checkpoints | None = None,
                 log_dir: Path | None = None):
        self.classifier, self.recipe, self.data, self.store = classifier, recipe, data, store
        self.fingerprint = fingerprint  # what the cached features depend on besides the cut
        self.placement, self.checkpoints = placement, checkpoints
        self.log_dir = log_dir  # per stage: parameter summary and TensorBoard logs; None: neither
        self.replicas: Replicas | None = choose_replicas(recipe, classifier.augment)
        self.features: dict[int, tuple[list, list]] = {}  # cut index -> (train arrays, val arrays)
        self.feature_seconds = 0.0

    def run(self, resume: dict | None = None) -> Training:
        """Train every stage; with ``resume`` (a loaded checkpoint) continue where it stopped."""
        training = Training()
        state = {"stage": 0, "stage_epoch": 0, "global_epoch": 0, "stage_done": False, "best": None,
                 "best_loss": math.inf, "history": [], "stages": []}
        best_weights = None
        if resume:
            state = resume["state"]
            for variable, value in zip(self.classifier.model.variables, resume["model"]):
                variable.assign(value)  # weights and the random generators' state (dropout, augmentation)
            best_weights = resume["best"]
            log.info("resuming at stage %d, epoch %d (%d epochs done)", state["stage"] + 1,
                     state["stage_epoch"] + 1, state["global_epoch"])
        self._prepare_features()
        for index, stage in enumerate(self.recipe.stages):
            if index < state["stage"] or (index == state["stage"] and state["stage_done"]) or stage.epochs == 0:
                continue
            if index > state["stage"]:
                state.update(stage=index, stage_epoch=0, stage_done=False)
                resume = None
            best_weights = self._run_stage(index, stage, state, best_weights, resume)
        training.history = state["history"]
        training.stages = [StageReport(**s) for s in state["stages"]]
        training.best = state["best"]
        training.feature_seconds = self.feature_seconds
        return training

    def _prepare_features(self):
        """Compute features at every cut a cached stage needs: the lowest cut from images, the rest from it."""
        if self.replicas is None:
            return
        base = self.classifier.base
        cuts = sorted({cut_index(self.recipe, base, s) for s in self.recipe.stages if s.epochs})
        started = time.perf_counter()
        lower = None
        for cut in cuts:
            model = feature_model(self.classifier, cut, lower)
            self.features[cut] = tuple(self._features(model, cut, lower, split) for split in ("train", "val"))
            lower = cut
        self.feature_seconds = time.perf_counter() - started
        log.info("features for %d cut(s) ready in %.1fs", len(cuts), self.feature_seconds)

    def _features(self, model, cut, lower, split_name):
        split = self.data.splits[split_name]
        replicas = self.replicas if split_name == "train" else Replicas(self.replicas.transforms[:1], "x1", "")
        base = self.classifier.base
        layer = base.layers[cut].name if cut < len(base.layers) else "(output)"
        if pools_at_output(self.classifier, cut):
            layer += f" {self.recipe.head.pooling}-pooled"
        parts = {**self.fingerprint, "split": split_name, "cut": layer, "replicas": replicas.name,
                 "files": self.fingerprint["files"][split_name]}
        if len(replicas) > 1 and not self.recipe.augment.only_flip:
            parts["augment"] = self.recipe.augment.model_dump()

        if lower is None:
            def chunks(size):
                for start in range(0, len(split), size):
                    pixels = tf.convert_to_tensor(split.images[start:start + size], tf.float32)
                    yield start, [[transform(pixels)] for transform in replicas.transforms]
        else:
            source = self.features[lower][0 if split_name == "train" else 1]

            def chunks(size):
                for start in range(0, len(split), size):
                    yield start, [[tf.convert_to_tensor(a[r, start:start + size]) for a in source]
                                  for r in range(len(replicas))]
        return self.store.load_or_compute(parts, model, chunks, len(split), len(replicas),
                                          f"{split_name} @ {layer}", feature_batch(self.recipe.size))

    def _datasets(self, cut, epoch):
        """This epoch's training batches and the validation batches, cached or full images."""
        train_split, val_split = self.data.splits["train"], self.data.splits["val"]
        order = epoch_order(len(train_split), self.recipe.seed, epoch)
        drop = self.placement.replicas > 1  # every replica gets a non-empty batch
        if self.replicas is not None:
            train_arrays, val_arrays = self.features[cut]
            return (feature_dataset(train_arrays, train_split, self.recipe, order, epoch, drop),
                    feature_dataset(val_arrays, val_split, self.recipe))
        return (image_dataset(train_split, self.recipe, order, drop), image_dataset(val_split, self.recipe))

    def _run_stage(self, index, stage, state, best_weights, resume):
        classifier, recipe, strategy = self.classifier, self.recipe, self.placement.strategy
        name = f"{index + 1}:{stage.kind}"
        cut = set_trainable(classifier, recipe, stage)
        base, full = classifier.base, classifier.model
        first = None if cut >= len(base.layers) else base.layers[cut].name
        if self.replicas is not None:
            mode, reason = self.replicas.name, self.replicas.reason
        else:
            mode = "full forward"
            reason = ("cache disabled (cache=false / --no-cache)" if not recipe.cache else
                      "augmentation other than flips; set augment_replicas=K to cache K augmented copies")
        with strategy.scope():
            model = above_cut_model(classifier, cut) if self.replicas is not None else full
            optimizer = make_optimizer(stage, batches_per_epoch(len(self.data.splits["train"]), recipe.batch_size),
                                       base.trainable_variables)
            if self.placement.precision == "mixed_float16":
                optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
            optimizer.build(model.trainable_variables)
        if resume and not state["stage_done"] and state["stage_epoch"]:
            for variable, value in zip(optimizer.variables, resume["optimizer"]):
                variable.assign(value)
        log.info("stage %s: %s (%s)", name, mode, reason)
        stage_dir = self.log_dir / name.replace(":", "-") if self.log_dir else None
        summary = parameter_summary(classifier, recipe.batchnorm, name).report(stage_dir)
        report = StageReport(name, mode, reason, first, summary.trainable, summary.total, asdict(summary))

        loop = Loop(strategy, model, optimizer, recipe, self.data.class_weight_by_id(), stage.label_smoothing)
        with strategy.scope():
            model.compile(optimizer, loop.per_example_loss)  # callbacks read model.optimizer
        hooks = stage_callbacks(stage, stage_dir)
        plateau = next((c for c in hooks if isinstance(c, keras.callbacks.ReduceLROnPlateau)), None)
        callbacks = keras.callbacks.CallbackList(hooks, model=model)
        callbacks.on_train_begin()
        stage_best, wait = state.get("stage_best", math.inf), state.get("wait", 0)
        if not resume:
            stage_best, wait = math.inf, 0
        elif plateau is not None and state.get("plateau"):
            plateau.wait, plateau.best, plateau.cooldown_counter = state["plateau"]  # its counters go on
        for stage_epoch in range(state["stage_epoch"], stage.epochs):
            epoch_started = time.perf_counter()
            callbacks.on_epoch_begin(state["global_epoch"])
            train, val = self._datasets(cut, state["global_epoch"])
            logs = loop.train_epoch(train)
            logs.update({f"val_{k}": v for k, v in loop.evaluate(val).items()})
            logs["learning_rate"] = float(keras.ops.convert_to_numpy(optimizer.learning_rate))
            callbacks.on_epoch_end(state["global_epoch"], logs)  # TensorBoard, reduce-on-plateau
            seconds = time.perf_counter() - epoch_started
            state["global_epoch"] += 1
            row = {"stage": name, "epoch": state["global_epoch"], **logs, "seconds": round(seconds, 3)}
            state["history"].append(row)
            log.info("%s epoch %d/%d  %s  (%.1fs)", name, stage_epoch + 1, stage.epochs,
                     "  ".join(f"{k} {v:.4f}" for k, v in logs.items() if k != "learning_rate"), seconds)
            best_changed = logs["val_loss"] < state["best_loss"]
            if best_changed:
                best_weights = full.get_weights()
                state["best_loss"] = logs["val_loss"]
                state["best"] = {"stage": name, "epoch": state["global_epoch"], "val_loss": logs["val_loss"],
                                 "val_accuracy": logs["val_accuracy"]}
            if logs["val_loss"] < stage_best:
                stage_best, wait = logs["val_loss"], 0
            else:
                wait += 1
            stopped = bool(stage.patience) and wait >= stage.patience
            done = stopped or stage_epoch + 1 == stage.epochs
            report.epochs_run = stage_epoch + 1
            if done:
                if stopped:
                    log.info("%s: early stop, validation loss did not improve for %d epochs", name, wait)
                if best_weights is not None:
                    full.set_weights(best_weights)  # never worse than the best epoch seen in any stage
                report.seconds = round(sum(r["seconds"] for r in state["history"] if r["stage"] == name), 3)
                state["stages"].append(asdict(report))
            state.update(stage_epoch=stage_epoch + 1, stage_done=done, stage_best=stage_best, wait=wait,
                         plateau=plateau and [plateau.wait, float(plateau.best), plateau.cooldown_counter])
            if self.checkpoints is not None:
                self.checkpoints.save(state, [v.numpy() for v in full.variables], [v.numpy() for v in optimizer.variables],
                                      best_weights, best_changed)
            if done:
                callbacks.on_train_end()
                break
        return best_weights
