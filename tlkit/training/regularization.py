"""The head's L2 strength chosen from the data: k-fold cross-validation of the linear head on the training images'
cached pooled features, trained as the head stage trains it (Adam, its batch size, steps, learning rate, dropout
and class weights). Every fold and candidate strength trains at once, side by side in one kernel, so a step is
two plain matrix products and one fused Adam update whatever the number of images."""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import tensorflow as tf

# candidate strengths as scikit-learn's C, half a decade apart: the penalty on the mean loss of n images is
# 1 / (2 C n); C=1 is scikit-learn's default and tlkit's rule without cross-validation
STRENGTHS = tuple(float(c) for c in np.round(10.0 ** np.arange(-2.0, 1.01, 0.5), 4))
FOLDS = 5
MAX_STEPS = 3000  # the copies train at most this many steps (the head stage's min_steps by default)
MAX_WEIGHTS = 2**25  # beyond this many weights in all copies together (128 MB), no cross-validation


def copies_weights(channels: int, outputs: int) -> int:
    """How many weights the side-by-side copies of a head ``channels -> outputs`` hold."""
    return channels * FOLDS * len(STRENGTHS) * outputs


@dataclass(frozen=True)
class L2Choice:
    """The chosen strength and the evidence: held-out accuracy and cross-entropy per candidate (each image
    weighted by its class weight)."""

    c: float
    folds: int
    images: int  # the images cross-validated
    steps: int  # the optimizer steps each copy trained
    heldout_accuracy: dict[float, float]
    heldout_loss: dict[float, float]
    seconds: float

    def l2(self, images: int) -> float:
        """The penalty on the mean loss of ``images`` training images."""
        return 1 / (2 * self.c * images)

    def record(self, images: int) -> dict:
        """What run.json keeps of the choice."""
        return {"rule": f"{self.folds}-fold cross-validation of the head on the training images' pooled features: "
                        "the highest held-out accuracy, ties to the lowest held-out cross-entropy",
                "c": self.c, "l2": self.l2(images), "images": self.images, "steps": self.steps,
                "seconds": round(self.seconds, 2),
                "heldout_accuracy": {str(c): round(v, 4) for c, v in self.heldout_accuracy.items()},
                "heldout_loss": {str(c): round(v, 4) for c, v in self.heldout_loss.items()}}


def stratified_folds(labels: np.ndarray, folds: int, seed: int) -> np.ndarray:
    """Each image's fold: every class's images shuffled, then dealt round-robin, so class counts per fold differ
    by at most one."""
    fold = np.empty(len(labels), np.int64)
    rng = np.random.default_rng(seed)
    for label in np.unique(labels):
        rows = rng.permutation(np.flatnonzero(labels == label))
        fold[rows] = np.arange(len(rows)) % folds
    return fold


def pick(accuracy: np.ndarray, loss: np.ndarray) -> int:
    """The candidate with the highest held-out accuracy; among equals, the lowest held-out loss."""
    return int(np.lexsort((loss, -accuracy))[0])


def choose_l2(features: np.ndarray, labels: np.ndarray, classes: int, *, sigmoid: bool, dropout: float,
              steps: int, batch_size: int, learning_rate: float, seed: int,
              class_weight: np.ndarray | None = None) -> L2Choice | None:
    """Cross-validate the linear head ``(images, channels) -> classes`` over :data:`STRENGTHS`; None when the
    smallest class has fewer than 2 images, too few to hold any out. Every step draws one batch of all images
    (shuffled passes, as the head stage's epochs do); each head learns from the part of it outside its fold.
    ``steps`` beyond :data:`MAX_STEPS` are cut to it."""
    started = time.perf_counter()
    steps = min(steps, MAX_STEPS)
    folds = min(FOLDS, int(np.bincount(labels, minlength=classes).min()))
    if folds < 2:
        return None
    fold = stratified_folds(labels, folds, seed)
    rng = np.random.default_rng(seed)
    passes = -(-steps * batch_size // len(labels))
    batches = np.concatenate([rng.permutation(len(labels)) for _ in range(passes)])[:steps * batch_size]
    images_per_fold = np.bincount(fold, minlength=folds)
    penalty = 1 / (2 * np.array(STRENGTHS)[None, :] * (len(labels) - images_per_fold)[:, None])  # (folds, C)
    weight = np.ones(classes) if class_weight is None else np.asarray(class_weight, np.float64)
    features = np.asarray(features, np.float32)
    outputs = 1 if sigmoid else classes
    heads = folds * len(STRENGTHS) * outputs
    kernel, bias = (tf.Variable(tf.zeros(shape)) for shape in ([features.shape[1], heads], [heads]))
    moments = [tf.Variable(tf.zeros_like(v)) for v in (kernel, kernel, bias, bias)]
    _train(kernel, bias, moments, tf.constant(features), tf.constant(labels, tf.int32), tf.constant(fold, tf.int32),
           tf.constant(batches.reshape(steps, batch_size), tf.int32), tf.constant(penalty, tf.float32),
           tf.constant(weight, tf.float32), outputs=outputs, dropout=dropout, learning_rate=learning_rate, seed=seed)
    kernel, bias = kernel.numpy(), bias.numpy()
    logits = (features @ kernel + bias).reshape(len(labels), folds, len(STRENGTHS), outputs)
    heldout = logits[np.arange(len(labels)), fold]  # each image scored by the heads of the fold that held it out
    share = weight[labels] / weight[labels].sum()  # the held-out figures weigh classes as training does
    loss = share @ _cross_entropy(heldout, labels)
    predicted = heldout[..., 0] > 0 if sigmoid else heldout.argmax(axis=-1)
    accuracy = np.round(share @ (predicted == labels[:, None]), 12)  # equal counts tie exactly, for pick
    best = pick(accuracy, loss)
    return L2Choice(STRENGTHS[best], folds, len(labels), steps, dict(zip(STRENGTHS, accuracy.tolist())),
                    dict(zip(STRENGTHS, loss.tolist())), time.perf_counter() - started)


def _cross_entropy(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """``(images, C)`` cross-entropy of ``logits (images, C, outputs)``: softmax, or sigmoid for one output."""
    if logits.shape[-1] == 1:
        z, y = logits[..., 0], labels[:, None]
        return np.maximum(z, 0) - z * y + np.log1p(np.exp(-np.abs(z)))
    top = logits.max(axis=-1, keepdims=True)
    log_total = np.log(np.exp(logits - top).sum(axis=-1)) + top[..., 0]
    return log_total - np.take_along_axis(logits, labels[:, None, None], axis=-1)[..., 0]


@tf.function(jit_compile=True)  # fused by XLA: the loop of small ops is otherwise mostly dispatch
def _train(kernel, bias, moments, x, y, fold, batches, penalty, class_weight, *, outputs: int, dropout: float,
           learning_rate: float, seed: int):
    """Train a head per (fold, strength) on the images outside its fold: ``kernel`` (channels, folds x strengths
    x outputs) and ``bias`` hold them side by side, ``moments`` Adam's moments of both. The gradient is written
    out: softmax or sigmoid cross-entropy, each head's weighted mean over its images in the batch, plus its
    penalty."""
    folds, strengths = penalty.shape
    heads = folds * strengths
    decay = 2 * tf.reshape(tf.repeat(tf.reshape(penalty, [-1]), outputs), [1, -1])  # d(penalty)/d(kernel) / kernel
    beta1, beta2 = 0.9, 0.999
    for step in tf.range(tf.shape(batches)[0]):
        rows = batches[step]
        inputs = tf.gather(x, rows)
        if dropout:
            keep = _uniform(tf.shape(inputs), seed, step) >= dropout
            inputs = tf.where(keep, inputs / (1 - dropout), 0.0)
        targets = tf.gather(y, rows)
        trains = tf.cast(tf.not_equal(tf.gather(fold, rows)[:, None], tf.range(folds)[None]), tf.float32)
        share = trains / tf.maximum(tf.reduce_sum(trains, axis=0), 1.0)  # (batch, folds): each head's mean
        share = tf.repeat(share * tf.gather(class_weight, targets)[:, None], strengths * outputs, axis=1)
        logits = tf.reshape(tf.matmul(inputs, kernel) + bias, [-1, heads, outputs])
        if outputs == 1:
            error = tf.sigmoid(logits) - tf.cast(targets, tf.float32)[:, None, None]
        else:
            error = tf.nn.softmax(logits) - tf.one_hot(targets, outputs)[:, None]
        error = tf.reshape(error, [-1, heads * outputs]) * share
        power = tf.cast(step + 1, tf.float32)
        for variable, m, v, gradient in ((kernel, *moments[:2], tf.matmul(inputs, error, transpose_a=True)
                                          + decay * kernel),
                                         (bias, *moments[2:], tf.reduce_sum(error, axis=0))):
            tf.raw_ops.ResourceApplyAdam(var=variable.handle, m=m.handle, v=v.handle, beta1_power=beta1 ** power,
                                         beta2_power=beta2 ** power, lr=learning_rate, beta1=beta1, beta2=beta2,
                                         epsilon=1e-7, grad=gradient)


def _uniform(shape, seed: int, step):
    """Numbers uniform in [0, 1), a hash of (seed, step, position) of integer operations that XLA fuses (its
    expansion of TensorFlow's random ops takes most of a step on the CPU)."""
    h = tf.cast(tf.reshape(tf.range(shape[0] * shape[1]), shape), tf.uint32) * tf.constant(0x9E3779B1, tf.uint32)
    h += tf.cast(step, tf.uint32) * tf.constant(0x85EBCA77, tf.uint32) + tf.constant(seed * 0xC2B2AE3D % 2**32,
                                                                                       tf.uint32)
    for multiplier in (0x7FEB352D, 0x846CA68B):  # a 32-bit integer mixer: xor-shift, multiply, twice
        h = tf.bitwise.bitwise_xor(h, tf.bitwise.right_shift(h, 16)) * tf.constant(multiplier, tf.uint32)
    h = tf.bitwise.bitwise_xor(h, tf.bitwise.right_shift(h, 16))
    return tf.cast(tf.bitwise.right_shift(h, 8), tf.float32) / 2.0 ** 24
