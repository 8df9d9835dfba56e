"""Compute the frozen part once: cut the base where training starts, cache the tensors that cross the cut
(through the array store: in RAM within a memory budget, else memory-mapped from disk), and train only what
is above it. Also how augmentation maps onto cached copies of each image."""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Optional

import keras
import numpy as np
import tensorflow as tf

from tlkit.model import Classifier, inference, logits_of, pooled
from tlkit.recipe import Augment, Recipe
from tlkit.storage import ArrayStore, cache_key
from tlkit.ui import progress

if TYPE_CHECKING:
    from tlkit.data import ImageData
    from tlkit.weights import ResolvedWeights

log = logging.getLogger(__name__)


def feature_batch(size: int) -> int:
    """Images per forward pass while computing features. On a GPU: 128 up to 160 px, fewer at larger sizes so
    activations stay small. On CPUs: about as many pixels as 128 images of 96 px, to the nearest power of two
    (64 at 128 and 160 px, 32 at 224 px), 4 to 128 images; a batch's fixed costs dominate below that, and its
    activations outgrow the processor's caches above."""
    if tf.config.list_logical_devices("GPU"):
        return int(np.clip(2 ** int(np.log2(128 * 160 * 160 / size ** 2)), 16, 128))
    return int(np.clip(2 ** round(np.log2(128 * 96 * 96 / size ** 2)), 4, 128))


def feature_fingerprint(recipe: Recipe, weights: ResolvedWeights, data: ImageData) -> dict:
    """What cached features depend on apart from the cut and the images: data root, base, weights, size."""
    if weights.path:
        stat = weights.path.stat()
        weight_id = [str(weights.path.resolve()), stat.st_size, stat.st_mtime_ns]
    else:
        weight_id = f"random init, seed {recipe.seed}"
    return {"root": str(data.root.resolve()), "base": recipe.base, "alpha": recipe.alpha, "size": recipe.size,
            "weights": weight_id}


# === Where to cut ===

def frontier(base: keras.Model, cut: int) -> list:
    """The tensors made by frozen layers (``base.layers[:cut]``) that trainable layers or the output use. Plain
    operations between layers (ConvNeXt's residual additions) count on the side of the cut where they run."""
    operations = base.operations  # the layers and those operations, in the order they run
    start = operations.index(base.layers[cut]) if cut < len(base.layers) else len(operations)
    index = {id(op): i for i, op in enumerate(operations)}
    found, seen = [], set()

    def add(tensor):
        if id(tensor) not in seen:
            seen.add(id(tensor))
            found.append(tensor)

    for op in operations[start:]:
        for node in op._inbound_nodes[:1]:
            for tensor in node.input_tensors:
                if index.get(id(tensor._keras_history.operation), start) < start:
                    add(tensor)
    for tensor in base.outputs:
        if index[id(tensor._keras_history.operation)] < start:
            add(tensor)
    return found


def pools_at_output(classifier: Classifier, cut: int) -> bool:
    """True when the cut is the base's output and the head starts with global pooling: then the cache holds
    the pooled vectors (exact, and far smaller than the feature maps)."""
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
    return _model_to(classifier, _one_or_list(cached_tensors(classifier, cut)), lower)


def pooled_model(classifier: Classifier, lower: int | None = None) -> keras.Model:
    """Raw pixels (or, given ``lower``, that cut's cached tensors) -> the base's output, average-pooled: the
    features duplicate search and the audit compare, whatever the head does."""
    return _model_to(classifier, keras.layers.GlobalAveragePooling2D()(classifier.base.output), lower)


def _model_to(classifier: Classifier, outputs, lower: int | None) -> keras.Model:
    base = classifier.base
    if lower is not None:
        return keras.Model(_one_or_list(frontier(base, lower)), outputs)
    frozen = keras.Model(base.input, outputs)
    images = keras.Input(base.input.shape[1:], name="image")
    return keras.Model(images, frozen(classifier.preprocess(images), training=False))


def cut_label(classifier: Classifier, recipe: Recipe, cut: int) -> str:
    """A cut as cache keys and logs name it: the first trainable layer, or ``(output)`` and the pooling."""
    base = classifier.base
    label = base.layers[cut].name if cut < len(base.layers) else "(output)"
    return label + f" {recipe.head.pooling}-pooled" if pools_at_output(classifier, cut) else label


POOLED_LABEL = "(output) avg-pooled"  # what cut_label calls the base output under an average-pooling head


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


def outputs_from_cut(classifier: Classifier, cut: int) -> Callable | None:
    """``cached tensors of a cut -> (head logits, average-pooled base output)`` in inference mode, traced once:
    what :func:`tlkit.model.logits_and_features` computes from pixels, through only the layers above the cut.
    None when the cache holds a pooling the features cannot be taken from (a max-pooling head's)."""
    base, head, tensors = classifier.base, classifier.head, cached_tensors(classifier, cut)
    specs = [tf.TensorSpec((None, *t.shape[1:]), tf.float32) for t in tensors]
    if pools_at_output(classifier, cut):
        if not isinstance(head.layers[0], keras.layers.GlobalAveragePooling2D):
            return None

        def forward(x):
            return logits_of(head, x, pooled_input=True), x
    else:
        top = keras.Model(_one_or_list(tensors), base.output) if cut < len(base.layers) else None

        def forward(*x):
            features = top(_one_or_list(list(x)), training=False) if top else x[0]
            return logits_of(head, features), pooled(features)
    return tf.function(forward, input_signature=specs)


# === Replicas: how augmentation maps onto cached copies ===

@dataclass(frozen=True)
class Replicas:
    """The cached copies of each training image, and the reason this mode was chosen."""

    transforms: tuple[Callable, ...]
    name: str
    reason: str

    def __len__(self):
        return len(self.transforms)

    def first(self) -> "Replicas":
        """Only the unaugmented copy: what validation images get."""
        return Replicas(self.transforms[:1], "x1", "")


def _identity(x):
    return x


def _flip_lr(x):
    return tf.reverse(x, axis=[2])


def _flip_ud(x):
    return tf.reverse(x, axis=[1])


def choose_replicas(recipe: Recipe, augment_layer) -> Optional[Replicas]:
    """Cached replicas for the recipe's augmentation, or None when every step must run the base."""
    spec: Augment = recipe.augment
    if not recipe.cache:
        return None
    if not spec.active:
        return Replicas((_identity,), "cached", "exact: no augmentation")
    if spec.only_flip:
        flips = {"horizontal": (_identity, _flip_lr), "vertical": (_identity, _flip_ud),
                 "horizontal_and_vertical": (_identity, _flip_lr, _flip_ud, lambda x: _flip_ud(_flip_lr(x)))}
        transforms = flips[spec.flip]
        return Replicas(transforms, f"cached x{len(transforms)}",
                        f"exact: {spec.flip} flip has {len(transforms)} outcomes, each cached, one drawn per epoch")
    if recipe.augment_replicas:
        def augmented(x):
            return augment_layer(x, training=True)
        return Replicas((_identity,) + (augmented,) * recipe.augment_replicas,
                        f"cached x{recipe.augment_replicas + 1}",
                        f"approximate: {recipe.augment_replicas} augmented replicas per image (augment_replicas)")
    return None


# === A split's features at a cut ===

@dataclass
class CutFeatures:
    """A split's cached tensors at one cut: its rows of the unaugmented tensors that every image of the
    dataset shares (one entry for all splits, so any split of the same images reuses it), and its other
    replicas (augmented copies, training images only), computed for the split alone; once held, also a copy
    of all of them that the training graph reads."""

    shared: list[np.ndarray]  # per tensor (images, *shape), in the data's catalogue order
    rows: np.ndarray  # this split's rows in ``shared``
    extra: list[np.ndarray] = field(default_factory=list)  # per tensor (replicas - 1, len(rows), *shape)
    tables: list[tf.Variable] = field(default_factory=list)  # per tensor (replicas, len(rows), *shape); see hold

    @property
    def replicas(self) -> int:
        return 1 + (len(self.extra[0]) if self.extra else 0)

    def hold(self, store: ArrayStore) -> bool:
        """Copy the split's features, every replica, into ``tables`` (TensorFlow variables on the CPU), so that
        batches are gathered inside the graph, if the copy fits what is left of the store's RAM budget; else
        batches are read through NumPy (from disk when memory-mapped). Returns whether it did."""
        nbytes = self.replicas * len(self.rows) * sum(a[0].nbytes for a in self.shared)
        if not store.reserve(nbytes):
            return False
        with tf.device("/cpu:0"):
            for k, shared in enumerate(self.shared):
                copies = [self.extra[k]] if self.extra else []
                self.tables.append(tf.Variable(np.concatenate([shared[self.rows][None], *copies]), trainable=False))
        return True

    def take(self, replica, indices: np.ndarray) -> list[np.ndarray]:
        """Per tensor, the split's images ``indices``, each as replica ``replica`` (one, or one per index)."""
        indices = np.asarray(indices)
        replica = np.broadcast_to(np.asarray(replica), indices.shape)
        copies = np.flatnonzero(replica > 0)
        out = []
        for k, shared in enumerate(self.shared):
            values = np.array(shared[self.rows[indices]])
            if len(copies):
                values[copies] = self.extra[k][replica[copies] - 1, indices[copies]]
            out.append(values)
        return out


# === The store ===

class FeatureStore:
    """Feature arrays of models, kept in an :class:`ArrayStore` (shared with the decoded images, so both fit
    one memory budget), each computed by one traced forward pass per model."""

    def __init__(self, arrays: ArrayStore):
        self.arrays = arrays
        self.events: list[dict] = []
        self._traced: dict[int, tuple[keras.Model, Callable]] = {}  # id(model) -> (model, its traced forward)
        self._models: dict[tuple, tuple[Classifier, keras.Model]] = {}  # (id(classifier), cut, lower) -> model
        self._loaded: dict[str, list[np.ndarray]] = {}  # cache key -> arrays this process already holds

    def load_or_compute(self, parts: dict, model: keras.Model, chunks: Callable, n: int, replicas: int,
                        what: str, batch_size: int = 64) -> list[np.ndarray]:
        """Arrays ``(replicas, n, *shape)``, one per model output; computed only if not cached already.

        ``chunks(k)`` yields ``(start, inputs)`` for images ``start:start + k``, ``inputs[r]`` being the model's
        inputs for replica ``r``; all replicas of a chunk go through the model as one batch of ``batch_size``.
        An entry asked for again in this process is the arrays already held.
        """
        key = cache_key(parts)
        if key in self._loaded:
            return self._loaded[key]
        entry = self.arrays.load_or_compute(
            parts, f"features {what}", lambda folder: self._compute(folder, model, chunks, n, replicas, what,
                                                                    batch_size))
        event = {"what": what, **entry.event}
        if "seconds" in event:
            event["images_per_second"] = round(n * replicas / max(event["seconds"], 1e-9), 1)
        self.events.append(event)
        rate = f" in {event['seconds']:.1f}s ({event['images_per_second']:.0f} img/s)" if "seconds" in event else ""
        log.info("features %s: %s%s, %.1f MB in %s", what, event["event"], rate, event["bytes"] / 1e6,
                 event["where"])
        self._loaded[key] = entry.arrays
        return entry.arrays

    def feature_model(self, classifier: Classifier, cut: int, lower: int | None = None) -> keras.Model:
        """:func:`feature_model` of ``classifier``, built once per store."""
        key = (id(classifier), cut, lower)
        if key not in self._models:
            self._models[key] = (classifier, feature_model(classifier, cut, lower))
        return self._models[key][1]

    def _forward(self, model: keras.Model) -> Callable:
        """One traced inference function per model, shared by the splits it computes."""
        if id(model) not in self._traced:
            self._traced[id(model)] = (model, inference(model))
        return self._traced[id(model)][1]

    def _compute(self, folder, model, chunks, n, replicas, what, batch_size) -> dict:
        shapes = [tuple(t.shape[1:]) for t in model.outputs]
        files = [np.lib.format.open_memmap(folder / f"{i}.npy", "w+", np.float32, (replicas, n, *s))
                 for i, s in enumerate(shapes)]
        forward = self._forward(model)
        with progress(total=n * replicas, desc=f"features {what}", unit="img") as bar:
            for start, inputs in chunks(max(1, batch_size // replicas)):
                batch = [tf.concat(column, axis=0) for column in zip(*inputs)]
                out = forward(batch if len(batch) > 1 else batch[0])
                out = out if isinstance(out, (list, tuple)) else [out]
                for array, value in zip(files, out):
                    value = value.numpy()
                    array[:, start:start + len(value) // replicas] = value.reshape(replicas, -1, *value.shape[1:])
                bar.update(len(out[0]))
        for array in files:
            array.flush()
        return {"shapes": shapes, "n": n, "replicas": replicas}
